import io
import os
import tempfile
import unittest

from kaitoflow_trainer import fetch


class FetchTest(unittest.TestCase):
    """The cache is filled once per model revision: a second start downloads nothing."""

    def test_second_start_fetches_nothing(self):
        with tempfile.TemporaryDirectory() as cache:
            calls = []

            def download(**kw):
                calls.append(kw)
                snap = os.path.join(cache, "models--m--phi", "snapshots", kw["revision"])
                os.makedirs(snap, exist_ok=True)
                return snap

            out = io.StringIO()
            path, fetched = fetch.fetch("m/phi", "abc123", cache, {}, download=download, out=out)
            self.assertTrue(fetched)
            again, fetched = fetch.fetch("m/phi", "abc123", cache, {}, download=download, out=out)
            self.assertEqual((again, fetched), (path, False))
            self.assertEqual(len(calls), 1)
            self.assertIn("nothing to fetch", out.getvalue())
            # Another revision is another snapshot: fetched.
            self.assertTrue(fetch.fetch("m/phi", "def456", cache, {}, download=download, out=out)[1])
            self.assertEqual(len(calls), 2)

    def test_a_pruned_blob_is_fetched_again(self):
        with tempfile.TemporaryDirectory() as cache:
            calls = []

            def download(**kw):
                calls.append(kw)
                snap = os.path.join(cache, "snap")
                os.makedirs(snap, exist_ok=True)
                blob = os.path.join(cache, "blob")
                with open(blob, "w") as f:
                    f.write("weights")
                if not os.path.lexists(os.path.join(snap, "model.safetensors")):
                    os.symlink(blob, os.path.join(snap, "model.safetensors"))
                return snap

            fetch.fetch("m/phi", "abc", cache, {}, download=download, out=io.StringIO())
            os.remove(os.path.join(cache, "blob"))  # the link now points at nothing
            _, fetched = fetch.fetch("m/phi", "abc", cache, {}, download=download, out=io.StringIO())
            self.assertTrue(fetched)
            self.assertEqual(len(calls), 2)

    def test_failed_download_leaves_no_marker(self):
        with tempfile.TemporaryDirectory() as cache:

            def download(**kw):
                raise OSError(28, "No space left on device")

            with self.assertRaises(Exception):
                fetch.fetch("m/phi", "abc123", cache, {}, download=download, out=io.StringIO())
            self.assertFalse(os.path.exists(fetch.marker(cache, "m/phi", "abc123")))


if __name__ == "__main__":
    unittest.main()
