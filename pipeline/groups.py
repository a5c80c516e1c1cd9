"""Duplicate groups: the connected components of the duplicate edges, with ids that last.

    pairscore score ... --group-by left_id,right_id [--groups-from PREVIOUS_OUT]

Every scored pair with `is_duplicate` is an edge between the records its two id columns
name; a group is a connected component of two or more records. With `--groups-from`,
each record's membership in yesterday's group is an edge too (the group's records are
chained), so a record matched to any member of an old group joins it. Groups never split
by carrying; a night without `--groups-from` starts over.

Components (`pipeline.stages.groups.Components`): while the night's edges are more than
`--groups-one-worker-max-edges`, rounds of min-label hooking with contraction run over
Beam's shuffles, each in buckets of record ids: every record hooks onto the least record
of its closed neighbourhood under a hash order (`least_neighbours`: random priorities,
so a chain shrinks by about half a round whatever its ids' order), both ends of every
edge are relabelled to their records' hooks (`relabel`), loops and repeats are dropped,
and the rounds' hooks are kept. Once what is left is within the bound it goes to one
worker, where SciPy's `connected_components` finishes it (`connected_groups`: the whole
night on a small night); the hooks are then followed back round by round (`resolve`, the
pointer jumping) to every record's component. The rounds are unrolled in the graph
(`ROUNDS`); a round with nothing to do passes its input through.

Ids (`settle`, `mint`): a group id is an int64 of its own. A group holding records of
exactly one earlier group keeps that id; groups that merge keep the id of the largest
earlier group (ties: the oldest, `group_created`, then the smallest id); a group with no
earlier records takes the next id no earlier night used (`last_group_id` in summary.json
carries the counter), tonight's new groups numbered in a fixed order of their smallest
record ids (`MINT_BUCKETS` hash buckets, then id order within one).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.textindex import value_hash

RECORD_ID = "record_id"
GROUP_ID = "group_id"
GROUP_SIZE = "group_size"
GROUP_CREATED = "group_created"
NODE, PARENT, ROOT = "node", "parent", "root"
OLD_ID, OLD_SIZE, OLD_CREATED = "old_group_id", "old_group_size", "old_group_created"
GROUPS_ONE_WORKER_MAX_EDGES = 20_000_000
MAX_GROUP_SIZE = 1_000
ROUNDS = 12  # contraction rounds unrolled in the graph
MINT_BUCKETS = 64  # fixed: tonight's new ids do not depend on the path or the bound
MAX_BUCKETS = 4096
ONE_WORKER, DISTRIBUTED = "one-worker", "distributed"
MERGE, NEW = "merge", "new"


def group_schema(id_type: pa.DataType) -> pa.Schema:
    """OUT/groups/: every record of every group, with its group's id, size and the run
    that minted the id."""
    return pa.schema([(RECORD_ID, id_type), (GROUP_ID, pa.int64()), (GROUP_SIZE, pa.int64()),
                      (GROUP_CREATED, pa.string())])


def component_schema(id_type: pa.DataType) -> pa.Schema:
    """`connected_groups`' table: the component named by its smallest record id."""
    return pa.schema([(RECORD_ID, id_type), (GROUP_ID, id_type), (GROUP_SIZE, pa.int64())])


CHANGE_SCHEMA = pa.schema([("run_id", pa.string()), ("change", pa.string()),
                           (GROUP_ID, pa.int64()), ("old_group_id", pa.int64())])


def duplicate_edges(rows: pa.Table, is_duplicate: np.ndarray, left: str,
                    right: str) -> pa.Table:
    """The (left, right) record ids of the duplicate rows."""
    mask = pa.array(np.asarray(is_duplicate, dtype=bool))
    return pa.table({"left": rows[left].filter(mask), "right": rows[right].filter(mask)})


def edge_table(left, right) -> pa.Table:
    return pa.table({"left": left, "right": right})


def _whole(column):
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


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
        return component_schema(left.type).empty_table()
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
        schema=component_schema(left.type),
    )


@dataclasses.dataclass
class Previous:
    """--groups-from: the earlier run's groups files, records and last minted id."""

    files: list = dataclasses.field(default_factory=list)
    records: int = 0
    last_group_id: int = 0


