"""Duplicate groups: the connected components of the duplicate edges.

    pairscore score ... --group-by left_id,right_id

Every scored pair with `is_duplicate` is an edge between the records its two id columns
name; a group is a connected component of two or more records, and its id is the
smallest record id in it tonight (the id type's own order). A group that gains only
larger ids keeps its id; one that gains a smaller id takes that id (edges (5, 7), then
(3, 5) and (5, 7): id 5 becomes 3). Ids are not kept across nights.

Algorithm and bound: the duplicate edges (only those: a few per cent of the pairs, as a
rule) are gathered on one worker, record ids are mapped to integers with Arrow, and
SciPy's `connected_components` (a linear-time graph search over a sparse matrix) labels
the components. Memory is about 120 bytes per edge with int64 ids, distinct record ids
included (bench/groups.py: 1.19 GB over the process's start for 10M edges, 14 s); the
stage refuses more than `--max-group-edges` edges (default 20 million) with an error
naming the flag rather than run out of memory.
"""

from __future__ import annotations

import dataclasses

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

RECORD_ID = "record_id"
GROUP_ID = "group_id"
GROUP_SIZE = "group_size"
MAX_GROUP_EDGES = 20_000_000
MAX_GROUP_SIZE = 1_000


class TooManyEdges(RuntimeError):
    """More duplicate edges than --max-group-edges allows on one worker."""


def group_schema(id_type: pa.DataType) -> pa.Schema:
    return pa.schema([(RECORD_ID, id_type), (GROUP_ID, id_type), (GROUP_SIZE, pa.int64())])


def duplicate_edges(rows: pa.Table, is_duplicate: np.ndarray, left: str,
                    right: str) -> pa.Table:
    """The (left, right) record ids of the duplicate rows."""
    mask = pa.array(np.asarray(is_duplicate, dtype=bool))
    return pa.table({"left": rows[left].filter(mask), "right": rows[right].filter(mask)})


def connected_groups(left, right) -> pa.Table:
    """record_id, group_id (the group's smallest record id), group_size for every record
    in a connected component of two or more records of the edges (left[i], right[i])."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    left = left.combine_chunks() if isinstance(left, pa.ChunkedArray) else left
    right = right.combine_chunks() if isinstance(right, pa.ChunkedArray) else right
    ids = pc.unique(pa.concat_arrays([left, right]))
    n = len(ids)
    if n == 0:
        return group_schema(left.type).empty_table()
    a = np.asarray(pc.index_in(left, value_set=ids), dtype=np.int64)
    b = np.asarray(pc.index_in(right, value_set=ids), dtype=np.int64)
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    count, label = connected_components(graph, directed=False)
    size = np.bincount(label, minlength=count)
    # The smallest id per component: ids ranked in their own order, the least rank wins.
    order = np.asarray(pc.sort_indices(ids), dtype=np.int64)
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    least = np.full(count, n, np.int64)
    np.minimum.at(least, label, rank)
    keep = np.flatnonzero(size[label] >= 2)
    keep = keep[np.argsort(rank[keep], kind="stable")]  # records in id order
    group_of = order[least[label[keep]]]
    return pa.table(
        {RECORD_ID: ids.take(pa.array(keep)), GROUP_ID: ids.take(pa.array(group_of)),
         GROUP_SIZE: pa.array(size[label[keep]], pa.int64())},
        schema=group_schema(left.type),
    )


@dataclasses.dataclass
class GroupStats:
    groups: int = 0
    records: int = 0
    largest_id: object = None
    largest_size: int = 0
    # group size -> number of groups, sizes above 16 in power-of-two bins ("17-32", ...)
    size_histogram: dict = dataclasses.field(default_factory=dict)
    over_max: list = dataclasses.field(default_factory=list)  # [(group id, size)]

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["largest"] = {"group_id": out.pop("largest_id"), "size": out.pop("largest_size")}
        out["over_max_group_size"] = [{"group_id": g, "size": s} for g, s in out.pop("over_max")]
        return out


def _bin(size: int) -> str:
    if size <= 16:
        return str(size)
    high = 1 << (size - 1).bit_length()
    return f"{high // 2 + 1}-{high}"


def group_stats(groups: pa.Table, max_group_size: int = MAX_GROUP_SIZE) -> GroupStats:
    """Groups, records in them, the size histogram, the largest group, and the groups
    larger than `max_group_size` (which usually means a threshold too low)."""
    if groups.num_rows == 0:
        return GroupStats()
    first = pc.equal(groups[RECORD_ID], groups[GROUP_ID])  # one row per group
    heads = groups.filter(first)
    sizes = heads[GROUP_SIZE].to_numpy()
    hist: dict[str, int] = {}
    for size, n in zip(*np.unique(sizes, return_counts=True)):
        hist[_bin(int(size))] = hist.get(_bin(int(size)), 0) + int(n)
    big = int(np.argmax(sizes))
    over = np.flatnonzero(sizes > max_group_size)
    return GroupStats(
        groups=heads.num_rows, records=groups.num_rows,
        largest_id=heads[GROUP_ID][big].as_py(), largest_size=int(sizes[big]),
        size_histogram=dict(sorted(hist.items(), key=lambda kv: int(kv[0].split("-")[0]))),
        over_max=[(heads[GROUP_ID][int(i)].as_py(), int(sizes[i])) for i in over[:20]],
    )


class EdgesFn(beam.CombineFn):
    """Duplicate-edge tables -> one table of them all, refusing more than `max_edges`."""

    def __init__(self, max_edges: int = MAX_GROUP_EDGES):
        self.max_edges = max_edges

    def create_accumulator(self):
        return []

    def add_input(self, acc, edges):
        acc.append(edges)
        self._check(acc)
        return acc

    def merge_accumulators(self, accs):
        merged = [t for acc in accs for t in acc]
        self._check(merged)
        return merged

    def extract_output(self, acc):
        return acc

    def _check(self, acc):
        total = sum(t.num_rows for t in acc)
        if total > self.max_edges:
            raise TooManyEdges(
                f"more than {self.max_edges:,} duplicate edges ({total:,} so far) to group "
                "on one worker: raise --max-group-edges if the worker has the memory (about "
                "120 bytes an edge), or check the threshold (too many duplicates usually "
                "means it is too low)")
