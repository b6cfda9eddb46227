import tempfile
import unittest
from types import SimpleNamespace

from kaitoflow_trainer import EXIT_FAILED, EXIT_MODEL, ModelDownloadError, weights


# Look-alikes of huggingface_hub's errors: the mapping goes by class name and HTTP status, so the
# tests need neither the library nor the network.
class HfHubHTTPError(OSError):
    def __init__(self, message, status):
        super().__init__(message)
        self.response = SimpleNamespace(status_code=status)


class RepositoryNotFoundError(HfHubHTTPError):
    pass


class GatedRepoError(RepositoryNotFoundError):
    pass


class RevisionNotFoundError(HfHubHTTPError):
    pass


class LocalEntryNotFoundError(FileNotFoundError):
    pass


class HFValidationError(ValueError):
    pass


def offline_after(status):
    """huggingface_hub's way with a 5xx while resolving a branch: LocalEntryNotFoundError from it."""
    try:
        raise HfHubHTTPError("503 Server Error", status)
    except HfHubHTTPError as cause:
        try:
            raise LocalEntryNotFoundError("An error happened while trying to locate the files on the Hub") from cause
        except LocalEntryNotFoundError as exc:
            return exc


class FakeDownload:
    def __init__(self, result=None, error=None):
        self.result, self.error, self.calls = result, error, []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        if self.error is not None:
            raise self.error
        return self.result


MODEL, REV = "microsoft/Phi-3-mini-4k-instruct", "0a67737cc96d2554230f90338b163bc6380a2a85"


def resolve(download, local_files_only=False, sleeps=None, **env):
    sleeps = [] if sleeps is None else sleeps
    return weights.resolve(MODEL, REV, local_files_only, "/mnt/cache/hub", env, download, sleeps.append)


class ResolveTest(unittest.TestCase):
    def test_downloads_the_pinned_revision_with_the_token(self):
        download = FakeDownload(result="/mnt/cache/hub/models--x/snapshots/abc")
        self.assertEqual(resolve(download, HF_TOKEN="hf_secret"), "/mnt/cache/hub/models--x/snapshots/abc")
        (call,) = download.calls
        self.assertEqual((call["repo_id"], call["revision"], call["cache_dir"]), (MODEL, REV, "/mnt/cache/hub"))
        self.assertEqual(call["token"], "hf_secret")
        self.assertFalse(call["local_files_only"])

    def test_no_token(self):
        download = FakeDownload(result="/snap")
        resolve(download)
        self.assertIsNone(download.calls[0]["token"])

    def test_local_files_only_is_passed_on(self):
        download = FakeDownload(result="/snap")
        resolve(download, local_files_only=True)
        self.assertTrue(download.calls[0]["local_files_only"])

    def test_a_local_directory_is_not_downloaded(self):
        download = FakeDownload(error=AssertionError("no download"))
        with tempfile.TemporaryDirectory() as d:
            self.assertEqual(weights.resolve(d, "", False, "/cache", {}, download), d)
        self.assertEqual(download.calls, [])

    def test_cache_dir(self):
        cases = [
            ("/explicit", {"HF_HOME": "/h"}, "/explicit"),
            ("", {"HF_HUB_CACHE": "/hub", "HF_HOME": "/h"}, "/hub"),
            ("", {"HF_HOME": "/mnt/cache/huggingface"}, "/mnt/cache/huggingface/hub"),
            ("", {}, "/mnt/cache/hub"),
        ]
        for explicit, env, want in cases:
            with self.subTest(explicit=explicit, env=env):
                self.assertEqual(weights.cache_dir(explicit, env), want)


class FlakyDownload(FakeDownload):
    """Fails with the given errors, one a call, then succeeds."""

    def __init__(self, result, errors):
        super().__init__(result)
        self.errors = list(errors)

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        if self.errors:
            raise self.errors.pop(0)
        return self.result


