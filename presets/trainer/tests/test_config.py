import json
import math
import os
import unittest
from unittest import mock

from kaitoflow_trainer import CONTRACT, ConfigError, config


class DefaultsTest(unittest.TestCase):
    def test_kaito_defaults(self):
        q = config.defaults("qlora")
        self.assertEqual(q["LoraConfig"], {"r": 8, "lora_alpha": 8, "lora_dropout": 0.0})
        self.assertEqual(q["QuantizationConfig"]["bnb_4bit_quant_type"], "nf4")
        self.assertTrue(q["QuantizationConfig"]["bnb_4bit_use_double_quant"])
        self.assertNotIn("QuantizationConfig", config.defaults("lora"))
        # kaitoflow's own: the image downloads the weights, and 5% of the rows measure eval_loss.
        self.assertIs(q["ModelConfig"]["local_files_only"], False)
        self.assertEqual(q["DatasetConfig"]["train_test_split"], 0.95)
        for m in ("lora", "qlora"):
            self.assertEqual(config.validate(config.defaults(m), m), [])


class LoadTest(unittest.TestCase):
    def test_override_merges_over_defaults(self):
        cfg = config.load(json.dumps({"training_config": {"LoraConfig": {"r": 16}}}), "qlora")
        self.assertEqual(cfg["LoraConfig"]["r"], 16)
        self.assertEqual(cfg["LoraConfig"]["lora_alpha"], 8)
        self.assertTrue(cfg["QuantizationConfig"]["load_in_4bit"])

    def test_refusals_name_the_field(self):
        cases = [
            ("lora", {"QuantizationConfig": {"load_in_4bit": True}}, "training_config.QuantizationConfig.load_in_4bit"),
            ("lora", {"QuantizationConfig": {"load_in_8bit": True}}, "training_config.QuantizationConfig.load_in_8bit"),
            (
                "qlora",
                {"QuantizationConfig": {"load_in_4bit": False}},
                "training_config.QuantizationConfig.load_in_4bit",
            ),
            (
                "qlora",
                {"TrainingArguments": {"output_dir": "/tmp/out"}},
                "training_config.TrainingArguments.output_dir",
            ),
            (
                "lora",
                {"TrainingArguments": {"output_dir": "/mnt/../etc"}},
                "training_config.TrainingArguments.output_dir",
            ),
            ("lora", {"TrainingArguments": {"per_device_train_batch_size": 0}}, "per_device_train_batch_size"),
            ("lora", {"LoraConfig": {"r": 1024}}, "training_config.LoraConfig.r"),
            ("lora", {"Optimiser": {}}, "training_config.Optimiser"),
            ("lora", {"DatasetConfig": {"train_test_split": 0}}, "training_config.DatasetConfig.train_test_split"),
            ("lora", {"DatasetConfig": {"train_test_split": 1.5}}, "training_config.DatasetConfig.train_test_split"),
            ("lora", {"DatasetConfig": {"train_test_split": "0.9"}}, "training_config.DatasetConfig.train_test_split"),
            ("lora", {"DatasetConfig": {"train_on_prompt": "yes"}}, "training_config.DatasetConfig.train_on_prompt"),
        ]
        for method, override, field in cases:
            with self.subTest(field=field, override=override):
                with self.assertRaises(ConfigError) as ctx:
                    config.load(json.dumps({"training_config": override}), method)
                self.assertIn(field, str(ctx.exception))

    def test_output_root_outside_a_pod(self):
        text = json.dumps({"TrainingArguments": {"output_dir": "/tmp/run/results"}})
        with self.assertRaises(ConfigError):
            config.load(text, "lora")
        with mock.patch.dict(os.environ, {config.OUTPUT_ROOT_ENV: "/tmp/run"}):
            self.assertEqual(config.load(text, "lora")["TrainingArguments"]["output_dir"], "/tmp/run/results")
            self.assertEqual(config.defaults("lora")["TrainingArguments"]["output_dir"], "/mnt/results")

    def test_every_problem_is_reported(self):
        text = json.dumps({"QuantizationConfig": {"load_in_4bit": True}, "TrainingArguments": {"output_dir": "/tmp"}})
        with self.assertRaises(ConfigError) as ctx:
            config.load(text, "lora")
        self.assertIn("load_in_4bit", str(ctx.exception))
        self.assertIn("output_dir", str(ctx.exception))


