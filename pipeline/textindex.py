"""Distinct texts and their embeddings: a stable text hash, deduplication, and the index
unique-text mode looks embeddings up in.

Plain functions and dataclasses over Arrow arrays and numpy, tested without Beam
(tests/test_unique.py); the Beam stages that use them are in `pipeline.stages`.
"""

from __future__ import annotations

import dataclasses

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from model.tokenization import encode_texts, pad_rows, token_lengths
from pipeline.packing import plan_batches

NO_TOKENS = "no_tokens"

_P = np.uint64(0x100000001B3)
_POWERS = np.ones(1, dtype=np.uint64)
_HASH_CHUNK_BYTES = 4 << 20


def _powers(n: int) -> np.ndarray:
    global _POWERS
    if len(_POWERS) < n:
        p = np.full(max(n, 2 * len(_POWERS)), _P, dtype=np.uint64)
        p[0] = 1
        _POWERS = np.multiply.accumulate(p)  # wraps modulo 2**64, as intended
    return _POWERS


def _mix(z: np.ndarray) -> np.ndarray:
    # splitmix64's finaliser: every input bit reaches every output bit.
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def text_hash(column) -> np.ndarray:
    """uint64 hash per string, the same on every worker and run (Python's `hash` is
    salted per process), computed on the Arrow buffers without a Python loop.

    A polynomial hash of the UTF-8 bytes modulo 2**64, then mixed. Used to bucket texts
    and to find them in the index; equal hashes are always confirmed by comparing the
    texts, so a collision costs a slower lookup, never a wrong score. Null -> 0.
    """
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_null(arr.type):
        return np.zeros(len(arr), dtype=np.uint64)
    n = len(arr)
    out = np.zeros(n, dtype=np.uint64)
    if n == 0:
        return out
    large = pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type)
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64 if large else np.int32)
    offsets = offsets[arr.offset : arr.offset + n + 1].astype(np.int64)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else None
    lengths = np.diff(offsets)
    cum = np.cumsum(lengths)
    start = 0
    while start < n:
        # Rows of at most ~4 MB of text at a time bound the uint64 temporaries.
        base = int(cum[start - 1]) if start else 0
        stop = int(np.searchsorted(cum, base + _HASH_CHUNK_BYTES, side="right"))
        stop = min(max(stop, start + 1), n)
        seg = lengths[start:stop]
        nz = np.flatnonzero(seg)
        if len(nz):
            b = data[offsets[start] : offsets[stop]].astype(np.uint64) + np.uint64(1)
            starts = (offsets[start:stop] - offsets[start])[nz]
            pos = np.arange(len(b), dtype=np.int64) - np.repeat(starts, seg[nz])
            b *= _powers(int(seg.max()))[pos]
            out[start + nz] = np.add.reduceat(b, starts)
        start = stop
    if arr.null_count:
        valid = np.asarray(arr.is_valid())
        out[~valid] = 0
        lengths = np.where(valid, lengths, 0)
    return _mix(out ^ (lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)))


def as_large_string(column) -> pa.Array:
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return arr if pa.types.is_large_string(arr.type) else arr.cast(pa.large_string())


def distinct_texts(table: pa.Table, text_columns: tuple[str, str]) -> pa.Array:
    """The distinct texts of both columns of a table of valid pairs (large_string)."""
    both = pa.concat_arrays([as_large_string(table[c]) for c in text_columns])
    return pc.unique(both)


def value_hash(column) -> np.ndarray:
    """uint64 per value, the same on every worker: `text_hash` of strings and binaries,
    the mixed value of integers, `text_hash` of the string form of anything else. Only
    spreads values over buckets: equal values always share a bucket."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or (
            pa.types.is_large_binary(t)):
        return text_hash(arr)
    if pa.types.is_integer(t):
        values = np.asarray(pc.fill_null(arr, 0)).astype(np.int64).view(np.uint64)
        return _mix(values)
    return text_hash(arr.cast(pa.string()))


def bucket_rows(column, buckets: int) -> list[tuple[int, np.ndarray]]:
    """(bucket, row indices) of `column`'s values by `value_hash`, non-empty buckets only."""
    if buckets <= 1:
        return [(0, np.arange(len(column)))] if len(column) else []
    bucket = (value_hash(column) % np.uint64(buckets)).astype(np.int64)
    order = np.argsort(bucket, kind="stable")
    bounds = np.searchsorted(bucket[order], np.arange(buckets + 1))
    return [(b, order[bounds[b] : bounds[b + 1]]) for b in range(buckets)
            if bounds[b + 1] > bounds[b]]


