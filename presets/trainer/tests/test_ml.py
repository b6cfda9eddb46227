"""A real fine-tuning run: a tiny, randomly initialised Phi-3-shaped model trained with LoRA by the
trainer's own entry point, in a subprocess as the Job runs it.

Skipped unless torch, transformers, peft, tokenizers, pyarrow and safetensors import; nothing is
downloaded (the model, its tokenizer and the dataset are made here, and the trainer runs with the
Hub offline). tests/gpu_check.sh runs it on a GPU machine with fp16, then bf16.

    KAITOFLOW_ML_PRECISION  fp32 (default), fp16 or bf16; fp16 and bf16 need a GPU
    KAITOFLOW_ML_REQUIRE=1  a missing module or GPU fails the test instead of skipping it, so a
                            GPU check cannot pass by skipping
"""

import importlib
import json
import math
import os
import subprocess
import sys
import tempfile
import unittest

from kaitoflow_trainer import tokens
from kaitoflow_trainer.train import PROGRESS_PREFIX, dtype_argument


def _missing(names):
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # a broken install counts as missing, whatever it raises
            missing.append(name)
    return missing


MISSING = _missing(("torch", "transformers", "peft", "tokenizers", "pyarrow", "safetensors"))
REQUIRED = os.environ.get("KAITOFLOW_ML_REQUIRE") == "1"
PRECISION = os.environ.get("KAITOFLOW_ML_PRECISION", "fp32")
# ModelConfig.torch_dtype and the TrainingArguments mixed-precision flag of each precision.
PRECISIONS = {"fp32": ("float32", {}), "fp16": ("float16", {"fp16": True}), "bf16": ("bfloat16", {"bf16": True})}
TRAINER_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SPECIAL = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
# Phi-3's turn markers; like many templates it writes BOS itself, so the trainer must not add another.
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]


def dolly_rows():
    """Rows shaped like databricks-dolly-15k: instruction, context, response, category."""
    rows = [
        {"instruction": "What is %s plus %s ?" % (NUMBERS[a], NUMBERS[b]), "context": "",
         "response": "%s plus %s is %s ." % (NUMBERS[a], NUMBERS[b], NUMBERS[a + b]), "category": "open_qa"}
        for a in range(1, 7) for b in range(1, 5)
    ]
    rows.append({"instruction": "What colour is the sky ?", "context": "The sky is blue on a clear day .",
                 "response": "The sky is blue .", "category": "closed_qa"})
    return rows


