import io
import json
import os
import tempfile
import unittest
from contextlib import redirect_stderr
from unittest import mock

from kaitoflow_trainer import EXIT_CONFIG, EXIT_DATA, train


class ExitTest(unittest.TestCase):
    """Failures end the process with a classifying code and a one-line reason, before any model loads."""

    def run_main(self, cfg, files, method="qlora"):
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
                code = train.main(["--config", cfg_path, "--method", method, "--model", "m", "--input-dir", data_dir])
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


if __name__ == "__main__":
    unittest.main()
