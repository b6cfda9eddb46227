import io
import json
import math
import os
import tempfile
import unittest
from contextlib import redirect_stderr
from unittest import mock

from kaitoflow_trainer import EXIT_CONFIG, EXIT_DATA, EXIT_MODEL, train, weights
from tests.test_weights import GatedRepoError


class ExitTest(unittest.TestCase):
    """Failures end the process with a classifying code and a one-line reason, before any model loads."""

    def run_main(self, cfg, files, method="qlora", model="m"):
        with tempfile.TemporaryDirectory() as d:
            cfg_path = os.path.join(d, "training_config.yaml")
            with open(cfg_path, "w") as f:
                f.write(cfg)
            data_dir = os.path.join(d, "data")
            os.mkdir(data_dir)
            for name, text in files.items():
                with open(os.path.join(data_dir, name), "w") as f:
                    f.write(text)
            log = os.path.join(d, "termination-log")
            err = io.StringIO()
            with mock.patch.object(train, "TERMINATION_LOG", log), redirect_stderr(err):
                code = train.main(["--config", cfg_path, "--method", method, "--model", model, "--input-dir", data_dir])
            reason = open(log).read() if os.path.exists(log) else ""
            return code, err.getvalue(), reason

    def test_bad_config_exits_2(self):
        code, err, reason = self.run_main(json.dumps({"TrainingArguments": {"output_dir": "/etc"}}), {"a.jsonl": '{"text": "x"}\n'})
        self.assertEqual(code, EXIT_CONFIG)
        self.assertIn("output_dir", reason)
        self.assertEqual(len(err.strip().splitlines()), 1)

    def test_bad_data_exits_3(self):
        code, _, reason = self.run_main("{}", {"a.jsonl": '{"instruction": "x"}\n'})
        self.assertEqual(code, EXIT_DATA)
        self.assertIn("unrecognised row", reason)

    def test_refused_download_exits_5_naming_the_secret(self):
        def gated(**_kw):
            raise GatedRepoError("403 Client Error", 403)

        env = {"HF_TOKEN": "hf_x", "KAITOFLOW_MODEL_ACCESS_SECRET": "team-a/hf-token"}
        with mock.patch.object(weights, "_snapshot_download", gated), mock.patch.dict(os.environ, env):
            code, _, reason = self.run_main("{}", {"a.jsonl": '{"text": "x"}\n'}, model="org/gated-model")
        self.assertEqual(code, EXIT_MODEL)
        self.assertTrue(reason.startswith("ModelDownloadFailed: HTTP 403: "), reason)
        self.assertIn("team-a/hf-token", reason)


class HelpersTest(unittest.TestCase):
    def test_dtype_argument(self):
        for version, want in [("4.46.3", "torch_dtype"), ("4.56.0", "dtype"), ("5.18.0", "dtype"), ("5.0.0.dev0", "dtype")]:
            with self.subTest(version=version):
                self.assertEqual(train.dtype_argument(version), want)

    def test_perplexity(self):
        self.assertAlmostEqual(train.perplexity(math.log(7.0)), 7.0)
        self.assertEqual(train.perplexity(1e6), math.inf)

    def test_metrics_stay_json_go_can_read(self):
        safe = train.json_safe({"eval_loss": math.nan, "perplexity": math.inf, "steps": 3, "loss_history": [{"loss": -math.inf}]})
        self.assertEqual(safe, {"eval_loss": None, "perplexity": None, "steps": 3, "loss_history": [{"loss": None}]})
        json.dumps(safe, allow_nan=False)


if __name__ == "__main__":
    unittest.main()
