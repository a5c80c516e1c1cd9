"""The scoring job's stages: one composite PTransform each, thin shells over plain functions.

Pair mode (`ScorePairs`)::

    Validate -> Rebatch -> TokenizePairs -> Score (RunInference, serving_default)
             -> Threshold                              rejects: Validate, TokenizePairs, Score

Unique-text mode (`ScoreUniqueTexts`), for inputs whose texts repeat::

    pairs:  Validate -> Rebatch ------------------------------\\
    texts:  EncodeDistinctTexts (validate, dedup, tokenize,     -> JoinEmbeddings (SideInputJoin
            RunInference encode) ------------------------------/   or ShuffleJoin)
            -> ScoreEmbeddings (RunInference, score_embeddings) -> Threshold

Both end in `WriteResults` (labels and rejects under OUT/_staging/). A model batch that
still fails after its retries becomes rejects with reason `model_error` (RunInference's
dead-letter output) unless `--max-model-error-ratio 0` asks the job to fail at once.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.parquetio import WriteToParquetBatched
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import RunInference
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.shared import Shared
from apache_beam.utils.windowed_value import WindowedValue

from model.config import join
from model.modeldir import ModelDir
from pipeline import groups, joins, monitor, store, textindex
from pipeline import io as pio
from pipeline.handler import EncodeHandler, PairModelHandler, ScoreEmbeddingsHandler
from pipeline.packing import label_table, pack_table
from pipeline.validate import (
    MODEL_ERROR,
    describe_error,
    model_error_rows,
    reject_all,
    validate_table,
)

if TYPE_CHECKING:
    from pipeline.job import JobConfig

NAMESPACE = "pairscore"


def _counter(name: str):
    return Metrics.counter(NAMESPACE, name)


def _load_tokenizer(cfg: JobConfig):
    # Checked at launch; what is read here is checked against the manifest as it is read.
    return ModelDir.open(cfg.model, verify=False).tokenizer()


# --- Validate, Rebatch ---------------------------------------------------------------


class _ValidateFn(beam.DoFn):
    def __init__(self, cfg: JobConfig, count: bool):
        self.id_column = cfg.id_column
        self.text_columns = cfg.text_columns
        self.record_columns = tuple(cfg.group_by or ())
        self.count = count
        self.rows_read = _counter("rows_read")
        self.rejected = _counter("rows_rejected")

    def process(self, table):
        valid, rejects = validate_table(table, self.id_column, self.text_columns,
                                        self.record_columns)
        if self.count:
            self.rows_read.inc(table.num_rows)
            if rejects.num_rows:
                self.rejected.inc(rejects.num_rows)
                yield beam.pvalue.TaggedOutput("rejects", rejects)
        if valid.num_rows:
            yield valid


class Validate(beam.PTransform):
    """Arrow tables as read -> {'valid': tables, 'rejects': tables with a reason}.

    `count=False` (unique mode's texts branch, a second read of the same rows) yields
    only the valid rows and counts nothing: the pairs branch counts them."""

    def __init__(self, cfg: JobConfig, count: bool = True):
        super().__init__()
        self.cfg = cfg
        self.count = count

    def expand(self, tables):
        out = tables | "Split" >> beam.ParDo(_ValidateFn(self.cfg, self.count)).with_outputs(
            "rejects", main="valid")
        return {"valid": out.valid, "rejects": out.rejects}


class _RebatchFn(beam.DoFn):
    def __init__(self, rows: int, max_bytes: int):
        self.rows = rows
        self.max_bytes = max_bytes

    def start_bundle(self):
        self.buffer, self.count, self.bytes = [], 0, 0

    def process(self, table):
        self.buffer.append(table)
        self.count += table.num_rows
        self.bytes += table.nbytes
        if self.count >= self.rows or self.bytes >= self.max_bytes:
            yield from self._flush()

    def _flush(self):
        if self.buffer:
            table = pa.concat_tables(self.buffer, promote_options="permissive")
            self.buffer, self.count, self.bytes = [], 0, 0
            for start in range(0, table.num_rows, self.rows):
                yield table.slice(start, self.rows)

    def finish_bundle(self):
        for table in self._flush():
            yield WindowedValue(table, GlobalWindow().max_timestamp(), [GlobalWindow()])


class Rebatch(beam.PTransform):
    """Gather small tables (row groups can be tiny) into ones of about `rows` rows, so
    that sorting by length inside each has enough rows to make padding small. Holds at
    most about `max_bytes` of input, so that rows of long texts do not pile up."""

    def __init__(self, rows: int, max_bytes: int = 64 << 20):
        super().__init__()
        self.rows = rows
        self.max_bytes = max_bytes

    def expand(self, tables):
        return tables | "Gather" >> beam.ParDo(_RebatchFn(self.rows, self.max_bytes))


# --- pair mode: TokenizePairs, Score ------------------------------------------------------


class _TokenizePairsFn(beam.DoFn):
    def __init__(self, cfg: JobConfig):
        self.cfg = cfg
        self.rejected = _counter("rows_rejected")
        self.real = _counter("real_tokens")
        self.computed = _counter("computed_tokens")

    def setup(self):
        self.tokenizer = _load_tokenizer(self.cfg)

    def process(self, table):
        cfg = self.cfg
        batches, no_tokens = pack_table(
            self.tokenizer, table, cfg.text_columns, cfg.batch_size, cfg.max_batch_tokens,
            cfg.min_tokens,
        )
        if no_tokens is not None:
            self.rejected.inc(no_tokens.num_rows)
            yield beam.pvalue.TaggedOutput("rejects", reject_all(no_tokens, "no_tokens"))
        for batch in batches:
            self.real.inc(batch.real_tokens)
            self.computed.inc(batch.computed_tokens)
            yield batch


class TokenizePairs(beam.PTransform):
    """Valid pair tables -> {'batches': length-grouped `PackedBatch`es, 'rejects'}, with
    the model's own tokenizer.json."""

    def __init__(self, cfg: JobConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, tables):
        out = tables | "Pack" >> beam.ParDo(_TokenizePairsFn(self.cfg)).with_outputs(
            "rejects", main="batches")
        return {"batches": out.batches, "rejects": out.rejects}


def handler_for(cls, cfg: JobConfig, shared: Shared | None = None) -> PairModelHandler:
    return cls(cfg.model, large_model=cfg.large_model, model_copies=cfg.model_copies,
               precision=cfg.precision, shared=shared)


def _rows_failed(batch, error) -> pa.Table:
    # Counted here, where the rows leave the model branch for the rejects.
    _counter("rows_rejected").inc(len(batch))
    _counter("model_errors").inc(len(batch))
    return model_error_rows(batch.rows, error)


def _texts_failed(batch, error) -> textindex.TextBatch:
    _counter("texts_failed").inc(len(batch))
    return textindex.TextBatch(batch.texts, None, reason=MODEL_ERROR,
                               error=describe_error(error))


class RunModel(beam.PTransform):
    """Model batches -> {'scored': the same batches with scores or embeddings,
    'failed': `on_failure(batch, exception)` for each batch that failed after its retries}.

    RunInference with `handler.with_no_batching()` (each element is already one model
    batch) and, unless `fail_fast`, its dead-letter output."""

    def __init__(self, handler: PairModelHandler, on_failure, fail_fast: bool):
        super().__init__()
        self.handler = handler
        self.on_failure = on_failure
        self.fail_fast = fail_fast

    def expand(self, batches):
        inference = RunInference(self.handler.with_no_batching())
        if self.fail_fast:
            scored = batches | "RunInference" >> inference
            return {"scored": scored, "failed": scored.pipeline | "NoFailures" >> beam.Create([])}
        scored, dead = batches | "RunInference" >> inference.with_exception_handling()
        failed = dead.failed_inferences | "Failed" >> beam.MapTuple(self.on_failure)
        return {"scored": scored, "failed": failed}


# --- Threshold -------------------------------------------------------------------------


class _ThresholdFn(beam.DoFn):
    PROGRESS_EVERY_S = 5.0

    def __init__(self, cfg: JobConfig):
        self.threshold = cfg.threshold
        self.schema = cfg.label_schema
        self.group_by = cfg.group_by
        self.rows_in = cfg.rows_in
        self.progress = not cfg.canary_branch
        self.review = cfg.review_pairs if not cfg.canary_branch else 0
        if self.review:
            self.review_columns = (cfg.id_column, cfg.text_columns)
            self.review_schema = review_schema(cfg)
        self.scored = _counter("rows_scored")
        self.duplicates = _counter("duplicates")

    def setup(self):
        import logging

        self.log = logging.getLogger("pairscore.job")
        self.started = self.last = time.time()
        self.done = 0

    def process(self, batch):
        table = label_table(batch, self.threshold, self.schema)
        n = table.num_rows
        self.scored.inc(n)
        self.duplicates.inc(int(pc.sum(table["is_duplicate"]).as_py() or 0))
        self.done += n
        now = time.time()
        if self.progress and now - self.last >= self.PROGRESS_EVERY_S:
            # One line per worker process: locally (one process) the whole run's progress.
            self.last = now
            self.log.info("%s", monitor.progress_line(self.done, self.rows_in,
                                                      now - self.started))
        if self.group_by:
            edges = groups.duplicate_edges(batch.rows, table["is_duplicate"].to_numpy(),
                                           *self.group_by)
            if edges.num_rows:
                yield beam.pvalue.TaggedOutput("edges", edges)
        if self.review and n:
            yield beam.pvalue.TaggedOutput("review", monitor.review_rows(
                batch.rows, batch.scores, self.threshold, *self.review_columns,
                self.review_schema, self.review))
        yield table


class Threshold(beam.PTransform):
    """Scored batches -> {'labels': tables (id, score, is_duplicate, kept columns),
    'edges': the duplicate pairs' (left, right) record ids, with --group-by,
    'review': each batch's --review-pairs pairs nearest the threshold}. Logs progress
    (pairs done of rows_in, percent, pairs/s, ETA) every few seconds."""

    def __init__(self, cfg: JobConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, batches):
        out = batches | "Label" >> beam.ParDo(_ThresholdFn(self.cfg)).with_outputs(
            "edges", "review", main="labels")
        return {"labels": out.labels, "edges": out.edges, "review": out.review}


def review_schema(cfg: JobConfig) -> pa.Schema:
    schema = cfg.input_schema
    return monitor.review_schema(schema.field(cfg.id_column),
                                 tuple(schema.field(c) for c in cfg.text_columns))


# --- unique-text mode: EncodeDistinctTexts, the two joins, ScoreEmbeddings --------------


class _KeyTextsFn(beam.DoFn):
    def __init__(self, cfg: JobConfig):
        self.text_columns = cfg.text_columns
        self.buckets = cfg.plan.text_buckets

    def process(self, table):
        texts = textindex.distinct_texts(table, self.text_columns)
        yield from textindex.split_buckets(texts, self.buckets)


class _SplitTextsFn(beam.DoFn):
    def __init__(self, rows: int):
        self.rows = rows

    def process(self, keyed):
        _, texts = keyed
        for start in range(0, len(texts), self.rows):
            yield texts.slice(start, self.rows)


class _TokenizeTextsFn(beam.DoFn):
    def __init__(self, cfg: JobConfig):
        self.cfg = cfg
        self.real = _counter("real_tokens")
        self.computed = _counter("computed_tokens")
        self.distinct = _counter("texts_encoded")

    def setup(self):
        self.tokenizer = _load_tokenizer(self.cfg)

    def process(self, texts):
        cfg = self.cfg
        for batch in textindex.pack_texts(self.tokenizer, texts, cfg.batch_size,
                                          cfg.max_batch_tokens, cfg.min_tokens):
            if batch.ids is not None:
                self.real.inc(batch.real_tokens)
                self.computed.inc(int(batch.ids.size))
                self.distinct.inc(len(batch))
            yield batch


class EncodeDistinctTexts(beam.PTransform):
    """Arrow tables of candidate pairs (as read) -> {'texts': `TextBatch`es holding each
    distinct valid text once, with its embedding, or the reason it has none}.

    With an embedding store (`cfg.store`), distinct texts are looked up there first
    (`LookupStore`) and only the misses are tokenized and encoded; the new embeddings
    are written as the run's uncommitted generation (`WriteStore`). The output then
    also has 'store_files' (the files written) and 'store_stats' (one dict of counts)."""

    def __init__(self, cfg: JobConfig, shared: Shared):
        super().__init__()
        self.cfg = cfg
        self.shared = shared

    def expand(self, tables):
        cfg = self.cfg
        valid = (tables | "Validate" >> Validate(cfg, count=False))["valid"]
        distinct = (
            valid
            | "KeyTexts" >> beam.ParDo(_KeyTextsFn(cfg))
            | "DistinctTexts" >> beam.CombinePerKey(textindex.DistinctFn())
            | "SplitTexts" >> beam.ParDo(_SplitTextsFn(cfg.rebatch_rows))
        )
        found = []
        if cfg.store is not None:
            looked = distinct | "LookupStore" >> LookupStore(cfg)
            distinct, found = looked["misses"], [looked["hits"]]
        batches = (
            distinct
            # Spreads the encoding over workers: a bucket's texts leave the combine on one.
            | "SpreadTexts" >> beam.Reshuffle()
            | "TokenizeTexts" >> beam.ParDo(_TokenizeTextsFn(cfg))
        )
        to_encode = batches | "HasTokens" >> beam.Filter(lambda b: b.ids is not None)
        no_tokens = batches | "NoTokens" >> beam.Filter(lambda b: b.ids is None)
        encoded = to_encode | "Encode" >> RunModel(
            handler_for(EncodeHandler, cfg, self.shared), _texts_failed,
            fail_fast=cfg.fail_fast)
        out = {"texts": (encoded["scored"], encoded["failed"], no_tokens, *found)
               | "AllTexts" >> beam.Flatten()}
        if cfg.store is not None:
            out["store_files"] = encoded["scored"] | "WriteStore" >> WriteStore(cfg)
            out["store_stats"] = (
                (found[0] | "CountFound" >> beam.Map(lambda b: ("texts_found", len(b))),
                 to_encode | "CountEncoded" >> beam.Map(lambda b: ("texts_encoded", len(b))),
                 looked["skipped"] | "CountSkipped" >> beam.Map(lambda _: ("files_skipped", 1)))
                | "StoreCounts" >> beam.Flatten()
                | "SumStoreCounts" >> beam.CombineGlobally(_SumCountsFn())
            )
        return out


# --- the embedding store: LookupStore, WriteStore --------------------------------------


class _SumCountsFn(beam.CombineFn):
    """(name, n) pairs -> {name: sum}."""

    def create_accumulator(self):
        return {}

    def add_input(self, acc, item):
        acc[item[0]] = acc.get(item[0], 0) + item[1]
        return acc

    def merge_accumulators(self, accs):
        out = {}
        for acc in accs:
            for k, v in acc.items():
                out[k] = out.get(k, 0) + v
        return out

    def extract_output(self, acc):
        return acc


class _ReadStoreFileFn(beam.DoFn):
    """A store file record -> (key bucket, (keys, embeddings)) per bucket; a file that
    cannot be read whole is skipped with a warning naming it ('skipped': its path)."""

    def __init__(self, spec: store.StoreSpec):
        self.dim = spec.dim
        self.buckets = spec.buckets
        self.read = _counter("store_entries_read")
        self.skipped = _counter("store_files_skipped")

    def process(self, record):
        got = store.read_file(record, self.dim)
        if got is None:
            self.skipped.inc()
            yield beam.pvalue.TaggedOutput("skipped", record["path"])
            return
        keys, embs = got
        self.read.inc(len(keys))
        for b, idx in store.split_by_bucket(keys, self.buckets):
            yield b, (keys[idx], embs[idx])


class _StoreIndexFn(beam.CombineFn):
    """(keys, embeddings) chunks -> one `store.StoreIndex`."""

    def __init__(self, dim: int):
        self.dim = dim

    def create_accumulator(self):
        return []

    def add_input(self, acc, chunk):
        acc.append(chunk)
        return acc

    def merge_accumulators(self, accs):
        return [c for acc in accs for c in acc]

    def extract_output(self, acc):
        return store.StoreIndex.build(acc, self.dim)


def _split_found(index: store.StoreIndex, texts: pa.Array, keys: np.ndarray):
    """(a `TextBatch` of the texts found, with their stored embeddings, or None; the
    texts missing, or None)."""
    pos = index.lookup(keys)
    hit = pos >= 0
    found = missing = None
    if hit.any():
        found = textindex.TextBatch(texts.filter(pa.array(hit)), None,
                                    embeddings=index.embeddings[pos[hit]])
    if not hit.all():
        missing = texts.filter(pa.array(~hit))
    return found, missing


class _LookupFn(beam.DoFn):
    def __init__(self):
        self.hits = _counter("store_hits")

    def _emit(self, index, texts, keys):
        found, missing = _split_found(index, texts, keys)
        if found is not None:
            self.hits.inc(len(found))
            yield found
        if missing is not None:
            yield beam.pvalue.TaggedOutput("misses", missing)

    def process(self, texts, index):
        yield from self._emit(index, texts, store.text_keys(texts))


class _KeyByStoreBucketFn(beam.DoFn):
    def __init__(self, buckets: int):
        self.buckets = buckets

    def process(self, texts):
        keys = store.text_keys(texts)
        for b, idx in store.split_by_bucket(keys, self.buckets):
            yield b, (texts.take(pa.array(idx)), keys[idx])


class _JoinStoreFn(_LookupFn):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def process(self, grouped):
        _, joined = grouped
        index = store.StoreIndex.build(list(joined["store"]), self.dim)
        for texts, keys in joined["texts"]:
            yield from self._emit(index, texts, keys)


class LookupStore(beam.PTransform):
    """Arrays of distinct texts -> {'hits': `TextBatch`es with the stored embeddings,
    'misses': arrays of the texts the store lacks, 'skipped': store files not read}.

    Reads exactly the files of the generations pinned at launch (`cfg.store`), spread
    over workers. While those are small (`planning.SIDE_INPUT_MAX_BYTES`) they form one
    `StoreIndex`, a side input of the lookup; past that, texts and store entries are
    keyed by the same key bucket and joined by a CoGroupByKey, so a worker holds one
    bucket of the store, never all of it."""

    def __init__(self, cfg: JobConfig):
        super().__init__()
        self.spec = cfg.store

    def expand(self, texts):
        spec = self.spec
        read = (
            texts.pipeline
            | "StoreFiles" >> beam.Create(spec.files)
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadStore" >> beam.ParDo(_ReadStoreFileFn(spec)).with_outputs(
                "skipped", main="chunks")
        )
        if spec.lookup == "side-input":
            index = (read.chunks | "Chunks" >> beam.Values()
                     | "StoreIndex" >> beam.CombineGlobally(_StoreIndexFn(spec.dim)))
            out = texts | "Lookup" >> beam.ParDo(
                _LookupFn(), beam.pvalue.AsSingleton(index)).with_outputs(
                    "misses", main="hits")
        else:
            keyed = texts | "KeyByStoreBucket" >> beam.ParDo(_KeyByStoreBucketFn(spec.buckets))
            out = (
                {"texts": keyed, "store": read.chunks}
                | "GroupByBucket" >> beam.CoGroupByKey()
                | "Lookup" >> beam.ParDo(_JoinStoreFn(spec.dim)).with_outputs(
                    "misses", main="hits")
            )
        return {"hits": out.hits, "misses": out.misses, "skipped": read.skipped}


