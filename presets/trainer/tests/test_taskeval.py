"""Task evaluation's pure-Python half: normalisation, exact match, ROUGE-L, splitting rows into
prompt and reference, the row cap, and how answers are ended. Runs without the ML packages."""

import json
import os
import tempfile
import unittest

from kaitoflow_trainer import DataError, taskeval
from tests.test_chat import FakeTokenizer, RewritingTokenizer
from tests.test_data import DOLLY, write


class WordTokenizer:
    """Ids of whitespace-separated words (1 + their order of first sight), BOS 0 in front when
    special tokens are added; a chat_template only when given one."""

    bos_token_id = 0

    def __init__(self, chat_template=None):
        self.vocab = {}
        self.chat_template = chat_template
        self.special = []

    def __call__(self, text, add_special_tokens=True):
        self.special.append(add_special_tokens)
        ids = [self.vocab.setdefault(w, len(self.vocab) + 1) for w in text.split()]
        return {"input_ids": ([self.bos_token_id] if add_special_tokens else []) + ids}


class TemplatedWordTokenizer(FakeTokenizer, WordTokenizer):
    """FakeTokenizer's template ([role]content[end] turns), its text tokenized by words."""

    def __init__(self):
        FakeTokenizer.__init__(self)
        WordTokenizer.__init__(self, FakeTokenizer.chat_template)


class NormalizeTest(unittest.TestCase):
    def test_rule(self):
        cases = [
            ("  The sky is BLUE . ", "the sky is blue"),
            ("Hello,\n\tworld!", "hello, world"),  # inner punctuation stays; whitespace runs are one space
            ('"Paris."', "paris"),
            ("(yes)", "yes"),
            ("¿Qué?", "qué"),  # Unicode punctuation too
            ("$5", "$5"),  # symbols are no punctuation
            ("...", ""),
            ("", ""),
        ]
        for text, want in cases:
            with self.subTest(text=text):
                self.assertEqual(taskeval.normalize(text), want)

    def test_exact_match(self):
        self.assertEqual(taskeval.exact_match("The sky is blue.", "the  sky is BLUE"), 1.0)
        self.assertEqual(taskeval.exact_match("The sky is blue.", "The sky is grey."), 0.0)
        self.assertEqual(taskeval.exact_match("four", "four ."), 1.0)
        self.assertEqual(taskeval.exact_match("", ""), 1.0)
        self.assertEqual(taskeval.exact_match("", "four"), 0.0)


