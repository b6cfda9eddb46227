"""Task evaluation: the answers a model generates for held-out prompts (or a user's eval set, the
trainer's --eval-data), scored against each row's reference answer. Eval loss says how well the
model predicts the reference token by token; these say whether what it actually writes, decoding
greedily, is the answer:

  exact match  1 when the answer and the reference are equal after normalize() (lowercase,
               whitespace collapsed, punctuation around the whole stripped), else 0
  ROUGE-L F1   the longest common subsequence of their tokens (rouge_tokens()), as an F-measure
               with beta 1 of its precision (LCS / answer tokens) and recall (LCS / reference
               tokens): Lin 2004, and Google's rouge-score rougeL without stemming

A row is split into prompt and reference by data.to_messages: the reference is its last assistant
turn, the prompt every turn before it, rendered as the model reads it (chat.render, with the
generation prompt). Plain-text rows have no such split and are not task-evaluated.

The scoring is pure Python, unit-tested without the ML packages; generate() takes torch from its
caller, as train passes it.
"""

import dataclasses
import os
import re
import unicodedata
from collections.abc import Sequence
from types import ModuleType
from typing import Any, NamedTuple

from . import DataError, chat, data
from .data import DatasetConfig, Row

# DatasetConfig's settings of task evaluation (contract.json's trainingConfig.limits bound them):
# the rows scored, at most (0: no task evaluation), and the tokens generated for each, at most.
ROWS_KEY, MAX_NEW_TOKENS_KEY = "task_eval_rows", "task_eval_max_new_tokens"
DEFAULT_ROWS, DEFAULT_MAX_NEW_TOKENS = 32, 64

# A probe conversation: where the template closes the assistant's turn after it ("pong") is the
# text its end-of-turn marker is.
_PROBE = [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong"}]


class RougeScore(NamedTuple):
    precision: float
    recall: float
    fmeasure: float


@dataclasses.dataclass(frozen=True)
class TaskSet:
    """The rows task evaluation scores: each prompt's token ids and its reference answer."""

    prompts: list[list[int]]
    references: list[str]


@dataclasses.dataclass(frozen=True)
class Generation:
    """How answers are generated: greedily, batch_size prompts at a time (left-padded with pad_id),
    up to max_new_tokens each, ending at any of stops (token ids) or at marker (the template's
    end-of-turn text, where no single token is it)."""

    max_new_tokens: int
    batch_size: int
    pad_id: int
    stops: tuple[int, ...] = ()
    marker: str = ""


def settings(dataset_cfg: DatasetConfig) -> tuple[int, int]:
    """(rows, max_new_tokens): DatasetConfig's task_eval_rows and task_eval_max_new_tokens, or
    their defaults (32 rows, 64 tokens)."""
    rows = dataset_cfg.get(ROWS_KEY, DEFAULT_ROWS)
    max_new = dataset_cfg.get(MAX_NEW_TOKENS_KEY, DEFAULT_MAX_NEW_TOKENS)
    return int(rows), int(max_new)


def _edge(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch).startswith("P")


def normalize(text: str) -> str:
    """text as exact match compares it: lowercased, every run of whitespace one space, and the
    punctuation (Unicode category P: . , ! ? ' " - ( ) and the like) and whitespace around the whole
    stripped; punctuation inside it, and symbols such as $ % +, stay. "  The sky is BLUE . " is
    "the sky is blue"."""
    words = " ".join(text.lower().split())
    start, end = 0, len(words)
    while start < end and _edge(words[start]):
        start += 1
    while end > start and _edge(words[end - 1]):
        end -= 1
    return words[start:end]


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when prediction and reference are equal after normalize(), else 0.0."""
    return 1.0 if normalize(prediction) == normalize(reference) else 0.0


def rouge_tokens(text: str) -> list[str]:
    """ROUGE's tokens: lowercase runs of letters and digits, split at whitespace, punctuation and
    anything else (underscore too). For ASCII text this is rouge-score's tokenizer without stemming;
    letters outside ASCII are kept as letters, where rouge-score drops them."""
    return re.findall(r"[^\W_]+", text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """The length of the longest common subsequence of a and b: the textbook dynamic programme, one
    row at a time. Written here, not taken from rouge-score or nltk: a few lines of pure Python need
    no dependency in the trainer image's hashed locks, and stay testable without the ML packages."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> RougeScore:
    """ROUGE-L of prediction against reference: precision LCS/len(prediction), recall
    LCS/len(reference), F1 = 2PR/(P+R) (in tokens, rouge_tokens()). All 0 when either has no token or
    they share none, as rouge-score scores them."""
    pred, ref = rouge_tokens(prediction), rouge_tokens(reference)
    if not pred or not ref:
        return RougeScore(0.0, 0.0, 0.0)
    lcs = lcs_length(pred, ref)
    precision, recall = lcs / len(pred), lcs / len(ref)
    f = 2 * precision * recall / (precision + recall) if lcs else 0.0
    return RougeScore(precision, recall, f)


def score(predictions: Sequence[str], references: Sequence[str]) -> tuple[float, float]:
    """(exact match, ROUGE-L F1), each the mean over the pairs; (0, 0) for none."""
    if not references:
        return 0.0, 0.0
    pairs = list(zip(predictions, references, strict=True))
    em = sum(exact_match(p, r) for p, r in pairs) / len(pairs)
    rl = sum(rouge_l(p, r).fmeasure for p, r in pairs) / len(pairs)
    return em, rl


def prompt_and_reference(
    row: Row, shape: str, tokenizer: Any = None, dataset_cfg: DatasetConfig | None = None
) -> tuple[str, str] | None:
    """(prompt, reference) of a row: the turns before its last assistant turn, rendered with the
    generation prompt as the model reads them, and that turn's content. None for plain text, and for
    a conversation with no assistant turn or none after a turn that asks for it."""
    messages = data.to_messages(row, shape, dataset_cfg)
    if messages is None:
        return None
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=0)
    if not last:
        return None
    return chat.render(messages[:last], tokenizer, add_generation_prompt=True), messages[last]["content"]


