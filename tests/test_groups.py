"""Duplicate groups (--group-by): connected components of the duplicate edges, equal to
an independent union-find, with group ids stable across runs; and the job writing them."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import groups, job
from pipeline.io import JobError


def _union_find(edges):
    """{record: group id} by a plain union-find: the oracle."""
    parent = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)  # the smaller id is the root
    members = {}
    for x in list(parent):
        members.setdefault(find(x), []).append(x)
    return {x: (min(m), len(m)) for m in members.values() if len(m) >= 2 for x in m}


def _as_dict(table):
    return {r: (g, s) for r, g, s in zip(table[groups.RECORD_ID].to_pylist(),
                                         table[groups.GROUP_ID].to_pylist(),
                                         table[groups.GROUP_SIZE].to_pylist())}


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(-20, 40), st.integers(-20, 40)), max_size=120))
def test_groups_equal_an_independent_union_find(edges):
    left = pa.array([a for a, _ in edges], pa.int64())
    right = pa.array([b for _, b in edges], pa.int64())
    table = groups.connected_groups(left, right)
    assert _as_dict(table) == _union_find(edges)
    # Records in id order, each once; types as given.
    ids = table[groups.RECORD_ID].to_pylist()
    assert ids == sorted(set(ids)) and table.schema.field(groups.RECORD_ID).type == pa.int64()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcdefghij"), st.sampled_from("abcdefghij")),
                max_size=40))
def test_string_ids_group_by_their_own_order(edges):
    table = groups.connected_groups(pa.array([a for a, _ in edges], pa.string()),
                                    pa.array([b for _, b in edges], pa.string()))
    assert _as_dict(table) == _union_find(edges)


def test_self_pairs_repeats_and_reversed_pairs():
    edges = [("a", "a"), ("b", "c"), ("b", "c"), ("c", "b"), ("d", "d")]
    table = groups.connected_groups(pa.array([a for a, _ in edges]),
                                    pa.array([b for _, b in edges]))
    # A self-pair alone is no group of two; a pair listed twice or reversed is one edge.
    assert _as_dict(table) == {"b": ("b", 2), "c": ("b", 2)}


def _minted(table):
    """connected_groups' table as OUT/groups/ rows, ids 1, 2, ... by smallest record."""
    heads = sorted(set(table[groups.GROUP_ID].to_pylist()))
    ids = {h: i + 1 for i, h in enumerate(heads)}
    return pa.table({groups.RECORD_ID: table[groups.RECORD_ID],
                     groups.GROUP_ID: pa.array([ids[g] for g in table[groups.GROUP_ID]
                                                .to_pylist()], pa.int64()),
                     groups.GROUP_SIZE: table[groups.GROUP_SIZE]})


def test_stats_histogram_largest_and_over_max():
    edges = [(i, i + 1) for i in range(30)] + [(100, 101), (200, 201), (200, 202)]
    table = _minted(groups.connected_groups(pa.array([a for a, _ in edges]),
                                            pa.array([b for _, b in edges])))
    stats = groups.group_stats(table, max_group_size=10).to_dict()
    assert (stats["groups"], stats["records"]) == (3, 31 + 2 + 3)
    assert stats["size_histogram"] == {"2": 1, "3": 1, "17-32": 1}
    assert stats["largest"] == {"group_id": 1, "size": 31}
    assert stats["over_max_group_size"] == [{"group_id": 1, "size": 31}]
    # Split into disjoint sets of whole groups, the stats combine to the same.
    parts = [table.slice(0, 31), table.slice(31)]
    assert groups.merge_stats([groups.group_stats(t, 10) for t in parts]).to_dict() == stats


# --- the job ----------------------------------------------------------------------------


def _write(path, rows):
    pair_id, left, right, a, b = zip(*rows)
    pq.write_table(pa.table({
        "pair_id": list(pair_id), "left_id": pa.array(left, pa.int64()),
        "right_id": pa.array(right, pa.int64()), "text_a": list(a), "text_b": list(b)}),
        path)


