"""The morning check's stages, over `pipeline.monitor`: progress, review pairs, canaries."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import apache_beam as beam
from apache_beam.io.parquetio import WriteToParquetBatched

from model.storage import join
from pipeline import io as pio
from pipeline import monitor
from pipeline.stages.common import CountFn
from pipeline.stages.score import ScorePairs, review_schema
from pipeline.stages.unique import ScoreUniqueTexts

if TYPE_CHECKING:
    from pipeline.config import JobConfig


class Progress(beam.PTransform):
    """The counter `rows_in`, set once at the start, beside `rows_scored` and
    `rows_rejected`: a runner's job page (Dataflow's) shows the run's progress as their
    ratio while it scores."""

    def __init__(self, rows_in: int | None):
        super().__init__()
        self.rows_in = rows_in or 0

    def expand(self, pbegin):
        return (pbegin | "RowsIn" >> beam.Create([self.rows_in])
                | "Count" >> beam.ParDo(CountFn("rows_in")))


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