class _WriteStoreFn(beam.DoFn):
    def __init__(self, spec: store.StoreSpec):
        self.spec = spec
        self.written = _counter("store_entries_written")

    def start_bundle(self):
        self.keys, self.embs, self.rows = [], [], 0

    def process(self, batch):
        self.keys.append(store.text_keys(batch.texts))
        self.embs.append(np.asarray(batch.embeddings, np.float32))
        self.rows += len(batch)
        if self.rows >= store.ROWS_PER_FILE:
            yield self._flush()

    def _flush(self):
        import uuid

        keys, embs = np.concatenate(self.keys), np.concatenate(self.embs)
        self.keys, self.embs, self.rows = [], [], 0
        # A name of its own per attempt: a retried bundle's file is simply not listed.
        path = join(self.spec.write_dir, f"part-{uuid.uuid4().hex}.parquet")
        record = store.write_file(path, keys, embs, self.spec.fingerprint)
        self.written.inc(record["rows"])
        return record

    def finish_bundle(self):
        if self.rows:
            yield WindowedValue(self._flush(), GlobalWindow().max_timestamp(),
                                [GlobalWindow()])


class WriteStore(beam.PTransform):
    """Encoded `TextBatch`es -> records {"path", "rows", "bytes"} of the Parquet files
    written under the store's URI/<fingerprint>/gen-RUN_ID/, uncommitted: the final step
    (`publish.finalize_run`) commits them once the run's checks pass."""

    def __init__(self, cfg: JobConfig):
        super().__init__()
        self.spec = cfg.store

    def expand(self, batches):
        return batches | "WriteFiles" >> beam.ParDo(_WriteStoreFn(self.spec))


