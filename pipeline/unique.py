"""Unique-text mode: encode each distinct text once, then score pairs from embeddings.

The two towers of the Siamese model share weights, so
score(a, b) == score_embeddings(encode(a), encode(b)). Candidate sets from blocking or
nearest-neighbour search hold each text in many pairs; encoding each distinct text once
saves the model most of its work (2 x pairs / distinct texts times fewer encodings).

    pairscore score --input pairs.parquet --output out/ --model models/default --mode unique

Graph (the input is read twice, see `ScoreUnique`)::

    texts:  ReadTexts -> ValidateTexts -> KeyTexts -> DistinctTexts (CombinePerKey on a
            text-hash bucket) -> SplitTexts -> Reshuffle -> TokenizeTexts (length-grouped)
            -> EncodeTexts (RunInference, `encode`) -> IndexEmbeddings (CombineGlobally)
    pairs:  ReadPairs -> Validate -> Rebatch -> AttachEmbeddings (index as side input)
            -> ScoreEmbeddings (RunInference, `score_embeddings`) -> Threshold

`--mode auto` (the default) reads up to `SAMPLE_ROWS` rows at launch and picks unique
mode when texts repeat enough to pay for the extra steps.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import uuid

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import RunInference

from pipeline.handler import PairModelHandler
from pipeline.packing import encode_texts, pad_rows, plan_batches, token_lengths
from pipeline.validate import reject_all, validate_table

log = logging.getLogger("pairscore.unique")
NAMESPACE = "pairscore"
MODES = ("auto", "pairs", "unique")
# `auto` picks unique mode from this many text slots per pair sample (2 x pairs /
# distinct texts) up: below it, the second read, the dedup and the join cost more than
# the encodings saved (see docs/performance.md).
AUTO_MIN_REPEAT = 1.5
SAMPLE_ROWS = 50_000
# Distinct texts per dedup bucket (one CombinePerKey key): bounds a worker's accumulator.
TEXTS_PER_BUCKET = 1_000_000
# Pairs per score_embeddings call: the head is a few small matmuls, so batches can be big.
SCORE_BATCH = 4096
JOINS = ("auto", "side-input", "shuffle")
# The side-input join broadcasts every embedding to every worker (and SDK process); past
# this estimated size the join goes through the shuffle instead.
SIDE_INPUT_MAX_BYTES = 512 << 20
# Pairs per join bucket in the shuffle join: a bucket's pairs, with one side's
# embeddings attached, are held by one worker.
PAIRS_PER_JOIN_BUCKET = 100_000


# ---------------------------------------------------------------------------------------
# Per-batch logic (plain functions, tested without Beam)


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


def _as_large(column) -> pa.Array:
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return arr if pa.types.is_large_string(arr.type) else arr.cast(pa.large_string())


def distinct_texts(table: pa.Table, text_columns: tuple[str, str]) -> pa.Array:
    """The distinct texts of both columns of a table of valid pairs (large_string)."""
    both = pa.concat_arrays([_as_large(table[c]) for c in text_columns])
    return pc.unique(both)


def split_buckets(texts: pa.Array, buckets: int) -> list[tuple[int, pa.Array]]:
    if buckets <= 1:
        return [(0, texts)] if len(texts) else []
    bucket = (text_hash(texts) % np.uint64(buckets)).astype(np.int64)
    order = np.argsort(bucket, kind="stable")
    bounds = np.searchsorted(bucket[order], np.arange(buckets + 1))
    return [
        (b, texts.take(pa.array(order[bounds[b] : bounds[b + 1]])))
        for b in range(buckets)
        if bounds[b + 1] > bounds[b]
    ]


@dataclasses.dataclass
class TextBatch:
    """Distinct texts on their way to the index: ids for `encode`, then embeddings.
    `ids is None` marks texts that tokenize to nothing (pairs holding them are rejected)."""

    texts: pa.Array
    ids: np.ndarray | None
    real_tokens: int = 0
    embeddings: np.ndarray | None = None

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
        out.append(TextBatch(texts.filter(pa.array(empty)), None))
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
    ok: np.ndarray  # bool[U]: False where the text has no tokens (no embedding)

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def build(cls, batches: list[TextBatch]) -> EmbeddingIndex:
        dims = {b.embeddings.shape[1] for b in batches if b.embeddings is not None}
        if len(dims) > 1:
            raise ValueError(f"embeddings of different widths {sorted(dims)}")
        dim = dims.pop() if dims else 0
        texts, embs, ok = [], [], []
        for b in batches:
            texts.append(_as_large(b.texts))
            if b.embeddings is None:
                embs.append(np.zeros((len(b), dim), np.float32))
                ok.append(np.zeros(len(b), bool))
            else:
                embs.append(np.asarray(b.embeddings, np.float32))
                ok.append(np.ones(len(b), bool))
        if not texts:
            return cls(np.zeros(0, np.uint64), pa.array([], pa.large_string()),
                       np.zeros((0, 0), np.float32), np.zeros(0, bool))
        all_texts = pa.concat_arrays(texts)
        keys = text_hash(all_texts)
        order = np.argsort(keys, kind="stable")
        return cls(
            keys[order],
            all_texts.take(pa.array(order)),
            np.concatenate(embs)[order],
            np.concatenate(ok)[order],
        )

    def lookup(self, column) -> np.ndarray:
        """Index position of each text of `column`; raises if one is missing."""
        arr = _as_large(column)
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


@dataclasses.dataclass
class EmbeddedBatch:
    """Pairs with both texts' embeddings, for one `score_embeddings` call. Same `rows` /
    `scores` as PackedBatch, so thresholding and writing are shared."""

    rows: pa.Table
    left: np.ndarray  # float32[B, D]
    right: np.ndarray  # float32[B, D]
    scores: np.ndarray | None = None

    def __len__(self) -> int:
        return self.rows.num_rows


def attach_embeddings(
    index: EmbeddingIndex,
    table: pa.Table,
    text_columns: tuple[str, str],
    keep_columns: list[str],
    batch_size: int = SCORE_BATCH,
) -> tuple[list[EmbeddedBatch], pa.Table | None]:
    """Batches of pairs with embeddings, and the rows holding a text without tokens."""
    pos_a = index.lookup(table[text_columns[0]])
    pos_b = index.lookup(table[text_columns[1]])
    empty = ~(index.ok[pos_a] & index.ok[pos_b])
    no_tokens = None
    if empty.any():
        no_tokens = table.filter(pa.array(empty))
        keep = np.flatnonzero(~empty)
        table, pos_a, pos_b = table.take(pa.array(keep)), pos_a[keep], pos_b[keep]
    rows = table.select(keep_columns)
    out = []
    for start in range(0, rows.num_rows, batch_size):
        sl = slice(start, start + batch_size)
        out.append(
            EmbeddedBatch(
                rows.slice(start, batch_size),
                index.embeddings[pos_a[sl]],
                index.embeddings[pos_b[sl]],
            )
        )
    return out, no_tokens


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
    by their right text's bucket. Also the rows whose left text has no tokens."""
    index = EmbeddingIndex.build(texts)
    out, no_tokens = [], []
    for table in parts:
        pos = index.lookup(table[text_columns[0]])
        ok = index.ok[pos]
        if not ok.all():
            no_tokens.append(table.filter(pa.array(~ok)))
            keep = np.flatnonzero(ok)
            table, pos = table.take(pa.array(keep)), pos[keep]
        for b, idx in split_rows_by_bucket(table[text_columns[1]], buckets):
            out.append((b, PairPart(table.take(pa.array(idx)), index.embeddings[pos[idx]])))
    return out, no_tokens


