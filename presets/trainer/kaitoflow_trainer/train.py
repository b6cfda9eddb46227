"""The tuning Job's entry point: python -m kaitoflow_trainer.train.

    --config     training_config.yaml (the ConfigMap kaitoflow renders; default /mnt/config/training_config.yaml)
    --method     lora | qlora
    --model      a local model directory, or a Hugging Face repository id (the preset's)
    --revision   the revision of the repository to download (the preset's pinned commit)
    --input-dir  where the dataset files are (default /mnt/data)
    --cache-dir  where downloaded snapshots are kept (default $HF_HUB_CACHE, else $HF_HOME/hub,
                 else /mnt/cache/hub)
    --processes  training processes, one per GPU (data parallel; launch.py); default 1. Without a
                 GPU they are CPU processes joined by gloo (how the tests run it)
    --resume-from  a checkpoint directory to continue from (kaitoflow job-run fetches the
                 generation's newest one for a resumed attempt): model, optimizer, scheduler, RNG
                 and the data order are restored, and the run ends at its planned step count
    --compare-adapter  the adapter serving now, scored beside the new one (eval loss and task scores)
    --eval-data  a dataset file or directory (any format and shape the input has, but plain text)
                 whose rows task evaluation scores instead of the held-out rows

Environment: HF_TOKEN, the token for gated or private models; KAITOFLOW_MODEL_ACCESS_SECRET, the
Secret it came from (namespace/name), named when the Hub refuses it; KAITOFLOW_TERMINATION_LOG,
where the failure reason goes outside a pod (default /dev/termination-log);
KAITOFLOW_CHECKPOINT_MINUTES, how often a checkpoint is saved by the clock unless the training
config saves every so many steps itself (default 10; 0: only the config's own saves).

Each checkpoint saved is announced on stdout (KAITOFLOW_CHECKPOINT {"step", "path", "eval_loss"}) for job-run
to upload. Running out of GPU memory exits 4 with a JSON account in the termination log: the step,
batch, sequence length and peak memory.

The adapter (adapter_config.json, adapter_model.safetensors) and metrics.json are written to
TrainingArguments.output_dir. Besides the training numbers, metrics.json has eval_loss on the
held-out rows and, for a promotion gate to compare, the base model's (base_eval_loss) and the
serving adapter's (serving_eval_loss); and task evaluation (taskeval.py), the new adapter's, the base
model's and the serving adapter's greedy answers to up to DatasetConfig.task_eval_rows prompts
scored against the rows' answers: task_exact_match, task_rougeL, base_task_*, serving_task_* and
task_examples, the rows scored.
"""

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from types import ModuleType
from typing import Any, Self

from . import (
    CONTRACT,
    EXIT_FAILED,
    EXIT_OOM,
    ConfigError,
    DataError,
    TrainerError,
    config,
    data,
    fetch,
    launch,
    taskeval,
    tokens,
    weights,
)
from .config import TrainingConfig
from .data import DatasetConfig, Row
from .tokens import Example

TERMINATION_LOG = os.environ.get("KAITOFLOW_TERMINATION_LOG") or "/dev/termination-log"
PROGRESS_PREFIX = CONTRACT["prefixes"]["progress"]
CHECKPOINT_PREFIX = CONTRACT["prefixes"]["checkpoint"]
DEFAULT_CHECKPOINT_MINUTES = 10.0


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What a run was asked to do: the command line's arguments (main parses them, with their
    defaults), as the launcher, the download and the training read them."""

    config: str  # the training_config.yaml
    method: str  # lora or qlora
    model: str  # a local model directory or a Hugging Face repository id
    revision: str  # the repository's revision to download; "" for main
    input_dir: str  # where the dataset files are
    cache_dir: str  # where snapshots are kept; "" for huggingface_hub's choice
    processes: int  # training processes, one per GPU
    resume_from: str  # a checkpoint directory to continue from, or ""
    compare_adapter: str  # the adapter serving now, scored beside the new one, or ""
    eval_data: str  # a dataset file or directory whose rows task evaluation scores, or "" (held-out rows)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Self:
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


class OutOfGPUMemory(TrainerError):
    """CUDA ran out of memory: the message is a JSON account (events.TrainerFailure) the pipeline
    re-plans from."""

    exit_code = EXIT_OOM

    def __init__(self, account: dict[str, Any]) -> None:
        super().__init__(json.dumps(json_safe(account)))


def distributed() -> bool:
    """Whether this process is one of several training processes (launch.py started it)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def main_process() -> bool:
    """Whether this process reports: the only one, or rank 0 of several."""
    return int(os.environ.get("RANK", "0")) == 0