class _IndexFn(beam.CombineFn):
    """All `TextBatch`es -> one `EmbeddingIndex`."""

    def create_accumulator(self):
        return []

    def add_input(self, acc, batch):
        # Only what the index needs travels on: the ids are dropped here.
        acc.append(textindex.TextBatch(batch.texts, None, 0, batch.embeddings, batch.reason,
                                       batch.error))
        return acc

    def merge_accumulators(self, accs):
        return [b for acc in accs for b in acc]

    def extract_output(self, acc):
        return textindex.EmbeddingIndex.build(acc)


class _CountRejects(beam.DoFn):
    def __init__(self):
        self.rejected = _counter("rows_rejected")

    def process(self, table):
        self.rejected.inc(table.num_rows)
        yield table


class _AttachFn(beam.DoFn):
    def __init__(self, cfg: JobConfig):
        self.text_columns = cfg.text_columns

    def process(self, table, index):
        batches, rejects = joins.attach_embeddings(index, table, self.text_columns)
        for r in rejects:
            yield beam.pvalue.TaggedOutput("rejects", r)
        yield from batches


class SideInputJoin(beam.PTransform):
    """(valid pair tables, `TextBatch`es) -> {'batches': `EmbeddedBatch`es, 'rejects'}.

    Every embedding in one `EmbeddingIndex`, a side input of the pairs. The pairs never
    shuffle; every worker holds the distinct texts' embeddings. For up to a few hundred
    thousand distinct texts (`planning.SIDE_INPUT_MAX_BYTES`)."""

    def __init__(self, cfg: JobConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, inputs):
        pairs, texts = inputs
        index = texts | "Index" >> beam.CombineGlobally(_IndexFn())
        out = pairs | "Attach" >> beam.ParDo(
            _AttachFn(self.cfg), beam.pvalue.AsSingleton(index)
        ).with_outputs("rejects", main="batches")
        rejects = out.rejects | "CountRejects" >> beam.ParDo(_CountRejects())
        return {"batches": out.batches, "rejects": rejects}


