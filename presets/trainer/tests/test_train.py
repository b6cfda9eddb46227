import contextlib
import dataclasses
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
            reason = ""
            if os.path.exists(log):
                with open(log) as f:
                    reason = f.read()
            return code, err.getvalue(), reason

    def test_bad_config_exits_2(self):
        code, err, reason = self.run_main(
            json.dumps({"TrainingArguments": {"output_dir": "/etc"}}), {"a.jsonl": '{"text": "x"}\n'}
        )
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
        for version, want in [
            ("4.46.3", "torch_dtype"),
            ("4.56.0", "dtype"),
            ("5.18.0", "dtype"),
            ("5.0.0.dev0", "dtype"),
        ]:
            with self.subTest(version=version):
                self.assertEqual(train.dtype_argument(version), want)

    def test_perplexity(self):
        self.assertAlmostEqual(train.perplexity(math.log(7.0)), 7.0)
        self.assertEqual(train.perplexity(1e6), math.inf)

    def test_loss_history_keeps_the_losses_logged_before_a_resume(self):
        # A resumed run's log history: what the checkpoint carried, then this process's logs, the
        # evaluations between, and transformers' summary of the run, which has no "loss".
        log = [
            {"loss": 3.3, "step": 2, "epoch": 0.4},
            {"loss": 3.1, "step": 4},
            {"eval_loss": 3.2, "step": 4},
            {"loss": 2.9, "step": 6},
            {"train_loss": 3.0, "step": 6, "train_runtime": 1.0},
        ]
        self.assertEqual(
            train.loss_history(log), [{"step": 2, "loss": 3.3}, {"step": 4, "loss": 3.1}, {"step": 6, "loss": 2.9}]
        )

    def test_progress_times_only_the_steps_this_process_trained(self):
        class FakeTransformers:
            TrainerCallback = object

        cb = train._progress(FakeTransformers, 100.0, 1000.0)
        args = mock.Mock(per_device_train_batch_size=2, gradient_accumulation_steps=1, world_size=1)
        # Resumed at step 8: the first step this process takes starts from there.
        cb.on_step_begin(args, mock.Mock(global_step=8), None)
        cb.on_step_begin(args, mock.Mock(global_step=9), None)
        out = io.StringIO()
        with mock.patch.object(train.time, "time", return_value=1004.0), mock.patch("sys.stdout", out):
            cb.on_log(
                args, mock.Mock(global_step=10, max_steps=24, is_world_process_zero=True), None, logs={"loss": 2.5}
            )
        line = out.getvalue().strip()
        self.assertTrue(line.startswith(train.PROGRESS_PREFIX), line)
        # 2 steps of 2 rows of 100 tokens in 4 seconds, not the 10 steps since the run began.
        self.assertEqual(
            json.loads(line[len(train.PROGRESS_PREFIX) :]),
            {"step": 10, "max_steps": 24, "loss": 2.5, "tokens_per_second": 100.0},
        )

    def test_training_arguments_without_a_gpu(self):
        class FakeTransformers:
            TrainingArguments = dict

        cfg = {"TrainingArguments": {"output_dir": "/mnt/results"}}
        cpu = train._training_arguments(cfg, FakeTransformers, cuda=False)
        # accelerate makes processes of one run data parallel on CPUs only when told it is on them.
        self.assertEqual((cpu["use_cpu"], cpu["dataloader_pin_memory"]), (True, False))
        gpu = train._training_arguments(cfg, FakeTransformers, cuda=True)
        self.assertNotIn("use_cpu", gpu)
        self.assertNotIn("dataloader_pin_memory", gpu)

    def test_metrics_stay_json_go_can_read(self):
        safe = train.json_safe(
            {"eval_loss": math.nan, "perplexity": math.inf, "steps": 3, "loss_history": [{"loss": -math.inf}]}
        )
        self.assertEqual(safe, {"eval_loss": None, "perplexity": None, "steps": 3, "loss_history": [{"loss": None}]})
        json.dumps(safe, allow_nan=False)