class RougeTest(unittest.TestCase):
    def test_tokens(self):
        self.assertEqual(
            taskeval.rouge_tokens("The quick-brown fox's_tail, 42!"),
            ["the", "quick", "brown", "fox", "s", "tail", "42"],
        )
        self.assertEqual(taskeval.rouge_tokens("Ça va"), ["ça", "va"])
        self.assertEqual(taskeval.rouge_tokens(" .. "), [])

    def test_lcs(self):
        self.assertEqual(taskeval.lcs_length(list("ABCBDAB"), list("BDCABA")), 4)  # the textbook example
        self.assertEqual(taskeval.lcs_length(list("BDCABA"), list("ABCBDAB")), 4)
        self.assertEqual(taskeval.lcs_length([], ["a"]), 0)
        self.assertEqual(taskeval.lcs_length(["a", "b"], ["a", "b"]), 2)
        self.assertEqual(taskeval.lcs_length(["a", "b"], ["b", "a"]), 1)

    def test_rouge_score_readme_example(self):
        # rouge-score's README: target "The quick brown fox jumps over the lazy dog" (9 tokens),
        # prediction "The quick brown dog jumps on the log." (8). Their longest common subsequence
        # is "the quick brown jumps the" (5), so P = 5/8 = 0.625, R = 5/9 = 0.5556 and
        # F1 = 2PR/(P+R) = 2*5/(8+9) = 10/17 = 0.5882, what the README prints for rougeL.
        got = taskeval.rouge_l("The quick brown dog jumps on the log.", "The quick brown fox jumps over the lazy dog")
        self.assertAlmostEqual(got.precision, 5 / 8, places=12)
        self.assertAlmostEqual(got.recall, 5 / 9, places=12)
        self.assertAlmostEqual(got.fmeasure, 10 / 17, places=12)
        self.assertAlmostEqual(got.fmeasure, 0.5882352941176471, places=12)

    def test_hand_computed(self):
        # "one plus one is two ." against "one plus two is three .": tokens [one plus one is two] and
        # [one plus two is three]; LCS "one plus is" or "one plus two" (3), P = R = 3/5, F1 = 0.6.
        got = taskeval.rouge_l("one plus one is two .", "one plus two is three .")
        for value in got:
            self.assertAlmostEqual(value, 0.6, places=12)
        # [the sky is blue] against [sky blue]: LCS 2, P = 2/4, R = 2/2, F1 = 2 * 0.5 / 1.5 = 2/3.
        got = taskeval.rouge_l("The sky is blue.", "sky, blue")
        self.assertEqual((got.precision, got.recall), (0.5, 1.0))
        self.assertAlmostEqual(got.fmeasure, 2 / 3, places=12)
        # "four ." against it: no token shared.
        self.assertEqual(taskeval.rouge_l("four .", "one plus two is three ."), taskeval.RougeScore(0.0, 0.0, 0.0))
        # Case and punctuation do not count.
        self.assertEqual(taskeval.rouge_l("Blue!", "blue").fmeasure, 1.0)

    def test_empty(self):
        zero = taskeval.RougeScore(0.0, 0.0, 0.0)
        self.assertEqual(taskeval.rouge_l("", "the sky"), zero)
        self.assertEqual(taskeval.rouge_l("the sky", ""), zero)
        self.assertEqual(taskeval.rouge_l("", ""), zero)  # as rouge-score scores it
        self.assertEqual(taskeval.rouge_l("?!", "..."), zero)

    def test_score_is_the_mean(self):
        em, rl = taskeval.score(["The sky is blue.", "four ."], ["the sky is blue", "one plus two is three ."])
        self.assertEqual(em, 0.5)
        self.assertEqual(rl, 0.5)
        self.assertEqual(taskeval.score([], []), (0.0, 0.0))
        with self.assertRaises(ValueError):
            taskeval.score(["a"], ["a", "b"])