class _JoinLeftFn(beam.DoFn):
    def __init__(self, cfg: JobConfig):
        self.text_columns = cfg.text_columns
        self.buckets = cfg.plan.join_buckets

    def process(self, grouped):
        _, joined = grouped
        parts, rejects = joins.join_left(list(joined["texts"]), list(joined["pairs"]),
                                         self.text_columns, self.buckets)
        for r in rejects:
            yield beam.pvalue.TaggedOutput("rejects", r)
        yield from parts


class _JoinRightFn(beam.DoFn):
    def __init__(self, cfg: JobConfig):
        self.text_columns = cfg.text_columns

    def process(self, grouped):
        _, joined = grouped
        batches, rejects = joins.join_right(list(joined["texts"]), list(joined["pairs"]),
                                            self.text_columns)
        for r in rejects:
            yield beam.pvalue.TaggedOutput("rejects", r)
        yield from batches


class ShuffleJoin(beam.PTransform):
    """(valid pair tables, `TextBatch`es) -> {'batches': `EmbeddedBatch`es, 'rejects'}.

    Embeddings and pairs both keyed by text-hash bucket: a CoGroupByKey attaches the left
    embeddings, a second one (pairs re-keyed by their right text) the right ones. Each
    worker holds one bucket: for millions of distinct texts. (The local FnApiRunner keeps
    whole shuffles in memory, so locally the side input is the lean one.)"""

    def __init__(self, cfg: JobConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, inputs):
        pairs, texts = inputs
        cfg = self.cfg
        buckets, text_a = cfg.plan.join_buckets, cfg.text_columns[0]
        keyed_texts = texts | "KeyTexts" >> beam.FlatMap(joins.key_texts, buckets)
        keyed_pairs = pairs | "KeyPairs" >> beam.FlatMap(joins.key_pairs, text_a, buckets)
        left = (
            {"texts": keyed_texts, "pairs": keyed_pairs}
            | "GroupLeft" >> beam.CoGroupByKey()
            | "JoinLeft" >> beam.ParDo(_JoinLeftFn(cfg)).with_outputs("rejects", main="parts")
        )
        right = (
            {"texts": keyed_texts, "pairs": left.parts}
            | "GroupRight" >> beam.CoGroupByKey()
            | "JoinRight" >> beam.ParDo(_JoinRightFn(cfg)).with_outputs(
                "rejects", main="batches")
        )
        rejects = ((left.rejects, right.rejects) | "MergeRejects" >> beam.Flatten()
                   | "CountRejects" >> beam.ParDo(_CountRejects()))
        return {"batches": right.batches, "rejects": rejects}


