"""The cascade's second pass, over `pipeline.rerank`::

    scored batches -> Split (band?) -> first model decides ---------------------+-> decided
                                    -> Rebatch -> TokenizePairs (cross model's tokenizer)
                                       -> RunModel (RunInference, the cross-encoder's own
                                          handler and batch sizes) -> cross decides -+

Its counters are the night's under rerank_ (rerank_real_tokens, rerank_model_errors...).
A cross-encoder batch that fails after its retries becomes rejects with reason
`model_error`, as in the first pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import apache_beam as beam

from pipeline import rerank
from pipeline.handler import PairModelHandler
from pipeline.stages.common import counter
from pipeline.stages.score import Rebatch, RunModel, TokenizePairs, handler_for, rows_failed

if TYPE_CHECKING:
    from pipeline.config import JobConfig


class _SplitFn(beam.DoFn):
    def __init__(self, cfg: JobConfig):
        self.band = cfg.rerank.band
        self.threshold = cfg.threshold
        self.sent = counter("rows_reranked", cfg)

    def process(self, batch):
        kept, band = rerank.split_band(batch.rows, batch.scores, self.band, self.threshold)
        if kept is not None:
            yield kept
        if band is not None:
            self.sent.inc(band.num_rows)
            yield beam.pvalue.TaggedOutput("band", band)


def band_rows_failed(batch, error, cfg: JobConfig):
    """`rows_failed` for a cross-encoder batch: its rows as read (no first score)."""
    batch.rows = rerank.strip_first_score(batch.rows)[0]
    return rows_failed(batch, error, cfg)


def _rejects_as_read(table):
    if rerank.FIRST_SCORE in table.column_names:
        return table.drop_columns([rerank.FIRST_SCORE])
    return table


class Rerank(beam.PTransform):
    """First-model scored batches -> {'decided': `rerank.Decided` batches (Threshold
    labels them), 'rejects': the band rows that failed in the cross-encoder or tokenize
    to nothing with its tokenizer}."""

    def __init__(self, cfg: JobConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, scored):
        cfg = self.cfg
        second = cfg.rerank_config()
        split = scored | "Split" >> beam.ParDo(_SplitFn(cfg)).with_outputs("band", main="first")
        rebatched = split.band | "Rebatch" >> Rebatch(cfg.rebatch_rows)
        packed = rebatched | "Tokenize" >> TokenizePairs(second)
        out = packed["batches"] | "Score" >> RunModel(
            handler_for(PairModelHandler, second), band_rows_failed, second)
        threshold = second.threshold
        decided = out["scored"] | "Decide" >> beam.Map(
            lambda b: rerank.rescored(b.rows, b.scores, threshold))
        no_tokens = packed["rejects"] | "AsRead" >> beam.Map(_rejects_as_read)
        return {
            "decided": (split.first, decided) | "MergeDecided" >> beam.Flatten(),
            "rejects": (no_tokens, out["failed"]) | "MergeRejects" >> beam.Flatten(),
        }