def _dtype(torch: ModuleType, name: str) -> Any:
    table = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "auto": "auto"}
    if name not in table:
        raise ConfigError(f"torch dtype {name!r}: want bfloat16, float16, float32 or auto")
    return table[name]


def dtype_argument(version: str) -> str:
    """from_pretrained's keyword for the weights' dtype: transformers 4.56 renamed torch_dtype to
    dtype, and 5.x no longer promises the old name."""
    major, minor = (int(n) for n in re.findall(r"\d+", version)[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def perplexity(loss: float) -> float:
    """exp(loss), the eval perplexity; inf when that overflows a float."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def json_safe(value: Any) -> Any:
    """value with every NaN or infinity made null: Go's encoding/json, which job-run reads
    metrics.json with, refuses the whole file over a single one."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


class _Examples:
    """A map-style dataset of tokenized examples (what transformers.Trainer iterates)."""

    def __init__(self, items: list[Example]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Example:
        return self.items[i]


def _rows(cfg: TrainingConfig, input_dir: str) -> tuple[str, list[Row], list[Row]]:
    """(shape, train_rows, eval_rows): the dataset, split and shuffled as DatasetConfig says."""
    dataset_cfg = cfg.get("DatasetConfig", {})
    shape, rows = data.load_examples(input_dir, dataset_cfg)
    seed = dataset_cfg.get("shuffle_seed", 42)
    train_rows, eval_rows = data.split_rows(rows, dataset_cfg.get("train_test_split", 1), seed)
    if dataset_cfg.get("shuffle_dataset", True):
        random.Random(seed).shuffle(train_rows)
    print(
        f"kaitoflow-trainer: {len(rows):d} rows of shape {shape}: {len(train_rows):d} to train on, "
        f"{len(eval_rows):d} held out",
        flush=True,
    )
    return shape, train_rows, eval_rows


def _encode(rows: list[Row], shape: str, tok: Any, dataset_cfg: DatasetConfig, name: str) -> _Examples:
    max_len = int(dataset_cfg.get("max_seq_length", 2048))
    examples, counts = tokens.encode_rows(rows, shape, tok, dataset_cfg, max_len)
    if counts["whole_text"]:
        print(
            f"kaitoflow-trainer: {name}: {counts['whole_text']:d} conversations trained on whole: "
            "the chat template does not render their turns one after another, "
            "or the tokenizer gives no character offsets",
            flush=True,
        )
    if counts["nothing_to_learn"]:
        print(
            f"kaitoflow-trainer: {name}: {counts['nothing_to_learn']:d} rows dropped: "
            f"no assistant token within max_seq_length {max_len:d}",
            flush=True,
        )
    return _Examples(examples)


def _load_model(path: str, cfg: TrainingConfig, torch: ModuleType, transformers: ModuleType, peft: ModuleType) -> Any:
    """The base model from the local snapshot, quantized for qlora, with LoRA adapters attached."""
    model_cfg = dict(cfg.get("ModelConfig", {}))
    for key in ("local_files_only", "chat_template"):  # the trainer's to act on, not from_pretrained's
        model_cfg.pop(key, None)
    dtype = _dtype(torch, model_cfg.pop("torch_dtype", "bfloat16"))
    model_cfg[dtype_argument(transformers.__version__)] = dtype
    quant = None
    if cfg.get("QuantizationConfig"):
        q = dict(cfg["QuantizationConfig"])
        if "bnb_4bit_compute_dtype" in q:
            q["bnb_4bit_compute_dtype"] = _dtype(torch, q["bnb_4bit_compute_dtype"])
        try:
            quant = transformers.BitsAndBytesConfig(**q)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"training_config.QuantizationConfig: {exc}") from exc
    if distributed() and torch.cuda.is_available():
        # Data parallel: every process holds the whole model on its own GPU (Kaito's device map
        # for multi-GPU tuning), where "auto" would spread one copy over all of them.
        rank = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(rank)
        model_cfg["device_map"] = {"": rank}
    elif distributed():
        # Data parallel on CPUs (gloo): every process holds the whole model in its own memory; a
        # GPU index would name a device that is not there.
        model_cfg["device_map"] = {"": "cpu"}
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, quantization_config=quant, local_files_only=True, **model_cfg
    )
    checkpointing = bool(cfg["TrainingArguments"].get("gradient_checkpointing", False))
    if quant is not None:
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    elif checkpointing:
        model.enable_input_require_grads()
    lora_cfg = dict(cfg.get("LoraConfig", {}))
    lora_cfg.setdefault("task_type", "CAUSAL_LM")
    try:
        model = peft.get_peft_model(model, peft.LoraConfig(**lora_cfg))
    except (TypeError, ValueError) as exc:  # an unknown argument, or target_modules peft cannot infer
        raise ConfigError(f"training_config.LoraConfig: {exc}") from exc
    model.print_trainable_parameters()
    return model


def _training_arguments(cfg: TrainingConfig, transformers: ModuleType, cuda: bool = True) -> Any:
    targs_cfg = dict(cfg["TrainingArguments"])
    if not cuda:
        # Without a GPU, accelerate treats a process that launch.py started as one of several only
        # when told it runs on the CPU: otherwise it opens the process group and then trains
        # alone, on every row, its gradients never averaged with the others'. Pinned memory is
        # for copies to a GPU.
        targs_cfg.setdefault("use_cpu", True)
        targs_cfg.setdefault("dataloader_pin_memory", False)
    targs_cfg.setdefault("report_to", "none")
    targs_cfg.setdefault("logging_steps", 10)
    # Named, not inferred from the PEFT wrapper's forward signature: evaluate() reports eval_loss
    # only when it knows which input holds the labels.
    targs_cfg.setdefault("label_names", ["labels"])
    # The examples hold model inputs only; there is nothing to drop.
    targs_cfg.setdefault("remove_unused_columns", False)
    # transformers evaluates 8 rows a batch by default: with Kaito's training batch of 1 that is
    # eight times the logits the run was sized for, after the adapter is trained.
    targs_cfg.setdefault("per_device_eval_batch_size", targs_cfg.get("per_device_train_batch_size", 1))
    # Checkpoints outlive the node only if they are written: when the config chooses no saving of
    # its own (Kaito's say save_strategy "no"), the Checkpoints callback saves by the clock, and
    # the newest few stay on disk (job-run keeps the uploaded ones).
    targs_cfg.setdefault("save_total_limit", 2)
    if distributed() and targs_cfg.get("gradient_checkpointing"):
        # Reentrant checkpointing re-runs the forward pass outside DDP's view of the graph.
        targs_cfg.setdefault("gradient_checkpointing_kwargs", {"use_reentrant": False})
    try:
        return transformers.TrainingArguments(**targs_cfg)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"training_config.TrainingArguments: {exc}") from exc