class RetryTest(unittest.TestCase):
    def test_transient_failures_are_retried_in_the_pod(self):
        download, sleeps = FlakyDownload("/snap", [offline_after(503), ConnectionError("reset")]), []
        self.assertEqual(resolve(download, sleeps=sleeps), "/snap")
        self.assertEqual(len(download.calls), 3)
        self.assertEqual(sleeps, list(weights.RETRY_WAITS[:2]))

    def test_a_refusal_is_not_retried(self):
        download, sleeps = FlakyDownload("/snap", [GatedRepoError("401 Client Error", 401)]), []
        with self.assertRaises(ModelDownloadError):
            resolve(download, sleeps=sleeps)
        self.assertEqual((len(download.calls), sleeps), (1, []))

    def test_attempts_are_bounded(self):
        download, sleeps = FakeDownload(error=ConnectionError("down")), []
        with self.assertRaises(ModelDownloadError) as ctx:
            resolve(download, sleeps=sleeps)
        self.assertEqual(ctx.exception.exit_code, EXIT_FAILED)
        self.assertEqual(len(download.calls), len(weights.RETRY_WAITS) + 1)
        self.assertEqual(sleeps, list(weights.RETRY_WAITS))


class FailureTest(unittest.TestCase):
    def fail_with(self, error, local_files_only=False, **env):
        with self.assertRaises(ModelDownloadError) as ctx:
            resolve(FakeDownload(error=error), local_files_only, **env)
        msg = str(ctx.exception)
        self.assertTrue(msg.startswith("ModelDownloadFailed: "), msg)
        self.assertNotIn("\n", msg)
        return msg, ctx.exception.exit_code

    def test_refusals(self):
        secret = {"HF_TOKEN": "hf_x", "KAITOFLOW_MODEL_ACCESS_SECRET": "team-a/hf-token"}
        cases = [
            # (error, env, local_files_only, wanted in the message, exit code)
            (
                GatedRepoError("403 Client Error\nCannot access gated repo", 403),
                secret,
                False,
                ["HTTP 403", "Secret team-a/hf-token"],
                EXIT_MODEL,
            ),
            (
                GatedRepoError("401 Client Error", 401),
                {},
                False,
                ["HTTP 401", "no token was given", "presetOptions.modelAccessSecret"],
                EXIT_MODEL,
            ),
            (
                RepositoryNotFoundError("401 Client Error\nRepository Not Found", 401),
                secret,
                False,
                ["HTTP 401", "team-a/hf-token"],
                EXIT_MODEL,
            ),
            (
                RevisionNotFoundError("404 Client Error\nRevision Not Found", 404),
                {},
                False,
                ["HTTP 404", "revision " + REV],
                EXIT_MODEL,
            ),
            (
                RepositoryNotFoundError("404 Client Error", 404),
                {},
                False,
                ["HTTP 404", MODEL + "@" + REV, "not found"],
                EXIT_MODEL,
            ),
            (HfHubHTTPError("429 Too Many Requests", 429), {}, False, ["HTTP 429"], EXIT_FAILED),
            (offline_after(503), {}, False, ["HTTP 503"], EXIT_FAILED),
            (
                ConnectionError("connection refused"),
                {},
                False,
                ["cannot download", "/mnt/cache/hub", "connection refused"],
                EXIT_FAILED,
            ),
            (
                LocalEntryNotFoundError("Cannot find an appropriate cached snapshot folder"),
                {},
                True,
                ["local_files_only", "not in the cache"],
                EXIT_MODEL,
            ),
            (
                HFValidationError("Repo id must be in the form 'repo_name'"),
                {},
                False,
                ["not a model directory"],
                EXIT_MODEL,
            ),
            (
                OSError(28, "No space left on device"),
                {},
                False,
                ["/mnt/cache/hub", "No space left", "larger or writable"],
                EXIT_MODEL,
            ),
            (PermissionError(13, "Permission denied"), {}, False, ["Permission denied", "writable"], EXIT_MODEL),
        ]
        for error, env, local_only, wants, code in cases:
            with self.subTest(
                error=type(error).__name__, status=getattr(getattr(error, "response", None), "status_code", None)
            ):
                msg, exit_code = self.fail_with(error, local_only, **env)
                for want in wants:
                    self.assertIn(want, msg)
                self.assertEqual(exit_code, code)


if __name__ == "__main__":
    unittest.main()
