"""Pair mode's stages, over `pipeline.validate`, `pipeline.packing` and `pipeline.handler`::

    Validate -> Rebatch -> TokenizePairs -> RunModel (RunInference, serving_default)
             -> Threshold                              rejects: Validate, TokenizePairs, Score

`Validate`, `Rebatch`, `RunModel` and `Threshold` serve unique-text mode too. A model
batch that still fails after its retries becomes rejects with reason `model_error`
(RunInference's dead-letter output) unless `--max-model-error-ratio 0` asks the job to
fail at once.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.ml.inference.base import RunInference
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.shared import Shared
from apache_beam.utils.windowed_value import WindowedValue

from pipeline import groups, monitor, sampling
from pipeline.handler import ModelLoadError, PairModelHandler
from pipeline.packing import label_table, pack_table
from pipeline.stages.common import counter, load_tokenizer
from pipeline.validate import describe_error, model_error_rows, reject_all, validate_table

if TYPE_CHECKING:
    from pipeline.config import JobConfig


class _ValidateFn(beam.DoFn):
    def __init__(self, cfg: JobConfig, count: bool):
        self.id_column = cfg.id_column
        self.text_columns = cfg.text_columns
        self.record_columns = tuple(cfg.group_by or ())
        self.count = count
        self.rows_read = counter("rows_read", cfg)
        self.rejected = counter("rows_rejected", cfg)

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
        self.rejected = counter("rows_rejected", cfg)
        self.real = counter("real_tokens", cfg)
        self.computed = counter("computed_tokens", cfg)

    def setup(self):
        self.tokenizer = load_tokenizer(self.cfg)

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
               precision=cfg.precision, shared=shared, counter_prefix=cfg.counter_prefix)


def rows_failed(batch, error, cfg: JobConfig) -> pa.Table:
    # Counted here, where the rows leave the model branch for the rejects.
    counter("rows_rejected", cfg).inc(len(batch))
    counter("model_errors", cfg).inc(len(batch))
    return model_error_rows(batch.rows, error)


class RunModel(beam.PTransform):
    """Model batches -> {'scored': the same batches with scores or embeddings,
    'failed': `on_failure(batch, exception, cfg)` for each batch that failed after its
    retries}.

    RunInference with `handler.with_no_batching()` (each element is already one model
    batch) and, unless `cfg.fail_fast`, its dead-letter output."""

    def __init__(self, handler: PairModelHandler, on_failure, cfg: JobConfig):
        super().__init__()
        self.handler = handler
        self.on_failure = on_failure
        self.cfg = cfg
        self.fail_fast = cfg.fail_fast

    def expand(self, batches):
        inference = RunInference(self.handler.with_no_batching())
        if self.fail_fast:
            scored = batches | "RunInference" >> inference
            return {"scored": scored, "failed": scored.pipeline | "NoFailures" >> beam.Create([])}
        scored, dead = batches | "RunInference" >> inference.with_exception_handling()
        on_failure, cfg = self.on_failure, self.cfg
        failed = dead.failed_inferences | "Failed" >> beam.Map(
            lambda dead_letter: _failed_batch(on_failure, *dead_letter, cfg))
        return {"scored": scored, "failed": failed}


def _failed_batch(on_failure, batch, error, cfg: JobConfig):
    """`on_failure(batch, error, cfg)`; but a model that cannot load fails the job, as it
    does when loaded before the first batch: unique-text mode loads its SavedModel at the
    first batch that needs it (`LoadedPairModel(lazy=True)`), inside RunInference."""
    kind = error[0] if isinstance(error, tuple) else type(error)
    if isinstance(kind, type) and issubclass(kind, ModelLoadError):
        raise ModelLoadError(describe_error(error).split(": ", 1)[-1])
    return on_failure(batch, error, cfg)


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
        self.sample = cfg.review_sample if not cfg.canary_branch else 0
        if self.sample:
            self.sample_args = (cfg.threshold, cfg.review_sample_band, cfg.run_id)
            self.id_column, self.text_columns = cfg.id_column, cfg.text_columns
        self.scored = counter("rows_scored", cfg)
        self.duplicates = counter("duplicates", cfg)

    def setup(self):
        import logging

        self.log = logging.getLogger("pairscore.job")
        self.started = self.last = time.time()
        self.done = 0

    def process(self, batch):
        # The cascade's batches say whose threshold decides them (`rerank.Decided`).
        threshold = getattr(batch, "threshold", self.threshold)
        table = label_table(batch, threshold, self.schema)
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
                batch.rows, batch.scores, threshold, *self.review_columns,
                self.review_schema, self.review))
        if self.sample and n:
            rows, (a, b) = batch.rows, self.text_columns
            yield beam.pvalue.TaggedOutput("sample", sampling.candidates(
                rows[self.id_column], rows[a], rows[b], batch.scores, threshold,
                *self.sample_args[1:], k=self.sample))
        yield table


class Threshold(beam.PTransform):
    """Scored batches -> {'labels': tables (id, score, is_duplicate, kept columns),
    'edges': the duplicate pairs' (left, right) record ids, with --group-by,
    'review': each batch's --review-pairs pairs nearest the threshold, 'sample': each
    batch's --review-sample candidates a stratum (`sampling.candidates`)}. Logs progress
    (pairs done of rows_in, percent, pairs/s, ETA) every few seconds."""

    def __init__(self, cfg: JobConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, batches):
        out = batches | "Label" >> beam.ParDo(_ThresholdFn(self.cfg)).with_outputs(
            "edges", "review", "sample", main="labels")
        return {"labels": out.labels, "edges": out.edges, "review": out.review,
                "sample": out.sample}


def review_schema(cfg: JobConfig) -> pa.Schema:
    schema = cfg.input_schema
    return monitor.review_schema(schema.field(cfg.id_column),
                                 tuple(schema.field(c) for c in cfg.text_columns))


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
            handler_for(PairModelHandler, cfg), rows_failed, cfg)
        decided, more_rejects = rerank_if_asked(scored["scored"], cfg)
        labelled = decided | "Threshold" >> Threshold(cfg)
        rejects = ((checked["rejects"], packed["rejects"], scored["failed"], *more_rejects)
                   | "MergeRejects" >> beam.Flatten())
        return {**labelled, "rejects": rejects}


def rerank_if_asked(scored, cfg: JobConfig):
    """(batches for Threshold, extra rejects): with --rerank-model the cascade's second
    pass (`stages.rerank.Rerank`), else the scored batches as they are."""
    if cfg.rerank is None:
        return scored, ()
    from pipeline.stages.rerank import Rerank

    out = scored | "Rerank" >> Rerank(cfg)
    return out["decided"], (out["rejects"],)
