"""Duplicate groups' stages, over `pipeline.groups`: `Components` (one worker for a small
night, rounds over the shuffles for a large one: both paths are in the graph and the
edge count sends the data down one), `GroupIds` (ids kept, merged or minted) and
`Groups`, the stage the job runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.parquetio import WriteToParquetBatched

from model.storage import join
from pipeline import groups
from pipeline import io as pio
from pipeline.handler import NAMESPACE
from pipeline.textindex import split_table

if TYPE_CHECKING:
    from pipeline.config import JobConfig


def _rows(table) -> int:
    return table.num_rows


def _when(table, count, keep):
    if keep(count):
        yield table


def _concat(tables, schema: pa.Schema | None = None):
    tables = [t for t in tables if t.num_rows] or ([schema.empty_table()] if schema else [])
    return pa.concat_tables(tables) if tables else None


class _Round(beam.PTransform):
    """One contraction round over bucketed edges: (parents, the contracted edges)."""

    def __init__(self, index: int, buckets: int):
        super().__init__()
        self.index, self.buckets = index, buckets

    def expand(self, edges):
        b = self.buckets
        counter = beam.metrics.Metrics.counter(NAMESPACE, f"groups_round{self.index}_edges")
        # The edges one bucket holds in this round's first join: the most any worker
        # must hold at once for one key (its max is the bound the buckets keep).
        load = beam.metrics.Metrics.distribution(
            NAMESPACE, f"groups_round{self.index}_bucket_edges")

        def counted(t):
            counter.inc(t.num_rows)
            return t

        edges = edges | "Count" >> beam.Map(counted)
        parents = (
            edges
            | "Hook" >> beam.Map(groups.hook)
            | "KeyHooks" >> beam.FlatMap(split_table, groups.NODE, b)
            | "GatherHooks" >> beam.GroupByKey()
            | "Parents" >> beam.MapTuple(lambda k, ts: (k, groups.combine_hooks(list(ts))))
        )

        def relabel_side(side, out_key, measured=None):
            def fn(kv):
                _, parts = kv
                # One table per bucket: the fragments the shuffle brought are joined
                # before the work, so a round hands on `buckets` tables, not a split of
                # every fragment it got.
                e = _concat(parts["edges"])
                if measured is not None:
                    measured.update(0 if e is None else e.num_rows)
                if e is not None and e.num_rows:
                    e = e.set_column(e.schema.get_field_index(side), side,
                                     groups.relabel(e[side], _concat(parts["parents"])))
                    yield from split_table(e, out_key, b) if out_key else [e]
            return fn

        by_left = edges | "KeyLeft" >> beam.FlatMap(split_table, "left", b)
        half = (
            {"edges": by_left, "parents": parents}
            | "JoinLeft" >> beam.CoGroupByKey()
            | "RelabelLeft" >> beam.FlatMap(relabel_side("left", "right", load))
        )
        contracted = (
            {"edges": half, "parents": parents}
            | "JoinRight" >> beam.CoGroupByKey()
            | "RelabelRight" >> beam.FlatMap(relabel_side("right", None))
            | "DropLoops" >> beam.Map(groups.drop_loops)
            | "NonEmpty" >> beam.Filter(lambda t: t.num_rows > 0)
        )
        return parents, contracted


class Components(beam.PTransform):
    """Edge tables (left, right) -> ({bucket: node, root tables} as (bucket, table), the
    edge count before each round). Up to `rounds` rounds of `pipeline.groups`'
    hooking-and-contraction while more than `bound` edges are left, then the rest on one
    worker (`groups.finish`); a night of at most `bound` edges goes to one worker at
    once. The hooks are then followed back, last round first (`groups.resolve`)."""

    def __init__(self, bound: int, buckets: int, id_type: pa.DataType,
                 rounds: int = groups.ROUNDS):
        super().__init__()
        self.bound, self.buckets, self.id_type, self.rounds = bound, buckets, id_type, rounds

    def expand(self, edges):
        bound, b = self.bound, self.buckets
        current = edges | "NoLoops" >> beam.Map(groups.drop_loops)
        exits, parents, counts = [], [], []
        for r in range(self.rounds):
            count = (current | f"Count{r}" >> beam.Map(_rows)
                     | f"Sum{r}" >> beam.CombineGlobally(sum))
            counts.append(count)
            n = beam.pvalue.AsSingleton(count)
            exits.append(current | f"Within{r}" >> beam.FlatMap(
                _when, n, lambda c: c <= bound))
            over = current | f"Over{r}" >> beam.FlatMap(_when, n, lambda c: c > bound)
            ps, current = over | f"Round{r}" >> _Round(r, b)
            parents.append(ps)
        exits.append(current)  # after the last round: whatever is left
        roots = (
            exits
            | "Left" >> beam.Flatten()
            | "Gather" >> beam.combiners.ToList()
            | "OneWorker" >> beam.Map(groups.finish, self.id_type)
            | "KeyRoots" >> beam.FlatMap(split_table, groups.NODE, b)
        )
        for r in reversed(range(self.rounds)):
            skipped = beam.pvalue.AsSingleton(counts[r])
            kept = roots | f"Skipped{r}" >> beam.FlatMap(_when, skipped, lambda c: c <= bound)
            by_parent = (parents[r]
                         | f"UnkeyParents{r}" >> beam.MapTuple(lambda _, t: t)
                         | f"KeyParents{r}" >> beam.FlatMap(split_table, groups.PARENT, b))

            def follow(kv):
                _, parts = kv
                rs = _concat(parts["roots"], pa.schema(
                    [(groups.NODE, self.id_type), (groups.ROOT, self.id_type)]))
                ps = _concat(parts["parents"])
                if ps is not None and ps.num_rows:
                    yield from split_table(groups.resolve(ps, rs), groups.NODE, b)

            followed = ({"parents": by_parent, "roots": roots}
                        | f"JoinRoots{r}" >> beam.CoGroupByKey()
                        | f"Follow{r}" >> beam.FlatMap(follow))
            roots = (kept, followed) | f"Roots{r}" >> beam.Flatten()
        return roots, counts


def _path_and_rounds(counts, bound: int) -> dict:
    rounds = sum(1 for c in counts if c > bound)
    return {"path": groups.ONE_WORKER if rounds == 0
            else groups.DISTRIBUTED, "rounds": rounds}


class GroupIds(beam.PTransform):
    """{'roots': (bucket, node/root tables), 'previous': earlier groups tables} ->
    {'groups': OUT/groups/ tables, 'changes': OUT/group_changes/ tables, 'new': the new
    groups' count}: ids kept, merged or minted (`groups.settle`, `groups.mint`)."""

    def __init__(self, run_id: str, first_id: int, buckets: int, id_type: pa.DataType):
        super().__init__()
        self.run_id, self.first_id, self.buckets, self.id_type = (
            run_id, first_id, buckets, id_type)

    def expand(self, inputs):
        b, run_id, id_type = self.buckets, self.run_id, self.id_type
        previous = inputs["previous"] | "KeyPrevious" >> beam.FlatMap(
            split_table, groups.RECORD_ID, b)

        def attach(kv):
            _, parts = kv
            comps = _concat(parts["roots"])
            if comps is not None and comps.num_rows:
                rows = groups.attach_previous(comps, _concat(parts["previous"]))
                yield from split_table(rows, groups.ROOT, b)

        def settle(kv):
            bucket, tables = kv
            records, new, merges = groups.settle(pa.concat_tables(list(tables)), run_id)
            yield beam.pvalue.TaggedOutput("records", (bucket, records))
            yield beam.pvalue.TaggedOutput("merges", groups.change_rows(run_id, merges))
            yield from split_table(new, "smallest", groups.MINT_BUCKETS)

        settled = (
            {"roots": inputs["roots"], "previous": previous}
            | "JoinPrevious" >> beam.CoGroupByKey()
            | "Attach" >> beam.FlatMap(attach)
            | "GatherComponents" >> beam.GroupByKey()
            | "Settle" >> beam.FlatMap(settle).with_outputs("records", "merges", main="new")
        )
        ranked = (
            settled.new
            | "GatherNew" >> beam.GroupByKey()
            | "Rank" >> beam.MapTuple(lambda k, ts: (k, groups.rank_new(pa.concat_tables(
                list(ts)))))
        )
        counts = (ranked | "NewPerBucket" >> beam.MapTuple(lambda k, t: (k, t.num_rows))
                  | "NewCounts" >> beam.combiners.ToDict())
        minted = ranked | "Mint" >> beam.Map(
            lambda kv, counts, first_id: groups.mint(kv[1], kv[0], counts, first_id),
            counts=beam.pvalue.AsSingleton(counts), first_id=self.first_id)

        def fill(kv):
            _, parts = kv
            ids = _concat(parts["minted"], pa.schema(
                [(groups.ROOT, id_type), (groups.GROUP_ID, pa.int64())]))
            for records in parts["records"]:
                yield groups.group_rows(groups.fill_new_ids(records, ids), id_type)

        tables = (
            {"records": settled.records,
             "minted": minted | "KeyMinted" >> beam.FlatMap(split_table, groups.ROOT, b)}
            | "JoinMinted" >> beam.CoGroupByKey()
            | "Fill" >> beam.FlatMap(fill)
        )
        new_changes = minted | "NewChanges" >> beam.Map(
            lambda t: groups.change_rows(run_id, minted=t))
        changes = ((settled.merges, new_changes) | "Changes" >> beam.Flatten()
                   | "SomeChanges" >> beam.Filter(lambda t: t.num_rows > 0))
        new = counts | "NewGroups" >> beam.Map(lambda c: sum(c.values()))
        return {"groups": tables, "changes": changes, "new": new}


def _stats(parts, new, merges, counts, cfg):
    stats = groups.merge_stats(parts).to_dict()
    stats.update(_path_and_rounds(counts, cfg.groups_one_worker_max_edges),
                 new_groups=new, merges=merges, groups_from=cfg.groups_from,
                 last_group_id=cfg.groups_last_id + new)
    return stats


class Groups(beam.PTransform):
    """Duplicate edges -> {'files': the written OUT/_staging/RUN_ID/groups/ and
    group_changes/ files, 'stats': one dict (groups, records, size histogram, largest,
    new groups, merges, path, rounds, last_group_id)}. With --groups-from, the earlier
    groups' records are read and their memberships joined to tonight's edges."""

    def __init__(self, cfg: JobConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, edges):
        cfg = self.cfg
        p = edges.pipeline
        id_type = cfg.input_schema.field(cfg.group_by[0]).type
        b = cfg.group_buckets
        if cfg.groups_from_files:
            columns = [f.name for f in groups.group_schema(id_type)]
            previous = (p | "ReadPrevious" >> pio.ReadPairs(cfg.groups_from_files)
                        | "PreviousColumns" >> beam.Map(lambda t: t.select(columns)))
        else:
            previous = p | "NoPrevious" >> beam.Create([])
        memberships = (
            previous
            | "KeyByGroup" >> beam.FlatMap(split_table, groups.GROUP_ID, b)
            | "GatherGroups" >> beam.GroupByKey()
            | "Memberships" >> beam.MapTuple(
                lambda _, ts: groups.membership_edges(pa.concat_tables(list(ts))))
        )
        all_edges = (edges, memberships) | "WithMemberships" >> beam.Flatten()
        # One bucket: tonight's edges and carried records cannot pass the bound, so the
        # graph needs no rounds.
        roots, counts = all_edges | "Components" >> Components(
            cfg.groups_one_worker_max_edges, b, id_type, groups.ROUNDS if b > 1 else 0)
        out = {"roots": roots, "previous": previous} | "GroupIds" >> GroupIds(
            cfg.run_id, cfg.groups_last_id + 1, b, id_type)
        staging = pio.staging(cfg.output, cfg.run_id)
        files = out["groups"] | "Write" >> WriteToParquetBatched(
            join(staging, pio.GROUPS, "part"), schema=groups.group_schema(id_type),
            file_name_suffix=".parquet")
        change_files = out["changes"] | "WriteChanges" >> WriteToParquetBatched(
            join(staging, pio.GROUP_CHANGES, "part"), schema=groups.CHANGE_SCHEMA,
            file_name_suffix=".parquet")
        parts = (out["groups"]
                 | "StatsPerTable" >> beam.Map(groups.group_stats, cfg.max_group_size)
                 | "AllStats" >> beam.combiners.ToList())
        merges = (out["changes"]
                  | "MergesPerTable" >> beam.Map(
                      lambda t: sum(1 for c in t["change"].to_pylist() if c == groups.MERGE))
                  | "Merges" >> beam.CombineGlobally(sum))
        if counts:
            counts_all = (
                [c | f"TagRound{i}" >> beam.Map(lambda n, i=i: (i, n))
                 for i, c in enumerate(counts)]
                | "RoundCounts" >> beam.Flatten()
                | "AllCounts" >> beam.combiners.ToList()
                | "Ordered" >> beam.Map(lambda kv: [n for _, n in sorted(kv)])
            )
        else:
            counts_all = p | "NoRounds" >> beam.Create([[]])
        side = beam.pvalue
        stats = parts | "Stats" >> beam.Map(
            _stats, new=side.AsSingleton(out["new"]), merges=side.AsSingleton(merges),
            counts=side.AsSingleton(counts_all), cfg=cfg)
        return {"files": (files, change_files) | "AllFiles" >> beam.Flatten(),
                "stats": stats}