class RowsTest(unittest.TestCase):
    def test_settings(self):
        self.assertEqual(taskeval.settings({}), (32, 64))
        self.assertEqual(taskeval.settings({"task_eval_rows": 0, "task_eval_max_new_tokens": 8}), (0, 8))

    def test_prompt_and_reference(self):
        row = {"instruction": "2+2?", "response": "4"}
        cfg = {"context_column": "instruction", "response_column": "response"}
        self.assertEqual(
            taskeval.prompt_and_reference(row, "prompt_completion", None, cfg),
            ("<|user|>\n2+2?<|end|>\n<|assistant|>\n", "4"),
        )
        # Messages: the last assistant turn is the reference; every turn before it the prompt,
        # rendered by the model's template with its generation prompt.
        prompt, ref = taskeval.prompt_and_reference(DOLLY, "messages", FakeTokenizer())
        self.assertEqual(ref, "Virgin Australia commenced services on 31 August 2000.")
        self.assertEqual(
            prompt,
            "[system]You are a helpful assistant.[end][user]When did Virgin Australia start operating?[end][assistant]",
        )
        two = {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"},
                {"role": "assistant", "content": "d"},
                {"role": "user", "content": "thanks"},
            ]
        }
        self.assertEqual(
            taskeval.prompt_and_reference(two, "messages", FakeTokenizer()),
            ("[user]a[end][assistant]b[end][user]c[end][assistant]", "d"),
        )

    def test_rows_without_an_answer(self):
        self.assertIsNone(taskeval.prompt_and_reference({"text": "x"}, "text"))
        only_user = {"messages": [{"role": "user", "content": "a"}]}
        self.assertIsNone(taskeval.prompt_and_reference(only_user, "messages"))
        answer_first = {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}
        self.assertIsNone(taskeval.prompt_and_reference(answer_first, "messages"))

    def test_build_caps_the_rows(self):
        rows = [{"prompt": f"q{i:d}", "completion": f"a{i:d}"} for i in range(10)]
        tok = WordTokenizer()
        task_set, skipped = taskeval.build(rows, "prompt_completion", tok, {}, 3, 64)
        self.assertEqual((len(task_set.prompts), skipped), (3, 0))
        self.assertEqual(task_set.references, ["a0", "a1", "a2"])
        # No chat template: the fallback's text gets the tokenizer's special tokens, as in training.
        self.assertEqual(set(tok.special), {True})
        self.assertEqual(task_set.prompts[0][0], tok.bos_token_id)
        # More than there are: all of them; 0: none.
        self.assertEqual(len(taskeval.build(rows, "prompt_completion", tok, {}, 32, 64)[0].prompts), 10)
        self.assertEqual(taskeval.build(rows, "prompt_completion", tok, {}, 0, 64)[0], taskeval.TaskSet([], []))

    def test_build_passes_over_rows_without_an_answer(self):
        rows = [
            {"messages": [{"role": "user", "content": "a"}]},
            DOLLY,
            {"messages": [{"role": "assistant", "content": "a"}]},
            DOLLY,
            DOLLY,
        ]
        tok = TemplatedWordTokenizer()
        task_set, skipped = taskeval.build(rows, "messages", tok, {}, 2, 64)
        self.assertEqual((len(task_set.prompts), skipped), (2, 2))  # the third DOLLY is past the cap
        # A template wrote the text: no special tokens added to it.
        self.assertEqual(set(tok.special), {False})

    def test_build_keeps_a_long_prompt_s_end(self):
        rows = [{"prompt": " ".join(f"w{i:d}" for i in range(100)), "completion": "a"}]
        tok = WordTokenizer()
        task_set, _ = taskeval.build(rows, "prompt_completion", tok, {}, 1, 16)
        (prompt,) = task_set.prompts
        self.assertEqual(len(prompt), 16)
        full = tok(taskeval.prompt_and_reference(rows[0], "prompt_completion")[0])["input_ids"]
        self.assertEqual(prompt, full[-16:])

    def test_load_rows(self):
        with tempfile.TemporaryDirectory() as d:
            path = write(d, "eval.jsonl", "\n".join(json.dumps(DOLLY) for _ in range(3)) + "\n")
            self.assertEqual(taskeval.load_rows(path, {}), ("messages", [DOLLY] * 3))
            # A directory of them too.
            self.assertEqual(taskeval.load_rows(d, {}), ("messages", [DOLLY] * 3))
            text = write(d, "text.jsonl", '{"text": "x"}\n')
            with self.assertRaises(DataError) as ctx:
                taskeval.load_rows(text, {})
            self.assertIn("plain-text", str(ctx.exception))
            with self.assertRaises(DataError) as ctx:
                taskeval.load_rows(os.path.join(d, "missing.jsonl"), {})
            self.assertIn("missing.jsonl", str(ctx.exception))


class GenerationTest(unittest.TestCase):
    def test_end_of_turn(self):
        self.assertEqual(taskeval.end_of_turn(None), "<|end|>")  # the fallback template's
        self.assertEqual(taskeval.end_of_turn(FakeTokenizer()), "[end]")
        # A template that renders a conversation otherwise than its prefix: no marker known.
        self.assertEqual(taskeval.end_of_turn(RewritingTokenizer()), "")

    def test_generation_stops(self):
        tok = TemplatedWordTokenizer()
        marker_id = tok("[end]", add_special_tokens=False)["input_ids"][0]
        gen = taskeval.generation(tok, [7, None, 3, 7], 64, 0, 9)
        self.assertEqual(gen.stops, tuple(sorted({3, 7, marker_id})))
        self.assertEqual((gen.marker, gen.batch_size, gen.pad_id, gen.max_new_tokens), ("", 1, 9, 64))

        class SplittingTokenizer(FakeTokenizer):
            def __call__(self, text, add_special_tokens=True):
                return {"input_ids": [ord(c) for c in text]}

        gen = taskeval.generation(SplittingTokenizer(), [2], 8, 4, 2)
        self.assertEqual((gen.stops, gen.marker), ((2,), "[end]"))  # cut from the text instead

    def test_left_pad_and_cut(self):
        ids, mask = taskeval.left_pad([[5, 6, 7], [8]], 0)
        self.assertEqual(ids, [[5, 6, 7], [0, 0, 8]])
        self.assertEqual(mask, [[1, 1, 1], [0, 0, 1]])
        self.assertEqual(taskeval.cut_at([4, 5, 2, 6, 2], (2,)), [4, 5])
        self.assertEqual(taskeval.cut_at([4, 5], (2,)), [4, 5])
        self.assertEqual(taskeval.cut_at([2], (2,)), [])


if __name__ == "__main__":
    unittest.main()