def read_previous(output: str, id_type: pa.DataType) -> Previous:
    """The groups of a published run at `output`, checked; JobError naming --groups-from
    when there is no published run there, it had no groups, or other record ids."""
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    from model.storage import join
    from pipeline import io as pio

    flag = f"--groups-from {output}"
    try:
        summary = pio.read_summary(output)
    except Exception as e:  # noqa: BLE001  (unreadable JSON, storage error)
        raise pio.JobError(f"{flag}: cannot read its {pio.SUMMARY} ({e})") from None
    if summary is None:
        raise pio.JobError(f"{flag}: no {pio.SUMMARY} there; give the output directory "
                           "of a published run with --group-by")
    if summary.get("status") != "published":
        raise pio.JobError(f"{flag}: that run was not published (status "
                           f"{summary.get('status')!r}); carry groups from a night that was")
    info = summary.get("groups")
    if not info:
        raise pio.JobError(f"{flag}: that run wrote no groups (it ran without --group-by)")
    if "last_group_id" not in info:
        raise pio.JobError(f"{flag}: its groups have no ids of their own (a run from "
                           "before groups were carried); run once without --groups-from")
    files = sorted(m.path for m in pio._match(join(output, pio.GROUPS, "*.parquet")))
    if info.get("records") and not files:
        raise pio.JobError(f"{flag}: its summary counts {info['records']} grouped records "
                           f"but {join(output, pio.GROUPS)} holds no Parquet files")
    want = group_schema(id_type)
    for path in files[:1]:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            got = pq.ParquetFile(f).schema_arrow
        for field in want:
            if field.name not in got.names or got.field(field.name).type != field.type:
                raise pio.JobError(
                    f"{flag}: {path} has no column {field.name} of type {field.type} "
                    f"(it has {got}); tonight's record ids are {id_type}")
    return Previous(files, int(info.get("records") or 0), int(info["last_group_id"]))