SAME, OTHER = "how do i learn python quickly", "the cat sat on the mat all day long"


def test_the_job_writes_groups_of_the_duplicate_pairs(tmp_path, bilstm_model, caplog):
    rows = [
        ("p1", 10, 11, SAME, SAME),  # identical texts: a duplicate at threshold 0.5 or less
        ("p2", 11, 12, SAME, SAME),
        ("p3", 12, 10, SAME, SAME),  # closes the triangle
        ("p4", 20, 20, SAME, SAME),  # a self-pair: no group
        ("p5", 30, 31, SAME, OTHER),
        ("p6", None, 41, SAME, SAME),  # names no record: rejected, never grouped
    ]
    src, out = tmp_path / "pairs.parquet", tmp_path / "out"
    _write(src, rows)
    result = job.run(["--input", str(src), "--output", str(out), "--model", bilstm_model,
                      "--group-by", "left_id,right_id", "--threshold", "0.0",
                      "--max-group-size", "3"])
    # At threshold 0 every scored pair is a duplicate: {10, 11, 12}, {30, 31}.
    got = pq.read_table(out / "groups")
    assert got.schema.field("record_id").type == pa.int64()
    # A first night mints ids 1, 2, ... (in a fixed order of the groups' records).
    a, b = _as_dict(got)[10][0], _as_dict(got)[30][0]
    assert {a, b} == {1, 2}
    assert _as_dict(got) == {10: (a, 3), 11: (a, 3), 12: (a, 3), 30: (b, 2), 31: (b, 2)}
    g_run = result.summary["run_id"]
    assert set(got["group_created"].to_pylist()) == {g_run}
    summary = json.loads((out / "summary.json").read_text())
    g = summary["groups"]
    assert g["groups"] == 2 and g["records"] == 5
    assert g["largest"] == {"group_id": a, "size": 3}
    assert (g["path"], g["rounds"], g["new_groups"], g["merges"], g["last_group_id"]) == (
        "one-worker", 0, 2, 0, 2)
    changes = pq.read_table(out / "group_changes").sort_by("group_id").to_pylist()
    assert [(c["change"], c["group_id"], c["old_group_id"]) for c in changes] == [
        ("new", 1, None), ("new", 2, None)]
    assert {r["group_id"]: r["run_id"] for r in changes} == {1: g_run, 2: g_run}
    assert summary["rejected_by_reason"] == {"null_record_id": 1}
    assert result.summary["scored"] == 5
    rejects = pq.read_table(out / "rejects")
    assert rejects["pair_id"].to_pylist() == ["p6"]
    assert not any("more than --max-group-size" in r.getMessage() for r in caplog.records)

    # Over --max-group-size: a warning naming the group.
    job.run(["--input", str(src), "--output", str(out), "--model", bilstm_model,
             "--group-by", "left_id,right_id", "--threshold", "0.0", "--max-group-size", "2",
             "--overwrite"])
    assert any(f"group {a} has 3 records, more than --max-group-size 2" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("id_type", [pa.int64(), pa.string()])
def test_a_night_with_no_duplicates_publishes_empty_groups_of_the_ids_type(
        tmp_path, bilstm_model, id_type):
    """--threshold 1.0: no pair is a duplicate, so there are no edges at all. The night is
    still published, its groups an empty table with the input's record id type."""
    src, out = tmp_path / "pairs.parquet", tmp_path / "out"
    ids = [1, 2, 3, 4] if id_type == pa.int64() else ["a", "b", "c", "d"]
    pq.write_table(pa.table({
        "pair_id": ["p1", "p2"], "left_id": pa.array(ids[:2], id_type),
        "right_id": pa.array(ids[2:], id_type), "text_a": [SAME, OTHER],
        "text_b": [SAME, OTHER]}), src)
    result = job.run(["--input", str(src), "--output", str(out), "--model", bilstm_model,
                      "--group-by", "left_id,right_id", "--threshold", "1.0"])
    assert result.summary["status"] == "published" and result.summary["duplicates"] == 0
    got = pq.read_table(out / "groups")
    assert got.num_rows == 0
    assert got.schema.field("record_id").type == id_type
    assert got.schema.field("group_id").type == pa.int64()
    assert result.summary["groups"]["groups"] == 0
    assert pq.read_table(out / "labels").num_rows == 2
    assert (out / "_SUCCESS").exists()


def test_without_group_by_there_are_no_groups(tmp_path, bilstm_model):
    src, out = tmp_path / "pairs.parquet", tmp_path / "out"
    _write(src, [("p1", 1, 2, SAME, SAME)])
    job.run(["--input", str(src), "--output", str(out), "--model", bilstm_model])
    assert not (out / "groups").exists()
    assert json.loads((out / "summary.json").read_text())["groups"] is None


def test_group_by_errors_name_the_flag(tmp_path, bilstm_model):
    src = tmp_path / "pairs.parquet"
    _write(src, [("p1", 1, 2, SAME, SAME)])
    base = ["--input", str(src), "--output", str(tmp_path / "o"), "--model", bilstm_model]
    with pytest.raises(JobError, match="--group-by 'left_id': give two columns"):
        job.run([*base, "--group-by", "left_id"])
    with pytest.raises(JobError, match="required column 'nope' is missing"):
        job.run([*base, "--group-by", "left_id,nope"])
    table = pq.read_table(src)
    table = table.set_column(2, "right_id", pc.cast(table["right_id"], pa.string()))
    pq.write_table(table, src)
    with pytest.raises(JobError, match="different types"):
        job.run([*base, "--group-by", "left_id,right_id"])


def test_large_graph_has_the_components_built_in():
    """Chains, stars and cliques of known sizes, shuffled: exact sizes and ids."""
    rng = np.random.default_rng(0)
    edges = []
    edges += [(i, i + 1) for i in range(0, 999)]  # a chain of 1000
    edges += [(5000, 5000 + k) for k in range(1, 300)]  # a star of 300
    clique = range(9000, 9030)
    edges += [(a, b) for a in clique for b in clique if a < b]  # a clique of 30
    order = rng.permutation(len(edges))
    left = pa.array([edges[i][0] for i in order])
    right = pa.array([edges[i][1] for i in order])
    stats = groups.group_stats(groups.connected_groups(left, right)).to_dict()
    assert stats["groups"] == 3 and stats["records"] == 1000 + 300 + 30
    assert stats["largest"] == {"group_id": 0, "size": 1000}


# --- both paths, and ids carried ----------------------------------------------------------


def _rounds_in_memory(edges, bound, rounds=groups.ROUNDS):
    """The distributed path's plain functions in the order Components runs them, one
    bucket: node -> root, and the rounds taken."""
    current = groups.drop_loops(edges)
    hooks = []
    while current.num_rows > bound and len(hooks) < rounds:
        parents = groups.combine_hooks([groups.hook(current)])
        e = current.set_column(0, "left", groups.relabel(current["left"], parents))
        e = e.set_column(1, "right", groups.relabel(e["right"], parents))
        hooks.append(parents)
        current = groups.drop_loops(e)
    roots = groups.finish([current], edges.schema.field("left").type)
    for parents in reversed(hooks):
        roots = groups.resolve(parents, roots)
    return dict(zip(roots["node"].to_pylist(), roots["root"].to_pylist())), len(hooks)


def _partition(mapping):
    members = {}
    for x, r in mapping.items():
        members.setdefault(r, set()).add(x)
    return sorted(sorted(m) for m in members.values())


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(-20, 60), st.integers(-20, 60)), max_size=150),
       st.integers(0, 10))
