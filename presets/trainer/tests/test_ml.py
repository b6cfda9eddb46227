"""Real fine-tuning runs: a tiny, randomly initialised Phi-3-shaped model (tests/make_tiny.py)
trained with LoRA by the trainer's own entry point, in a subprocess as the Job runs it: one run
checked end to end, one stopped by SIGTERM after its first checkpoint and resumed, two processes
data parallel, and QLoRA where bitsandbytes can quantize here; each also task-evaluated (answers
generated and scored), and two short runs without task evaluation and with a user's eval set.
Nothing is downloaded: the model, its tokenizer and the dataset are made here, and the trainer runs
with the Hub offline.

It needs the ML packages, which the standard-library run of the other tests has not: build their
environment with hack/ml-env.sh, which prints its python, and run the tests with that, from
presets/trainer:

    KAITOFLOW_ML_REQUIRE=1 "$(../../hack/ml-env.sh)" -m unittest discover -s tests -t .

tests/gpu_check.sh runs it on a GPU with fp16, then bf16.

    KAITOFLOW_ML_PRECISION  fp32 (default), fp16 or bf16; fp16 and bf16 need a GPU
    KAITOFLOW_ML_REQUIRE=1  a missing module or GPU fails the test instead of skipping it, so a
                            run that means to train cannot pass by skipping
"""

import importlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import unittest

from kaitoflow_trainer import tokens
from kaitoflow_trainer.train import CHECKPOINT_PREFIX, PROGRESS_PREFIX, dtype_argument
from tests import make_tiny


def _missing(names):
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # a broken install counts as missing, whatever it raises
            missing.append(name)
    return missing


MISSING = _missing(("torch", "transformers", "peft", "accelerate", "tokenizers", "pyarrow", "safetensors"))
REQUIRED = os.environ.get("KAITOFLOW_ML_REQUIRE") == "1"
PRECISION = os.environ.get("KAITOFLOW_ML_PRECISION", "fp32")
# ModelConfig.torch_dtype and the TrainingArguments mixed-precision flag of each precision.
PRECISIONS = {"fp32": ("float32", {}), "fp16": ("float16", {"fp16": True}), "bf16": ("bfloat16", {"bf16": True})}
TRAINER_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 540

# Every run's shape: the dolly-shaped rows, 80% trained on, 4 rows a step per process.
TRAIN_SHARE, BATCH = 0.8, 4
ROWS = len(make_tiny.dolly_rows())
EVAL_ROWS = ROWS - round(ROWS * TRAIN_SHARE)
TRAIN_ROWS = ROWS - EVAL_ROWS
# The checked run and the interrupted one: long enough after the first checkpoint that SIGTERM
# lands while it still trains (a step takes milliseconds here, loading the libraries seconds).
STEPS, SAVE_STEPS = 32, 8
# Runs whose steps are not compared with another's are shorter.
SHORT_STEPS = 12
# Task evaluation's keys: the new adapter's and the base model's scores (the serving adapter's
# with --compare-adapter), and the rows scored, at most DatasetConfig.task_eval_rows (default 32).
TASK_KEYS = ("task_exact_match", "task_rougeL", "base_task_exact_match", "base_task_rougeL")
SERVING_TASK_KEYS = ("serving_task_exact_match", "serving_task_rougeL")
TASK_ROWS_CAP = 32


