"""Writing and the job's last step, over `pipeline.publish`: `WriteResults` stages labels
and rejects under OUT/_staging/RUN_ID/; `Finalize` waits for every write, counts, checks,
gates and publishes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.parquetio import WriteToParquetBatched

from model.storage import join
from pipeline import io as pio
from pipeline import monitor, textindex

if TYPE_CHECKING:
    from pipeline.config import JobConfig


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


class _FinalizeFn(beam.DoFn):
    def __init__(self, cfg: JobConfig):
        self.cfg = cfg

    def process(self, _, label_files, reject_files, group_files, review_files, duplicates,
                distinct_ids, scores, group_stats, canaries, store_files=(), store_stats=(),
                sample_files=(), sample_design=(), reranked=()):
        from pipeline import publish

        files = {pio.LABELS: sorted(label_files), pio.REJECTS: sorted(reject_files),
                 pio.GROUPS: sorted(group_files), pio.REVIEW: sorted(review_files),
                 pio.SAMPLE: sorted(sample_files)}
        yield publish.finalize_run(
            self.cfg, files, duplicates, distinct_ids, scores,
            group_stats=group_stats[0] if group_stats else None,
            canaries=canaries[0] if canaries else None,
            store_files=list(store_files),
            store_stats=store_stats[0] if store_stats else None,
            sample_design=sample_design[0] if sample_design else None,
            reranked=reranked[0] if reranked else None)


class Finalize(beam.PTransform):
    """{'labels': label tables, 'written': {'labels', 'rejects'}: the files both writes
    finished, 'groups': {'files', 'stats'}, 'review': files, 'canaries': metrics (the
    last three empty when not asked for), 'sample': {'files', 'design'} (--review-sample),
    and with --embedding-store 'store': {'files', 'stats'}} -> the summary written. The
    job's last step: it takes every write's output as a side input, so it runs after all
    have finished, on every runner; it counts,
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
        if "sample" in inputs:
            store_inputs = {"sample_files": beam.pvalue.AsList(inputs["sample"]["files"]),
                            "sample_design": beam.pvalue.AsList(inputs["sample"]["design"])}
        if "store" in inputs:
            store_inputs.update(
                store_files=beam.pvalue.AsList(inputs["store"]["files"]),
                store_stats=beam.pvalue.AsList(inputs["store"]["stats"]))
        duplicates = (
            labels
            | "DuplicatesPerTable" >> beam.Map(
                lambda t: int(pc.sum(t["is_duplicate"]).as_py() or 0))
            | "Duplicates" >> beam.CombineGlobally(sum)
        )
        if cfg.rerank is not None:
            reranked = (
                labels
                | "RerankedPerTable" >> beam.Map(
                    lambda t: int(pc.sum(pc.equal(t["decided_by"], "rerank")).as_py() or 0))
                | "Reranked" >> beam.CombineGlobally(sum)
            )
            store_inputs["reranked"] = beam.pvalue.AsList(reranked)
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
