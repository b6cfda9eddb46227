#!/usr/bin/env bash
# Writes presets/trainer/requirements.lock: every package the trainer image installs, direct or
# not, pinned with its hashes, resolved by pip-compile inside the trainer's own base image (so
# against its Python and its torch). The Dockerfile installs from the lock with --require-hashes
# once it exists; commit it with the requirements.txt it was made from.
#   hack/trainer-lock.sh
# Needs docker and PyPI.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$root/presets/trainer
base=$(awk '/^FROM /{print $2; exit}' "$dir/Dockerfile")
# As the invoking user, so the lock is theirs. torch is pinned to the base image's version, so
# pip keeps the installed CUDA build (a satisfied requirement is not reinstalled); compare the
# lock's nvidia-* pins with the image's `pip list` before committing it.
docker run --rm --user "$(id -u):$(id -g)" -e HOME=/tmp -v "$dir:/work" -w /work "$base" sh -c '
  pip install --quiet --user pip-tools==7.6.2 &&
  python -m piptools compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-header \
    --output-file requirements.lock requirements.txt'
echo "wrote $dir/requirements.lock" >&2