def split_buckets(texts: pa.Array, buckets: int) -> list[tuple[int, pa.Array]]:
    """(bucket, the values of that bucket) by `value_hash`, for texts or ids."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    return [(b, texts.take(pa.array(idx))) for b, idx in bucket_rows(texts, buckets)]


def split_table(table: pa.Table, column: str, buckets: int) -> list[tuple[int, pa.Table]]:
    """(bucket of `column`'s value by `value_hash`, those rows of `table`)."""
    if buckets <= 1:
        return [(0, table)] if table.num_rows else []
    return [(b, table.take(pa.array(idx))) for b, idx in bucket_rows(table[column], buckets)]


class DistinctFn(beam.CombineFn):
    """Union of Arrow arrays (texts, or ids of any type), exact. The accumulator is a list
    of arrays, deduplicated whenever its pending part outgrows what was last
    deduplicated, so it stays near the key's distinct values however often they repeat."""

    def create_accumulator(self):
        return [0, []]  # [rows at last dedup, arrays]

    def add_input(self, acc, texts):
        acc[1].append(texts)
        return self._maybe_compact(acc)

    def merge_accumulators(self, accs):
        merged = [0, [a for acc in accs for a in acc[1]]]
        return self._maybe_compact(merged)

    def extract_output(self, acc):
        return self._compact(acc)[1][0] if acc[1] else pa.array([], pa.large_string())

    def _maybe_compact(self, acc):
        # Deduplicate once the arrays hold twice what the last dedup left: amortised
        # linear work, and memory within about twice the distinct texts.
        if sum(len(a) for a in acc[1]) >= max(2 * acc[0], 65536):
            return self._compact(acc)
        return acc

    @staticmethod
    def _compact(acc):
        if not acc[1]:
            return acc
        unique = pc.unique(pa.concat_arrays(acc[1]))
        return [len(unique), [unique]]


@dataclasses.dataclass
class TextBatch:
    """Distinct texts on their way to the index: ids for `encode`, then embeddings.

    A batch without embeddings carries the `reason` the pairs holding its texts are
    rejected with: `no_tokens` (they tokenize to nothing) or `model_error` (encoding
    failed after its retries; `error` names the exception)."""

    texts: pa.Array
    ids: np.ndarray | None
    real_tokens: int = 0
    embeddings: np.ndarray | None = None
    reason: str | None = None
    error: str | None = None

    def __len__(self) -> int:
        return len(self.texts)


def pack_texts(
    tokenizer, texts: pa.Array, max_batch_size: int, max_batch_tokens: int, min_tokens: int
) -> list[TextBatch]:
    """Tokenize distinct texts, group by length, pad each batch to its own longest row."""
    ids = encode_texts(tokenizer, texts)
    lengths = token_lengths(ids)
    empty = lengths <= min_tokens
    out = []
    if empty.any():
        out.append(TextBatch(texts.filter(pa.array(empty)), None, reason=NO_TOKENS))
    keep = np.flatnonzero(~empty)
    for part in plan_batches(lengths[keep], max_batch_size, max_batch_tokens):
        idx = keep[part]
        out.append(
            TextBatch(
                texts.take(pa.array(idx)),
                pad_rows(ids, lengths, idx),
                real_tokens=int(lengths[idx].sum()),
            )
        )
    return out


@dataclasses.dataclass
class EmbeddingIndex:
    """Every distinct text with its embedding, sorted by `text_hash` for lookups."""

    keys: np.ndarray  # uint64[U], sorted
    texts: pa.Array  # large_string[U], in key order
    embeddings: np.ndarray  # float32[U, D]
    ok: np.ndarray  # bool[U]: False where the text has no embedding
    reason: pa.Array  # string[U]: why not (null where ok)
    error: pa.Array  # string[U]: the exception, for reason model_error

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def build(cls, batches: list[TextBatch]) -> EmbeddingIndex:
        dims = {b.embeddings.shape[1] for b in batches if b.embeddings is not None}
        if len(dims) > 1:
            raise ValueError(f"embeddings of different widths {sorted(dims)}")
        dim = dims.pop() if dims else 0
        texts, embs, reasons, errors = [], [], [], []
        for b in batches:
            texts.append(as_large_string(b.texts))
            if b.embeddings is None:
                embs.append(np.zeros((len(b), dim), np.float32))
            else:
                embs.append(np.asarray(b.embeddings, np.float32))
            failed = b.embeddings is None
            reasons.append(pa.repeat(pa.scalar(b.reason or NO_TOKENS if failed else None,
                                               pa.string()), len(b)))
            errors.append(pa.repeat(pa.scalar(b.error if failed else None, pa.string()), len(b)))
        if not texts:
            empty = pa.array([], pa.string())
            return cls(np.zeros(0, np.uint64), pa.array([], pa.large_string()),
                       np.zeros((0, 0), np.float32), np.zeros(0, bool), empty, empty)
        all_texts = pa.concat_arrays(texts)
        keys = text_hash(all_texts)
        order = pa.array(np.argsort(keys, kind="stable"))
        reason = pa.concat_arrays(reasons).take(order)
        return cls(
            keys[order.to_numpy()],
            all_texts.take(order),
            np.concatenate(embs)[order.to_numpy()],
            np.asarray(pc.is_null(reason)),
            reason,
            pa.concat_arrays(errors).take(order),
        )

    def lookup(self, column) -> np.ndarray:
        """Index position of each text of `column`; raises if one is missing."""
        arr = as_large_string(column)
        pos = np.searchsorted(self.keys, text_hash(arr))
        pos = np.minimum(pos, max(len(self.keys) - 1, 0))
        if len(self.keys):
            same = pc.fill_null(pc.equal(arr, self.texts.take(pa.array(pos))), False)
            bad = np.flatnonzero(~np.asarray(same))
        else:
            bad = np.arange(len(arr))
        if len(bad):
            # A hash shared by two texts (or a bug): exact lookup for those rows.
            exact = pc.index_in(arr.take(pa.array(bad)), value_set=self.texts)
            if exact.null_count:
                missing = arr.take(pa.array(bad)).filter(pc.is_null(exact))[0]
                raise KeyError(f"text not in the embedding index: {str(missing)[:80]!r}")
            pos[bad] = np.asarray(exact, dtype=np.int64)
        return pos
