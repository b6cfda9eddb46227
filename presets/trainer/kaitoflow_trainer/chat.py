"""Turning examples into training text with the model's chat template."""

from .data import to_messages

# Used only when a tokenizer has no chat template: Phi-3's turn markers, which are plain text to
# any other tokenizer and keep roles unambiguous.
_FALLBACK_TURN = "<|%s|>\n%s<|end|>\n"


def fallback_template(messages):
    return "".join(_FALLBACK_TURN % (m["role"], m["content"]) for m in messages)


def render(messages, tokenizer=None):
    """The conversation as the model expects to read it."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    return fallback_template(messages)


def example_text(row, shape, tokenizer=None, dataset_cfg=None):
    """The training text of one row."""
    messages = to_messages(row, shape, dataset_cfg)
    if messages is None:
        return row["text"]
    return render(messages, tokenizer)