def join_right(
    texts: list[TextBatch], parts: list[PairPart], text_columns: tuple[str, str],
    keep_columns: list[str], batch_size: int = SCORE_BATCH,
) -> tuple[list[EmbeddedBatch], list[pa.Table]]:
    """Second join, in one bucket of right texts: score-ready batches, and the rows
    whose right text has no tokens."""
    index = EmbeddingIndex.build(texts)
    out, no_tokens = [], []
    for part in parts:
        table, left = part.table, part.left
        pos = index.lookup(table[text_columns[1]])
        ok = index.ok[pos]
        if not ok.all():
            no_tokens.append(table.filter(pa.array(~ok)))
            keep = np.flatnonzero(ok)
            table, left, pos = table.take(pa.array(keep)), left[keep], pos[keep]
        rows = table.select(keep_columns)
        for start in range(0, rows.num_rows, batch_size):
            sl = slice(start, start + batch_size)
            out.append(EmbeddedBatch(rows.slice(start, batch_size), left[sl],
                                     index.embeddings[pos[sl]]))
    return out, no_tokens


# ---------------------------------------------------------------------------------------
# Choosing the mode


@dataclasses.dataclass
class ModeChoice:
    mode: str  # "pairs" | "unique"
    repeat_estimate: float | None  # 2 x pairs / distinct texts in the sample, if read
    sample_rows: int
    buckets: int  # dedup buckets (CombinePerKey keys)
    join: str = "side-input"  # unique mode: "side-input" | "shuffle"
    join_buckets: int = 1