def _progress(transformers: ModuleType, avg_tokens: float, started: float) -> Any:
    """A callback that prints a progress line at every log step. Its `first_step` is the step this
    process started from: 0, or the checkpoint's when resumed, whose steps were timed elsewhere."""

    class Progress(transformers.TrainerCallback):
        first_step: int | None = None

        def on_step_begin(self, args: Any, state: Any, _control: Any, **_kw: Any) -> None:
            if self.first_step is None:
                # The resumed state is loaded by now; on_train_begin comes before it.
                self.first_step = state.global_step

        def on_log(
            self, args: Any, state: Any, _control: Any, logs: dict[str, float] | None = None, **_kw: Any
        ) -> None:
            if not logs or "loss" not in logs or not state.is_world_process_zero:
                return
            elapsed = time.time() - started
            steps = state.global_step - (self.first_step or 0)
            seen = steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)
            # kaitoflow job-run reads these lines and reports them as tuning.progress.
            print(
                PROGRESS_PREFIX
                + json.dumps(
                    json_safe(
                        {
                            "step": state.global_step,
                            "max_steps": state.max_steps,
                            "loss": logs["loss"],
                            "tokens_per_second": seen * avg_tokens / elapsed if elapsed > 0 else 0.0,
                        }
                    )
                ),
                flush=True,
            )

    return Progress()


