#!/usr/bin/env bash
# The trainer's GPU check: the real LoRA run of tests/test_ml.py with fp16, then bf16, on whatever
# GPU torch sees. Offline: it downloads nothing (the test makes its model, tokenizer and data), and
# a missing module or GPU fails it rather than skipping it.
#
#   cd presets/trainer && bash tests/gpu_check.sh
# PYTHON names the interpreter whose packages to test (default python3: the trainer image's).
set -u
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PIP_NO_INDEX=1
export HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false KAITOFLOW_ML_REQUIRE=1

"$py" - <<'EOF'
import importlib
for name in ("torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "pyarrow", "huggingface_hub", "bitsandbytes"):
    try:
        print("%-16s %s" % (name, getattr(importlib.import_module(name), "__version__", "?")))
    except Exception as exc:
        print("%-16s missing (%s: %s)" % (name, type(exc).__name__, exc))
try:
    import torch
    if torch.cuda.is_available():
        print("GPU              %s (CUDA %s, %d device(s))" % (torch.cuda.get_device_name(0), torch.version.cuda, torch.cuda.device_count()))
    else:
        print("GPU              none visible to torch")
except Exception as exc:
    print("GPU              unknown (%s)" % exc)
EOF

rc=0
for precision in fp16 bf16; do
    echo "=== KAITOFLOW_ML_PRECISION=$precision"
    KAITOFLOW_ML_PRECISION=$precision "$py" -m unittest tests.test_ml -v || rc=1
done
echo "=== gpu_check: $([ $rc -eq 0 ] && echo passed || echo FAILED)"
exit $rc
