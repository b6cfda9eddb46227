import unittest

from kaitoflow_trainer import chat


class FakeTokenizer:
    """Renders like a chat template: [role]content[end] per turn, [assistant] as generation prompt."""

    chat_template = "{% for m in messages %}...{% endfor %}"

    def __init__(self):
        self.calls = []

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        self.calls.append((tokenize, add_generation_prompt))
        text = "".join("[{}]{}[end]".format(m["role"], m["content"]) for m in messages)
        return text + "[assistant]" if add_generation_prompt else text


class RewritingTokenizer(FakeTokenizer):
    """Like templates that drop earlier turns' reasoning: a prefix is not rendered as in the whole."""

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return super().apply_chat_template(messages, tokenize, add_generation_prompt) + f"[n={len(messages):d}]"


class RefusingTokenizer(FakeTokenizer):
    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        if add_generation_prompt:
            raise ValueError("this template has no generation prompt")
        return super().apply_chat_template(messages, tokenize, add_generation_prompt)


def turns(*pairs):
    return {"messages": [{"role": r, "content": c} for r, c in pairs]}


def spanned(text, spans):
    return [text[a:b] for a, b in spans]


class ConversationTest(unittest.TestCase):
    def test_uses_the_models_template(self):
        tok = FakeTokenizer()
        text, spans, templated = chat.conversation({"prompt": "2+2?", "completion": "4"}, "prompt_completion", tok)
        self.assertEqual(text, "[user]2+2?[end][assistant]4[end]")
        self.assertTrue(templated)
        self.assertEqual(spanned(text, spans), ["4[end]"])  # the answer and its end-of-turn, not the header
        self.assertTrue(all(tokenize is False for tokenize, _ in tok.calls))

    def test_every_assistant_turn_is_found(self):
        row = turns(
            ("system", "be brief"), ("user", "hi"), ("assistant", "hello"), ("user", "2+2?"), ("assistant", "4")
        )
        text, spans, _ = chat.conversation(row, "messages", FakeTokenizer())
        self.assertEqual(spanned(text, spans), ["hello[end]", "4[end]"])

    def test_fallback_without_template(self):
        text, spans, templated = chat.conversation(turns(("user", "hi"), ("assistant", "hello")), "messages")
        self.assertEqual(text, "<|user|>\nhi<|end|>\n<|assistant|>\nhello<|end|>\n")
        self.assertEqual(spanned(text, spans), ["hello<|end|>\n"])
        self.assertFalse(templated)

    def test_text_is_kept(self):
        self.assertEqual(chat.conversation({"text": "raw"}, "text", FakeTokenizer()), ("raw", None, False))

    def test_unsplittable_templates_give_no_spans(self):
        row = turns(("user", "hi"), ("assistant", "hello"))
        for tok in (RewritingTokenizer(), RefusingTokenizer()):
            with self.subTest(tok=type(tok).__name__):
                text, spans, templated = chat.conversation(row, "messages", tok)
                self.assertTrue(text.startswith("[user]hi[end][assistant]hello[end]"))
                self.assertIsNone(spans)
                self.assertTrue(templated)

    def test_a_leading_assistant_turn(self):
        _text, spans, _ = chat.conversation(
            turns(("assistant", "welcome"), ("user", "hi")), "messages", FakeTokenizer()
        )
        self.assertEqual(spans, [(0, len("[assistant]welcome[end]"))])


if __name__ == "__main__":
    unittest.main()
