"""Fill the weights cache once per model revision: the inference pods' init container.

python -m kaitoflow_trainer.fetch --model microsoft/Phi-3-mini-128k-instruct --revision <commit>

The first pod that starts for a model revision downloads its snapshot into the shared cache (the
weights-cache claim), every file's checksum verified by huggingface_hub, resuming from what an
interrupted attempt left, and then writes a completion marker. Every later pod, woken from zero or
scaled up, finds the marker and fetches nothing; the model server then reads the cache read-only
and offline. Exit codes are the trainer's: 5 for a model the Hub refuses, 1 for what may pass.
"""

import argparse
import os
import sys
import tempfile
from collections.abc import Mapping
from typing import TextIO

from . import EXIT_FAILED, TrainerError, weights

MARKER_DIR = "kaitoflow-complete"


def marker(cache: str, model: str, revision: str | None) -> str:
    """The file that says model@revision is complete in cache."""
    return os.path.join(cache, MARKER_DIR, model.replace("/", "--") + "@" + (revision or "main"))


def complete(path: str) -> bool:
    """A snapshot whose every file is there: huggingface_hub's snapshot holds links into the blobs,
    and a pruned blob leaves a link to nothing, which an offline model server cannot load."""
    if not os.path.isdir(path):
        return False
    for root, _, files in os.walk(path):
        for name in files:
            if not os.path.exists(os.path.join(root, name)):
                return False
    return True


def fetch(
    model: str,
    revision: str | None,
    cache: str,
    env: Mapping[str, str],
    download: weights.Download | None = None,
    out: TextIO = sys.stdout,
    local_files_only: bool = False,
) -> tuple[str, bool]:
    """The snapshot's local directory, and whether it had to be fetched: a complete snapshot
    (its marker written by whoever fetched it, an inference pod or a tuning Job) is used as it is,
    with no request to the Hub; otherwise weights.resolve fetches it and the marker is written."""
    if os.path.isdir(model):
        return model, False
    done = marker(cache, model, revision)
    try:
        with open(done) as f:
            path = f.read().strip()
        if complete(path):
            print(
                f"kaitoflow-fetch: {model}@{revision} is in the cache already: nothing to fetch", file=out, flush=True
            )
            return path, False
    except FileNotFoundError:
        pass
    path = weights.resolve(model, revision, local_files_only, cache, env, download=download)
    os.makedirs(os.path.dirname(done), exist_ok=True)
    # A file of its own: pods starting together on the shared claim, and a run's processes, write
    # markers at once. The marker appears whole or not at all.
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(done), prefix=".marker-")
    with os.fdopen(fd, "w") as f:
        f.write(path + "\n")
    os.replace(tmp, done)
    print(f"kaitoflow-fetch: {model}@{revision} fetched into {path}", file=out, flush=True)
    return path, True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kaitoflow_trainer.fetch", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="Hugging Face repository id")
    p.add_argument("--revision", default="", help="the pinned commit")
    p.add_argument("--cache-dir", default="", help="snapshot cache (default: huggingface_hub's, under $HF_HOME)")
    args = p.parse_args(argv)
    try:
        fetch(args.model, args.revision, weights.cache_dir(args.cache_dir, os.environ), os.environ)
    except TrainerError as err:
        print(f"kaitoflow-fetch: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    except Exception as err:  # noqa: BLE001 - anything else may pass on a retry
        print(f"kaitoflow-fetch: {err}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