def loss_history(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The training losses logged, by step, from the Trainer's log history: a resumed run's
    includes those logged before its checkpoint, which the checkpoint carries."""
    return [{"step": e["step"], "loss": e["loss"]} for e in log_history if "loss" in e and "step" in e]


def checkpoint_due(last_save: float, now: float, minutes: float) -> bool:
    """Whether a clock-driven checkpoint is due: minutes since the last one (or the start)."""
    return minutes > 0 and now - last_save >= minutes * 60


def checkpoint_minutes(environ: Mapping[str, str], targs_cfg: dict[str, Any]) -> float:
    """Minutes between clock-driven checkpoints: 0 (none) when the config saves every so many
    steps of its own choosing. Saving by epoch (kaitoflow's default) or not at all leaves hours
    between checkpoints on a large dataset, so the clock adds its own."""
    if targs_cfg.get("save_strategy") == "steps":
        return 0.0
    raw = environ.get("KAITOFLOW_CHECKPOINT_MINUTES", "")
    try:
        return float(raw) if raw else DEFAULT_CHECKPOINT_MINUTES
    except ValueError as exc:
        raise ConfigError(f"KAITOFLOW_CHECKPOINT_MINUTES {raw!r}: want a number of minutes") from exc


def _agreed(flag: bool, torch: ModuleType | None) -> bool:
    """flag as rank 0 has it, on every training process: a checkpoint is a collective step, and
    processes whose clocks disagree by one step would save at different steps (or wait forever)."""
    if torch is None or not distributed() or not torch.distributed.is_initialized():
        return flag
    t = torch.tensor([1 if flag else 0], device="cuda" if torch.cuda.is_available() else "cpu")
    torch.distributed.broadcast(t, src=0)
    return bool(t.item())


def _checkpoints(
    transformers: ModuleType,
    minutes: float,
    clock: Callable[[], float] = time.time,
    torch: ModuleType | None = None,
    evaluate: bool = False,
) -> Any:
    """A callback that announces every checkpoint saved, so job-run uploads it while training goes
    on, and (minutes > 0) asks for one every `minutes` by rank 0's clock. With evaluate (there are
    held-out rows), each save is evaluated first, and its eval_loss announced with it: a checkpoint
    can be served, and `kaitoflow adapters` shows what it scored."""

    class Checkpoints(transformers.TrainerCallback):
        def __init__(self) -> None:
            self.last = clock()

        def on_step_end(self, args: Any, state: Any, control: Any, **_kw: Any) -> Any:
            if minutes > 0 and _agreed(checkpoint_due(self.last, clock(), minutes), torch):
                control.should_save = True
            # The Trainer evaluates before it saves in the same step, so the save can carry it.
            if evaluate and control.should_save:
                control.should_evaluate = True
            return control

        def on_epoch_end(self, args: Any, state: Any, control: Any, **_kw: Any) -> Any:
            if evaluate and control.should_save:
                control.should_evaluate = True
            return control

        def on_save(self, args: Any, state: Any, _control: Any, **_kw: Any) -> None:
            self.last = clock()
            if state.is_world_process_zero:
                path = os.path.join(args.output_dir, f"checkpoint-{state.global_step:d}")
                line: dict[str, Any] = {"step": state.global_step, "path": path}
                loss = saved_eval_loss(state.log_history, state.global_step)
                if loss is not None:
                    line["eval_loss"] = loss
                print(CHECKPOINT_PREFIX + json.dumps(line), flush=True)

    return Checkpoints()


def saved_eval_loss(history: list[dict[str, Any]], step: int) -> float | None:
    """The eval_loss the Trainer logged at step (evaluated just before the save), if it did."""
    for entry in reversed(history):
        if entry.get("step") == step and "eval_loss" in entry:
            return float(entry["eval_loss"])
    return None


def oom_account(
    exc: BaseException, step: int, dataset_cfg: DatasetConfig, targs: Any, torch: ModuleType | None
) -> dict[str, Any]:
    """What the trainer knows when CUDA runs out: where, with what shape, and the memory."""
    peak = total = 0
    if torch is not None and torch.cuda.is_available():
        peak = max(torch.cuda.max_memory_allocated(d) for d in range(torch.cuda.device_count()))
        total = torch.cuda.get_device_properties(0).total_memory
    batch = getattr(targs, "per_device_train_batch_size", 0) if targs is not None else 0
    seq = int(dataset_cfg.get("max_seq_length", 2048))
    gib = float(1 << 30)
    return {
        "reason": CONTRACT["reasons"]["oom"],
        "message": f"out of GPU memory at step {step:d} with batch {batch:d}, sequence {seq:d} "
        f"(peak {peak / gib:.1f} of {total / gib:.1f} GiB): {_one_line(exc)}",
        "step": step,
        "batchSize": batch,
        "seqLen": seq,
        "peakGPUMemoryBytes": peak,
        "gpuMemoryBytes": total,
    }


def _is_oom(exc: BaseException) -> bool:
    # torch raises OutOfMemoryError; cuBLAS and bitsandbytes kernels a RuntimeError saying so.
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def _evaluate(trainer: Any, eval_set: _Examples) -> dict[str, float]:
    """eval_loss and perplexity on the held-out rows, or nothing when none were held out."""
    if not len(eval_set):
        return {}
    loss = trainer.evaluate().get("eval_loss")
    if loss is None:
        return {}
    return {"eval_loss": loss, "perplexity": perplexity(loss), "eval_examples": len(eval_set)}


def _compare(trainer: Any, model: Any, eval_set: _Examples, compare_dir: str) -> dict[str, float]:
    """The base model's eval_loss with no adapter and, given one, the serving adapter's, on the
    same held-out rows the new adapter was scored on: numbers a promotion policy can compare. A
    comparison that fails is said on stdout and left out (the policy then holds the adapter)."""
    if not len(eval_set):
        return {}
    out = {}
    try:
        with model.disable_adapter():
            out["base_eval_loss"] = trainer.evaluate(metric_key_prefix="base").get("base_loss")
    except Exception as exc:  # noqa: BLE001 - a score not taken is reported, not fatal
        print(f"kaitoflow-trainer: the base model was not scored: {_one_line(exc)}", flush=True)
    if compare_dir:
        try:
            with _serving_adapter(model, compare_dir):
                out["serving_eval_loss"] = trainer.evaluate(metric_key_prefix="serving").get("serving_loss")
        except Exception as exc:  # noqa: BLE001
            print(f"kaitoflow-trainer: the serving adapter was not scored: {_one_line(exc)}", flush=True)
    return {k: v for k, v in out.items() if v is not None}


@contextlib.contextmanager
def _serving_adapter(model: Any, adapter_dir: str) -> Iterator[None]:
    """The adapter in adapter_dir loaded beside the new one and active, for the with block; then
    the new one active again. Only the new adapter is saved: the compared one goes, even half loaded."""
    try:
        model.load_adapter(adapter_dir, adapter_name="serving", is_trainable=False)
        model.set_adapter("serving")
        yield
    finally:
        model.set_adapter("default")
        if "serving" in model.peft_config:
            model.delete_adapter("serving")


def _task_rows(run: RunSettings, dataset_cfg: DatasetConfig, shape: str, eval_rows: list[Row]) -> tuple[str, list[Row]]:
    """(shape, rows) task evaluation draws its rows from: --eval-data's, read now so a bad file fails
    before the model loads, else the held-out rows; no rows when DatasetConfig.task_eval_rows is 0."""
    if taskeval.settings(dataset_cfg)[0] == 0:
        return shape, []
    if run.eval_data:
        task_shape, rows = taskeval.load_rows(run.eval_data, dataset_cfg)
        print(f"kaitoflow-trainer: --eval-data {run.eval_data}: {len(rows):d} rows of shape {task_shape}", flush=True)
        return task_shape, rows
    return shape, eval_rows


def _task_set(rows: list[Row], shape: str, tok: Any, dataset_cfg: DatasetConfig) -> taskeval.TaskSet:
    """The prompts and references task evaluation scores, on the process that reports (only rank 0
    generates); none elsewhere, or for plain text."""
    if not rows or not main_process():
        return taskeval.TaskSet([], [])
    if shape == "text":
        print("kaitoflow-trainer: no task evaluation: plain-text rows have no reference answer", flush=True)
        return taskeval.TaskSet([], [])
    cap, _ = taskeval.settings(dataset_cfg)
    max_len = int(dataset_cfg.get("max_seq_length", 2048))
    task_set, skipped = taskeval.build(rows, shape, tok, dataset_cfg, cap, max_len)
    if skipped:
        print(
            f"kaitoflow-trainer: task evaluation: {skipped:d} rows without a prompt and answer passed over", flush=True
        )
    return task_set


def _generation(model: Any, tok: Any, dataset_cfg: DatasetConfig, batch_size: int, pad_id: int) -> taskeval.Generation:
    """Task evaluation's decoding: greedy, batch_size prompts at a time, ending at EOS (the
    tokenizer's or any the model's generation config names) or the chat template's end of turn."""
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = [tok.eos_token_id, *(config_eos if isinstance(config_eos, (list, tuple)) else [config_eos])]
    return taskeval.generation(tok, eos, taskeval.settings(dataset_cfg)[1], batch_size, pad_id)


