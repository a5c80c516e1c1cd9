"""Tokenize Arrow tables of valid pairs and pack them into length-grouped padded batches."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
from tokenizers import Tokenizer

from model.tokenization import encode_texts, pad_rows, token_lengths


@dataclasses.dataclass
class PackedBatch:
    """One model call's worth of pairs: padded ids plus the columns the output keeps."""

    rows: pa.Table  # the pairs' input rows, in the same order as left/right
    left: np.ndarray  # int32[B, Ta]
    right: np.ndarray  # int32[B, Tb]
    real_tokens: int
    scores: np.ndarray | None = None

    def __len__(self) -> int:
        return self.rows.num_rows

    @property
    def computed_tokens(self) -> int:
        return int(self.left.size + self.right.size)


def pair_order(len_a: np.ndarray, len_b: np.ndarray, step: int = 4) -> np.ndarray:
    """Row order for pair batches: by left length in steps of `step` tokens, and within
    a step by right length, alternately up and down (a snake through the grid), so that
    neighbours are close in both lengths. Each side is padded to its own longest row, so
    sorting by the longer side alone leaves the shorter side's padding to chance."""
    band = np.asarray(len_a) // step
    return np.lexsort((np.where(band % 2 == 0, len_b, -np.asarray(len_b)), band))


def plan_batches(
    lengths: np.ndarray, max_batch_size: int, max_batch_tokens: int,
    order: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Row indices per batch: rows in `order` (default: sorted by length), cut so that
    each batch's padded size (rows x longest row) stays within `max_batch_tokens` and
    `max_batch_size` rows."""
    order = np.argsort(lengths, kind="stable") if order is None else np.asarray(order)
    ordered = np.asarray(lengths)[order]
    batches, start, n = [], 0, len(order)
    while start < n:
        window = np.maximum.accumulate(ordered[start : start + max_batch_size])
        # A batch of the first j rows pads to j x window[j-1] tokens (the running
        # longest); that never decreases in j, hence a binary search.
        padded = np.arange(1, len(window) + 1) * window
        size = max(1, int(np.searchsorted(padded, max_batch_tokens, side="right")))
        batches.append(order[start : start + size])
        start += size
    return batches


def padded_tokens(batches: list[np.ndarray], len_a: np.ndarray, len_b: np.ndarray) -> int:
    """Tokens the model computes for these pair batches (each side padded on its own)."""
    return int(sum(len(i) * (int(len_a[i].max()) + int(len_b[i].max())) for i in batches if len(i)))


def plan_pair_batches(
    len_a: np.ndarray, len_b: np.ndarray, max_batch_size: int, max_batch_tokens: int
) -> list[np.ndarray]:
    """Pair batches under the limits (on the longer side), in whichever of two orders
    pads less here: by longer side (best when a pair's texts are alike in length) or
    `pair_order` (best when they are not, given enough rows per batch to choose from)."""
    longer = np.maximum(len_a, len_b)
    plans = [
        plan_batches(longer, max_batch_size, max_batch_tokens),
        plan_batches(longer, max_batch_size, max_batch_tokens, pair_order(len_a, len_b)),
    ]
    return min(plans, key=lambda plan: padded_tokens(plan, len_a, len_b))


def pack_table(
    tokenizer: Tokenizer,
    table: pa.Table,
    text_columns: tuple[str, str],
    max_batch_size: int,
    max_batch_tokens: int,
    min_tokens: int,
) -> tuple[list[PackedBatch], pa.Table | None]:
    """Packed batches of the table's rows, and the rows that tokenize to nothing (or None).

    `min_tokens` is the number of special tokens the tokenizer always adds: a row whose
    text gives no more than that has nothing to score.
    """
    left = encode_texts(tokenizer, table[text_columns[0]])
    right = encode_texts(tokenizer, table[text_columns[1]])
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
    out = []
    for idx in plan_pair_batches(len_l, len_r, max_batch_size, max_batch_tokens):
        out.append(
            PackedBatch(
                rows=table.take(pa.array(idx)),
                left=pad_rows(left, len_l, idx),
                right=pad_rows(right, len_r, idx),
                real_tokens=int(len_l[idx].sum() + len_r[idx].sum()),
            )
        )
    return out, no_tokens


def label_table(batch, threshold: float, schema: pa.Schema) -> pa.Table:
    """The output rows of a scored batch: id, score, is_duplicate and kept columns; with
    the cascade (`pipeline.rerank.Decided` batches) first_score and decided_by too."""
    scores = np.asarray(batch.scores, dtype=np.float32).reshape(-1)
    rows = batch.rows
    cols = {f.name: rows[f.name] for f in schema if f.name in rows.column_names}
    cols["score"] = pa.array(scores, pa.float32())
    # Compared in float64: numpy would round the threshold to float32 (NEP 50), and a
    # score of float32(0.7) = 0.69999999 would be a duplicate at threshold 0.7 although
    # anyone reading the stored score back sees it below the threshold.
    cols["is_duplicate"] = pa.array(scores.astype(np.float64) >= threshold, pa.bool_())
    if "decided_by" in schema.names:
        cols["first_score"] = pa.array(np.asarray(batch.first_scores, np.float32), pa.float32())
        cols["decided_by"] = pa.repeat(pa.scalar(batch.decided_by), len(scores))
    return pa.Table.from_pydict({f.name: cols[f.name] for f in schema}, schema=schema)
