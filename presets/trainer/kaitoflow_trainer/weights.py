"""The base model's weights: a local directory, or the Hugging Face snapshot at the pinned revision.

huggingface_hub downloads the snapshot (verifying every file's checksum) into a cache that a retried
pod reuses, and the model then loads from the local snapshot path, never from the network. A failure
becomes a ModelDownloadError whose message names the cause: the HTTP status, and for 401/403 the
Secret the token came from, or that none was given.
"""

import errno
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from . import EXIT_MODEL, ModelDownloadError

# The Go side mounts the workspace's presetOptions.modelAccessSecret into HF_TOKEN and names the
# Secret (namespace/name) in SECRET_ENV, so a refusal can say which Secret to fix.
TOKEN_ENV = "HF_TOKEN"

# What downloads a snapshot: huggingface_hub's snapshot_download, or a test's stand-in. It takes
# snapshot_download's keyword arguments and returns the snapshot's directory.
Download = Callable[..., str]
SECRET_ENV = "KAITOFLOW_MODEL_ACCESS_SECRET"

# The Job's cache volume; huggingface_hub's layout under it ($HF_HOME/hub) is also where an image
# that carries the weights would have put them.
DEFAULT_HF_HOME = "/mnt/cache"

# Weights in other frameworks' formats and Meta's original checkpoints, which transformers never
# reads: skipping them saves up to tens of gigabytes a model.
IGNORE_PATTERNS = ["*.gguf", "*.onnx", "*.onnx_data", "*.h5", "*.msgpack", "*.tflite", "original/*", "onnx/*"]


def cache_dir(explicit: str, env: Mapping[str, str]) -> str:
    """Where snapshots are kept: --cache-dir, else huggingface_hub's own choice ($HF_HUB_CACHE, else
    $HF_HOME/hub) with the Job's cache volume standing in for an unset HF_HOME."""
    if explicit:
        return explicit
    if env.get("HF_HUB_CACHE"):
        return env["HF_HUB_CACHE"]
    return os.path.join(env.get("HF_HOME") or DEFAULT_HF_HOME, "hub")


def _snapshot_download(**kwargs: Any) -> str:
    # Imported here: unit tests and local models need no huggingface_hub.
    from huggingface_hub import snapshot_download

    return snapshot_download(**kwargs)


# Waits between attempts after a transient failure (the Hub's 429 or 5xx, the network). The
# attempts run in this pod, so each resumes from the files the cache already holds; only when all
# fail does the Job's own retry start a new pod.
RETRY_WAITS = (10, 30, 90)


def resolve(
    model: str,
    revision: str | None,
    local_files_only: bool,
    cache: str,
    env: Mapping[str, str],
    download: Download | None = None,
    sleep: Callable[[float], object] = time.sleep,
) -> str:
    """The local directory to load model from: model itself when it is a directory, else its
    snapshot at revision, downloaded unless local_files_only (then it must be in the cache)."""
    if os.path.isdir(model):
        return model
    download = download or _snapshot_download
    for attempt in range(len(RETRY_WAITS) + 1):
        try:
            return download(
                repo_id=model,
                revision=revision or None,
                cache_dir=cache,
                token=env.get(TOKEN_ENV) or None,
                local_files_only=local_files_only,
                ignore_patterns=IGNORE_PATTERNS,
            )
        except Exception as exc:
            err = failure(exc, model, revision, local_files_only, cache, env.get(SECRET_ENV, ""))
            if err.exit_code == EXIT_MODEL or attempt == len(RETRY_WAITS):
                raise err from exc
            print(f"kaitoflow-trainer: {err}; retrying in {RETRY_WAITS[attempt]:d}s", flush=True)
            sleep(RETRY_WAITS[attempt])


def _status(exc: BaseException | None) -> int | None:
    """The HTTP status of exc or of an error it was raised from: huggingface_hub wraps some
    (a 5xx while resolving a branch) in LocalEntryNotFoundError."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if isinstance(status, int):
            return status
        exc = exc.__cause__ or exc.__context__
    return None


def _errno(exc: BaseException | None, wanted: tuple[int, ...]) -> int | None:
    """The first errno in wanted that exc or an error it was raised from carries, or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if getattr(exc, "errno", None) in wanted:
            return exc.errno
        exc = exc.__cause__ or exc.__context__
    return None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]


def failure(
    exc: BaseException, model: str, revision: str | None, local_files_only: bool, cache: str, secret: str
) -> ModelDownloadError:
    """The ModelDownloadError for exc. huggingface_hub's errors are told apart by class name and
    status, so this needs no import of it (and tests can raise look-alikes)."""
    what = "{}@{}".format(model, revision or "main")
    status = _status(exc)
    names = {c.__name__ for c in type(exc).__mro__}
    http = f"HTTP {status:d}: " if status else ""
    if status in (401, 403) or "GatedRepoError" in names:
        if secret:
            return ModelDownloadError(
                f"{http}the token in Secret {secret} (presetOptions.modelAccessSecret) may not read {what}: "
                "check that it is valid and that its account was granted access to the model (or that the model exists)"
            )
        return ModelDownloadError(
            f"{http}{model} is gated, private or missing, and no token was given: "
            "set presetOptions.modelAccessSecret to a Secret holding an HF_TOKEN with access to it"
        )
    if "HFValidationError" in names:
        return ModelDownloadError(
            f"{model!r} is not a model directory or a valid Hugging Face repository id: {_first_line(exc)}"
        )
    if "RevisionNotFoundError" in names:
        return ModelDownloadError(f"{http}revision {revision} of {model} not found")
    if "RepositoryNotFoundError" in names or status == 404:
        return ModelDownloadError(f"{http}{what} not found on the Hugging Face Hub")
    if status is not None:
        # Like job-run's dataset fetch: other 4xx are permanent, 429 and 5xx are worth a retry.
        permanent = 400 <= status < 500 and status != 429
        return ModelDownloadError(f"{http}{what}: {_first_line(exc)}", permanent=permanent)
    full = _errno(exc, (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS))
    if full is not None:
        # Retrying cannot make room or grant access: the cache volume is the problem.
        return ModelDownloadError(
            f"cannot write {what} into {cache}: {os.strerror(full)}: make the cache volume larger or writable "
            "(--weights-cache, kaitoflow.io/weights-cache)"
        )
    if local_files_only:
        return ModelDownloadError(
            f"{what} is not in the cache {cache} and ModelConfig.local_files_only is true, so it was not downloaded: "
            f"set local_files_only: false, or use an image that carries the weights ({_first_line(exc)})"
        )
    return ModelDownloadError(f"cannot download {what} into {cache}: {_first_line(exc)}", permanent=False)