def _task_eval(
    model: Any, tok: Any, task_set: taskeval.TaskSet, gen: taskeval.Generation, compare_dir: str, torch: ModuleType
) -> dict[str, float]:
    """Task scores of the new adapter (task_*), the base model (base_task_*) and, given one, the
    serving adapter (serving_task_*), each answering the same prompts greedily; task_examples, the
    rows scored. A model that could not be scored is said on stdout and left out."""
    if not task_set.prompts:
        return {}
    print(
        f"kaitoflow-trainer: task evaluation: {len(task_set.prompts):d} rows, "
        f"up to {gen.max_new_tokens:d} new tokens each",
        flush=True,
    )
    models: list[tuple[str, str, Callable[[], Any]]] = [
        ("task_", "the new adapter", contextlib.nullcontext),
        ("base_task_", "the base model", model.disable_adapter),
    ]
    if compare_dir:
        models.append(("serving_task_", "the serving adapter", lambda: _serving_adapter(model, compare_dir)))
    was_training, out = model.training, {}
    model.eval()
    for prefix, name, scope in models:
        try:
            with scope():
                answers = taskeval.generate(model, tok, task_set.prompts, gen, torch)
            em, rouge = taskeval.score(answers, task_set.references)
            out[prefix + "exact_match"], out[prefix + "rougeL"] = em, rouge
        except Exception as exc:  # noqa: BLE001 - a score not taken is reported, not fatal
            print(f"kaitoflow-trainer: {name} was not task-scored: {_one_line(exc)}", flush=True)
    model.train(was_training)
    if out:
        out["task_examples"] = len(task_set.prompts)
    return out


