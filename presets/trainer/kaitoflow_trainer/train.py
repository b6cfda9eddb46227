"""The tuning Job's entry point: python -m kaitoflow_trainer.train.

    --config     training_config.yaml (the ConfigMap kaitoflow renders; default /mnt/config/training_config.yaml)
    --method     lora | qlora
    --model      a local model directory or a Hugging Face id (the preset's, at its revision)
    --revision   the Hugging Face revision to load
    --input-dir  where the dataset files are (default /mnt/data)

The adapter (adapter_config.json, adapter_model.safetensors) and metrics.json are written to
TrainingArguments.output_dir.
"""

import argparse
import json
import os
import random
import sys
import time

from . import EXIT_FAILED, EXIT_OOM, ConfigError, TrainerError, chat, config, data

TERMINATION_LOG = "/dev/termination-log"
PROGRESS_PREFIX = "KAITOFLOW_PROGRESS "


def _dtype(torch, name):
    table = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "auto": "auto"}
    if name not in table:
        raise ConfigError("torch dtype %r: want bfloat16, float16, float32 or auto" % (name,))
    return table[name]


class _Examples:
    """A map-style dataset of tokenized examples (what transformers.Trainer iterates)."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def train(args):
    with open(args.config, encoding="utf-8") as f:
        cfg = config.load(f.read(), args.method)
    dataset_cfg = cfg.get("DatasetConfig", {})
    shape, rows = data.load_examples(args.input_dir, dataset_cfg)
    print("kaitoflow-trainer: %d rows of shape %s" % (len(rows), shape), flush=True)

    import peft
    import torch
    import transformers

    model_cfg = dict(cfg.get("ModelConfig", {}))
    dtype = _dtype(torch, model_cfg.pop("torch_dtype", "bfloat16"))
    model_cfg.pop("chat_template", None)
    load = {"revision": args.revision} if args.revision else {}
    tok = transformers.AutoTokenizer.from_pretrained(
        args.model,
        local_files_only=model_cfg.get("local_files_only", False),
        trust_remote_code=model_cfg.get("trust_remote_code", False),
        **load,
    )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token

    quant = None
    if cfg.get("QuantizationConfig"):
        q = dict(cfg["QuantizationConfig"])
        if "bnb_4bit_compute_dtype" in q:
            q["bnb_4bit_compute_dtype"] = _dtype(torch, q["bnb_4bit_compute_dtype"])
        quant = transformers.BitsAndBytesConfig(**q)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        args.model, torch_dtype=dtype, quantization_config=quant, **model_cfg, **load
    )

    targs_cfg = dict(cfg["TrainingArguments"])
    checkpointing = bool(targs_cfg.get("gradient_checkpointing", False))
    if quant is not None:
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    elif checkpointing:
        model.enable_input_require_grads()
    lora_cfg = dict(cfg.get("LoraConfig", {}))
    lora_cfg.setdefault("task_type", "CAUSAL_LM")
    model = peft.get_peft_model(model, peft.LoraConfig(**lora_cfg))
    model.print_trainable_parameters()

    texts = [chat.example_text(r, shape, tok, dataset_cfg) for r in rows]
    if dataset_cfg.get("shuffle_dataset", True):
        random.Random(targs_cfg.get("seed", 42)).shuffle(texts)
    max_len = int(dataset_cfg.get("max_seq_length", 2048))
    enc = tok(texts, truncation=True, max_length=max_len)
    examples = [{"input_ids": i, "attention_mask": a} for i, a in zip(enc["input_ids"], enc["attention_mask"])]
    split = float(dataset_cfg.get("train_test_split", 1))
    cut = max(1, int(len(examples) * split))
    train_set, eval_set = _Examples(examples[:cut]), (_Examples(examples[cut:]) if cut < len(examples) else None)
    tokens = sum(len(e["input_ids"]) for e in train_set.items)

    # Causal LM: labels are the inputs. Kaito's DataCollator section says mlm: true by default,
    # which would mask tokens BERT-style and fail on tokenizers without a mask token.
    if cfg.get("DataCollator", {}).get("mlm"):
        print("kaitoflow-trainer: DataCollator.mlm ignored: causal language modelling", flush=True)
    collator = transformers.DataCollatorForLanguageModeling(tok, mlm=False)

    targs_cfg.setdefault("report_to", "none")
    targs_cfg.setdefault("logging_steps", 10)
    try:
        targs = transformers.TrainingArguments(**targs_cfg)
    except (TypeError, ValueError) as exc:
        raise ConfigError("training_config.TrainingArguments: %s" % exc) from exc

    losses = []

    avg_tokens = tokens / max(len(train_set), 1)

    class Record(transformers.TrainerCallback):
        def on_log(self, args, state, _control, logs=None, **_kw):
            if logs and "loss" in logs:
                losses.append({"step": state.global_step, "loss": logs["loss"]})
                elapsed = time.time() - started
                seen = state.global_step * args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)
                # kaitoflow job-run reads these lines and reports them as tuning.progress.
                print(PROGRESS_PREFIX + json.dumps({
                    "step": state.global_step, "max_steps": state.max_steps, "loss": logs["loss"],
                    "tokens_per_second": seen * avg_tokens / elapsed if elapsed > 0 else 0.0,
                }), flush=True)

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.time()
    trainer = transformers.Trainer(
        model=model, args=targs, train_dataset=train_set, eval_dataset=eval_set,
        data_collator=collator, callbacks=[Record()],
    )
    result = trainer.train()
    duration = time.time() - started
    model.save_pretrained(targs.output_dir, safe_serialization=True)

    peak = 0
    if torch.cuda.is_available():
        peak = sum(torch.cuda.max_memory_allocated(d) for d in range(torch.cuda.device_count()))
    epochs = result.metrics.get("epoch", 1.0) or 1.0
    metrics = {
        "steps": result.global_step,
        "train_loss": result.training_loss,
        "loss_history": losses,
        "examples": len(train_set),
        "tokens": tokens,
        "tokens_per_second": tokens * epochs / duration if duration > 0 else 0.0,
        "peak_gpu_memory_bytes": peak,
        "duration_seconds": duration,
        "shape": shape,
    }
    with open(os.path.join(targs.output_dir, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2)
    print("kaitoflow-trainer: done: %s" % json.dumps({k: v for k, v in metrics.items() if k != "loss_history"}), flush=True)


def _one_line(exc):
    return ("%s: %s" % (type(exc).__name__, exc)).replace("\n", " ")[:1000]


def _fail(reason, code):
    print("kaitoflow-trainer: " + reason, file=sys.stderr, flush=True)
    try:
        with open(TERMINATION_LOG, "w", encoding="utf-8") as f:
            f.write(reason)
    except OSError:
        pass  # not in a pod
    return code


def main(argv=None):
    p = argparse.ArgumentParser(prog="kaitoflow-trainer")
    p.add_argument("--config", default="/mnt/config/training_config.yaml")
    p.add_argument("--method", choices=("lora", "qlora"), required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--revision", default="")
    p.add_argument("--input-dir", default="/mnt/data")
    args = p.parse_args(argv)
    try:
        train(args)
    except TrainerError as exc:
        return _fail(str(exc), exc.exit_code)
    except Exception as exc:  # the Job must end, and say why in one line
        if type(exc).__name__ == "OutOfMemoryError":
            return _fail("out of GPU memory: lower per_device_train_batch_size or max_seq_length (%s)" % _one_line(exc), EXIT_OOM)
        return _fail(_one_line(exc), EXIT_FAILED)
    return 0


if __name__ == "__main__":
    sys.exit(main())
