"""The labels dataset (pipeline/labels.py): append-only Parquet files any pyarrow reads,
latest label per labeller, disagreements, refusals that name the column, row or file,
and `pairscore labels import|export|info`."""

import datetime
import os
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import labels

UTC = datetime.UTC


def _at(second: int) -> datetime.datetime:
    return datetime.datetime(2026, 12, 1, 20, 0, second, tzinfo=UTC)


def _rows(rows: list[tuple]) -> pa.Table:
    """A labels table from (pair_id, label, labeller, second) tuples, texts made up."""
    return pa.table({
        "pair_id": [r[0] for r in rows],
        "text_a": [f"a of {r[0]}" for r in rows],
        "text_b": [f"b of {r[0]}" for r in rows],
        "label": pa.array([r[1] for r in rows], pa.int8()),
        "labeller": [r[2] for r in rows],
        "labelled_at": pa.array([_at(r[3]) for r in rows], pa.timestamp("us", tz="UTC")),
    })


def test_schema_round_trip_readable_by_plain_pyarrow(tmp_path):
    full = _rows([("p1", 1, "ann", 1), ("p2", None, "ann", 2)])
    full = full.append_column("run_id", pa.array(["r1", "r1"]))
    full = full.append_column("score", pa.array([0.9, 0.4], pa.float64()))  # cast to float32
    path = labels.save_labels(str(tmp_path / "new" / "labels"), full)  # dirs made
    name = os.path.basename(path)
    assert name.startswith("labels-") and name.endswith("-ann-" + name[-16:])
    plain = pq.read_table(path)  # no pairscore needed to read it
    assert plain.schema.equals(labels.LABEL_SCHEMA, check_metadata=False)
    assert plain.column("label").to_pylist() == [1, None]
    assert plain.column("stratum").to_pylist() == [None, None]  # absent optional: nulls
    assert plain.column("score").type == pa.float32()
    back = labels.read_labels(str(tmp_path / "new" / "labels"))
    assert back.schema.equals(labels.LABEL_SCHEMA)
    assert back.column("pair_id").to_pylist() == ["p1", "p2"]
    # The whole directory reads as one dataset with plain pyarrow too.
    assert pq.read_table(str(tmp_path / "new" / "labels")).num_rows == 2


def test_empty_dataset_is_an_empty_table(tmp_path):
    t = labels.read_labels(str(tmp_path / "none"))
    assert t.num_rows == 0 and t.schema.equals(labels.LABEL_SCHEMA)
    resolved, disagreements = labels.resolve(t)
    assert resolved.num_rows == 0 and "n_labellers" in resolved.column_names
    assert disagreements.num_rows == 0


def test_saves_append_and_never_overwrite(tmp_path):
    uri = str(tmp_path)
    first = labels.save_labels(uri, _rows([("p1", 1, "ann", 1)]))
    before = open(first, "rb").read()
    second = labels.save_labels(uri, _rows([("p1", 0, "ann", 2)]))
    assert first != second
    assert sorted(os.listdir(uri)) == sorted(map(os.path.basename, [first, second]))
    assert open(first, "rb").read() == before
    assert labels.read_labels(uri).column("label").to_pylist() == [1, 0]


def test_labellers_saving_at_once_lose_nothing(tmp_path):
    uri = str(tmp_path)
    go = threading.Barrier(8)
    errors = []

    def label(who: str) -> None:
        try:
            go.wait()
            for i in range(10):
                labels.save_labels(uri, _rows([(f"{who}-{i}", i % 2, who, i)]))
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=label, args=(f"l{k}",)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    table = labels.read_labels(uri)
    assert table.num_rows == 80 and len(labels.files(uri)) == 80
    assert sorted(table.column("pair_id").to_pylist()) == sorted(
        f"l{k}-{i}" for k in range(8) for i in range(10))