def _weights(cfg: TrainingConfig, run: RunSettings) -> str:
    """The base model's local directory, downloaded first when run.model is a repository id."""
    local_only = bool(cfg.get("ModelConfig", {}).get("local_files_only", False))
    # Through fetch: a snapshot the inference pods (or an earlier run) completed is used with no
    # request to the Hub, and one fetched here is marked complete for them.
    path, _ = fetch.fetch(
        run.model,
        run.revision,
        weights.cache_dir(run.cache_dir, os.environ),
        os.environ,
        local_files_only=local_only,
    )
    if main_process():
        print("kaitoflow-trainer: model {}@{} from {}".format(run.model, run.revision or "main", path), flush=True)
    return path


def launch_workers(run: RunSettings) -> int:
    """--processes N: check the configuration and download the weights once, here, then train in
    N processes that load them from the local snapshot; their first telling failure is this
    process's."""
    with open(run.config, encoding="utf-8") as f:
        cfg = config.load(f.read(), run.method)
    path = _weights(cfg, run)
    argv = [
        sys.executable,
        "-m",
        "kaitoflow_trainer.train",
        "--config",
        run.config,
        "--method",
        run.method,
        "--model",
        path,
        "--revision",
        run.revision,
        "--input-dir",
        run.input_dir,
    ]
    if run.resume_from:
        argv += ["--resume-from", run.resume_from]
    if run.compare_adapter:
        argv += ["--compare-adapter", run.compare_adapter]
    if run.eval_data:
        argv += ["--eval-data", run.eval_data]
    print(f"kaitoflow-trainer: {run.processes:d} training processes, one per GPU", flush=True)
    code, reason = launch.run(argv, run.processes)
    if code:
        return _fail(reason, code)
    return 0


