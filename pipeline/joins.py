"""Joining distinct texts' embeddings back to the pairs that hold them (unique-text mode).

Two strategies, each a Beam stage in `pipeline.stages`:
- side input: one `EmbeddingIndex` of every distinct text, looked up by `attach_embeddings`;
- shuffle: texts and pairs keyed by text-hash bucket; `join_left` attaches the left
  embeddings in one bucket of left texts, `join_right` the right ones.

A pair whose text has no embedding (no tokens, or its encoding failed) is split off as a
reject, with the text's reason (and error).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa

from pipeline.textindex import EmbeddingIndex, TextBatch, text_hash
from pipeline.validate import ERROR, REASON

# Pairs per score_embeddings call: the head is a few small matmuls, so batches can be big.
SCORE_BATCH = 4096


@dataclasses.dataclass
class EmbeddedBatch:
    """Pairs with both texts' embeddings, for one `score_embeddings` call. Same `rows` /
    `scores` as PackedBatch, so thresholding, rejecting and writing are shared."""

    rows: pa.Table  # the pairs' input rows
    left: np.ndarray  # float32[B, D]
    right: np.ndarray  # float32[B, D]
    scores: np.ndarray | None = None

    def __len__(self) -> int:
        return self.rows.num_rows


def _split_failed(
    index: EmbeddingIndex, table: pa.Table, pos: np.ndarray
) -> tuple[pa.Table, np.ndarray, np.ndarray, pa.Table | None]:
    """(rows whose text is embedded, their positions, their row numbers, rejects or None)."""
    ok = index.ok[pos]
    if ok.all():
        return table, pos, np.arange(len(pos)), None
    bad = pa.array(np.flatnonzero(~ok))
    rejects = (
        table.take(bad)
        .append_column(REASON, index.reason.take(pa.array(pos)).take(bad))
        .append_column(ERROR, index.error.take(pa.array(pos)).take(bad))
    )
    keep = np.flatnonzero(ok)
    return table.take(pa.array(keep)), pos[keep], keep, rejects


def _batches(rows: pa.Table, left: np.ndarray, right: np.ndarray,
             batch_size: int) -> list[EmbeddedBatch]:
    return [
        EmbeddedBatch(rows.slice(start, batch_size), left[start : start + batch_size],
                      right[start : start + batch_size])
        for start in range(0, rows.num_rows, batch_size)
    ]


def attach_embeddings(
    index: EmbeddingIndex,
    table: pa.Table,
    text_columns: tuple[str, str],
    batch_size: int = SCORE_BATCH,
) -> tuple[list[EmbeddedBatch], list[pa.Table]]:
    """Batches of pairs with both embeddings, and the rejected rows (with reasons)."""
    rejects = []
    table, pos_a, _, bad = _split_failed(index, table, index.lookup(table[text_columns[0]]))
    if bad is not None:
        rejects.append(bad)
    table, pos_b, kept, bad = _split_failed(index, table, index.lookup(table[text_columns[1]]))
    if bad is not None:
        rejects.append(bad)
    pos_a = pos_a[kept]
    return _batches(table, index.embeddings[pos_a], index.embeddings[pos_b], batch_size), rejects


def split_rows_by_bucket(column, buckets: int) -> list[tuple[int, np.ndarray]]:
    """(bucket, row indices) for the rows of `column`, bucketed by `text_hash`."""
    if buckets <= 1:
        return [(0, np.arange(len(column)))]
    bucket = (text_hash(column) % np.uint64(buckets)).astype(np.int64)
    order = np.argsort(bucket, kind="stable")
    bounds = np.searchsorted(bucket[order], np.arange(buckets + 1))
    return [(b, order[bounds[b] : bounds[b + 1]]) for b in range(buckets)
            if bounds[b + 1] > bounds[b]]


@dataclasses.dataclass
class PairPart:
    """Rows of valid pairs (all input columns) on their way through the shuffle join,
    with the left texts' embeddings once the first join has attached them."""

    table: pa.Table
    left: np.ndarray | None = None  # float32[n, D]

    def __len__(self) -> int:
        return self.table.num_rows


def join_left(
    texts: list[TextBatch], parts: list[pa.Table], text_columns: tuple[str, str],
    buckets: int,
) -> tuple[list[tuple[int, PairPart]], list[pa.Table]]:
    """First join, in one bucket of left texts: attach left embeddings, then key the rows
    by their right text's bucket. Also the rows rejected for their left text."""
    index = EmbeddingIndex.build(texts)
    out, rejects = [], []
    for table in parts:
        table, pos, _, bad = _split_failed(index, table, index.lookup(table[text_columns[0]]))
        if bad is not None:
            rejects.append(bad)
        for b, idx in split_rows_by_bucket(table[text_columns[1]], buckets):
            out.append((b, PairPart(table.take(pa.array(idx)), index.embeddings[pos[idx]])))
    return out, rejects


def join_right(
    texts: list[TextBatch], parts: list[PairPart], text_columns: tuple[str, str],
    batch_size: int = SCORE_BATCH,
) -> tuple[list[EmbeddedBatch], list[pa.Table]]:
    """Second join, in one bucket of right texts: score-ready batches, and the rows
    rejected for their right text."""
    index = EmbeddingIndex.build(texts)
    out, rejects = [], []
    for part in parts:
        table, pos, kept, bad = _split_failed(
            index, part.table, index.lookup(part.table[text_columns[1]]))
        if bad is not None:
            rejects.append(bad)
        out += _batches(table, part.left[kept], index.embeddings[pos], batch_size)
    return out, rejects


def key_texts(batch: TextBatch, buckets: int) -> list[tuple[int, TextBatch]]:
    """(join bucket, the batch's texts of that bucket), without the token ids."""
    out = []
    for b, idx in split_rows_by_bucket(batch.texts, buckets):
        emb = None if batch.embeddings is None else batch.embeddings[idx]
        out.append((b, TextBatch(batch.texts.take(pa.array(idx)), None, 0, emb,
                                 batch.reason, batch.error)))
    return out


def key_pairs(table: pa.Table, text_column: str, buckets: int) -> list[tuple[int, pa.Table]]:
    """(bucket of the `text_column` text, those rows)."""
    return [(b, table.take(pa.array(idx)))
            for b, idx in split_rows_by_bucket(table[text_column], buckets)]