def bnb_4bit_problem():
    """Why bitsandbytes cannot quantize to 4 bits on this machine's device, or None when it can:
    a round trip of NF4 through its backend (CUDA, or its CPU one)."""
    try:
        import bitsandbytes.functional as bnbf
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        w = torch.randn(64, 64, device=device)
        packed, state = bnbf.quantize_4bit(w, quant_type="nf4")
        back = bnbf.dequantize_4bit(packed, state)
        if packed.numel() * packed.element_size() >= w.numel() * w.element_size() / 4:
            return f"bitsandbytes' {device} backend did not pack 64x64 fp32 weights into 4 bits"
        if (back.float() - w).abs().max().item() > 1.0:
            return f"bitsandbytes' {device} backend gives back other weights than it was given"
    except Exception as exc:  # what a missing or broken backend raises varies
        return "{}: {}".format(type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
    return None


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def announced(stdout, prefix):
    """The JSON objects of stdout's lines that start with prefix, as job-run reads them."""
    out = []
    for line in stdout.splitlines():
        if line.startswith(prefix):
            try:
                out.append(json.loads(line[len(prefix) :]))
            except ValueError:
                raise AssertionError(f"not one JSON object (two processes reporting at once?): {line!r}") from None
    return out


@unittest.skipUnless(
    not MISSING or REQUIRED,
    "needs {}, which do not import here: make their environment with hack/ml-env.sh and run the tests with "
    "the python it prints (KAITOFLOW_ML_REQUIRE=1 makes this a failure instead)".format(", ".join(MISSING)),
)
class LoraRunTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if MISSING:
            raise AssertionError("KAITOFLOW_ML_REQUIRE=1 but {} do not import".format(", ".join(MISSING)))
        if PRECISION not in PRECISIONS:
            raise AssertionError("KAITOFLOW_ML_PRECISION={}: want one of {}".format(PRECISION, ", ".join(PRECISIONS)))
        import torch

        cls.cuda = torch.cuda.is_available()
        if PRECISION != "fp32" and not cls.cuda:
            if REQUIRED:
                raise AssertionError(f"KAITOFLOW_ML_PRECISION={PRECISION} needs a GPU, and torch sees none")
            raise unittest.SkipTest(f"{PRECISION} needs a GPU")
        cls.tmp = tempfile.TemporaryDirectory()
        cls.root = cls.tmp.name
        made = make_tiny.make(cls.root, "dolly")
        cls.model_dir, cls.data_dir, cls.dataset_cfg = made["model"], made["data"], made["dataset_config"]
        # The same rows as a messages column, the shape of kaitoflow's default dataset.
        cls.messages_dir = os.path.join(cls.root, "messages")
        os.mkdir(cls.messages_dir)
        make_tiny.write_parquet(make_tiny.messages_rows(), os.path.join(cls.messages_dir, "train.parquet"))
        cls.rows = make_tiny.dolly_rows()
        import transformers

        cls.tok = transformers.AutoTokenizer.from_pretrained(cls.model_dir, local_files_only=True)
        cls.lora = None  # the checked run's output directory and stdout, once made (lora_run)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def config(self, out_dir, steps=STEPS, dataset_cfg=None, quantization=None, **training):
        dtype, mixed = PRECISIONS[PRECISION]
        cfg = {
            "ModelConfig": {"torch_dtype": dtype, "device_map": "auto"},
            "LoraConfig": {
                "r": 8,
                "lora_alpha": 16,
                "lora_dropout": 0.0,
                "target_modules": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
            },
            # A high learning rate, so a few steps move LoRA's B matrices well away from zero and
            # the loss down by more than noise.
            "TrainingArguments": dict(
                {
                    "output_dir": out_dir,
                    "max_steps": steps,
                    "learning_rate": 0.01,
                    "per_device_train_batch_size": BATCH,
                    "logging_steps": 2,
                    "save_strategy": "no",
                    "seed": 0,
                },
                **mixed,
                **training,
            ),
            "DatasetConfig": dict(
                self.dataset_cfg if dataset_cfg is None else dataset_cfg,
                train_test_split=TRAIN_SHARE,
                max_seq_length=64,
            ),
        }
        if quantization:
            cfg["QuantizationConfig"] = quantization
        return cfg

    def command(self, method, cfg, data_dir, extra):
        """The trainer's command line as the Job runs it, and its run directory."""
        run_dir = tempfile.mkdtemp(dir=self.root, prefix=method + "-")
        cfg_path = os.path.join(run_dir, "training_config.yaml")
        with open(cfg_path, "w", encoding="utf-8") as f:
            json.dump({"training_config": cfg}, f)
        cmd = [
            sys.executable,
            "-m",
            "kaitoflow_trainer.train",
            "--method",
            method,
            "--model",
            self.model_dir,
            "--config",
            cfg_path,
            "--input-dir",
            data_dir or self.data_dir,
            *list(extra),
        ]
        return cmd, run_dir

    def environ(self, run_dir, extra=None):
        env = dict(
            os.environ,
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            HF_HOME=os.path.join(self.root, "hf"),
            KAITOFLOW_OUTPUT_ROOT=self.root,
            KAITOFLOW_TERMINATION_LOG=os.path.join(run_dir, "termination-log"),
            PYTHONUNBUFFERED="1",
            TOKENIZERS_PARALLELISM="false",
            **(extra or {}),
        )
        # Matrices this small train fastest on one thread; and runs whose numbers are compared
        # must add up in the same order.
        env.setdefault("OMP_NUM_THREADS", "1")
        env.pop("HF_TOKEN", None)
        return env

    def fail_run(self, code, run_dir, stdout, stderr):
        log = os.path.join(run_dir, "termination-log")
        reason = ""
        if os.path.exists(log):
            with open(log, encoding="utf-8") as f:
                reason = f.read()
        self.fail(f"trainer exited {code}: {reason}\n--- stdout\n{stdout[-4000:]}\n--- stderr\n{stderr[-6000:]}")

    def run_trainer(self, method, cfg, *extra, data_dir=None, env=None):
        """Runs the trainer to the end; returns its stdout."""
        cmd, run_dir = self.command(method, cfg, data_dir, extra)
        proc = subprocess.run(
            cmd,
            cwd=TRAINER_DIR,
            env=self.environ(run_dir, env),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        if proc.returncode != 0:
            self.fail_run(proc.returncode, run_dir, proc.stdout, proc.stderr)
        return proc.stdout

    def run_until_checkpoint(self, method, cfg):
        """Runs the trainer until it announces its first checkpoint, then sends it SIGTERM, as the
        kubelet does to a preempted pod. Returns the checkpoint announced and the exit code."""
        cmd, run_dir = self.command(method, cfg, None, ())
        with open(os.path.join(run_dir, "stderr"), "w+", encoding="utf-8") as err:
            proc = subprocess.Popen(
                cmd, cwd=TRAINER_DIR, env=self.environ(run_dir), stdout=subprocess.PIPE, stderr=err, text=True
            )
            watchdog = threading.Timer(TIMEOUT, proc.kill)
            watchdog.start()
            checkpoint, seen = None, []
            try:
                for line in proc.stdout:
                    seen.append(line)
                    if line.startswith(CHECKPOINT_PREFIX):
                        checkpoint = json.loads(line[len(CHECKPOINT_PREFIX) :])
                        proc.send_signal(signal.SIGTERM)
                        break
                seen.append(proc.stdout.read())
                code = proc.wait()
            finally:
                watchdog.cancel()
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                proc.stdout.close()
            if checkpoint is None:
                err.seek(0)
                self.fail_run(code, run_dir, "".join(seen), err.read())
        return checkpoint, code

    def check_run(self, out_dir, stdout, steps):
        """What every successful run leaves: the adapter, metrics.json with a falling loss and a
        finite eval_loss, progress lines, and LoRA weights that moved."""
        import torch
        from safetensors.torch import load_file

        for name in ("adapter_config.json", "adapter_model.safetensors", "metrics.json"):
            self.assertTrue(os.path.isfile(os.path.join(out_dir, name)), name + " not saved")
        metrics = read_json(os.path.join(out_dir, "metrics.json"))
        self.assertEqual(metrics["steps"], steps)
        history = metrics["loss_history"]
        self.assertEqual([h["step"] for h in history], list(range(2, steps + 1, 2)), "logged every 2 steps")
        first, last = history[0]["loss"], history[-1]["loss"]
        self.assertLess(last, first * 0.95, f"the training loss did not fall: {history}")
        self.assertIsNotNone(metrics.get("eval_loss"), f"no eval_loss in {metrics}")
        self.assertTrue(math.isfinite(metrics["eval_loss"]), metrics)
        self.assertAlmostEqual(metrics["perplexity"], math.exp(metrics["eval_loss"]), places=3)
        self.assertEqual(metrics["eval_examples"], EVAL_ROWS)
        # Learnt, not only fitted: the held-out rows are better predicted than by the base model.
        self.assertLess(metrics["eval_loss"], metrics["base_eval_loss"], metrics)
        self.check_task_scores(metrics, min(EVAL_ROWS, TASK_ROWS_CAP))
        if self.cuda:
            self.assertGreater(metrics["peak_gpu_memory_bytes"], 0, "trained off the GPU")
        progress = announced(stdout, PROGRESS_PREFIX)
        self.assertTrue(progress, "no progress line for job-run")
        self.assertEqual(progress[-1]["step"], steps)
        self.assertTrue(all(math.isfinite(p["loss"]) and p["tokens_per_second"] > 0 for p in progress), progress)

        weights = load_file(os.path.join(out_dir, "adapter_model.safetensors"))
        b = [t for k, t in weights.items() if "lora_B" in k]
        self.assertTrue(b, f"no LoRA B matrices in {sorted(weights)}")
        self.assertTrue(any(torch.count_nonzero(t) > 0 for t in b), "LoRA B is still zero: nothing was learnt")
        return metrics

    def check_task_scores(self, metrics, rows, keys=TASK_KEYS):
        """Task evaluation's scores in metrics.json: flat numbers in [0, 1], on rows rows."""
        self.assertEqual(metrics.get("task_examples"), rows, metrics)
        for key in keys:
            self.assertIsInstance(metrics.get(key), float, f"{key} in {metrics}")
            self.assertTrue(0.0 <= metrics[key] <= 1.0, f"{key} in {metrics}")

    def short_run(self, name, dataset_cfg, *extra):
        """A run of a few steps, for what it reports: its metrics.json."""
        out_dir = os.path.join(self.root, name)
        cfg = self.config(out_dir, steps=4, dataset_cfg=dict(self.dataset_cfg, **dataset_cfg))
        self.run_trainer("lora", cfg, *extra)
        return read_json(os.path.join(out_dir, "metrics.json"))

    def test_task_eval_off(self):
        """DatasetConfig.task_eval_rows 0: no task evaluation, eval_loss as ever."""
        metrics = self.short_run("no-task-eval", {"task_eval_rows": 0})
        self.assertEqual(sorted(k for k in metrics if "task_" in k), [], metrics)
        self.assertTrue(math.isfinite(metrics["eval_loss"]), metrics)

    def test_task_eval_on_eval_data(self):
        """--eval-data: a file of chat rows (another format and shape than the training parquet's)
        is what task evaluation scores, all of its rows under the cap; eval_loss stays on the held-out
        rows."""
        path = os.path.join(self.root, "eval.jsonl")
        rows = make_tiny.messages_rows()[:3]
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        metrics = self.short_run("eval-data", {"task_eval_max_new_tokens": 8}, "--eval-data", path)
        self.check_task_scores(metrics, len(rows))
        self.assertEqual(metrics["eval_examples"], EVAL_ROWS)

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

    def tolerance(self):
        # fp32 on a CPU adds up in the same order every time; half precision on a GPU need not.
        return 1e-6 if PRECISION == "fp32" and not self.cuda else 2e-2

    def lora_run(self):
        """The checked run's output directory: a LoRA run of STEPS steps with a checkpoint every
        SAVE_STEPS, made once for the tests that compare with it."""
        if type(self).lora is None:
            out_dir = os.path.join(self.root, "lora-results")
            stdout = self.run_trainer("lora", self.config(out_dir, save_strategy="steps", save_steps=SAVE_STEPS))
            type(self).lora = (out_dir, stdout)
        return type(self).lora

    def test_lora(self):
        out_dir, stdout = self.lora_run()
        self.check_run(out_dir, stdout, STEPS)
        self.check_reload(out_dir)
        saved = [c["step"] for c in announced(stdout, CHECKPOINT_PREFIX)]
        self.assertEqual(saved, list(range(SAVE_STEPS, STEPS + 1, SAVE_STEPS)))
        # The newest two stay on disk (save_total_limit), each one a checkpoint transformers resumes from.
        for step in saved[-2:]:
            path = os.path.join(out_dir, f"checkpoint-{step:d}")
            for name in ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"):
                self.assertTrue(os.path.isfile(os.path.join(path, name)), f"{path} has no {name}")
            self.assertEqual(read_json(os.path.join(path, "trainer_state.json"))["global_step"], step)
        self.assertFalse(
            os.path.exists(os.path.join(out_dir, f"checkpoint-{saved[0]:d}")), "older checkpoints are pruned"
        )

    def test_resume_after_sigterm(self):
        """A run stopped by SIGTERM after its first checkpoint, resumed from it in a new process
        with --resume-from, ends where an uninterrupted run ends, with the same losses and adapter;
        the resumed run also scores the uninterrupted run's adapter as the one serving
        (--compare-adapter)."""
        from safetensors.torch import load_file

        full_dir, _ = self.lora_run()
        full = read_json(os.path.join(full_dir, "metrics.json"))
        out_dir = os.path.join(self.root, "resumed-results")
        cfg = self.config(out_dir, save_strategy="steps", save_steps=SAVE_STEPS)
        checkpoint, code = self.run_until_checkpoint("lora", cfg)
        self.assertEqual(checkpoint["step"], SAVE_STEPS)
        self.assertEqual(code, -signal.SIGTERM, f"the run ended ({code}) before SIGTERM reached it")
        self.assertFalse(os.path.exists(os.path.join(out_dir, "metrics.json")), "the stopped run finished")

        stdout = self.run_trainer("lora", cfg, "--resume-from", checkpoint["path"], "--compare-adapter", full_dir)
        self.assertIn("resuming from {}".format(checkpoint["path"]), stdout)
        metrics = self.check_run(out_dir, stdout, STEPS)
        # It went on from the checkpoint's step, not from the start...
        self.assertGreater(announced(stdout, PROGRESS_PREFIX)[0]["step"], SAVE_STEPS)
        # ...with the model, optimizer, scheduler, RNG and data order restored: step for step the
        # losses of the run never stopped, and the same adapter.
        for got, want in zip(metrics["loss_history"], full["loss_history"], strict=False):
            self.assertEqual(got["step"], want["step"])
            self.assertAlmostEqual(got["loss"], want["loss"], delta=self.tolerance(), msg=f"step {got['step']:d}")
        resumed = load_file(os.path.join(out_dir, "adapter_model.safetensors"))
        uninterrupted = load_file(os.path.join(full_dir, "adapter_model.safetensors"))
        self.assertEqual(sorted(resumed), sorted(uninterrupted))
        for name, t in resumed.items():
            self.assertLessEqual((t.float() - uninterrupted[name].float()).abs().max().item(), self.tolerance(), name)

        # The three scores a promotion policy compares, on the same held-out rows: the serving
        # adapter is the uninterrupted run's, so it scores what that run scored itself.
        for key in ("eval_loss", "serving_eval_loss", "base_eval_loss"):
            self.assertTrue(math.isfinite(metrics.get(key, math.nan)), f"{key} in {metrics}")
        self.assertAlmostEqual(metrics["serving_eval_loss"], full["eval_loss"], delta=self.tolerance())
        self.assertAlmostEqual(metrics["base_eval_loss"], full["base_eval_loss"], delta=self.tolerance())
        self.assertNotEqual(
            metrics["serving_eval_loss"], metrics["base_eval_loss"], "the serving adapter changed nothing"
        )
        self.assertFalse(os.path.exists(os.path.join(out_dir, "serving")), "the compared adapter was saved too")
        # And its task scores, on the same rows with the same greedy decoding: on a CPU in fp32, the
        # same answers the uninterrupted run's adapter gave, and the base model's the same.
        self.check_task_scores(metrics, min(EVAL_ROWS, TASK_ROWS_CAP), TASK_KEYS + SERVING_TASK_KEYS)
        if self.tolerance() < 1e-3:
            for key in ("task_exact_match", "task_rougeL"):
                self.assertAlmostEqual(metrics["serving_" + key], full[key], places=9, msg=key)
                self.assertAlmostEqual(metrics["base_" + key], full["base_" + key], places=9, msg=key)

    def test_data_parallel(self):
        """Two training processes (launch.py), gloo on CPUs or one GPU each: the rows are shared out,
        not each trained on by both; a checkpoint by the clock is agreed by both. On the messages
        shape, with gradient checkpointing, so those paths run too."""
        import torch

        if self.cuda and torch.cuda.device_count() < 2:
            self.skipTest(f"data parallel on GPUs needs two; torch sees {torch.cuda.device_count():d}")
        out_dir = os.path.join(self.root, "ddp-results")
        cfg = self.config(out_dir, steps=SHORT_STEPS, dataset_cfg={}, gradient_checkpointing=True)
        stdout = self.run_trainer(
            "lora", cfg, "--processes", "2", data_dir=self.messages_dir, env={"KAITOFLOW_CHECKPOINT_MINUTES": "0.002"}
        )
        self.assertIn("2 training processes", stdout)
        metrics = self.check_run(out_dir, stdout, SHORT_STEPS)
        self.assertEqual(metrics["shape"], "messages")
        # Each step takes BATCH rows on each process: an epoch is half the steps it is for one.
        self.assertAlmostEqual(metrics["epochs"], SHORT_STEPS / math.ceil(TRAIN_ROWS / (2 * BATCH)), places=3)
        self.check_reload(out_dir)
        saved = announced(stdout, CHECKPOINT_PREFIX)
        self.assertTrue(saved, "no checkpoint by the clock")
        self.assertTrue(os.path.isdir(saved[-1]["path"]), saved[-1])

    def test_qlora(self):
        """QLoRA: the base model loaded in 4 bits (bitsandbytes), LoRA trained over it."""
        if _missing(("bitsandbytes",)):
            if REQUIRED and self.cuda:
                self.fail("KAITOFLOW_ML_REQUIRE=1 on a GPU, but bitsandbytes does not import")
            self.skipTest("QLoRA needs bitsandbytes, which does not import here")
        problem = bnb_4bit_problem()
        if problem:
            if self.cuda:
                self.fail(f"bitsandbytes cannot quantize on this GPU: {problem}")
            self.skipTest(
                f"bitsandbytes cannot quantize to 4 bits on this CPU ({problem}); tests/gpu_check.sh covers QLoRA"
            )
        out_dir = os.path.join(self.root, "qlora-results")
        compute = {"fp16": "float16", "bf16": "bfloat16"}.get(PRECISION, "float32")
        quantization = {
            "load_in_4bit": True,
            "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_compute_dtype": compute,
            "bnb_4bit_use_double_quant": True,
        }
        stdout = self.run_trainer("qlora", self.config(out_dir, steps=SHORT_STEPS, quantization=quantization))
        metrics = self.check_run(out_dir, stdout, SHORT_STEPS)
        self.check_reload(out_dir)
        # The base model scored here is the quantized one: the same weights in full precision
        # score differently on the same rows.
        full = read_json(os.path.join(self.lora_run()[0], "metrics.json"))
        self.assertNotAlmostEqual(
            metrics["base_eval_loss"], full["base_eval_loss"], places=5, msg="the base model was not quantized"
        )

    def learnt_tokens(self, example):
        return [
            t for t, label in zip(example["input_ids"], example["labels"], strict=False) if label != tokens.IGNORE_INDEX
        ]

    def test_real_tokenizer_learns_the_answer_only(self):
        """Label masking with the model's own tokenizer and chat template: one BOS, at the start,
        and the loss on the answer and its end-of-turn token only, the prompt before it masked."""
        tok = self.tok
        end_id = tok.convert_tokens_to_ids("<|end|>")
        self.assertNotEqual(end_id, tok.unk_token_id)
        row = self.rows[-1]
        (example,), counts = tokens.encode_rows([row], "prompt_completion", tok, self.dataset_cfg, 64)
        self.assertEqual(counts, {"whole_text": 0, "nothing_to_learn": 0})
        ids, labels = example["input_ids"], example["labels"]
        self.assertEqual(ids.count(tok.bos_token_id), 1, tok.convert_ids_to_tokens(ids))
        self.assertEqual(ids[0], tok.bos_token_id)
        answer = tok(row["response"], add_special_tokens=False)["input_ids"] + [end_id]
        # The answer closes the text, and it alone is learnt: everything before is prompt.
        self.assertEqual(ids[-len(answer) :], answer, tok.convert_ids_to_tokens(ids))
        self.assertEqual(labels, [tokens.IGNORE_INDEX] * (len(ids) - len(answer)) + answer)
        # The prompt is there, not truncated away: masked, not missing.
        prompt = tok(row["instruction"], add_special_tokens=False)["input_ids"]
        self.assertTrue(set(prompt) <= set(ids[: len(ids) - len(answer)]), tok.convert_ids_to_tokens(ids))

    def test_real_tokenizer_plain_text(self):
        """Plain text, which no template wrote: the tokenizer's own BOS, once, and EOS appended and
        learnt, so the model learns to stop."""
        tok = self.tok
        text = self.rows[0]["response"]
        (example,), counts = tokens.encode_rows([{"text": text}], "text", tok, {}, 64)
        self.assertEqual(counts, {"whole_text": 0, "nothing_to_learn": 0})
        want = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        self.assertEqual(example["input_ids"], want, tok.convert_ids_to_tokens(example["input_ids"]))
        self.assertEqual(example["labels"], want)

    def test_real_tokenizer_learns_every_assistant_turn(self):
        """A conversation of two exchanges: both answers learnt, each with its end-of-turn token;
        the system and user turns not."""
        tok = self.tok
        end_id = tok.convert_tokens_to_ids("<|end|>")
        r1, r2 = self.rows[0], self.rows[1]
        row = {
            "messages": [
                {"role": "system", "content": r2["instruction"]},
                {"role": "user", "content": r1["instruction"]},
                {"role": "assistant", "content": r1["response"]},
                {"role": "user", "content": r2["instruction"]},
                {"role": "assistant", "content": r2["response"]},
            ]
        }
        (example,), counts = tokens.encode_rows([row], "messages", tok, {}, 128)
        self.assertEqual(counts, {"whole_text": 0, "nothing_to_learn": 0})
        self.assertEqual(example["input_ids"].count(tok.bos_token_id), 1)
        want = []
        for r in (r1, r2):
            want += tok(r["response"], add_special_tokens=False)["input_ids"] + [end_id]
        self.assertEqual(self.learnt_tokens(example), want, tok.convert_ids_to_tokens(self.learnt_tokens(example)))


if __name__ == "__main__":
    unittest.main()