def buckets_for(edges_bound: int, rows_in: int | None, carried: int = 0) -> int:
    """Shuffle buckets for the distributed rounds: tonight's edges are at most rows_in,
    plus one per carried record, so a bucket holds about `edges_bound` edges at most."""
    total = (rows_in or 0) + carried
    return int(min(MAX_BUCKETS, max(1, -(-total // max(1, edges_bound)))))


# --- the distributed rounds: plain functions over one bucket's tables ------------------


def _firsts(keys) -> np.ndarray:
    """True where a sorted column's value differs from the one before."""
    n = len(keys)
    first = np.ones(n, bool)
    if n > 1:
        first[1:] = ~np.asarray(pc.equal(keys[1:], keys[:-1]).fill_null(False))
    return first


def least_neighbours(node, other) -> pa.Table:
    """node, parent: for each distinct `node`, the least of the `other` values given with
    it, in hash order (`value_hash`, then the values' own order): the same on every
    worker, so partial results combine (`least_neighbours` of them again)."""
    node, other = _whole(node), _whole(other)
    t = pa.table({NODE: node, PARENT: other, "h": pa.array(value_hash(other))})
    t = t.take(pc.sort_indices(t, [(NODE, "ascending"), ("h", "ascending"),
                                   (PARENT, "ascending")]))
    t = t.select([NODE, PARENT])
    return t.filter(pa.array(_firsts(t[NODE].combine_chunks()))) if t.num_rows else t


def hook(edges: pa.Table) -> pa.Table:
    """Each end of the edges onto the least of itself and its neighbours (partial: one
    table's edges)."""
    a, b = _whole(edges["left"]), _whole(edges["right"])
    return least_neighbours(pa.concat_arrays([a, b, a, b]), pa.concat_arrays([b, a, a, b]))


def combine_hooks(tables: list[pa.Table]) -> pa.Table:
    t = pa.concat_tables(tables)
    return least_neighbours(t[NODE], t[PARENT])


def relabel(values, parents: pa.Table):
    """`values` replaced by their parents (`parents` must hold every value)."""
    idx = pc.index_in(_whole(values), value_set=_whole(parents[NODE]))
    if idx.null_count:
        raise ValueError(f"{idx.null_count} values have no parent in this bucket")
    return _whole(parents[PARENT]).take(idx)


def drop_loops(edges: pa.Table) -> pa.Table:
    """The edges that join two records, each pair once (as (smaller, larger))."""
    a, b = _whole(edges["left"]), _whole(edges["right"])
    keep = pc.invert(pc.equal(a, b).fill_null(True))
    a, b = a.filter(keep), b.filter(keep)
    less = pc.less(a, b)
    t = edge_table(pc.if_else(less, a, b), pc.if_else(less, b, a))
    return t.group_by(["left", "right"], use_threads=False).aggregate([]) if t.num_rows else t


def resolve(parents: pa.Table, roots: pa.Table) -> pa.Table:
    """node, root for the nodes of `parents`: the root of the node's parent, or the parent
    itself when it has none (its component ended in that round)."""
    idx = pc.index_in(_whole(parents[PARENT]), value_set=_whole(roots[NODE]))
    root = pc.if_else(pc.is_null(idx), _whole(parents[PARENT]),
                      _whole(roots[ROOT]).take(idx.fill_null(0)) if len(roots[NODE])
                      else _whole(parents[PARENT]))
    return pa.table({NODE: _whole(parents[NODE]), ROOT: root})


def finish(tables: list[pa.Table], id_type: pa.DataType) -> pa.Table:
    """node, root of what is left, on one worker (`connected_groups`)."""
    edges = (pa.concat_tables(tables) if tables
             else edge_table(pa.array([], id_type), pa.array([], id_type)))
    comps = connected_groups(edges["left"], edges["right"])
    return pa.table({NODE: comps[RECORD_ID], ROOT: comps[GROUP_ID]})


def membership_edges(previous: pa.Table) -> pa.Table:
    """Edges chaining each earlier group's records (all of them in `previous`)."""
    t = previous.select([RECORD_ID, GROUP_ID])
    t = t.take(pc.sort_indices(t, [(GROUP_ID, "ascending"), (RECORD_ID, "ascending")]))
    g = t[GROUP_ID].to_numpy()
    same = np.flatnonzero(g[1:] == g[:-1])
    r = _whole(t[RECORD_ID])
    return edge_table(r.take(pa.array(same)), r.take(pa.array(same + 1)))


# --- ids: one bucket of components at a time --------------------------------------------


def attach_previous(comps: pa.Table, previous: pa.Table | None) -> pa.Table:
    """node, root and the node's earlier group (id, size, created; null for a record in
    no earlier group)."""
    n = comps.num_rows
    if previous is None or previous.num_rows == 0:
        return comps.append_column(OLD_ID, pa.nulls(n, pa.int64())).append_column(
            OLD_SIZE, pa.nulls(n, pa.int64())).append_column(OLD_CREATED, pa.nulls(n, pa.string()))
    idx = pc.index_in(_whole(comps[NODE]), value_set=_whole(previous[RECORD_ID]))
    return (comps.append_column(OLD_ID, previous[GROUP_ID].take(idx))
            .append_column(OLD_SIZE, previous[GROUP_SIZE].take(idx))
            .append_column(OLD_CREATED, previous[GROUP_CREATED].take(idx)))


def settle(rows: pa.Table, run_id: str):
    """(records, new, merges) of whole components (`attach_previous`'s rows). records:
    node, root, group_id (null for a new group), group_size, group_created; new: root
    and smallest node of each component with no earlier records; merges: group_id,
    old_group_id of each earlier group merged into another."""
    sizes = rows.group_by(ROOT, use_threads=False).aggregate([(NODE, "count"), (NODE, "min")])
    old = rows.filter(pc.is_valid(rows[OLD_ID])).group_by(
        [ROOT, OLD_ID, OLD_SIZE, OLD_CREATED], use_threads=False).aggregate([])
    # The winner of each component: the largest earlier group, then the oldest, then
    # the smallest id.
    old = old.take(pc.sort_indices(old, [(ROOT, "ascending"), (OLD_SIZE, "descending"),
                                         (OLD_CREATED, "ascending"), (OLD_ID, "ascending")]))
    first = _firsts(_whole(old[ROOT])) if old.num_rows else np.zeros(0, bool)
    winners = old.filter(pa.array(first))
    losers = old.filter(pa.array(~first))
    merges = pa.table({GROUP_ID: relabel(losers[ROOT], pa.table(
        {NODE: winners[ROOT], PARENT: winners[OLD_ID]})) if losers.num_rows
        else pa.array([], pa.int64()), "old_group_id": losers[OLD_ID]})
    at = pc.index_in(_whole(sizes[ROOT]), value_set=_whole(winners[ROOT]))
    new = sizes.filter(pc.is_null(at))
    new = pa.table({ROOT: new[ROOT], "smallest": new[f"{NODE}_min"]})
    comp_gid = _whole(winners[OLD_ID]).take(at)
    comp_created = pc.fill_null(_whole(winners[OLD_CREATED]).take(at), run_id)
    idx = pc.index_in(_whole(rows[ROOT]), value_set=_whole(sizes[ROOT]))
    records = pa.table({NODE: rows[NODE], ROOT: rows[ROOT], GROUP_ID: comp_gid.take(idx),
                        GROUP_SIZE: _whole(sizes[f"{NODE}_count"]).take(idx),
                        GROUP_CREATED: comp_created.take(idx)})
    return records, new, merges


def rank_new(new: pa.Table) -> pa.Table:
    """One mint bucket's new components in id order: root, rank (0, 1, ...)."""
    order = pc.sort_indices(new, [("smallest", "ascending")])
    return pa.table({ROOT: new[ROOT].take(order),
                     "rank": pa.array(np.arange(new.num_rows), pa.int64())})


def mint(ranked: pa.Table, bucket: int, counts: dict, first_id: int) -> pa.Table:
    """root, group_id for one mint bucket's ranked new components: ids from `first_id`,
    bucket after bucket (`counts`: new components per bucket)."""
    offset = first_id + sum(n for b, n in counts.items() if b < bucket)
    return pa.table({ROOT: ranked[ROOT], GROUP_ID: pc.add(ranked["rank"], offset)})


def fill_new_ids(records: pa.Table, minted: pa.Table) -> pa.Table:
    """records with the new components' minted ids filled in."""
    if minted.num_rows:
        idx = pc.index_in(_whole(records[ROOT]), value_set=_whole(minted[ROOT]))
        gid = pc.coalesce(_whole(records[GROUP_ID]), _whole(minted[GROUP_ID]).take(idx))
        records = records.set_column(records.schema.get_field_index(GROUP_ID), GROUP_ID, gid)
    if records[GROUP_ID].null_count:
        raise ValueError("a group has no id")
    return records


def group_rows(records: pa.Table, id_type: pa.DataType) -> pa.Table:
    """OUT/groups/ rows, in record id order."""
    t = pa.table({RECORD_ID: records[NODE], GROUP_ID: records[GROUP_ID],
                  GROUP_SIZE: records[GROUP_SIZE], GROUP_CREATED: records[GROUP_CREATED]})
    t = t.take(pc.sort_indices(t, [(RECORD_ID, "ascending")]))
    return t.cast(group_schema(id_type))


def change_rows(run_id: str, merges: pa.Table | None = None,
                minted: pa.Table | None = None) -> pa.Table:
    """OUT/group_changes/ rows: one per earlier group merged, one per new group."""
    parts = []
    if merges is not None and merges.num_rows:
        n = merges.num_rows
        parts.append(pa.table({"run_id": pa.array([run_id] * n), "change": pa.array([MERGE] * n),
                               GROUP_ID: merges[GROUP_ID], "old_group_id": merges["old_group_id"]},
                              schema=CHANGE_SCHEMA))
    if minted is not None and minted.num_rows:
        n = minted.num_rows
        parts.append(pa.table({"run_id": pa.array([run_id] * n), "change": pa.array([NEW] * n),
                               GROUP_ID: minted[GROUP_ID],
                               "old_group_id": pa.nulls(n, pa.int64())}, schema=CHANGE_SCHEMA))
    return pa.concat_tables(parts) if parts else CHANGE_SCHEMA.empty_table()


# --- statistics -------------------------------------------------------------------------


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
    """Groups, records in them, the size histogram, the largest group (ties: the smallest
    id), and the groups larger than `max_group_size` (which usually means a threshold too
    low), of a table holding all the records of each of its groups."""
    if groups.num_rows == 0:
        return GroupStats()
    heads = groups.group_by([GROUP_ID, GROUP_SIZE], use_threads=False).aggregate([])
    heads = heads.take(pc.sort_indices(heads, [(GROUP_SIZE, "descending"),
                                               (GROUP_ID, "ascending")]))
    sizes = heads[GROUP_SIZE].to_numpy()
    ids = heads[GROUP_ID].to_pylist()
    hist: dict[str, int] = {}
    for size, n in zip(*np.unique(sizes, return_counts=True)):
        hist[_bin(int(size))] = hist.get(_bin(int(size)), 0) + int(n)
    over = np.flatnonzero(sizes > max_group_size)[:20]
    return GroupStats(
        groups=heads.num_rows, records=groups.num_rows, largest_id=ids[0],
        largest_size=int(sizes[0]), size_histogram=_sorted_bins(hist),
        over_max=[(ids[i], int(sizes[i])) for i in over])


def _sorted_bins(hist: dict) -> dict:
    return dict(sorted(hist.items(), key=lambda kv: int(kv[0].split("-")[0])))


def merge_stats(parts) -> GroupStats:
    """The stats of disjoint sets of whole groups, combined."""
    out = GroupStats()
    hist: dict[str, int] = {}
    over = []
    for s in parts:
        out.groups += s.groups
        out.records += s.records
        for k, n in s.size_histogram.items():
            hist[k] = hist.get(k, 0) + n
        over += s.over_max
        if s.groups and (s.largest_size, -s.largest_id) > (out.largest_size,
                                                           -(out.largest_id or 0)):
            out.largest_id, out.largest_size = s.largest_id, s.largest_size
    out.size_histogram = _sorted_bins(hist)
    out.over_max = sorted(over, key=lambda gs: (-gs[1], gs[0]))[:20]
    return out