def train(run: RunSettings) -> None:
    with open(run.config, encoding="utf-8") as f:
        cfg = config.load(f.read(), run.method)
    dataset_cfg = cfg.get("DatasetConfig", {})
    shape, train_rows, eval_rows = _rows(cfg, run.input_dir)
    task_shape, task_rows = _task_rows(run, dataset_cfg, shape, eval_rows)

    path = _weights(cfg, run)

    import peft
    import torch
    import transformers

    # The snapshot is local now: nothing below may reach the network.
    trust = cfg.get("ModelConfig", {}).get("trust_remote_code", False)
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust)
    # Tokenized before the model loads, so a dataset with nothing to learn fails in seconds.
    train_set = _encode(train_rows, shape, tok, dataset_cfg, "train")
    eval_set = _encode(eval_rows, shape, tok, dataset_cfg, "eval")
    task_set = _task_set(task_rows, task_shape, tok, dataset_cfg)
    if not len(train_set):
        raise DataError(
            f"no row has an assistant token within max_seq_length {dataset_cfg.get('max_seq_length', 2048):d}: "
            "raise it, or set DatasetConfig.train_on_prompt to train on the whole text"
        )
    tokens_total = sum(len(e["input_ids"]) for e in train_set.items)

    targs = _training_arguments(
        cfg, transformers, torch.cuda.is_available()
    )  # before the model loads: a bad argument fails fast
    # LoRA's A matrices start random: seeded here, not only when the Trainer is made (after the
    # model), so that the same config trains the same adapter, and a retried Job reproduces a run.
    transformers.set_seed(targs.seed)
    model = _load_model(path, cfg, torch, transformers, peft)
    # Kaito's DataCollator section says mlm: true by default, which would mask tokens BERT-style;
    # the examples carry their own causal-LM labels instead.
    if cfg.get("DataCollator", {}).get("mlm"):
        print("kaitoflow-trainer: DataCollator.mlm ignored: causal language modelling", flush=True)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    def collate(features: list[Example]) -> dict[str, Any]:
        return {k: torch.tensor(v, dtype=torch.long) for k, v in tokens.pad_batch(features, pad_id).items()}

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.time()
    progress = _progress(transformers, tokens_total / len(train_set), started)
    callbacks = [progress]
    minutes = checkpoint_minutes(os.environ, cfg["TrainingArguments"])
    # Saves are evaluated in one process only: with several, an evaluation between a save's
    # collective steps has hung the run (a data-parallel run's checkpoints carry no eval_loss).
    evaluate_saves = len(eval_set) > 0 and not distributed()
    callbacks.append(_checkpoints(transformers, minutes, torch=torch, evaluate=evaluate_saves))
    trainer = transformers.Trainer(
        model=model,
        args=targs,
        train_dataset=train_set,
        eval_dataset=eval_set if len(eval_set) else None,
        data_collator=collate,
        callbacks=callbacks,
    )
    if run.resume_from:
        print(f"kaitoflow-trainer: resuming from {run.resume_from}", flush=True)
    try:
        result = trainer.train(resume_from_checkpoint=run.resume_from or None)
    except Exception as exc:
        if _is_oom(exc):
            raise OutOfGPUMemory(oom_account(exc, trainer.state.global_step, dataset_cfg, targs, torch)) from exc
        raise
    duration = time.time() - started
    evaluation = _evaluate(trainer, eval_set)  # every process takes part; rank 0 reports
    evaluation.update(_compare(trainer, model, eval_set, run.compare_adapter))
    if distributed() and torch.distributed.is_initialized():
        # Every collective is done: the process group ends cleanly (a worker leaving with it open
        # warns, and may hang in its interpreter's shutdown), and the others leave while rank 0
        # generates its task answers and saves the adapter, which need no other process. (A
        # barrier held while it generates could outlast the group's timeout.)
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    if trainer.is_world_process_zero():
        # The adapter is kept before anything else runs: a generation that fails, hangs or is cut
        # off by the deadline cannot cost the training.
        model.save_pretrained(targs.output_dir, safe_serialization=True)
        if task_set.prompts:  # rank 0 alone generates
            gen = _generation(model, tok, dataset_cfg, targs.per_device_eval_batch_size, pad_id)
            evaluation.update(_task_eval(model, tok, task_set, gen, run.compare_adapter, torch))
        # Only the steps this process trained were timed: a resumed run's others were earlier.
        share = (result.global_step - (progress.first_step or 0)) / max(result.global_step, 1)
        _report(
            targs,
            torch,
            result,
            loss_history(trainer.state.log_history),
            train_set,
            tokens_total,
            duration,
            shape,
            evaluation,
            share,
        )


