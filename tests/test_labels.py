"""The labels dataset (model/labels.py): append-only Parquet files any pyarrow reads,
latest label per labeller, disagreements, refusals that name the column, row or file,
and `pairscore labels import|export|info`."""

import datetime
import json
import os
import threading

import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq
import pytest

from model import labels
from pipeline import cli

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


# --- pairscore labels import | export | info ----------------------------------------------


def _cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_import_dedupe_training_json(tmp_path, capsys):
    # As dedupe's console labeller writes it (tuples serialised with __class__/__value__).
    training = {
        "distinct": [{"__class__": "tuple", "__value__": [
            {"name": "Acme Corp", "city": "Leeds", "n": 1},
            {"name": "Apex Ltd", "city": "Leeds", "n": 2}]}],
        "match": [[{"name": "Acme Corp", "city": "York", "n": 1},
                   {"name": "ACME Corporation", "city": "York", "n": 3}]],
    }
    src = tmp_path / "training.json"
    src.write_text(json.dumps(training))
    uri = str(tmp_path / "labels")
    # Two string fields: the error names them and the flag.
    code, _, err = _cli(capsys, ["labels", "import", str(src), "--to", uri,
                                 "--format", "dedupe"])
    assert code == 2 and "2 string fields (city, name)" in err and "--text-field" in err
    code, out, err = _cli(capsys, ["labels", "import", str(src), "--to", uri, "--format",
                                   "dedupe", "--text-field", "name", "--labeller", "kim",
                                   "--run-id", "r7"])
    assert code == 0, err
    assert "imported 2 labels (1 duplicate, 1 not, 0 unsure)" in out
    got = labels.read_labels(uri)
    match = next(r for r in got.to_pylist() if r["label"] == 1)
    assert (match["text_a"], match["text_b"]) == ("Acme Corp", "ACME Corporation")
    assert match["pair_id"] == labels.text_pair_id("ACME Corporation", "Acme Corp")
    assert {r["labeller"] for r in got.to_pylist()} == {"kim"}
    assert {r["run_id"] for r in got.to_pylist()} == {"r7"}
    # With an id field, pair_id is the two records' ids.
    code, _, err = _cli(capsys, ["labels", "import", str(src), "--to", uri, "--format",
                                 "dedupe", "--text-field", "name", "--pair-id-field", "n"])
    assert code == 0, err
    assert {"1|2", "1|3"} <= set(labels.read_labels(uri).column("pair_id").to_pylist())


def test_import_splink_labels_table(tmp_path, capsys):
    splink = pa.table({
        "unique_id_l": [1, 1, 2, 4], "unique_id_r": [2, 3, 3, 5],
        "text_l": ["a", "a", "b", "d"], "text_r": ["b", "c", "c", "e"],
        "clerical_match_score": [1.0, 0.2, 0.5, None],
    })
    uri = str(tmp_path / "labels")
    pq.write_table(splink, tmp_path / "splink.parquet")
    pa.csv.write_csv(splink, tmp_path / "splink.csv")
    for name in ("splink.parquet", "splink.csv"):
        code, out, err = _cli(capsys, ["labels", "import", str(tmp_path / name), "--to", uri,
                                       "--format", "splink", "--labeller", "sam"])
        assert code == 0, err
        assert "imported 4 labels (2 duplicate, 1 not, 1 unsure)" in out
    got = labels.latest(labels.read_labels(uri))
    assert [(r["pair_id"], r["label"], r["text_a"], r["text_b"]) for r in got.to_pylist()] == [
        ("1|2", 1, "a", "b"), ("1|3", 0, "a", "c"), ("2|3", 1, "b", "c"), ("4|5", None, "d", "e")]
    # Missing text columns and scores out of range are named.
    pq.write_table(splink.drop_columns(["text_r"]), tmp_path / "no_text.parquet")
    code, _, err = _cli(capsys, ["labels", "import", str(tmp_path / "no_text.parquet"), "--to",
                                 uri, "--format", "splink", "--labeller", "sam"])
    assert code == 2 and "no column 'text_r' (--text-column-r)" in err
    bad = splink.set_column(4, "clerical_match_score", pa.array([0.1, 1.5, 0.0, 0.0]))
    pq.write_table(bad, tmp_path / "bad.parquet")
    code, _, err = _cli(capsys, ["labels", "import", str(tmp_path / "bad.parquet"), "--to",
                                 uri, "--format", "splink", "--labeller", "sam"])
    assert code == 2 and "'clerical_match_score' is 1.5 in row 1, not in [0, 1]" in err


def test_export_csv_and_info(tmp_path, capsys):
    uri = str(tmp_path / "labels")
    labels.save_labels(uri, _rows([("p1", 1, "ann", 1), ("p1", 0, "bob", 2),
                                   ("p2", 1, "ann", 3), ("p3", None, "bob", 4)]))
    labels.save_labels(uri, _rows([("p2", 1, "bob", 5)]))
    out_csv = tmp_path / "out" / "all.csv"
    code, out, err = _cli(capsys, ["labels", "export", uri, "--output", str(out_csv)])
    assert code == 0 and "wrote 5 rows" in out, err
    back = pa.csv.read_csv(out_csv)
    assert back.column_names == labels.LABEL_SCHEMA.names
    assert back.column("pair_id").to_pylist() == ["p1", "p1", "p2", "p3", "p2"]
    assert back.column("label").to_pylist() == [1, 0, 1, None, 1]
    # The CSV converts back to the dataset's schema without loss.
    assert labels.conform(back).equals(labels.read_labels(uri))
    resolved_csv = tmp_path / "resolved.csv"
    code, out, _ = _cli(capsys, ["labels", "export", uri, "--output", str(resolved_csv),
                                 "--resolved"])
    assert code == 0 and "wrote 3 pairs" in out
    back = pa.csv.read_csv(resolved_csv)
    assert back.column("label").to_pylist() == [None, 1, None]
    assert back.column("n_labellers").to_pylist() == [2, 2, 1]

    code, out, _ = _cli(capsys, ["labels", "info", uri, "--json"])
    got = json.loads(out)
    assert code == 0
    assert (got["rows"], got["pairs"]) == (5, 3)
    assert got["labellers"]["ann"] == {"pairs": 2, "duplicate": 2, "not_duplicate": 0,
                                       "unsure": 0}
    assert got["resolved"] == {"duplicate": 1, "not_duplicate": 0, "unsure": 1, "disagreed": 1}
    assert got["disagreements"] == {"count": 1, "first": [
        {"pair_id": "p1", "labels": [1, 0], "labellers": ["ann", "bob"]}]}
    code, out, _ = _cli(capsys, ["labels", "info", uri])
    assert code == 0 and "5 rows, 3 pairs, 2 labellers" in out
    assert "disagreements: 1" in out and "p1: ann=1, bob=0" in out