def test_latest_label_of_each_labeller_wins(tmp_path):
    uri = str(tmp_path)
    labels.save_labels(uri, _rows([("p1", 1, "ann", 5), ("p1", 0, "bob", 1)]))
    # An older label saved later does not win; a newer one does.
    labels.save_labels(uri, _rows([("p1", 0, "ann", 3), ("p1", 1, "bob", 9)]))
    # Equal labelled_at: the later save wins.
    labels.save_labels(uri, _rows([("p2", 1, "ann", 4)]))
    labels.save_labels(uri, _rows([("p2", 0, "ann", 4)]))
    got = labels.latest(labels.read_labels(uri))
    assert [(r["pair_id"], r["labeller"], r["label"]) for r in got.to_pylist()] == [
        ("p1", "ann", 1), ("p1", "bob", 1), ("p2", "ann", 0)]
    assert got.schema.equals(labels.LABEL_SCHEMA)


def test_disagreements_counted_and_listed_unsure_is_not_one():
    table = _rows([
        ("agree", 1, "ann", 1), ("agree", 1, "bob", 2),
        ("split", 1, "ann", 1), ("split", 0, "bob", 2), ("split", None, "cy", 3),
        ("unsure", 1, "ann", 1), ("unsure", None, "bob", 2),
        ("all-unsure", None, "ann", 1), ("all-unsure", None, "bob", 1),
        ("changed", 0, "ann", 1), ("changed", 1, "bob", 2), ("changed", 1, "ann", 3),
    ])
    resolved, disagreements = labels.resolve(table)
    got = {r["pair_id"]: (r["label"], r["n_labellers"]) for r in resolved.to_pylist()}
    assert got == {"agree": (1, 2), "split": (None, 3), "unsure": (1, 2),
                   "all-unsure": (None, 2), "changed": (1, 2)}
    assert resolved.column("n_labellers").type == pa.int32()
    assert disagreements.to_pylist() == [
        {"pair_id": "split", "labels": [1, 0, None], "labellers": ["ann", "bob", "cy"]}]
    assert disagreements.schema.field("labels").type == pa.list_(pa.int8())
    # The other columns come from the pair's latest row.
    split = resolved.filter(pa.compute.equal(resolved["pair_id"], "split")).to_pylist()[0]
    assert split["labeller"] == "cy" and split["labelled_at"] == _at(3)


@pytest.mark.parametrize("change, message", [
    (lambda t: t.drop_columns(["text_b"]), "missing column 'text_b'"),
    (lambda t: t.set_column(3, "label", pa.array(["1", "0", "1"])),
     "column 'label' is string, not int8"),
    (lambda t: t.set_column(3, "label", pa.array([1, 2, 0], pa.int64())),
     "column 'label' is 2 in row 1"),
    (lambda t: t.set_column(0, "pair_id", pa.array(["a", "b", None])),
     "column 'pair_id' is null in row 2"),
    (lambda t: t.set_column(4, "labeller", pa.array([None, "b", "c"])),
     "column 'labeller' is null in row 0"),
    (lambda t: t.append_column("score", pa.array(["high"] * 3)),
     "column 'score' is string, not float"),
])
def test_bad_tables_are_refused_naming_column_and_row(tmp_path, change, message):
    bad = change(_rows([("a", 1, "ann", 1), ("b", 0, "ann", 2), ("c", 1, "ann", 3)]))
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        labels.save_labels(str(tmp_path), bad)
    assert not os.listdir(tmp_path)  # nothing written


def test_corrupt_or_foreign_file_is_named(tmp_path):
    labels.save_labels(str(tmp_path), _rows([("a", 1, "ann", 1)]))
    broken = tmp_path / "labels-20261201T000000000000Z-x-deadbeef.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match=f"labels file {broken} is not readable Parquet"):
        labels.read_labels(str(tmp_path))
    broken.unlink()
    foreign = tmp_path / "labels-20261201T000000000001Z-x-cafef00d.parquet"
    pq.write_table(pa.table({"pair_id": ["a"], "verdict": ["yes"]}), foreign)
    with pytest.raises(ValueError, match=f"labels file {foreign}: missing column 'text_a'"):
        labels.read_labels(str(tmp_path))