def _report(
    targs: Any,
    torch: ModuleType,
    result: Any,
    losses: list[dict[str, Any]],
    train_set: _Examples,
    tokens_total: int,
    duration: float,
    shape: str,
    evaluation: dict[str, float],
    share: float = 1.0,
) -> None:
    """Rank 0's metrics.json (the adapter is saved before task evaluation). share: the part of the
    run's steps this process trained (and duration timed)."""

    peak = 0
    if torch.cuda.is_available():
        # One process's GPUs: all of them with device_map auto, its own one when data parallel.
        peak = sum(torch.cuda.max_memory_allocated(d) for d in range(torch.cuda.device_count()))
    epochs = result.metrics.get("epoch", 1.0) or 1.0
    metrics = json_safe(
        {
            "steps": result.global_step,
            # Passes over the training rows: steps times the rows a step takes on every process.
            "epochs": epochs,
            "train_loss": result.training_loss,
            "loss_history": losses,
            "examples": len(train_set),
            "tokens": tokens_total,
            "tokens_per_second": tokens_total * epochs * share / duration if duration > 0 else 0.0,
            "peak_gpu_memory_bytes": peak,
            "duration_seconds": duration,
            "shape": shape,
            **evaluation,
        }
    )
    with open(os.path.join(targs.output_dir, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2, allow_nan=False)
    print(
        "kaitoflow-trainer: done: {}".format(json.dumps({k: v for k, v in metrics.items() if k != "loss_history"})),
        flush=True,
    )


def _one_line(exc: BaseException) -> str:
    return (f"{type(exc).__name__}: {exc}").replace("\n", " ")[:1000]


def _fail(reason: str, code: int) -> int:
    reason = reason.replace("\n", " ")
    print("kaitoflow-trainer: " + reason, file=sys.stderr, flush=True)
    try:
        with open(TERMINATION_LOG, "w", encoding="utf-8") as f:
            f.write(reason)
    except OSError:
        pass  # not in a pod
    return code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kaitoflow-trainer")
    p.add_argument("--config", default="/mnt/config/training_config.yaml")
    p.add_argument("--method", choices=("lora", "qlora"), required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--revision", default="")
    p.add_argument("--input-dir", default="/mnt/data")
    p.add_argument("--cache-dir", default="")
    p.add_argument("--processes", type=int, default=1, help="training processes, one per GPU (data parallel)")
    p.add_argument("--resume-from", default="", help="a checkpoint directory to continue from")
    p.add_argument(
        "--compare-adapter",
        default="",
        help="the adapter serving now: scored beside the new one on the same held-out rows",
    )
    p.add_argument(
        "--eval-data",
        default="",
        help="a dataset file (jsonl, json, csv, parquet) or directory of them, in a shape the input may have "
        "but plain text: the rows task evaluation scores (generated answers against the rows' answers) "
        "instead of the held-out rows; eval_loss stays on the held-out rows",
    )
    run = RunSettings.from_args(p.parse_args(argv))
    try:
        if run.processes > 1 and not distributed():
            return launch_workers(run)
        train(run)
    except TrainerError as exc:
        return _fail(str(exc), exc.exit_code)
    except Exception as exc:  # noqa: BLE001  the Job must end on any failure (torch, transformers, peft...) and say why in one line
        # torch raises OutOfMemoryError; cuBLAS and bitsandbytes kernels a RuntimeError saying so.
        if _is_oom(exc):  # outside training (loading the model): no step, no account of a batch
            return _fail(
                json.dumps(
                    {
                        "reason": CONTRACT["reasons"]["oom"],
                        "message": f"out of GPU memory before training: {_one_line(exc)}",
                    }
                ),
                EXIT_OOM,
            )
        return _fail(_one_line(exc), EXIT_FAILED)
    return 0


if __name__ == "__main__":
    code = main()
    if distributed() and code:
        # A failed worker's peers may still hold it in a collective: leave now, without the
        # interpreter's shutdown, which can wait on them. The launcher stops the rest.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