class TaskEvalTest(unittest.TestCase):
    """Task evaluation's wiring: its rows, its settings on the command line, and a model that cannot
    be scored left out of the metrics, never failing the run."""

    def test_eval_data_is_a_setting_workers_get(self):
        seen = {}

        def fake_train(run):
            seen["run"] = run

        with mock.patch.object(train, "train", fake_train):
            code = train.main(["--method", "lora", "--model", "m", "--eval-data", "/mnt/eval/qa.jsonl"])
        self.assertEqual(code, 0)
        self.assertEqual(seen["run"].eval_data, "/mnt/eval/qa.jsonl")
        self.assertEqual(train.RunSettings.from_args(train.argparse.Namespace(**vars(seen["run"]))), seen["run"])

        with tempfile.TemporaryDirectory() as d:
            cfg_path = os.path.join(d, "training_config.yaml")
            with open(cfg_path, "w") as f:
                f.write(json.dumps({"TrainingArguments": {"output_dir": "/mnt/results"}}))
            run = dataclasses.replace(seen["run"], config=cfg_path, processes=2)
            with (
                mock.patch.object(train, "_weights", return_value="/snapshot"),
                mock.patch.object(train.launch, "run", return_value=(0, "")) as launched,
                mock.patch("sys.stdout", io.StringIO()),
            ):
                self.assertEqual(train.launch_workers(run), 0)
        argv = launched.call_args.args[0]
        self.assertEqual(argv[argv.index("--eval-data") + 1], "/mnt/eval/qa.jsonl")

    def test_task_rows(self):
        run = train.RunSettings(
            config="c",
            method="lora",
            model="m",
            revision="",
            input_dir="/mnt/data",
            cache_dir="",
            processes=1,
            resume_from="",
            compare_adapter="",
            eval_data="",
        )
        held = [{"prompt": "q", "completion": "a"}]
        self.assertEqual(train._task_rows(run, {}, "prompt_completion", held), ("prompt_completion", held))
        self.assertEqual(train._task_rows(run, {"task_eval_rows": 0}, "prompt_completion", held)[1], [])
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "eval.jsonl")
            with open(path, "w") as f:
                f.write('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n' * 3)
            other = dataclasses.replace(run, eval_data=path)
            with mock.patch("sys.stdout", io.StringIO()):
                shape, rows = train._task_rows(other, {}, "prompt_completion", held)
            self.assertEqual((shape, len(rows)), ("messages", 3))
            # Not read at all when task evaluation is off.
            missing = dataclasses.replace(run, eval_data=os.path.join(d, "missing"))
            self.assertEqual(train._task_rows(missing, {"task_eval_rows": 0}, "messages", held)[1], [])
            with self.assertRaises(train.DataError):
                train._task_rows(missing, {}, "messages", held)

    def test_a_model_not_scored_is_left_out(self):
        class FakeModel:
            training = False

            def __init__(self):
                self.active = "default"
                self.peft_config = {"default": {}}

            @contextlib.contextmanager
            def disable_adapter(self):
                self.active = None
                yield
                self.active = "default"

            def load_adapter(self, path, adapter_name, is_trainable):
                self.peft_config[adapter_name] = {}

            def set_adapter(self, name):
                self.active = name

            def delete_adapter(self, name):
                del self.peft_config[name]

            def eval(self):
                pass

            def train(self, mode=True):
                pass

        model = FakeModel()
        answers = {"default": ["the sky is blue"], "serving": ["blue"]}

        def generate(m, tok, prompts, gen, torch):
            if m.active is None:
                raise RuntimeError("the base model broke")
            return answers[m.active]

        task_set = train.taskeval.TaskSet([[1, 2]], ["The sky is blue."])
        gen = train.taskeval.Generation(8, 1, 0)
        out = io.StringIO()
        with mock.patch.object(train.taskeval, "generate", generate), mock.patch("sys.stdout", out):
            got = train._task_eval(model, None, task_set, gen, "/serving", None)
        self.assertEqual(
            got,
            {
                "task_exact_match": 1.0,
                "task_rougeL": 1.0,
                "serving_task_exact_match": 0.0,
                "serving_task_rougeL": 0.4,
                "task_examples": 1,
            },
        )
        self.assertIn("the base model was not task-scored: RuntimeError: the base model broke", out.getvalue())
        self.assertEqual((model.active, sorted(model.peft_config)), ("default", ["default"]))
        self.assertEqual(train._task_eval(model, None, train.taskeval.TaskSet([], []), gen, "", None), {})


