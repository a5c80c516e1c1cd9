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