if __name__ == "__main__":
    unittest.main()


class AllowlistTest(unittest.TestCase):
    def test_refuses_arguments_outside_the_list(self):
        for section, key, value in (
            ("ModelConfig", "trust_remote_code", True),
            ("TrainingArguments", "push_to_hub", True),
            ("TrainingArguments", "hub_token", "hf_x"),
            ("TrainingArguments", "report_to", "wandb"),
        ):
            with self.subTest(key=key):
                with self.assertRaises(config.ConfigError) as ctx:
                    config.load(json.dumps({"training_config": {section: {key: value}}}), "lora")
                self.assertIn(f"training_config.{section}.{key}", str(ctx.exception))

    def test_defaults_are_allowed(self):
        for method in ("lora", "qlora"):
            self.assertEqual(config.validate(config.defaults(method), method), [])


def limit_cases(limit):
    """(refused, accepted) for a limit of the contract: values just outside its bounds (and of the
    wrong type, or null), and values at them."""
    if limit.kind == "integer":
        refused, accepted = [limit.low - 1, limit.low + 0.5, str(limit.low), True, None], [limit.low]
        if limit.high is not None:
            refused.append(limit.high + 1)
            accepted.append(limit.high)
        return refused, accepted
    if limit.kind == "fraction":
        return [0, math.nextafter(1, 2), -0.5, "0.5", True, None], [1, math.nextafter(0, 1), 0.5]
    if limit.kind == "bool":
        return ["true", 1, None], [True, False]
    raise AssertionError(f"limit of unknown kind {limit.kind!r}")


class LimitsTest(unittest.TestCase):
    """contract.json's value rules, which kaitoflow applies too (TestTrainingConfigLimits)."""

    def test_every_limit_of_the_contract(self):
        self.assertEqual(
            {f"{limit.section}.{limit.key}" for limit in config.LIMITS}, set(CONTRACT["trainingConfig"]["limits"])
        )
        for limit in config.LIMITS:
            refused, accepted = limit_cases(limit)
            for method in ("lora", "qlora"):
                for value in refused:
                    with self.subTest(field=limit.field, method=method, refused=value):
                        cfg = config.merge(config.defaults(method), {limit.section: {limit.key: value}})
                        self.assertIn(f"{limit.field}: {value!r} {limit.rule()}", config.validate(cfg, method))
                        with self.assertRaises(ConfigError) as ctx:
                            config.load(json.dumps({limit.section: {limit.key: value}}), method)
                        self.assertIn(limit.field, str(ctx.exception))
                for value in accepted:
                    with self.subTest(field=limit.field, method=method, accepted=value):
                        cfg = config.merge(config.defaults(method), {limit.section: {limit.key: value}})
                        self.assertEqual(config.validate(cfg, method), [])

    def test_rules_read_as_written_by_hand(self):
        for limit, want in (
            (config.Limit("S", "k", "integer", 1), "must be a positive integer"),
            (config.Limit("S", "k", "integer", 16), "must be an integer of at least 16"),
            (config.Limit("S", "k", "integer", 1, 256), "must be an integer from 1 to 256"),
            (
                config.Limit("S", "k", "fraction", what="the share of rows trained on"),
                "must be a number above 0 and at most 1 (the share of rows trained on)",
            ),
            (config.Limit("S", "k", "bool"), "must be true or false"),
        ):
            self.assertEqual(limit.rule(), want)

    def test_a_limit_the_trainer_cannot_apply_is_refused(self):
        for name, rule in (
            ("Optimiser.lr", {"kind": "fraction"}),
            ("LoraConfig", {"kind": "bool"}),
            ("LoraConfig.r", {"kind": "integer"}),
            ("LoraConfig.r", {"kind": "prime"}),
        ):
            with self.subTest(name=name, rule=rule), self.assertRaises(ValueError):
                config.Limit.from_contract(name, rule)
