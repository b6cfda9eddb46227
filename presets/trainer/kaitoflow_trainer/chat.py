"""Turning examples into training text with the model's chat template, and finding the assistant's
turns in it so the loss can leave the prompt out."""

from collections.abc import Callable
from typing import Any

from .data import DatasetConfig, Message, Row, to_messages

# A [start, end) character span of the rendered text.
Span = tuple[int, int]

# Renders messages, with the generation prompt or without: a conversation as the model reads it.
RenderFn = Callable[[list[Message], bool], str]

# Used only when a tokenizer has no chat template: Phi-3's turn markers, which are plain text to
# any other tokenizer and keep roles unambiguous.
_FALLBACK_TURN = "<|%s|>\n%s<|end|>\n"
_FALLBACK_PROMPT = "<|assistant|>\n"


def fallback_template(messages: list[Message], add_generation_prompt: bool = False) -> str:
    text = "".join(_FALLBACK_TURN % (m["role"], m["content"]) for m in messages)
    return text + _FALLBACK_PROMPT if add_generation_prompt else text


def has_template(tokenizer: Any) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def render(messages: list[Message], tokenizer: Any = None, add_generation_prompt: bool = False) -> str:
    """The conversation as the model expects to read it."""
    if has_template(tokenizer):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return fallback_template(messages, add_generation_prompt)


def assistant_spans(messages: list[Message], render_fn: RenderFn) -> tuple[str, list[Span] | None]:
    """(text, spans): the rendered conversation and the [start, end) character spans of its assistant
    turns. A turn starts where the rendering of the messages before it, with the generation prompt,
    ends (so the role header stays prompt) and ends where the rendering through it ends (so its
    end-of-turn marker is learnt, and the model learns to stop). spans is None when a template does
    not render prefixes of the whole (some rewrite earlier turns, some refuse a partial conversation),
    and the caller trains on all of it."""
    text = render_fn(messages, False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        try:
            # Some templates index messages[0], so an empty conversation is not rendered.
            before = render_fn(messages[:i], True) if i else ""
            through = render_fn(messages[: i + 1], False)
        except Exception:  # noqa: BLE001  the model's own chat template refusing, whatever its type (jinja2, ValueError, ...)
            return text, None
        if not (text.startswith(through) and through.startswith(before)):
            return text, None
        spans.append((len(before), len(through)))
    return text, spans


def conversation(
    row: Row, shape: str, tokenizer: Any = None, dataset_cfg: DatasetConfig | None = None
) -> tuple[str, list[Span] | None, bool]:
    """(text, spans, templated) of one row: its training text; the character spans of the assistant's
    turns, None for plain text (no prompt to leave out); and whether the model's chat template wrote
    the text, in which case it already has the special tokens the model expects."""
    messages = to_messages(row, shape, dataset_cfg)
    if messages is None:
        return row["text"], None, False
    text, spans = assistant_spans(messages, lambda msgs, gen: render(msgs, tokenizer, gen))
    return text, spans, has_template(tokenizer)