@dataclasses.dataclass
class SampleEstimate:
    rows: int  # rows read
    repeat: float | None  # text slots / distinct texts in the sample (None: no texts)
    distinct: int  # estimated distinct texts in the whole input


def estimate_repeat(files: list[str], text_columns: tuple[str, str], rows_in: int | None = None,
                    max_rows: int = SAMPLE_ROWS) -> SampleEstimate:
    """Read the first `max_rows` rows of `files`: how often texts repeat there, and an
    estimate of the distinct texts in the whole input.

    Exact for inputs up to `max_rows`. On larger inputs a sample sees fewer repeats than
    the whole (its repeat factor errs towards pair mode), and the distinct count is
    Charikar et al.'s GEE estimator, sqrt(N / n) x (texts seen once) + (texts seen more
    often), whose error is within sqrt(N / n) either way; when the sample barely
    repeats (where GEE can undercount most), the bound 2 x rows is used instead.
    """
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    chunks, rows = [], 0
    for path in files:
        if rows >= max_rows:
            break
        with FileSystems.open(path, compression_type="uncompressed") as f:
            pf = pq.ParquetFile(f)
            for batch in pf.iter_batches(batch_size=8192, columns=list(text_columns)):
                batch = batch.slice(0, max_rows - rows)
                rows += batch.num_rows
                for col in text_columns:
                    values = batch.column(col)
                    if not pa.types.is_null(values.type):
                        chunks.append(pc.drop_null(_as_large(values)))
                if rows >= max_rows:
                    break
    slots = sum(len(c) for c in chunks)
    if not slots:
        return SampleEstimate(rows, None, 0)
    counts = pc.value_counts(pa.concat_arrays(chunks)).field("counts").to_numpy()
    seen, once = len(counts), int(np.sum(counts == 1))
    repeat = slots / seen
    total_slots = 2 * max(rows_in or rows, rows)
    if rows >= (rows_in or rows):
        distinct = seen
    elif repeat < AUTO_MIN_REPEAT:
        distinct = total_slots
    else:
        distinct = math.sqrt(total_slots / slots) * once + (seen - once)
    return SampleEstimate(rows, repeat, int(min(max(distinct, seen), total_slots)))