class CheckpointTest(unittest.TestCase):
    """Checkpoints by the clock, announced for job-run; a config's own save_strategy wins."""

    def test_minutes(self):
        self.assertEqual(train.checkpoint_minutes({}, {}), 10.0)
        self.assertEqual(train.checkpoint_minutes({}, {"save_strategy": "no"}), 10.0)
        self.assertEqual(train.checkpoint_minutes({}, {"save_strategy": "epoch"}), 10.0)
        self.assertEqual(train.checkpoint_minutes({"KAITOFLOW_CHECKPOINT_MINUTES": "2.5"}, {}), 2.5)
        self.assertEqual(train.checkpoint_minutes({}, {"save_strategy": "steps", "save_steps": 50}), 0.0)
        with self.assertRaises(train.ConfigError):
            train.checkpoint_minutes({"KAITOFLOW_CHECKPOINT_MINUTES": "often"}, {})

    def test_callback_saves_by_the_clock_and_announces(self):
        class FakeTransformers:
            TrainerCallback = object

        now = [1000.0]
        cb = train._checkpoints(FakeTransformers, 10, clock=lambda: now[0])
        state = mock.Mock(global_step=120, is_world_process_zero=True, log_history=[])
        args = mock.Mock(output_dir="/mnt/results")
        control = mock.Mock(should_save=False)
        now[0] += 9 * 60
        cb.on_step_end(args, state, control)
        self.assertFalse(control.should_save)
        now[0] += 61
        cb.on_step_end(args, state, control)
        self.assertTrue(control.should_save)
        out = io.StringIO()
        with mock.patch("sys.stdout", out):
            cb.on_save(args, state, control)
        line = out.getvalue().strip()
        self.assertTrue(line.startswith(train.CHECKPOINT_PREFIX), line)
        self.assertEqual(
            json.loads(line[len(train.CHECKPOINT_PREFIX) :]), {"step": 120, "path": "/mnt/results/checkpoint-120"}
        )
        # The clock starts again at the save.
        control.should_save = False
        now[0] += 60
        cb.on_step_end(args, state, control)
        self.assertFalse(control.should_save)

    def test_oom_account_is_the_failure_json(self):
        targs = mock.Mock(per_device_train_batch_size=4)
        acc = train.oom_account(
            RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), 17, {"max_seq_length": 1024}, targs, None
        )
        self.assertEqual((acc["reason"], acc["step"], acc["batchSize"], acc["seqLen"]), ("GPUOutOfMemory", 17, 4, 1024))
        self.assertIn("step 17 with batch 4, sequence 1024", acc["message"])
        err = train.OutOfGPUMemory(acc)
        self.assertEqual(err.exit_code, 4)
        self.assertEqual(json.loads(str(err))["step"], 17)

    def test_saves_of_the_config_are_announced_without_the_clock(self):
        class FakeTransformers:
            TrainerCallback = object

        cb = train._checkpoints(FakeTransformers, 0, clock=lambda: 1e9)
        control = mock.Mock(should_save=False)
        state = mock.Mock(global_step=500, is_world_process_zero=True, log_history=[])
        cb.on_step_end(mock.Mock(), state, control)
        self.assertFalse(control.should_save)
        out = io.StringIO()
        with mock.patch("sys.stdout", out):
            cb.on_save(mock.Mock(output_dir="/mnt/results"), state, control)
        self.assertIn('"step": 500', out.getvalue())

    def test_saves_are_evaluated_and_carry_their_eval_loss(self):
        class FakeTransformers:
            TrainerCallback = object

        cb = train._checkpoints(FakeTransformers, 0, clock=lambda: 1e9, evaluate=True)
        control = mock.Mock(should_save=False, should_evaluate=False)
        cb.on_step_end(mock.Mock(), mock.Mock(), control)
        self.assertFalse(control.should_evaluate)  # no save, no extra evaluation
        control.should_save = True
        cb.on_step_end(mock.Mock(), mock.Mock(), control)
        self.assertTrue(control.should_evaluate)
        history = [{"loss": 2.0, "step": 40}, {"eval_loss": 1.75, "step": 40}, {"eval_loss": 1.5, "step": 80}]
        state = mock.Mock(global_step=80, is_world_process_zero=True, log_history=history)
        out = io.StringIO()
        with mock.patch("sys.stdout", out):
            cb.on_save(mock.Mock(output_dir="/mnt/results"), state, control)
        line = out.getvalue().strip()[len(train.CHECKPOINT_PREFIX) :]
        self.assertEqual(json.loads(line), {"step": 80, "path": "/mnt/results/checkpoint-80", "eval_loss": 1.5})
        self.assertIsNone(train.saved_eval_loss(history, 120))
        # Without held-out rows nothing is evaluated.
        plain = train._checkpoints(FakeTransformers, 0, clock=lambda: 1e9)
        control = mock.Mock(should_save=True, should_evaluate=False)
        plain.on_step_end(mock.Mock(), mock.Mock(), control)
        self.assertFalse(control.should_evaluate)


if __name__ == "__main__":
    unittest.main()
