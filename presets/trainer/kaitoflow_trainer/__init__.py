"""kaitoflow's trainer: the program a tuning Job runs.

It reads Kaito's training_config.yaml, loads a dataset file from the input directory, fine-tunes a
preset with LoRA or QLoRA (transformers + peft, bitsandbytes for QLoRA only), and writes the adapter
(adapter_config.json, adapter_model.safetensors) and metrics.json. Any failure ends the process with
a non-zero exit code and a one-line reason, also written to the Kubernetes termination log, so the
Job fails instead of hanging on a GPU.

The modules config, data and chat need only the standard library and are unit-tested without any
ML package; train imports torch, transformers and peft when it runs.
"""

# Exit codes the Job's podFailurePolicy matches: configuration and data errors are permanent
# (retrying cannot help); OOM is permanent for the same settings; anything else may be retried.
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_DATA = 3
EXIT_OOM = 4


class TrainerError(Exception):
    """A failure with a one-line reason and the exit code that classifies it."""

    exit_code = EXIT_FAILED


class ConfigError(TrainerError):
    exit_code = EXIT_CONFIG


class DataError(TrainerError):
    exit_code = EXIT_DATA