def build(
    rows: Sequence[Row], shape: str, tokenizer: Any, dataset_cfg: DatasetConfig, cap: int, max_len: int
) -> tuple[TaskSet, int]:
    """(task set, skipped): the first cap rows that split into prompt and reference, their prompts
    tokenized as training tokenizes text (no special tokens added to what a chat template wrote) and
    cut to their last max_len tokens; skipped counts the rows passed over before cap was reached."""
    templated = chat.has_template(tokenizer)
    prompts, references, skipped = [], [], 0
    for row in rows:
        if len(prompts) >= cap:
            break
        try:
            pair = prompt_and_reference(row, shape, tokenizer, dataset_cfg)
        except Exception:  # noqa: BLE001  the model's own chat template refusing, whatever its type
            pair = None
        if pair is None:
            skipped += 1
            continue
        ids = list(tokenizer(pair[0], add_special_tokens=not templated)["input_ids"])
        prompts.append(ids[-max_len:])
        references.append(pair[1])
    return TaskSet(prompts, references), skipped


def load_rows(path: str, dataset_cfg: DatasetConfig) -> tuple[str, list[Row]]:
    """(shape, rows) of a user's eval set: a dataset file, or a directory of them, in any shape
    data reads except plain text, which has no reference answer to score against."""
    if not os.path.exists(path):
        raise DataError(f"--eval-data {path}: no such file or directory")
    shape, rows = data.load_examples(path, dataset_cfg)
    if shape == "text":
        raise DataError(f"--eval-data {path}: plain-text rows have no prompt and reference answer to score")
    return shape, rows


def end_of_turn(tokenizer: Any) -> str:
    """The text the model's chat template (or the fallback one) closes an assistant turn with,
    whitespace stripped ("<|end|>", "<|eot_id|>", "<|im_end|>"); "" when the template does not
    render a turn as its prompt followed by its content."""
    try:
        before = chat.render(_PROBE[:1], tokenizer, add_generation_prompt=True)
        through = chat.render(_PROBE, tokenizer)
    except Exception:  # noqa: BLE001  the model's own chat template refusing, whatever its type
        return ""
    head = before + _PROBE[1]["content"]
    return through[len(head) :].strip() if through.startswith(head) else ""


def _one_token(tokenizer: Any, text: str) -> int | None:
    """The id of text when the tokenizer has it as one token, else None."""
    if not text:
        return None
    enc = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return enc[0] if len(enc) == 1 else None


def generation(tokenizer: Any, eos: Sequence[Any], max_new_tokens: int, batch_size: int, pad_id: int) -> Generation:
    """How to generate answers with tokenizer's model: ending at any of eos (the tokenizer's and the
    generation config's ids; None entries ignored) or at the template's end-of-turn marker, as a stop
    token when the tokenizer has it as one, else cut from the decoded text."""
    marker = end_of_turn(tokenizer)
    marker_id = _one_token(tokenizer, marker)
    stops = {i for i in eos if isinstance(i, int)} | ({marker_id} if marker_id is not None else set())
    return Generation(
        max_new_tokens=max_new_tokens,
        batch_size=max(1, batch_size),
        pad_id=pad_id,
        stops=tuple(sorted(stops)),
        marker="" if marker_id is not None else marker,
    )


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[list[list[int]], list[list[int]]]:
    """(input_ids, attention_mask): seqs padded on the left to the longest, so every prompt ends
    where generation starts."""
    width = max((len(s) for s in seqs), default=0)
    ids = [[pad_id] * (width - len(s)) + list(s) for s in seqs]
    mask = [[0] * (width - len(s)) + [1] * len(s) for s in seqs]
    return ids, mask


def cut_at(ids: Sequence[int], stops: Sequence[int]) -> list[int]:
    """ids up to (not including) the first stop token."""
    for i, t in enumerate(ids):
        if t in stops:
            return list(ids[:i])
    return list(ids)


def generate(model: Any, tokenizer: Any, prompts: list[list[int]], gen: Generation, torch: ModuleType) -> list[str]:
    """The model's greedy answer to each prompt (token ids), decoded without special tokens."""
    device = model.get_input_embeddings().weight.device
    answers = []
    for start in range(0, len(prompts), gen.batch_size):
        ids, mask = left_pad(prompts[start : start + gen.batch_size], gen.pad_id)
        with torch.no_grad():
            out = model.generate(
                input_ids=torch.tensor(ids, dtype=torch.long, device=device),
                attention_mask=torch.tensor(mask, dtype=torch.long, device=device),
                do_sample=False,
                num_beams=1,
                max_new_tokens=gen.max_new_tokens,
                eos_token_id=list(gen.stops) or None,
                pad_token_id=gen.pad_id,
                use_cache=True,
            )
        for seq in out.tolist():
            text = tokenizer.decode(cut_at(seq[len(ids[0]) :], gen.stops), skip_special_tokens=True)
            answers.append(text.split(gen.marker)[0] if gen.marker else text)
    return [a.strip() for a in answers]
