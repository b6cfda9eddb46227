import unittest

from kaitoflow_trainer import tokens
from kaitoflow_trainer.tokens import IGNORE_INDEX

BOS, EOS = 1, 2


class CharTokenizer:
    """One token per character (its code point), with character offsets as a fast tokenizer gives
    them; adds BOS, with empty offsets, when asked for special tokens, as Llama's and Phi-3's do."""

    is_fast = True
    eos_token_id = EOS
    chat_template = None

    def __call__(self, text, add_special_tokens, truncation, max_length, return_offsets_mapping):
        assert truncation
        ids, offsets = [ord(c) for c in text], [(i, i + 1) for i in range(len(text))]
        if add_special_tokens:
            ids, offsets = [BOS, *ids], [(0, 0), *offsets]
        enc = {"input_ids": ids[:max_length]}
        if return_offsets_mapping:
            enc["offset_mapping"] = offsets[:max_length]
        return enc


class TemplateTokenizer(CharTokenizer):
    chat_template = "{{ bos_token }}..."

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        # A template that writes BOS itself, as many do: tokenizing its text must not add another.
        text = chr(BOS) + "".join("[{}]{}[end]".format(m["role"], m["content"]) for m in messages)
        return text + "[assistant]" if add_generation_prompt else text


class SlowTokenizer(CharTokenizer):
    is_fast = False

    def __call__(self, text, add_special_tokens, truncation, max_length, return_offsets_mapping):
        assert not return_offsets_mapping, "slow tokenizers have no offsets"
        return super().__call__(text, add_special_tokens, truncation, max_length, False)


def learnt(example):
    return "".join(
        chr(t) if t > EOS else f"<{t:d}>"
        for t, label in zip(example["input_ids"], example["labels"], strict=False)
        if label != IGNORE_INDEX
    )


PC = {"prompt": "2+2?", "completion": "4"}


def encode(rows, tok, shape="prompt_completion", max_len=512, **dataset_cfg):
    return tokens.encode_rows(rows, shape, tok, dataset_cfg, max_len)


class LabelsTest(unittest.TestCase):
    def test_spans_pick_overlapping_tokens(self):
        ids, offsets = [10, 11, 12, 13], [(0, 0), (0, 2), (2, 4), (4, 6)]
        self.assertEqual(tokens.labels_for(ids, offsets, [(3, 5)]), [IGNORE_INDEX, IGNORE_INDEX, 12, 13])
        self.assertEqual(tokens.labels_for(ids, offsets, []), [IGNORE_INDEX] * 4)
        self.assertEqual(tokens.labels_for(ids, None, None), ids)

    def test_eos_follows_what_it_ends(self):
        self.assertEqual(tokens.end_with_eos([5, 6], [5, 6], EOS, 10), ([5, 6, EOS], [5, 6, EOS]))
        self.assertEqual(
            tokens.end_with_eos([5, 6], [5, IGNORE_INDEX], EOS, 10), ([5, 6, EOS], [5, IGNORE_INDEX, IGNORE_INDEX])
        )
        self.assertEqual(tokens.end_with_eos([5, EOS], [5, EOS], EOS, 10), ([5, EOS], [5, EOS]))
        self.assertEqual(tokens.end_with_eos([5, 6], [5, 6], EOS, 2), ([5, 6], [5, 6]))  # maybe truncated
        self.assertEqual(tokens.end_with_eos([5], [5], None, 10), ([5], [5]))


class EncodeTest(unittest.TestCase):
    def test_prompt_is_left_out_by_default(self):
        (ex,), counts = encode([PC], CharTokenizer())
        self.assertEqual(learnt(ex), "4<|end|>\n<2>")  # the answer, its end of turn, and EOS
        self.assertEqual(ex["input_ids"].count(BOS), 1)
        self.assertEqual(ex["input_ids"][-1], EOS)
        self.assertEqual(counts, {"whole_text": 0, "nothing_to_learn": 0})

    def test_chat_template_text_gets_no_second_bos(self):
        (ex,), _ = encode([PC], TemplateTokenizer())
        self.assertEqual(ex["input_ids"].count(BOS), 1)
        self.assertEqual(ex["input_ids"][0], BOS)
        self.assertEqual(learnt(ex), "4[end]")
        self.assertNotEqual(ex["input_ids"][-1], EOS)  # the template closes the turn itself

    def test_train_on_prompt_learns_everything(self):
        (ex,), _ = encode([PC], TemplateTokenizer(), train_on_prompt=True)
        self.assertEqual(ex["labels"], ex["input_ids"])

    def test_plain_text_is_learnt_whole_and_closed(self):
        (ex,), counts = encode([{"text": "abc"}], CharTokenizer(), shape="text")
        self.assertEqual(ex["input_ids"], [BOS, 97, 98, 99, EOS])
        self.assertEqual(ex["labels"], ex["input_ids"])
        self.assertEqual(counts["whole_text"], 0)

    def test_truncated_answers_are_dropped(self):
        # 34 tokens reach the short answer "a", not the longer prompt's answer "4".
        examples, counts = encode([PC, {"prompt": "q", "completion": "a"}], CharTokenizer(), max_len=34)
        self.assertEqual(len(examples), 1)
        self.assertEqual(counts["nothing_to_learn"], 1)
        self.assertEqual(learnt(examples[0]), "a")  # cut short after it: no EOS taught

    def test_without_offsets_the_whole_text_is_learnt(self):
        (ex,), counts = encode([PC], SlowTokenizer())
        self.assertEqual(ex["labels"], ex["input_ids"])
        self.assertEqual(counts["whole_text"], 1)


class PadTest(unittest.TestCase):
    def test_padding_is_masked_and_eos_is_kept(self):
        batch = tokens.pad_batch(
            [
                {"input_ids": [BOS, 5, EOS], "labels": [IGNORE_INDEX, 5, EOS]},
                {"input_ids": [BOS, 6, 7, 8, EOS], "labels": [IGNORE_INDEX, 6, 7, 8, EOS]},
            ],
            pad_id=EOS,
        )
        self.assertEqual(batch["input_ids"][0], [BOS, 5, EOS, EOS, EOS])
        self.assertEqual(batch["attention_mask"][0], [1, 1, 1, 0, 0])
        self.assertEqual(batch["labels"][0], [IGNORE_INDEX, 5, EOS, IGNORE_INDEX, IGNORE_INDEX])
        self.assertEqual(batch["attention_mask"][1], [1] * 5)


if __name__ == "__main__":
    unittest.main()
