"""Launch-time planning: which mode (pairs or unique texts), which join, how many buckets.

    pairscore score ... --mode auto --unique-join auto

`--mode auto` (the default) reads up to `SAMPLE_ROWS` rows at launch and picks unique
mode when texts repeat enough to pay for its extra steps; the join is a side input while
the estimated embeddings fit in `SIDE_INPUT_MAX_BYTES`, else the bucketed shuffle join.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.textindex import as_large_string

log = logging.getLogger("pairscore.planning")
MODES = ("auto", "pairs", "unique")
# `auto` picks unique mode from this many text slots per pair sample (2 x pairs /
# distinct texts) up: below it, the second read, the dedup and the join cost more than
# the encodings saved (see docs/performance.md).
AUTO_MIN_REPEAT = 1.5
SAMPLE_ROWS = 50_000
# Distinct texts per dedup bucket (one CombinePerKey key): bounds a worker's accumulator.
TEXTS_PER_BUCKET = 1_000_000
# Pairs per score_embeddings call: the head is a few small matmuls, so batches can be big.
JOINS = ("auto", "side-input", "shuffle")
# The side-input join broadcasts every embedding to every worker (and SDK process); past
# this estimated size the join goes through the shuffle instead.
SIDE_INPUT_MAX_BYTES = 512 << 20
# Pairs per join bucket in the shuffle join: a bucket's pairs, with one side's
# embeddings attached, are held by one worker.
PAIRS_PER_JOIN_BUCKET = 100_000


@dataclasses.dataclass
class Plan:
    """How the job scores, decided at launch (`plan`)."""

    mode: str = "pairs"  # "pairs" | "unique"
    repeat_estimate: float | None = None  # 2 x pairs / distinct texts in the sample, if read
    sample_rows: int = 0
    text_buckets: int = 1  # unique mode: dedup buckets (CombinePerKey keys)
    join: str = "side-input"  # unique mode: "side-input" | "shuffle"
    join_buckets: int = 1  # unique mode, shuffle join: buckets of pairs


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
                        chunks.append(pc.drop_null(as_large_string(values)))
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


def plan(requested: str, files: list[str], text_columns: tuple[str, str],
                rows_in: int | None, dry_run: bool = False, embedding_dim: int = 0,
                join: str = "auto") -> Plan:
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
    return Plan(mode, None if repeat is None else round(repeat, 3), sample.rows, buckets,
                join, join_buckets)
