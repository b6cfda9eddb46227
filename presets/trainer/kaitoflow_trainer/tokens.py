"""Token ids, labels and batches: the pure-Python half of preparing examples (train turns the
batches into tensors), so label masking is unit-tested without torch."""

from collections.abc import Sequence
from typing import Any

from . import chat
from .chat import Span
from .data import DatasetConfig, Row

# A tokenized example: {"input_ids", "labels"}; a batch of them adds "attention_mask".
Example = dict[str, list[int]]

# What transformers' causal-LM loss leaves out.
IGNORE_INDEX = -100


def labels_for(
    input_ids: Sequence[int], offsets: Sequence[Sequence[int]] | None, spans: list[Span] | None
) -> list[int]:
    """The labels of input_ids: a token's own id where it is learnt, IGNORE_INDEX where not. With
    spans None every token is learnt; otherwise those whose characters ([start, end) in offsets)
    overlap an assistant span. Special tokens the tokenizer added have empty offsets and are not."""
    if spans is None:
        return list(input_ids)
    return [
        t if any(start < b and end > a for a, b in spans) else IGNORE_INDEX
        for t, (start, end) in zip(input_ids, offsets, strict=False)
    ]


def end_with_eos(
    input_ids: list[int], labels: list[int], eos_id: int | None, max_len: int
) -> tuple[list[int], list[int]]:
    """Text no chat template closed gets EOS, learnt where the text before it is, so the model
    learns to stop; not when it already ends with EOS, nor when it may have been truncated."""
    if eos_id is None or (input_ids and input_ids[-1] == eos_id) or len(input_ids) >= max_len:
        return input_ids, labels
    learnt = not labels or labels[-1] != IGNORE_INDEX
    return [*input_ids, eos_id], [*labels, eos_id if learnt else IGNORE_INDEX]


def encode_rows(
    rows: list[Row], shape: str, tokenizer: Any, dataset_cfg: DatasetConfig, max_len: int
) -> tuple[list[Example], dict[str, int]]:
    """(examples, counts): rows as {"input_ids", "labels"}; counts["whole_text"] rows of a
    conversation trained on whole because their assistant turns could not be found, and
    counts["nothing_to_learn"] rows dropped because no learnt token survived truncation.

    The loss covers the assistant's turns only, prompt tokens labelled IGNORE_INDEX as Kaito's SFT
    training does, unless DatasetConfig.train_on_prompt asks for the whole text. Text the chat
    template wrote is tokenized without special tokens: the template already put in BOS and the
    rest, as apply_chat_template(tokenize=True) and serving do."""
    whole = bool(dataset_cfg.get("train_on_prompt", False))
    # Character offsets need a tokenizers-backed ("fast") tokenizer.
    offsets_ok = bool(getattr(tokenizer, "is_fast", False))
    examples, counts = [], {"whole_text": 0, "nothing_to_learn": 0}
    for row in rows:
        text, spans, templated = chat.conversation(row, shape, tokenizer, dataset_cfg)
        if whole:
            spans = None
        elif shape != "text" and (spans is None or not offsets_ok):
            spans = None
            counts["whole_text"] += 1
        enc = tokenizer(
            text,
            add_special_tokens=not templated,
            truncation=True,
            max_length=max_len,
            return_offsets_mapping=spans is not None,
        )
        ids = list(enc["input_ids"])
        labels = labels_for(ids, enc["offset_mapping"] if spans is not None else None, spans)
        if not templated:
            ids, labels = end_with_eos(ids, labels, tokenizer.eos_token_id, max_len)
        if all(label == IGNORE_INDEX for label in labels):
            counts["nothing_to_learn"] += 1
            continue
        examples.append({"input_ids": ids, "labels": labels})
    return examples, counts


def pad_batch(features: Sequence[Example], pad_id: int) -> dict[str, list[list[int]]]:
    """Right-pads features to the longest. Padding is hidden by attention_mask and labelled
    IGNORE_INDEX whatever pad_id is, so a tokenizer without a pad token pads with EOS and EOS still
    counts in the loss where the text has it. (The alternative, adding a pad token, would resize
    the embeddings and make the adapter carry them, and the served base model would not match.)"""
    width = max(len(f["input_ids"]) for f in features)
    batch = {"input_ids": [], "attention_mask": [], "labels": []}
    for f in features:
        n = len(f["input_ids"])
        batch["input_ids"].append(f["input_ids"] + [pad_id] * (width - n))
        batch["attention_mask"].append([1] * n + [0] * (width - n))
        batch["labels"].append(f["labels"] + [IGNORE_INDEX] * (width - n))
    return batch
