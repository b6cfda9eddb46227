import json
import unittest

from kaitoflow_trainer import ConfigError, config


class DefaultsTest(unittest.TestCase):
    def test_kaito_defaults(self):
        q = config.defaults("qlora")
        self.assertEqual(q["LoraConfig"], {"r": 8, "lora_alpha": 8, "lora_dropout": 0.0})
        self.assertEqual(q["QuantizationConfig"]["bnb_4bit_quant_type"], "nf4")
        self.assertTrue(q["QuantizationConfig"]["bnb_4bit_use_double_quant"])
        self.assertNotIn("QuantizationConfig", config.defaults("lora"))
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
            ("qlora", {"QuantizationConfig": {"load_in_4bit": False}}, "training_config.QuantizationConfig.load_in_4bit"),
            ("qlora", {"TrainingArguments": {"output_dir": "/tmp/out"}}, "training_config.TrainingArguments.output_dir"),
            ("lora", {"TrainingArguments": {"output_dir": "/mnt/../etc"}}, "training_config.TrainingArguments.output_dir"),
            ("lora", {"TrainingArguments": {"per_device_train_batch_size": 0}}, "per_device_train_batch_size"),
            ("lora", {"LoraConfig": {"r": 1024}}, "training_config.LoraConfig.r"),
            ("lora", {"Optimiser": {}}, "training_config.Optimiser"),
        ]
        for method, override, field in cases:
            with self.subTest(field=field, override=override):
                with self.assertRaises(ConfigError) as ctx:
                    config.load(json.dumps({"training_config": override}), method)
                self.assertIn(field, str(ctx.exception))

    def test_every_problem_is_reported(self):
        text = json.dumps({"QuantizationConfig": {"load_in_4bit": True}, "TrainingArguments": {"output_dir": "/tmp"}})
        with self.assertRaises(ConfigError) as ctx:
            config.load(text, "lora")
        self.assertIn("load_in_4bit", str(ctx.exception))
        self.assertIn("output_dir", str(ctx.exception))


if __name__ == "__main__":
    unittest.main()
