"""Duplicate groups' stage, over `pipeline.groups`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.parquetio import WriteToParquetBatched

from model.storage import join
from pipeline import groups
from pipeline import io as pio

if TYPE_CHECKING:
    from pipeline.config import JobConfig


def _group_tables(edge_tables: list, max_group_size: int, id_type: pa.DataType):
    """(the groups table, its stats) of a night's edge tables; no edges at all (a night
    with no duplicates) is an empty table of the record ids' own type."""
    if edge_tables:
        edges = pa.concat_tables(edge_tables)
    else:
        edges = pa.table({"left": pa.array([], id_type), "right": pa.array([], id_type)})
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
        id_type = cfg.input_schema.field(cfg.group_by[0]).type
        grouped = (
            edges
            | "Gather" >> beam.CombineGlobally(groups.EdgesFn(cfg.max_group_edges))
            | "Components" >> beam.Map(_group_tables, cfg.max_group_size, id_type)
        )
        schema = groups.group_schema(id_type)
        files = (
            grouped
            | "Table" >> beam.Map(lambda pair: pair[0])
            | "Write" >> WriteToParquetBatched(
                join(pio.staging(cfg.output, cfg.run_id), pio.GROUPS, "part"),
                schema=schema, file_name_suffix=".parquet")
        )
        return {"files": files, "stats": grouped | "Stats" >> beam.Map(lambda pair: pair[1])}