def test_the_rounds_equal_an_independent_union_find(edges, bound):
    table = groups.edge_table(pa.array([a for a, _ in edges], pa.int64()),
                              pa.array([b for _, b in edges], pa.int64()))
    got, _ = _rounds_in_memory(table, bound)
    truth = _union_find(edges)
    assert _partition(got) == _partition({x: g for x, (g, _) in truth.items()})


def test_a_long_sorted_chain_needs_few_rounds():
    """A chain in id order is the worst case of min-label propagation (a round per link);
    hash-order hooking halves it about every round."""
    n = 20_000
    table = groups.edge_table(pa.array(range(n - 1)), pa.array(range(1, n)))
    got, rounds = _rounds_in_memory(table, bound=100)
    assert set(got.values()) == {got[0]} and len(got) == n
    assert rounds <= 10


def _graph_mix(seed=0):
    rng = np.random.default_rng(seed)
    edges = [(i, i + 1) for i in range(0, 400)]  # a chain
    edges += [(1000, 1000 + k) for k in range(1, 60)]  # a star
    edges += [(a, b) for a in range(2000, 2012) for b in range(2000, 2012) if a < b]  # clique
    edges += [(3000 + 2 * k, 3001 + 2 * k) for k in range(150)]  # many tiny ones
    edges += [tuple(int(x) for x in rng.integers(5000, 5400, 2)) for _ in range(300)]
    order = rng.permutation(len(edges))
    return [edges[i] for i in order]


