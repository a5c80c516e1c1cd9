"""The night's sample for people to label, over `pipeline.sampling`::

    Threshold's 'sample' output (each batch's bottom-N a stratum, with texts)
        -> BottomK (CombineGlobally: at most N rows a stratum) --\
    label tables -> StratumSizes (CombineGlobally, exact) -------> Select (allocate, the
                                                                   n_h smallest keys a stratum)
        -> OUT/_staging/RUN_ID/sample/sample-*.parquet and _design.json

N is --review-sample: no stratum can be allocated more, so N a stratum is enough.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import apache_beam as beam
from apache_beam.io.parquetio import WriteToParquetBatched

from model.storage import join
from pipeline import io as pio
from pipeline import sampling

if TYPE_CHECKING:
    from pipeline.config import JobConfig


class BottomKFn(beam.CombineFn):
    """Candidate tables -> {stratum: its k rows of smallest key}. The accumulator holds at
    most k rows a stratum: each input is merged into it at once."""

    def __init__(self, k: int):
        self.k = k

    def create_accumulator(self):
        return sampling.merge([], self.k)

    def add_input(self, acc, table):
        return sampling.merge([*acc.values(), table], self.k)

    def merge_accumulators(self, accs):
        return sampling.merge([t for acc in accs for t in acc.values()], self.k)

    def extract_output(self, acc):
        return acc


def _sum_counts(dicts) -> dict:
    total = dict.fromkeys(sampling.STRATA, 0)
    for d in dicts:
        for h, n in d.items():
            total[h] += n
    return total


def _select(bottoms: dict, sizes: dict, cfg: JobConfig):
    return sampling.select(bottoms, sizes, cfg.review_sample, cfg.threshold,
                           cfg.review_sample_band, cfg.run_id, cfg.fingerprint)


def _write_design(design: dict, path: str) -> str:
    pio.write_json(path, design)
    return path


class SampleForReview(beam.PTransform):
    """{'labels': label tables, 'candidates': Threshold's 'sample' output} -> {'files':
    the sample's staged Parquet file and _design.json, 'design': the design dict}."""

    def __init__(self, cfg: JobConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, inputs):
        cfg = self.cfg
        threshold, band = cfg.threshold, cfg.review_sample_band
        staged = join(pio.staging(cfg.output, cfg.run_id), pio.SAMPLE)
        sizes = (
            inputs["labels"]
            | "CountPerTable" >> beam.Map(lambda t: sampling.counts(
                sampling.stratum_of(t["score"].to_numpy(), threshold, band)))
            | "StratumSizes" >> beam.CombineGlobally(_sum_counts)
        )
        chosen = (
            inputs["candidates"]
            | "BottomK" >> beam.CombineGlobally(BottomKFn(cfg.review_sample))
            | "Select" >> beam.Map(_select, beam.pvalue.AsSingleton(sizes), cfg)
        )
        written = (
            chosen
            | "Table" >> beam.Map(lambda chosen: chosen[0])
            | "Write" >> WriteToParquetBatched(
                join(staged, "sample"), schema=sampling.SAMPLE_SCHEMA,
                file_name_suffix=".parquet", num_shards=1)
        )
        design = chosen | "Design" >> beam.Map(lambda chosen: chosen[1])
        design_file = design | "WriteDesign" >> beam.Map(
            _write_design, join(staged, sampling.DESIGN_FILE))
        files = (written, design_file) | "Files" >> beam.Flatten()
        return {"files": files, "design": design}