# --- the two modes ----------------------------------------------------------------------


class ScorePairs(beam.PTransform):
    """Pair mode: Arrow tables of candidate pairs -> {'labels': tables, 'rejects': tables}.
    Both texts of every pair are encoded."""

    def __init__(self, cfg: JobConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, tables):
        cfg = self.cfg
        checked = tables | "Validate" >> Validate(cfg)
        rebatched = checked["valid"] | "Rebatch" >> Rebatch(cfg.rebatch_rows)
        packed = rebatched | "Tokenize" >> TokenizePairs(cfg)
        scored = packed["batches"] | "Score" >> RunModel(
            handler_for(PairModelHandler, cfg), _rows_failed, fail_fast=cfg.fail_fast)
        labelled = scored["scored"] | "Threshold" >> Threshold(cfg)
        rejects = ((checked["rejects"], packed["rejects"], scored["failed"])
                   | "MergeRejects" >> beam.Flatten())
        return {**labelled, "rejects": rejects}


class ScoreUniqueTexts(beam.PTransform):
    """Unique-text mode: (pair tables, the same tables read again for their texts) ->
    {'labels', 'rejects'}. Each distinct text is encoded once; pairs are scored from
    their texts' embeddings (score == score_embeddings(encode(a), encode(b))).

    The texts branch takes its own read of the input so that the pairs branch streams
    from its read once the embeddings are ready, instead of the runner holding every pair
    until then. Given one PCollection, both branches read it."""

    def __init__(self, cfg: JobConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, inputs):
        pairs, texts = inputs if isinstance(inputs, tuple) else (inputs, inputs)
        cfg = self.cfg
        # Encode and score_embeddings share one loaded model per process.
        shared = Shared()
        checked = pairs | "Validate" >> Validate(cfg)
        rebatched = checked["valid"] | "Rebatch" >> Rebatch(cfg.rebatch_rows)
        embedded = texts | "EncodeDistinctTexts" >> EncodeDistinctTexts(cfg, shared)
        join = SideInputJoin if cfg.plan.join == "side-input" else ShuffleJoin
        joined = (rebatched, embedded["texts"]) | "JoinEmbeddings" >> join(cfg)
        scored = joined["batches"] | "ScoreEmbeddings" >> RunModel(
            handler_for(ScoreEmbeddingsHandler, cfg, shared), _rows_failed,
            fail_fast=cfg.fail_fast)
        labelled = scored["scored"] | "Threshold" >> Threshold(cfg)
        rejects = ((checked["rejects"], joined["rejects"], scored["failed"])
                   | "MergeRejects" >> beam.Flatten())
        out = {**labelled, "rejects": rejects}
        if cfg.store is not None:
            out.update(store_files=embedded["store_files"], store_stats=embedded["store_stats"])
        return out