def build_tokenizer(texts, out_dir):
    """A word-level tokenizer trained on texts, saved as transformers saves a fast tokenizer, with
    BOS added to plain text as Llama's and Phi-3's tokenizers do."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=SPECIAL))
    backend.add_special_tokens(SPECIAL)
    bos = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok.chat_template = TEMPLATE
    tok.save_pretrained(out_dir)
    return tok


def build_model(tok, out_dir):
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.Phi3Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        original_max_position_embeddings=256, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=None,
    )
    transformers.Phi3ForCausalLM(config).save_pretrained(out_dir)


def write_parquet(rows, path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)


@unittest.skipUnless(not MISSING or REQUIRED, "needs %s, which do not import here" % ", ".join(MISSING))
class LoraRunTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if MISSING:
            raise AssertionError("KAITOFLOW_ML_REQUIRE=1 but %s do not import" % ", ".join(MISSING))
        if PRECISION not in PRECISIONS:
            raise AssertionError("KAITOFLOW_ML_PRECISION=%s: want one of %s" % (PRECISION, ", ".join(PRECISIONS)))
        import torch

        cls.cuda = torch.cuda.is_available()
        if PRECISION != "fp32" and not cls.cuda:
            if REQUIRED:
                raise AssertionError("KAITOFLOW_ML_PRECISION=%s needs a GPU, and torch sees none" % PRECISION)
            raise unittest.SkipTest("%s needs a GPU" % PRECISION)
        cls.tmp = tempfile.TemporaryDirectory()
        cls.root = cls.tmp.name
        cls.model_dir = os.path.join(cls.root, "model")
        cls.data_dir = os.path.join(cls.root, "data")
        os.mkdir(cls.data_dir)
        cls.rows = dolly_rows()
        write_parquet(cls.rows, os.path.join(cls.data_dir, "train-00000-of-00001.parquet"))
        texts = [r["instruction"] + " " + r["context"] + " " + r["response"] for r in cls.rows]
        cls.tok = build_tokenizer(texts, cls.model_dir)
        build_model(cls.tok, cls.model_dir)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def config(self, out_dir, quantization=None):
        dtype, mixed = PRECISIONS[PRECISION]
        cfg = {
            "ModelConfig": {"torch_dtype": dtype, "device_map": "auto"},
            "LoraConfig": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
                           "target_modules": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]},
            # A high learning rate, so a dozen steps move LoRA's B matrices well away from zero.
            "TrainingArguments": dict({
                "output_dir": out_dir, "max_steps": 12, "learning_rate": 0.01, "per_device_train_batch_size": 4,
                "logging_steps": 2, "save_strategy": "no", "seed": 0,
            }, **mixed),
            "DatasetConfig": {"context_column": "instruction", "response_column": "response",
                              "train_test_split": 0.8, "max_seq_length": 64},
        }
        if quantization:
            cfg["QuantizationConfig"] = quantization
        return cfg

    def run_trainer(self, method, cfg, compare=""):
        """The trainer as the Job runs it, offline, writing under this test's directory."""
        run_dir = tempfile.mkdtemp(dir=self.root, prefix=method + "-")
        cfg_path = os.path.join(run_dir, "training_config.yaml")
        with open(cfg_path, "w", encoding="utf-8") as f:
            json.dump({"training_config": cfg}, f)
        log = os.path.join(run_dir, "termination-log")
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=os.path.join(self.root, "hf"),
                   KAITOFLOW_OUTPUT_ROOT=self.root, KAITOFLOW_TERMINATION_LOG=log, PYTHONUNBUFFERED="1",
                   TOKENIZERS_PARALLELISM="false")
        env.pop("HF_TOKEN", None)
        cmd = [sys.executable, "-m", "kaitoflow_trainer.train", "--method", method, "--model", self.model_dir,
               "--config", cfg_path, "--input-dir", self.data_dir]
        if compare:
            cmd += ["--compare-adapter", compare]
        proc = subprocess.run(cmd, cwd=TRAINER_DIR, env=env, capture_output=True, text=True, timeout=540)
        if proc.returncode != 0:
            reason = open(log, encoding="utf-8").read() if os.path.exists(log) else ""
            self.fail("trainer exited %d: %s\n--- stdout\n%s\n--- stderr\n%s"
                      % (proc.returncode, reason, proc.stdout[-4000:], proc.stderr[-6000:]))
        return proc.stdout

    def check_run(self, out_dir, stdout):
        import torch
        from safetensors.torch import load_file

        for name in ("adapter_config.json", "adapter_model.safetensors", "metrics.json"):
            self.assertTrue(os.path.isfile(os.path.join(out_dir, name)), name + " not saved")
        with open(os.path.join(out_dir, "metrics.json"), encoding="utf-8") as f:
            metrics = json.load(f)
        self.assertEqual(metrics["steps"], 12)
        self.assertTrue(metrics["loss_history"], "no loss was logged")
        self.assertIsNotNone(metrics.get("eval_loss"), "no eval_loss in %s" % metrics)
        self.assertTrue(math.isfinite(metrics["eval_loss"]), metrics)
        self.assertAlmostEqual(metrics["perplexity"], math.exp(metrics["eval_loss"]), places=3)
        self.assertEqual(metrics["eval_examples"], 5)  # ceil(25 rows * 0.2)
        if self.cuda:
            self.assertGreater(metrics["peak_gpu_memory_bytes"], 0, "trained off the GPU")
        progress = [line for line in stdout.splitlines() if line.startswith(PROGRESS_PREFIX)]
        self.assertTrue(progress, "no progress line for job-run")
        self.assertIn("loss", json.loads(progress[-1][len(PROGRESS_PREFIX):]))

        weights = load_file(os.path.join(out_dir, "adapter_model.safetensors"))
        b = [t for k, t in weights.items() if "lora_B" in k]
        self.assertTrue(b, "no LoRA B matrices in %s" % sorted(weights))
        self.assertTrue(any(torch.count_nonzero(t) > 0 for t in b), "LoRA B is still zero: nothing was learnt")

    def check_reload(self, out_dir):
        """The adapter loads onto the base model with peft, and changes what the model says."""
        import peft
        import torch
        import transformers

        base = transformers.AutoModelForCausalLM.from_pretrained(
            self.model_dir, local_files_only=True, **{dtype_argument(transformers.__version__): torch.float32}
        )
        base.eval()
        ids = self.tok("What is two plus two ?", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            before = base(input_ids=ids).logits
            tuned = peft.PeftModel.from_pretrained(base, out_dir)
            tuned.eval()
            after = tuned(input_ids=ids).logits
        self.assertTrue(torch.isfinite(after).all())
        self.assertGreater((after - before).abs().max().item(), 1e-4, "the adapter does not change the logits")

    def test_lora(self):
        out_dir = os.path.join(self.root, "lora-results")
        stdout = self.run_trainer("lora", self.config(out_dir))
        self.check_run(out_dir, stdout)
        self.check_reload(out_dir)

        # The next generation scores the one serving (this run's adapter) and the base model on
        # its own held-out rows, and saves only its own adapter.
        next_dir = os.path.join(self.root, "lora-next")
        self.run_trainer("lora", self.config(next_dir), compare=out_dir)
        with open(os.path.join(next_dir, "metrics.json"), encoding="utf-8") as f:
            metrics = json.load(f)
        for key in ("eval_loss", "serving_eval_loss", "base_eval_loss"):
            self.assertTrue(math.isfinite(metrics.get(key, math.nan)), "%s in %s" % (key, metrics))
        self.assertNotEqual(metrics["serving_eval_loss"], metrics["base_eval_loss"], "the serving adapter changed nothing")
        self.assertFalse(os.path.exists(os.path.join(next_dir, "serving")), "the compared adapter was saved too")

    def test_qlora(self):
        if _missing(("bitsandbytes",)) or not self.cuda:
            self.skipTest("QLoRA needs bitsandbytes and a GPU")
        out_dir = os.path.join(self.root, "qlora-results")
        compute = "float16" if PRECISION == "fp16" else "bfloat16"
        quantization = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                        "bnb_4bit_compute_dtype": compute, "bnb_4bit_use_double_quant": True}
        stdout = self.run_trainer("qlora", self.config(out_dir, quantization))
        self.check_run(out_dir, stdout)
        self.check_reload(out_dir)

    def test_real_tokenizer_learns_the_answer_only(self):
        """Label masking with a real tokenizer and chat template: one BOS, and only the answer and
        its end-of-turn marker learnt."""
        import transformers

        tok = transformers.AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        dataset_cfg = {"context_column": "instruction", "response_column": "response"}
        (example,), counts = tokens.encode_rows(self.rows[-1:], "prompt_completion", tok, dataset_cfg, 64)
        self.assertEqual(counts, {"whole_text": 0, "nothing_to_learn": 0})
        self.assertEqual(example["input_ids"].count(tok.bos_token_id), 1)
        learnt = [t for t, label in zip(example["input_ids"], example["labels"]) if label != tokens.IGNORE_INDEX]
        self.assertEqual(tok.convert_ids_to_tokens(learnt), ["The", "sky", "is", "blue", ".", "<|end|>"])


if __name__ == "__main__":
    unittest.main()
