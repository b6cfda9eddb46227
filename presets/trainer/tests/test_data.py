import csv
import json
import os
import tempfile
import unittest

from kaitoflow_trainer import DataError, data


def write(dirname, name, text):
    path = os.path.join(dirname, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


DOLLY = {
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "When did Virgin Australia start operating?"},
        {"role": "assistant", "content": "Virgin Australia commenced services on 31 August 2000."},
    ]
}


class ShapeTest(unittest.TestCase):
    def test_shapes(self):
        cases = [
            (DOLLY, "messages"),
            ({"prompt": "2+2?", "completion": "4"}, "prompt_completion"),
            ({"text": "### Question: 2+2?\n### Answer: 4"}, "text"),
            ({"messages": json.dumps(DOLLY["messages"])}, "messages"),  # a csv cell
        ]
        for row, want in cases:
            with self.subTest(want=want):
                self.assertEqual(data.detect_shape(row), want)

    def test_custom_columns(self):
        cfg = {"context_column": "question", "response_column": "answer"}
        row = {"question": "q", "answer": "a"}
        self.assertEqual(data.detect_shape(row, cfg), "prompt_completion")
        self.assertEqual(data.to_messages(row, "prompt_completion", cfg)[1], {"role": "assistant", "content": "a"})

    def test_refusals(self):
        cases = [
            ({"instruction": "x", "output": "y"}, "instruction, output"),
            ({"messages": []}, "non-empty"),
            ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0]"),
            ({"messages": [{"role": "user", "content": 3}]}, "messages[0]"),
            ("just a string", "rows must be objects"),
        ]
        for row, want in cases:
            with self.subTest(want=want):
                with self.assertRaises(DataError) as ctx:
                    data.detect_shape(row)
                self.assertIn(want, str(ctx.exception))


class FilesTest(unittest.TestCase):
    def test_jsonl_json_csv(self):
        with tempfile.TemporaryDirectory() as d:
            write(d, "a.jsonl", json.dumps(DOLLY) + "\n\n" + json.dumps(DOLLY) + "\n")
            write(d, "b.json", json.dumps({"data": [DOLLY]}))
            with open(os.path.join(d, "c.csv"), "w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=["messages"])
                w.writeheader()
                w.writerow({"messages": json.dumps(DOLLY["messages"])})
            shape, rows = data.load_examples(d)
            self.assertEqual(shape, "messages")
            self.assertEqual(len(rows), 4)

    def test_mixed_shapes_refused(self):
        with tempfile.TemporaryDirectory() as d:
            write(d, "a.jsonl", json.dumps(DOLLY) + "\n")
            write(d, "b.jsonl", json.dumps({"text": "x"}) + "\n")
            with self.assertRaises(DataError) as ctx:
                data.load_examples(d)
            self.assertIn("one shape", str(ctx.exception))

    def test_bad_line_is_named(self):
        with tempfile.TemporaryDirectory() as d:
            write(d, "a.jsonl", json.dumps(DOLLY) + "\n{oops\n")
            with self.assertRaises(DataError) as ctx:
                data.load_examples(d)
            self.assertIn("line 2", str(ctx.exception))

    def test_one_file(self):
        with tempfile.TemporaryDirectory() as d:
            path = write(d, "eval.jsonl", json.dumps(DOLLY) + "\n")
            write(d, "other.jsonl", json.dumps(DOLLY) + "\n")
            self.assertEqual(data.find_files(path), [path])
            self.assertEqual(data.load_examples(path), ("messages", [DOLLY]))
            notes = write(d, "notes.txt", "not data")
            with self.assertRaises(DataError):
                data.find_files(notes)

    def test_no_files(self):
        with tempfile.TemporaryDirectory() as d:
            write(d, "README.md", "not data")
            with self.assertRaises(DataError):
                data.find_files(d)


class SplitTest(unittest.TestCase):
    def test_held_out_share(self):
        rows = list(range(100))
        train, held = data.split_rows(rows, 0.95, 42)
        self.assertEqual((len(train), len(held)), (95, 5))
        self.assertEqual(sorted(train + held), rows)
        self.assertEqual(data.split_rows(rows, 0.95, 42), (train, held))  # seeded: a retry holds out the same
        self.assertNotEqual(data.split_rows(rows, 0.95, 7)[1], held)

    def test_small_and_whole(self):
        cases = [
            (20, 0.95, 1),  # not 2: 1 - 0.95 is a hair above 0.05
            (3, 0.95, 1),  # at least one held out
            (2, 0.01, 1),  # and at least one kept
            (1, 0.5, 0),  # one row is all training
            (50, 1, 0),  # train_test_split 1: no eval
        ]
        for n, fraction, want in cases:
            with self.subTest(n=n, fraction=fraction):
                train, held = data.split_rows(list(range(n)), fraction, 42)
                self.assertEqual((len(train), len(held)), (n - want, want))


if __name__ == "__main__":
    unittest.main()
