"""Tokenize Arrow tables of valid pairs and pack them into length-grouped padded batches."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
from tokenizers import Tokenizer

from model import tokenization


@dataclasses.dataclass
class PackedBatch:
    """One model call's worth of pairs: padded ids plus the columns the output keeps."""

    rows: pa.Table  # id + keep columns, in the same order as left/right
    left: np.ndarray  # int32[B, Ta]
    right: np.ndarray  # int32[B, Tb]
    real_tokens: int
    scores: np.ndarray | None = None

    def __len__(self) -> int:
        return self.rows.num_rows

    @property
    def computed_tokens(self) -> int:
        return int(self.left.size + self.right.size)


def token_lengths(ids: list[np.ndarray]) -> np.ndarray:
    return np.fromiter((len(r) for r in ids), dtype=np.int64, count=len(ids))


def plan_batches(lengths: np.ndarray, max_batch_size: int, max_batch_tokens: int) -> list[np.ndarray]:
    """Row indices per batch: rows sorted by length, cut so that each batch's padded size
    (rows x longest row) stays within `max_batch_tokens` and `max_batch_size` rows."""
    order = np.argsort(lengths, kind="stable")
    batches, start = [], 0
    n = len(order)
    while start < n:
        end = start + 1
        while end < n and end - start < max_batch_size:
            if (end - start + 1) * lengths[order[end]] > max_batch_tokens:
                break
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


def pack_table(
    tokenizer: Tokenizer,
    table: pa.Table,
    text_columns: tuple[str, str],
    keep_columns: list[str],
    max_batch_size: int,
    max_batch_tokens: int,
    min_tokens: int,
) -> tuple[list[PackedBatch], pa.Table | None]:
    """Packed batches of the table's rows, and the rows that tokenize to nothing (or None).

    `min_tokens` is the number of special tokens the tokenizer always adds: a row whose
    text gives no more than that has nothing to score.
    """
    left = tokenization.encode_batch(tokenizer, table[text_columns[0]].to_pylist())
    right = tokenization.encode_batch(tokenizer, table[text_columns[1]].to_pylist())
    len_l, len_r = token_lengths(left), token_lengths(right)
    empty = (len_l <= min_tokens) | (len_r <= min_tokens)
    no_tokens = None
    if empty.any():
        no_tokens = table.filter(pa.array(empty))
        keep_idx = np.flatnonzero(~empty)
        left = [left[i] for i in keep_idx]
        right = [right[i] for i in keep_idx]
        len_l, len_r = len_l[keep_idx], len_r[keep_idx]
        table = table.take(pa.array(keep_idx))
    rows = table.select(keep_columns)
    out = []
    for idx in plan_batches(np.maximum(len_l, len_r), max_batch_size, max_batch_tokens):
        out.append(
            PackedBatch(
                rows=rows.take(pa.array(idx)),
                left=tokenization.pad([left[i] for i in idx]),
                right=tokenization.pad([right[i] for i in idx]),
                real_tokens=int(len_l[idx].sum() + len_r[idx].sum()),
            )
        )
    return out, no_tokens


def label_table(batch: PackedBatch, threshold: float, schema: pa.Schema) -> pa.Table:
    """The output rows of a scored batch: id, score, is_duplicate and kept columns."""
    scores = np.asarray(batch.scores, dtype=np.float32).reshape(-1)
    rows = batch.rows
    cols = {name: rows[name] for name in rows.column_names}
    cols["score"] = pa.array(scores, pa.float32())
    cols["is_duplicate"] = pa.array(scores >= threshold, pa.bool_())
    return pa.Table.from_pydict({f.name: cols[f.name] for f in schema}, schema=schema)
