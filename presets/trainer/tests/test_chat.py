import unittest

from kaitoflow_trainer import chat


class FakeTokenizer:
    chat_template = "{% for m in messages %}...{% endfor %}"

    def __init__(self):
        self.calls = []

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        self.calls.append((messages, tokenize, add_generation_prompt))
        return "|".join(m["role"] + ":" + m["content"] for m in messages)


class ChatTest(unittest.TestCase):
    def test_uses_the_models_template(self):
        tok = FakeTokenizer()
        row = {"prompt": "2+2?", "completion": "4"}
        self.assertEqual(chat.example_text(row, "prompt_completion", tok), "user:2+2?|assistant:4")
        self.assertEqual(tok.calls[0][1:], (False, False))

    def test_fallback_without_template(self):
        text = chat.example_text({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}, "messages")
        self.assertEqual(text, "<|user|>\nhi<|end|>\n<|assistant|>\nhello<|end|>\n")

    def test_text_is_kept(self):
        self.assertEqual(chat.example_text({"text": "raw"}, "text", FakeTokenizer()), "raw")


if __name__ == "__main__":
    unittest.main()
