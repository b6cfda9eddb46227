"""kaitoflow's trainer: the program a tuning Job runs.

It reads Kaito's training_config.yaml, loads a dataset file from the input directory, fine-tunes a
preset with LoRA or QLoRA (transformers + peft, bitsandbytes for QLoRA only), and writes the adapter
(adapter_config.json, adapter_model.safetensors) and metrics.json. Any failure ends the process with
a non-zero exit code and a one-line reason, also written to the Kubernetes termination log, so the
Job fails instead of hanging on a GPU.

The modules config, data, chat, tokens, taskeval and weights need only the standard library and
are unit-tested without any ML package; weights imports huggingface_hub only to download, taskeval
generates with the torch its caller passes, and train imports torch, transformers and peft when it
runs.
"""

import json
import os

# What the trainer and kaitoflow agree on (exit codes, the reasons of the permanent ones, the
# prefixes of the lines job-run reads) is contract.json, which kaitoflow embeds too: neither side
# can change it alone.
with open(os.path.join(os.path.dirname(__file__), "contract.json"), encoding="utf-8") as _f:
    CONTRACT = json.load(_f)

# Exit codes the Job's podFailurePolicy matches: configuration and data errors are permanent
# (retrying cannot help); OOM is permanent for the same settings; so is a model the Hub refuses
# (401, 403, 404) or that local_files_only keeps from being downloaded; anything else may be retried.
EXIT_FAILED = CONTRACT["exit"]["failed"]
EXIT_CONFIG = CONTRACT["exit"]["config"]
EXIT_DATA = CONTRACT["exit"]["data"]
EXIT_OOM = CONTRACT["exit"]["oom"]
EXIT_MODEL = CONTRACT["exit"]["model"]


class TrainerError(Exception):
    """A failure with a one-line reason and the exit code that classifies it."""

    exit_code = EXIT_FAILED


class ConfigError(TrainerError):
    exit_code = EXIT_CONFIG


class DataError(TrainerError):
    exit_code = EXIT_DATA


class ModelDownloadError(TrainerError):
    """The base model's weights could not be had. Its message starts with the reason
    ModelDownloadFailed; a transient failure (the Hub down, the network) exits EXIT_FAILED so the
    Job retries, and the retry reuses what the cache already holds."""

    exit_code = EXIT_MODEL

    def __init__(self, message: str, permanent: bool = True) -> None:
        super().__init__(CONTRACT["reasons"]["model"] + ": " + message)
        if not permanent:
            self.exit_code = EXIT_FAILED
