"""Unique-text mode's stages, over `pipeline.textindex` and `pipeline.joins`::

    pairs:  Validate -> Rebatch ------------------------------\\
    texts:  EncodeDistinctTexts (validate, dedup, [LookupStore], -> JoinEmbeddings (SideInputJoin
            tokenize, RunInference encode, [WriteStore]) -------/   or ShuffleJoin)
            -> ScoreEmbeddings (RunInference, score_embeddings) -> Threshold
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import apache_beam as beam
from apache_beam.utils.shared import Shared

from pipeline import joins, textindex
from pipeline.handler import EncodeHandler, ScoreEmbeddingsHandler
from pipeline.stages.common import SumCountsFn, counter, load_tokenizer
from pipeline.stages.score import (
    Rebatch,
    RunModel,
    Threshold,
    Validate,
    handler_for,
    rerank_if_asked,
    rows_failed,
)
from pipeline.stages.store import LookupStore, WriteStore
from pipeline.validate import MODEL_ERROR, describe_error

if TYPE_CHECKING:
    from pipeline.config import JobConfig


def texts_failed(batch, error, cfg: JobConfig) -> textindex.TextBatch:
    counter("texts_failed", cfg).inc(len(batch))
    return textindex.TextBatch(batch.texts, None, reason=MODEL_ERROR,
                               error=describe_error(error))


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
        self.real = counter("real_tokens", cfg)
        self.computed = counter("computed_tokens", cfg)
        self.distinct = counter("texts_encoded", cfg)

    def setup(self):
        self.tokenizer = load_tokenizer(self.cfg)

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
            handler_for(EncodeHandler, cfg, self.shared), texts_failed, cfg)
        out = {"texts": (encoded["scored"], encoded["failed"], no_tokens, *found)
               | "AllTexts" >> beam.Flatten()}
        if cfg.store is not None:
            out["store_files"] = encoded["scored"] | "WriteStore" >> WriteStore(cfg)
            out["store_stats"] = (
                (found[0] | "CountFound" >> beam.Map(lambda b: ("texts_found", len(b))),
                 to_encode | "CountEncoded" >> beam.Map(lambda b: ("texts_encoded", len(b))),
                 looked["skipped"] | "CountSkipped" >> beam.Map(lambda _: ("files_skipped", 1)))
                | "StoreCounts" >> beam.Flatten()
                | "SumStoreCounts" >> beam.CombineGlobally(SumCountsFn())
            )
        return out


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
    def __init__(self, cfg: JobConfig):
        self.rejected = counter("rows_rejected", cfg)

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
        rejects = out.rejects | "CountRejects" >> beam.ParDo(_CountRejects(self.cfg))
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
                   | "CountRejects" >> beam.ParDo(_CountRejects(self.cfg)))
        return {"batches": right.batches, "rejects": rejects}


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
            handler_for(ScoreEmbeddingsHandler, cfg, shared), rows_failed, cfg)
        decided, more_rejects = rerank_if_asked(scored["scored"], cfg)
        labelled = decided | "Threshold" >> Threshold(cfg)
        rejects = ((checked["rejects"], joined["rejects"], scored["failed"], *more_rejects)
                   | "MergeRejects" >> beam.Flatten())
        out = {**labelled, "rejects": rejects}
        if cfg.store is not None:
            out.update(store_files=embedded["store_files"], store_stats=embedded["store_stats"])
        return out