def choose_mode(requested: str, files: list[str], text_columns: tuple[str, str],
                rows_in: int | None, dry_run: bool = False, embedding_dim: int = 0,
                join: str = "auto") -> ModeChoice:
    """Resolve `--mode` and `--unique-join` before the job starts.

    `auto` mode reads a sample (`estimate_repeat`) and picks unique mode when its texts
    repeat at least `AUTO_MIN_REPEAT` times. The join is a side input while the
    estimated embeddings (distinct texts x embedding_dim float32) stay under
    `SIDE_INPUT_MAX_BYTES`, else the bucketed shuffle join.
    """
    if requested not in MODES:
        raise ValueError(f"unknown mode {requested!r}; allowed: {', '.join(MODES)}")
    if join not in JOINS:
        raise ValueError(f"unknown join {join!r}; allowed: {', '.join(JOINS)}")
    rows = rows_in or 0
    buckets = max(1, math.ceil(2 * rows / TEXTS_PER_BUCKET))
    join_buckets = max(1, math.ceil(rows / PAIRS_PER_JOIN_BUCKET))
    sample = SampleEstimate(0, None, 2 * rows)
    if requested != "pairs" and not dry_run and files:
        try:
            sample = estimate_repeat(files, text_columns, rows_in)
        except Exception as e:  # noqa: BLE001  (a bad file fails the job later, naming it)
            log.warning("cannot sample the input (%s: %s)", type(e).__name__, e)
    repeat = sample.repeat
    if requested == "auto":
        mode = "unique" if repeat is not None and repeat >= AUTO_MIN_REPEAT else "pairs"
    else:
        mode = requested
    if join == "auto":
        fits = sample.distinct * max(embedding_dim, 1) * 4 <= SIDE_INPUT_MAX_BYTES
        join = "side-input" if fits else "shuffle"
    if requested != "pairs":
        log.info("mode %s: %s, join %s (%.2f text slots per distinct text in the first %d "
                 "rows; about %d distinct texts in all)", requested, mode, join, repeat or 0.0,
                 sample.rows, sample.distinct)
    return ModeChoice(mode, None if repeat is None else round(repeat, 3), sample.rows, buckets,
                      join, join_buckets)


# ---------------------------------------------------------------------------------------
# Beam shells


class ValidateTextsFn(beam.DoFn):
    """The same split as the pairs branch's Validate, without its counters (the rows are
    counted there): the distinct texts of exactly the rows that will be scored."""

    def __init__(self, cfg):
        self.id_column = cfg.id_column
        self.text_columns = cfg.text_columns

    def process(self, table):
        valid, _ = validate_table(table, self.id_column, self.text_columns)
        if valid.num_rows:
            yield valid


class KeyTextsFn(beam.DoFn):
    def __init__(self, cfg):
        self.text_columns = cfg.text_columns
        self.buckets = cfg.text_buckets

    def process(self, table):
        yield from split_buckets(distinct_texts(table, self.text_columns), self.buckets)


class DistinctTextsFn(beam.CombineFn):
    """Union of text arrays. The accumulator is a list of arrays, deduplicated whenever
    its pending part outgrows what was last deduplicated, so it stays near the bucket's
    distinct texts however many pairs repeat them."""

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


class SplitTextsFn(beam.DoFn):
    def __init__(self, rows: int):
        self.rows = rows

    def process(self, keyed):
        _, texts = keyed
        for start in range(0, len(texts), self.rows):
            yield texts.slice(start, self.rows)


