"""Finding, reading and recognising a tuning dataset.

Accepted files: parquet (read with pyarrow, which the trainer image has), jsonl, json and csv.
Accepted shapes, decided from the first row:
  messages           a list of {"role", "content"} turns (OpenAI chat style; the dolly-15k-oai-style parquet)
  prompt_completion  "prompt" and "completion" columns (or DatasetConfig context_column/response_column)
  text               a "text" column of ready-made training text
"""

import csv
import json
import math
import os
import random
from typing import Any

from . import DataError

# A row of a dataset file, a turn of a conversation ({"role", "content"}), and the training config's
# DatasetConfig section.
Row = dict[str, Any]
Message = dict[str, str]
DatasetConfig = dict[str, Any]

ROLES = ("system", "user", "assistant", "tool")
SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")


def find_files(input_dir: str) -> list[str]:
    """Every dataset file under input_dir, sorted, or input_dir itself when it is one dataset file
    (the trainer's --eval-data may name either); DataError when there is none."""
    if os.path.isfile(input_dir) and input_dir.lower().endswith(SUFFIXES):
        return [input_dir]
    found = []
    for root, _dirs, files in os.walk(input_dir):
        for name in files:
            if name.lower().endswith(SUFFIXES) and not name.startswith("."):
                found.append(os.path.join(root, name))
    if not found:
        raise DataError("no dataset file ({}) under {}".format(", ".join(SUFFIXES), input_dir))
    return sorted(found)


def read_rows(path: str) -> list[Any]:
    """The rows of one file, as dicts."""
    lower = path.lower()
    try:
        if lower.endswith(".parquet"):
            try:
                import pyarrow.parquet as pq
            except ImportError as exc:
                raise DataError(f"{path}: reading parquet needs pyarrow") from exc
            return pq.read_table(path).to_pylist()
        if lower.endswith(".jsonl"):
            rows = []
            with open(path, encoding="utf-8") as f:
                for n, raw in enumerate(f, 1):
                    line = raw.strip()
                    if not line:
                        continue
                    try:
                        rows.append(json.loads(line))
                    except ValueError as exc:
                        raise DataError(f"{path} line {n:d}: not JSON: {exc}") from exc
            return rows
        if lower.endswith(".json"):
            with open(path, encoding="utf-8") as f:
                try:
                    doc = json.load(f)
                except ValueError as exc:
                    raise DataError(f"{path}: not JSON: {exc}") from exc
            if isinstance(doc, dict) and isinstance(doc.get("data"), list):
                doc = doc["data"]
            if not isinstance(doc, list):
                raise DataError(f'{path}: want a list of rows (or {{"data": [...]}})')
            return doc
        if lower.endswith(".csv"):
            with open(path, encoding="utf-8", newline="") as f:
                return list(csv.DictReader(f))
    except OSError as exc:
        raise DataError(f"{path}: {exc.strerror or exc}") from exc
    raise DataError(f"{path}: unsupported file type")


def _columns(dataset_cfg: DatasetConfig | None) -> tuple[str, str]:
    cfg = dataset_cfg or {}
    return cfg.get("context_column", "prompt"), cfg.get("response_column", "completion")


def detect_shape(row: Any, dataset_cfg: DatasetConfig | None = None) -> str:
    """The shape of a row: "messages", "prompt_completion" or "text"."""
    if not isinstance(row, dict):
        raise DataError(f"rows must be objects, got {type(row).__name__}")
    prompt, completion = _columns(dataset_cfg)
    if "messages" in row:
        msgs = row["messages"]
        if isinstance(msgs, str):  # csv cells carry JSON text
            try:
                msgs = json.loads(msgs)
            except ValueError as exc:
                raise DataError("messages: not a JSON list of turns") from exc
        if not isinstance(msgs, list) or not msgs:
            raise DataError("messages: want a non-empty list of {role, content} turns")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise DataError(f"messages[{i:d}]: want {{role: {'|'.join(ROLES)}, content: text}}")
        return "messages"
    if prompt in row and completion in row:
        return "prompt_completion"
    if isinstance(row.get("text"), str):
        return "text"
    raise DataError(
        "unrecognised row with columns [{}]: want messages, {} + {}, or text".format(
            ", ".join(sorted(map(str, row))), prompt, completion
        )
    )


def to_messages(row: Row, shape: str, dataset_cfg: DatasetConfig | None = None) -> list[Message] | None:
    """The conversation of a row, or None for plain text."""
    if shape == "messages":
        msgs = row["messages"]
        if isinstance(msgs, str):
            msgs = json.loads(msgs)
        return [{"role": m["role"], "content": m["content"]} for m in msgs]
    if shape == "prompt_completion":
        prompt, completion = _columns(dataset_cfg)
        return [
            {"role": "user", "content": str(row[prompt])},
            {"role": "assistant", "content": str(row[completion])},
        ]
    return None


def load_examples(input_dir: str, dataset_cfg: DatasetConfig | None = None) -> tuple[str, list[Row]]:
    """(shape, rows) of every file under input_dir (or of input_dir, one file). All files must
    share one shape."""
    shape, rows = None, []
    for path in find_files(input_dir):
        file_rows = read_rows(path)
        if not file_rows:
            continue
        s = detect_shape(file_rows[0], dataset_cfg)
        if shape is not None and s != shape:
            raise DataError(f"{path} has shape {s}, earlier files {shape}: use one shape")
        shape = s
        for n, row in enumerate(file_rows):
            if detect_shape(row, dataset_cfg) != shape:
                raise DataError(f"{path} row {n:d}: shape differs from the first row's ({shape})")
        rows.extend(file_rows)
    if not rows:
        raise DataError(f"the dataset under {input_dir} has no rows")
    return shape, rows


def split_rows(rows: list[Row], train_fraction: float, seed: Any) -> tuple[list[Row], list[Row]]:
    """(train, held_out): Kaito's train_test_split is the share of rows trained on; the rest, drawn
    with seed so a retry holds out the same rows, measure eval_loss. Below 1, at least one row is
    held out and one kept whenever there are two."""
    n = len(rows)
    if train_fraction >= 1 or n < 2:
        return list(rows), []
    # round() first: 1 - 0.95 is 0.050000000000000044, and 20 rows must hold out 1, not 2.
    n_eval = min(n - 1, max(1, math.ceil(round(n * (1 - train_fraction), 9))))
    held = set(random.Random(seed).sample(range(n), n_eval))
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]