def _beam_groups(tmp_path, edges, bound, buckets, rounds, previous=None, first_id=1,
                 run_id="r1"):
    """OUT/groups/ tables and the group changes from a real Beam pipeline of the stages."""
    import apache_beam as beam
    from apache_beam.io.parquetio import WriteToParquetBatched

    from pipeline.stages.groups import Components, GroupIds

    table = groups.edge_table(pa.array([a for a, _ in edges], pa.int64()),
                              pa.array([b for _, b in edges], pa.int64()))
    if previous is not None:  # as Groups joins them: each earlier group's records chained
        table = pa.concat_tables([table, groups.membership_edges(previous)])
    out = tmp_path / f"run-{bound}-{run_id}"
    with beam.Pipeline(job.FNAPI) as p:
        halves = [table.slice(0, table.num_rows // 2), table.slice(table.num_rows // 2)]
        roots, counts = p | "Edges" >> beam.Create(halves) | Components(bound, buckets, pa.int64(),
                                                             rounds)
        prev = p | "Prev" >> beam.Create([previous] if previous is not None else [])
        res = {"roots": roots, "previous": prev} | GroupIds(run_id, first_id, buckets,
                                                            pa.int64())
        res["groups"] | WriteToParquetBatched(str(out / "groups" / "part"),
                                              schema=groups.group_schema(pa.int64()))
        res["changes"] | "WC" >> WriteToParquetBatched(str(out / "changes" / "part"),
                                                       schema=groups.CHANGE_SCHEMA)
        none = [p | "NoCounts" >> beam.Create([pa.table({"i": [0], "n": [0]})])] if not (
            counts) else []
        tagged = [c | f"T{i}" >> beam.Map(lambda n, i=i: pa.table({"i": [i], "n": [n]}))
                  for i, c in enumerate(counts)]
        (tagged or none) | "F" >> beam.Flatten() | "WN" >> WriteToParquetBatched(
            str(out / "counts" / "part"),
            schema=pa.schema([("i", pa.int64()), ("n", pa.int64())]))
    read = {k: pq.read_table(out / k) for k in ("groups", "changes", "counts")}
    return read["groups"].sort_by("record_id"), read["changes"], read["counts"].sort_by("i")


def test_both_paths_give_identical_groups_equal_to_a_union_find(tmp_path):
    edges = _graph_mix()
    one, one_changes, _ = _beam_groups(tmp_path, edges, bound=10**6, buckets=1, rounds=0)
    dist, dist_changes, counts = _beam_groups(tmp_path, edges, bound=40, buckets=5, rounds=5)
    assert counts["n"][0].as_py() == len(set(map(tuple, map(sorted, edges))))
    assert sum(n > 40 for n in counts["n"].to_pylist()) >= 2  # the rounds ran
    assert one.equals(dist)  # ids too
    assert one_changes.sort_by("group_id").equals(dist_changes.sort_by("group_id"))
    truth = _union_find(edges)
    got = dict(zip(one["record_id"].to_pylist(), one["group_id"].to_pylist()))
    assert _partition(got) == _partition({x: g for x, (g, _) in truth.items()})
    assert sorted(set(got.values())) == list(range(1, len(set(got.values())) + 1))


def test_ids_kept_merged_by_size_and_minted_anew(tmp_path):
    """The id rule, night 2 over night 1's groups: a group that only gains records keeps
    its id; merged groups keep the largest's id (ties: the oldest, then the smallest);
    a new group takes the next unused id."""
    previous = pa.table({
        "record_id": pa.array([1, 2, 3, 10, 11, 20, 21, 30, 31, 40, 41], pa.int64()),
        "group_id": pa.array([7, 7, 7, 8, 8, 9, 9, 12, 12, 5, 5], pa.int64()),
        "group_size": pa.array([3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2], pa.int64()),
        "group_created": ["n1", "n1", "n1", "n1", "n1", "n2", "n2", "n1", "n1", "n1", "n1"]})
    tonight = [(3, 4),  # 7 gains 4
               (2, 10),  # 7 (3 records) absorbs 8 (2)
               (21, 31), (31, 41)]  # 9 (n2), 12 and 5 (n1) tie on size: the oldest, smallest: 5
    tonight += [(100, 101)]  # new
    got, changes, _ = _beam_groups(tmp_path, tonight, 10**6, 1, 0, previous, first_id=13,
                                   run_id="n3")
    ids = dict(zip(got["record_id"].to_pylist(), got["group_id"].to_pylist()))
    assert {r: ids[r] for r in (1, 2, 3, 4, 10, 11)} == dict.fromkeys((1, 2, 3, 4, 10, 11), 7)
    assert {ids[r] for r in (20, 21, 30, 31, 40, 41)} == {5}
    assert ids[100] == ids[101] == 13
    rows = sorted((c["change"], c["group_id"], c["old_group_id"], c["run_id"])
                  for c in changes.to_pylist())
    assert rows == [("merge", 5, 9, "n3"), ("merge", 5, 12, "n3"), ("merge", 7, 8, "n3"),
                    ("new", 13, None, "n3")]
    created = dict(zip(got["record_id"].to_pylist(), got["group_created"].to_pylist()))
    assert created[4] == "n1" and created[100] == "n3"


@pytest.mark.slow
def test_a_chain_of_20000_and_random_graphs_on_the_distributed_path(tmp_path):
    rng = np.random.default_rng(1)
    ids = rng.permutation(20_000)
    edges = [(int(a), int(b)) for a, b in zip(ids[:-1], ids[1:])]
    edges += [(30_000 + int(a), 30_000 + int(b)) for a, b in rng.integers(0, 3000, (2000, 2))]
    got, _, counts = _beam_groups(tmp_path, edges, bound=200, buckets=8, rounds=groups.ROUNDS)
    truth = _union_find(edges)
    mine = dict(zip(got["record_id"].to_pylist(), got["group_id"].to_pylist()))
    assert _partition(mine) == _partition({x: g for x, (g, _) in truth.items()})
    assert counts["n"].to_pylist()[-1] <= 200  # finished on one worker within the rounds


def test_two_nights_carry_groups_and_list_their_changes(tmp_path, bilstm_model):
    """Night 1: {10, 11, 12} and {30, 31}. Night 2 scores (12, 13) and (31, 10) only, and
    (50, 51): 13 joins the first group through its old membership, the two old groups
    merge under the larger one's id, and {50, 51} is new with an id never used."""
    night1, night2 = tmp_path / "n1.parquet", tmp_path / "n2.parquet"
    _write(night1, [("p1", 10, 11, SAME, SAME), ("p2", 11, 12, SAME, SAME),
                    ("p3", 30, 31, SAME, SAME)])
    _write(night2, [("q1", 12, 13, SAME, SAME), ("q2", 31, 10, SAME, SAME),
                    ("q3", 50, 51, SAME, SAME)])
    out1, out2 = tmp_path / "out1", tmp_path / "out2"
    base = ["--model", bilstm_model, "--group-by", "left_id,right_id", "--threshold", "0.0"]
    job.run(["--input", str(night1), "--output", str(out1), *base])
    first = _as_dict(pq.read_table(out1 / "groups"))
    big = first[10][0]
    r2 = job.run(["--input", str(night2), "--output", str(out2), *base,
                  "--groups-from", str(out1)])
    got = _as_dict(pq.read_table(out2 / "groups"))
    assert {r: got[r] for r in (10, 11, 12, 13, 30, 31)} == dict.fromkeys(
        (10, 11, 12, 13, 30, 31), (big, 6))
    assert got[50] == got[51] == (3, 2)  # ids 1 and 2 were night 1's
    changes = sorted((c["change"], c["group_id"], c["old_group_id"])
                     for c in pq.read_table(out2 / "group_changes").to_pylist())
    assert changes == [("merge", big, first[30][0]), ("new", 3, None)]
    g = r2.summary["groups"]
    assert (g["groups"], g["records"], g["merges"], g["new_groups"], g["last_group_id"]) == (
        2, 8, 1, 1, 3)
    assert g["groups_from"] == str(out1)


def test_groups_from_errors_name_the_flag(tmp_path, bilstm_model):
    src = tmp_path / "pairs.parquet"
    _write(src, [("p1", 1, 2, SAME, SAME)])
    base = ["--input", str(src), "--model", bilstm_model, "--group-by", "left_id,right_id"]
    with pytest.raises(JobError, match="--groups-from .*nowhere: no summary.json"):
        job.run([*base, "--output", str(tmp_path / "o"), "--groups-from",
                 str(tmp_path / "nowhere")])
    plain = tmp_path / "plain"
    job.run(["--input", str(src), "--model", bilstm_model, "--output", str(plain)])
    with pytest.raises(JobError, match="--groups-from .*wrote no groups"):
        job.run([*base, "--output", str(tmp_path / "o"), "--groups-from", str(plain)])
    summary = json.loads((plain / "summary.json").read_text())
    (plain / "summary.json").write_text(json.dumps({**summary, "status": "gated"}))
    with pytest.raises(JobError, match="--groups-from .*not published"):
        job.run([*base, "--output", str(tmp_path / "o"), "--groups-from", str(plain)])
    with pytest.raises(JobError, match="--groups-from carries groups: give --group-by"):
        job.run(["--input", str(src), "--model", bilstm_model, "--output",
                 str(tmp_path / "o"), "--groups-from", str(plain)])
    with pytest.raises(JobError, match="unknown flag --groups-one-worker-max-edge;"):
        job.run([*base, "--output", str(tmp_path / "o"),
                 "--groups-one-worker-max-edge", "5"])


@pytest.mark.slow
def test_the_job_takes_the_distributed_path_below_the_bound(tmp_path, bilstm_model):
    src = tmp_path / "pairs.parquet"
    rows = [(f"p{i}", i, i + 1, SAME, SAME) for i in range(40)]
    rows += [(f"s{i}", 100, 101 + i, SAME, SAME) for i in range(10)]
    _write(src, rows)
    base = ["--input", str(src), "--model", bilstm_model, "--group-by", "left_id,right_id",
            "--threshold", "0.0"]
    one = job.run([*base, "--output", str(tmp_path / "one")])
    dist = job.run([*base, "--output", str(tmp_path / "dist"),
                    "--groups-one-worker-max-edges", "8"])
    assert one.summary["groups"]["path"] == "one-worker"
    assert dist.summary["groups"]["path"] == "distributed"
    assert dist.summary["groups"]["rounds"] >= 1
    assert pq.read_table(tmp_path / "one" / "groups").sort_by("record_id").drop_columns(
        ["group_created"]).equals(pq.read_table(tmp_path / "dist" / "groups").sort_by(
            "record_id").drop_columns(["group_created"]))