class TokenizeTextsFn(beam.DoFn):
    """Distinct texts -> length-grouped padded `TextBatch`es (and a no-tokens batch)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.real = Metrics.counter(NAMESPACE, "real_tokens")
        self.computed = Metrics.counter(NAMESPACE, "computed_tokens")
        self.distinct = Metrics.counter(NAMESPACE, "texts_encoded")

    def setup(self):
        from apache_beam.io.filesystems import FileSystems
        from tokenizers import Tokenizer

        from model import tokenization
        from model.config import TOKENIZER_FILE, join

        with FileSystems.open(join(self.cfg.model, TOKENIZER_FILE)) as f:
            tok = Tokenizer.from_str(f.read().decode("utf-8"))
        self.tokenizer = tokenization.configure(tok, self.cfg.max_length)

    def process(self, texts):
        cfg = self.cfg
        for batch in pack_texts(self.tokenizer, texts, cfg.batch_size, cfg.max_batch_tokens,
                                cfg.min_tokens):
            if batch.ids is not None:
                self.real.inc(batch.real_tokens)
                self.computed.inc(int(batch.ids.size))
                self.distinct.inc(len(batch))
            yield batch


class IndexFn(beam.CombineFn):
    """All `TextBatch`es -> one `EmbeddingIndex` (the side input of AttachEmbeddings)."""

    def create_accumulator(self):
        return []

    def add_input(self, acc, batch):
        # Only what the index needs travels on: the ids are dropped here.
        acc.append(TextBatch(batch.texts, None, 0, batch.embeddings))
        return acc

    def merge_accumulators(self, accs):
        return [b for acc in accs for b in acc]

    def extract_output(self, acc):
        return EmbeddingIndex.build(acc)


class AttachEmbeddingsFn(beam.DoFn):
    def __init__(self, cfg):
        self.text_columns = cfg.text_columns
        self.keep = [cfg.id_column, *[c for c in cfg.keep_columns if c != cfg.id_column]]
        self.rejected = Metrics.counter(NAMESPACE, "rows_rejected")

    def process(self, table, index):
        batches, no_tokens = attach_embeddings(index, table, self.text_columns, self.keep)
        if no_tokens is not None:
            self.rejected.inc(no_tokens.num_rows)
            yield beam.pvalue.TaggedOutput("rejects", reject_all(no_tokens, "no_tokens"))
        yield from batches


class KeyEmbeddingsFn(beam.DoFn):
    """Encoded (or no-token) texts -> (join bucket, the batch's texts of that bucket)."""

    def __init__(self, buckets: int):
        self.buckets = buckets

    def process(self, batch):
        for b, idx in split_rows_by_bucket(batch.texts, self.buckets):
            sel = pa.array(idx)
            emb = None if batch.embeddings is None else batch.embeddings[idx]
            yield b, TextBatch(batch.texts.take(sel), None, 0, emb)


class KeyPairsFn(beam.DoFn):
    """Valid pairs -> (bucket of the left text, those rows)."""

    def __init__(self, cfg):
        self.text_columns = cfg.text_columns
        self.buckets = cfg.join_buckets

    def process(self, table):
        for b, idx in split_rows_by_bucket(table[self.text_columns[0]], self.buckets):
            yield b, table.take(pa.array(idx))


class JoinLeftFn(beam.DoFn):
    def __init__(self, cfg):
        self.text_columns = cfg.text_columns
        self.buckets = cfg.join_buckets
        self.rejected = Metrics.counter(NAMESPACE, "rows_rejected")

    def process(self, grouped):
        _, joined = grouped
        parts, no_tokens = join_left(list(joined["texts"]), list(joined["pairs"]),
                                     self.text_columns, self.buckets)
        for table in no_tokens:
            self.rejected.inc(table.num_rows)
            yield beam.pvalue.TaggedOutput("rejects", reject_all(table, "no_tokens"))
        yield from parts


class JoinRightFn(beam.DoFn):
    def __init__(self, cfg):
        self.text_columns = cfg.text_columns
        self.keep = [cfg.id_column, *[c for c in cfg.keep_columns if c != cfg.id_column]]
        self.rejected = Metrics.counter(NAMESPACE, "rows_rejected")

    def process(self, grouped):
        _, joined = grouped
        batches, no_tokens = join_right(list(joined["texts"]), list(joined["pairs"]),
                                        self.text_columns, self.keep)
        for table in no_tokens:
            self.rejected.inc(table.num_rows)
            yield beam.pvalue.TaggedOutput("rejects", reject_all(table, "no_tokens"))
        yield from batches


class EncodeHandler(PairModelHandler):
    """RunInference over `TextBatch`es with the `encode` signature."""

    def _apply(self, batch, model):
        batch.embeddings = model.encode(batch.ids)
        return batch

    def _count_device(self, model, rows):
        pass  # rows_scored_on_* counts pairs: ScoreEmbeddingsHandler does that

    def get_num_bytes(self, batch) -> int:
        return sum(b.ids.nbytes for b in batch)


class ScoreEmbeddingsHandler(PairModelHandler):
    """RunInference over `EmbeddedBatch`es with the `score_embeddings` signature."""

    def _apply(self, batch, model):
        batch.scores = model.score_embeddings(batch.left, batch.right)
        return batch

    def get_num_bytes(self, batch) -> int:
        return sum(b.left.nbytes + b.right.nbytes for b in batch)


def _handler(cls, cfg, share_key: str):
    return cls(
        cfg.model,
        large_model=cfg.large_model,
        model_copies=cfg.model_copies,
        fail_once_marker=cfg.fail_once_marker,
        precision=cfg.precision,
        share_key=share_key,
    )


class EncodeDistinctTexts(beam.PTransform):
    """Arrow tables of candidate pairs (as read) -> `TextBatch`es holding each distinct
    valid text once, with its embedding (or none: no tokens)."""

    def __init__(self, cfg, share_key: str):
        super().__init__()
        self.cfg = cfg
        self.share_key = share_key

    def expand(self, tables):
        cfg = self.cfg
        batches = (
            tables
            | "ValidateTexts" >> beam.ParDo(ValidateTextsFn(cfg))
            | "KeyTexts" >> beam.ParDo(KeyTextsFn(cfg))
            | "DistinctTexts" >> beam.CombinePerKey(DistinctTextsFn())
            | "SplitTexts" >> beam.ParDo(SplitTextsFn(cfg.rebatch_rows))
            # Spreads the encoding over workers: a bucket's texts leave the combine on one.
            | "SpreadTexts" >> beam.Reshuffle()
            | "TokenizeTexts" >> beam.ParDo(TokenizeTextsFn(cfg))
        )
        to_encode = batches | "HasTokens" >> beam.Filter(lambda b: b.ids is not None)
        no_tokens = batches | "NoTokens" >> beam.Filter(lambda b: b.ids is None)
        encoded = to_encode | "EncodeTexts" >> RunInference(
            _handler(EncodeHandler, cfg, self.share_key)
        )
        return (encoded, no_tokens) | "AllTexts" >> beam.Flatten()


class ScoreUnique(beam.PTransform):
    """(valid pair tables, raw pair tables for the texts) -> {'scored', 'rejects'}.

    The texts branch takes its own copy of the input: when `texts` is a second read of
    the files (as `pipeline.job.build` arranges), the pairs branch streams from that read
    once the embeddings are ready instead of the runner holding every pair until then.

    Joining embeddings back to pairs (`cfg.unique_join`):
    - side-input: all embeddings in one `EmbeddingIndex`, a side input of
      AttachEmbeddings. The pairs never shuffle; memory is the distinct texts'
      embeddings on every worker. For up to a few hundred thousand distinct texts.
    - shuffle: the embeddings and the pairs both keyed by text-hash bucket; a
      CoGroupByKey attaches the left embeddings, a second one (pairs re-keyed by their
      right text) the right ones. Each worker holds one bucket: for millions of
      distinct texts. (The local FnApiRunner keeps whole shuffles in memory, so
      locally the side input is the lean one.)
    """

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg

    def expand(self, inputs):
        valid, texts = inputs
        cfg = self.cfg
        # Both model steps share one loaded model per process (made at graph construction,
        # so every worker sees the same key).
        share_key = uuid.uuid4().hex
        embedded = texts | "EncodeDistinctTexts" >> EncodeDistinctTexts(cfg, share_key)
        if cfg.unique_join == "shuffle":
            keyed_texts = embedded | "KeyEmbeddings" >> beam.ParDo(
                KeyEmbeddingsFn(cfg.join_buckets))
            keyed_pairs = valid | "KeyPairs" >> beam.ParDo(KeyPairsFn(cfg))
            left = (
                {"texts": keyed_texts, "pairs": keyed_pairs}
                | "GroupLeft" >> beam.CoGroupByKey()
                | "JoinLeft" >> beam.ParDo(JoinLeftFn(cfg)).with_outputs("rejects", main="parts")
            )
            right = (
                {"texts": keyed_texts, "pairs": left.parts}
                | "GroupRight" >> beam.CoGroupByKey()
                | "JoinRight" >> beam.ParDo(JoinRightFn(cfg)).with_outputs(
                    "rejects", main="batches")
            )
            batches = right.batches
            rejects = (left.rejects, right.rejects) | "JoinRejects" >> beam.Flatten()
        else:
            index = embedded | "IndexEmbeddings" >> beam.CombineGlobally(IndexFn())
            attached = valid | "AttachEmbeddings" >> beam.ParDo(
                AttachEmbeddingsFn(cfg), beam.pvalue.AsSingleton(index)
            ).with_outputs("rejects", main="batches")
            batches, rejects = attached.batches, attached.rejects
        scored = batches | "ScoreEmbeddings" >> RunInference(
            _handler(ScoreEmbeddingsHandler, cfg, share_key)
        )
        return {"scored": scored, "rejects": rejects}