# --- WriteResults -----------------------------------------------------------------------


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly `schema`'s columns; a missing one (`error` outside model
    errors) comes as nulls."""
    n = table.num_rows
    cols = [table[f.name] if f.name in table.column_names else pa.nulls(n, f.type)
            for f in schema]
    return pa.Table.from_arrays(cols, schema=schema.remove_metadata()).cast(schema)


class WriteResults(beam.PTransform):
    """{'labels', 'rejects'} -> Parquet files under OUT/_staging/RUN_ID/; returns
    {'labels', 'rejects'}: the names of the files each write finished."""

    def __init__(self, cfg: JobConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, results):
        cfg = self.cfg
        staging = pio.staging(cfg.output, cfg.run_id)
        return {
            "labels": results["labels"]
            | "WriteLabels" >> WriteToParquetBatched(
                join(staging, pio.LABELS, "part"),
                schema=cfg.label_schema,
                file_name_suffix=".parquet",
            ),
            "rejects": results["rejects"]
            | "ConformRejects" >> beam.Map(conform, cfg.reject_schema)
            | "WriteRejects" >> WriteToParquetBatched(
                join(staging, pio.REJECTS, "part"),
                schema=cfg.reject_schema,
                file_name_suffix=".parquet",
            ),
        }


# --- Finalize ---------------------------------------------------------------------------


class _KeyIdsFn(beam.DoFn):
    def __init__(self, id_column: str, buckets: int):
        self.id_column = id_column
        self.buckets = buckets

    def process(self, table):
        yield from textindex.split_buckets(table[self.id_column], self.buckets)


class CountDistinctIds(beam.PTransform):
    """Label tables -> one int: the distinct values of `id_column`, exactly (Arrow's
    `unique`, never Python's `hash()`, under which -1 and -2 collide). Ids are bucketed
    by `textindex.value_hash`, so a worker holds one bucket's distinct ids."""

    def __init__(self, id_column: str, buckets: int = 1):
        super().__init__()
        self.id_column = id_column
        self.buckets = buckets

    def expand(self, labels):
        return (
            labels
            | "KeyIds" >> beam.ParDo(_KeyIdsFn(self.id_column, self.buckets))
            | "DistinctIds" >> beam.CombinePerKey(textindex.DistinctFn())
            | "CountPerBucket" >> beam.MapTuple(lambda _, ids: len(ids))
            | "Sum" >> beam.CombineGlobally(sum)
        )


def _group_tables(edge_tables: list, max_group_size: int):
    edges = (pa.concat_tables(edge_tables) if edge_tables
             else pa.table({"left": pa.array([], pa.string()), "right": pa.array([], pa.string())}))
    table = groups.connected_groups(edges["left"], edges["right"])
    return table, groups.group_stats(table, max_group_size).to_dict()


class Groups(beam.PTransform):
    """Duplicate edges -> {'files': the written OUT/_staging/RUN_ID/groups/ files,
    'stats': one dict (groups, records, size histogram, largest)}. The edges are gathered
    on one worker (at most --max-group-edges) and grouped there
    (`groups.connected_groups`)."""

    def __init__(self, cfg: JobConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, edges):
        cfg = self.cfg
        grouped = (
            edges
            | "Gather" >> beam.CombineGlobally(groups.EdgesFn(cfg.max_group_edges))
            | "Components" >> beam.Map(_group_tables, cfg.max_group_size)
        )
        schema = groups.group_schema(cfg.input_schema.field(cfg.group_by[0]).type)
        files = (
            grouped
            | "Table" >> beam.Map(lambda pair: pair[0])
            | "Write" >> WriteToParquetBatched(
                join(pio.staging(cfg.output, cfg.run_id), pio.GROUPS, "part"),
                schema=schema, file_name_suffix=".parquet")
        )
        return {"files": files, "stats": grouped | "Stats" >> beam.Map(lambda pair: pair[1])}


class _CountFn(beam.DoFn):
    def __init__(self, name: str):
        self.counter = _counter(name)

    def process(self, n):
        self.counter.inc(n)


class Progress(beam.PTransform):
    """The counter `rows_in`, set once at the start, beside `rows_scored` and
    `rows_rejected`: a runner's job page (Dataflow's) shows the run's progress as their
    ratio while it scores."""

    def __init__(self, rows_in: int | None):
        super().__init__()
        self.rows_in = rows_in or 0

    def expand(self, pbegin):
        return (pbegin | "RowsIn" >> beam.Create([self.rows_in])
                | "Count" >> beam.ParDo(_CountFn("rows_in")))


class Review(beam.PTransform):
    """Each batch's pairs nearest the threshold -> the written OUT/_staging/RUN_ID/review/
    file: the --review-pairs pairs nearest it over the whole run, nearest first, chosen
    by a combiner that holds at most twice that many rows (`monitor.NearestFn`)."""

    def __init__(self, cfg: JobConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, candidates):
        cfg = self.cfg
        schema = review_schema(cfg)
        return (
            candidates
            | "Nearest" >> beam.CombineGlobally(monitor.NearestFn(cfg.review_pairs, schema))
            | "Write" >> WriteToParquetBatched(
                join(pio.staging(cfg.output, cfg.run_id), pio.REVIEW, "pairs"),
                schema=schema, file_name_suffix=".parquet", num_shards=1)
        )


class Canaries(beam.PTransform):
    """The canary pairs -> one dict: their accuracy, precision, recall and F1 at the
    run's threshold (`monitor.canary_metrics`). They go through the night's own scoring
    transform (pair or unique mode, same tokenizer, model and threshold), under their
    own step names, so their counters and rows stay out of the night's."""

    def __init__(self, cfg: JobConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, pbegin):
        cfg = self.cfg
        plan = dataclasses.replace(cfg.plan, join="side-input", text_buckets=1)
        # Never from the embedding store: a canary must be encoded by tonight's model.
        branch = dataclasses.replace(cfg, canary_branch=True, group_by=None, plan=plan,
                                     rows_in=cfg.canaries.num_rows, store=None)
        tables = pbegin | "Pairs" >> beam.Create([cfg.canaries])
        score = ScoreUniqueTexts if cfg.plan.mode == "unique" else ScorePairs
        results = tables | "Score" >> score(branch)
        return results["labels"] | "Metrics" >> beam.CombineGlobally(monitor.CanaryFn(
            cfg.id_column, cfg.canary_labels, cfg.threshold))


class _FinalizeFn(beam.DoFn):
    def __init__(self, cfg: JobConfig):
        self.cfg = cfg

    def process(self, _, label_files, reject_files, group_files, review_files, duplicates,
                distinct_ids, scores, group_stats, canaries, store_files=(), store_stats=()):
        from pipeline import publish

        files = {pio.LABELS: sorted(label_files), pio.REJECTS: sorted(reject_files),
                 pio.GROUPS: sorted(group_files), pio.REVIEW: sorted(review_files)}
        yield publish.finalize_run(
            self.cfg, files, duplicates, distinct_ids, scores,
            group_stats=group_stats[0] if group_stats else None,
            canaries=canaries[0] if canaries else None,
            store_files=list(store_files),
            store_stats=store_stats[0] if store_stats else None)


class Finalize(beam.PTransform):
    """{'labels': label tables, 'written': {'labels', 'rejects'}: the files both writes
    finished, 'groups': {'files', 'stats'}, 'review': files, 'canaries': metrics (the
    last three empty when not asked for), and with --embedding-store 'store': {'files',
    'stats'}} -> the summary written. The job's last step: it takes every write's output
    as a side input, so it runs after all have finished, on every runner; it counts,
    checks, gates and publishes (`pipeline.publish.finalize_run`). Duplicates, distinct
    ids and the score histogram are computed here, exactly, by combiners over the label
    tables."""

    def __init__(self, cfg: JobConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, inputs):
        cfg = self.cfg
        labels = inputs["labels"]
        store_inputs = {}
        if "store" in inputs:
            store_inputs = {"store_files": beam.pvalue.AsList(inputs["store"]["files"]),
                            "store_stats": beam.pvalue.AsList(inputs["store"]["stats"])}
        duplicates = (
            labels
            | "DuplicatesPerTable" >> beam.Map(
                lambda t: int(pc.sum(t["is_duplicate"]).as_py() or 0))
            | "Duplicates" >> beam.CombineGlobally(sum)
        )
        distinct_ids = labels | "DistinctIds" >> CountDistinctIds(cfg.id_column,
                                                                  cfg.id_buckets)
        scores = labels | "ScoreHistogram" >> beam.CombineGlobally(monitor.ScoreHistogramFn())
        side = beam.pvalue
        return (
            labels.pipeline
            | "Start" >> beam.Create([None])
            | "Publish" >> beam.ParDo(
                _FinalizeFn(cfg),
                label_files=side.AsList(inputs["written"]["labels"]),
                reject_files=side.AsList(inputs["written"]["rejects"]),
                group_files=side.AsList(inputs["groups"]["files"]),
                review_files=side.AsList(inputs["review"]),
                duplicates=side.AsSingleton(duplicates),
                distinct_ids=side.AsSingleton(distinct_ids),
                scores=side.AsSingleton(scores),
                group_stats=side.AsList(inputs["groups"]["stats"]),
                canaries=side.AsList(inputs["canaries"]),
                **store_inputs,
            )
        )
