"""Bad whole-file or whole-job input: a clear message naming the file (or setting) and
the problem, a non-zero exit, and nothing written that looks like a finished run.

Most cases fail in the launcher's checks, before any pipeline runs, so they are cheap;
the corrupt-data and empty-file cases run the real pipeline.
"""

import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import cli, job
from pipeline.io import JobError
from tests.conftest import PAIRS, write_pairs


def _score(capsys, *args):
    """`pairscore score ARGS` in-process: (exit code, stderr)."""
    capsys.readouterr()
    code = cli.main(["score", *map(str, args)])
    return code, capsys.readouterr().err


def _assert_nothing_final(out):
    """No _SUCCESS, no summary, no labels or rejects a reader could take for output."""
    for name in ("_SUCCESS", "summary.json", "labels", "rejects"):
        assert not (out / name).exists(), f"{out / name} written by a failed run"


@pytest.fixture(scope="module")
def good_input(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "pairs.parquet"
    write_pairs(path, PAIRS)
    return path


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out"


def _corrupt_model(src, tmp_path, edit):
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    edit(dst)
    return dst


# --- input files ---------------------------------------------------------------------


def test_nonexistent_path(tmp_path, out, bilstm_model, capsys):
    missing = tmp_path / "nope.parquet"
    code, err = _score(capsys, "--input", missing, "--output", out, "--model", bilstm_model)
    assert code == 2
    assert f"pairscore score: error: input {missing} does not exist" in err
    _assert_nothing_final(out)
    assert not out.exists()


def test_glob_matching_nothing(tmp_path, out, bilstm_model, capsys):
    pattern = tmp_path / "in" / "*.parquet"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "pairs.csv").write_text("pair_id,text_a,text_b\n")
    code, err = _score(capsys, "--input", pattern, "--output", out, "--model", bilstm_model)
    assert code == 2
    assert f"input pattern {pattern} matches no files" in err
    assert not out.exists()


def test_file_that_is_not_parquet(tmp_path, out, bilstm_model, capsys):
    bad = tmp_path / "pairs.parquet"
    bad.write_text("pair_id,text_a,text_b\np1,a,b\n")
    code, err = _score(capsys, "--input", bad, "--output", out, "--model", bilstm_model)
    assert code == 2
    assert f"{bad}: not a readable Parquet file" in err
    assert not out.exists()


def test_one_bad_file_among_good_ones_is_named(tmp_path, out, bilstm_model, capsys):
    (tmp_path / "in").mkdir()
    for i in range(3):
        write_pairs(tmp_path / "in" / f"part-{i}.parquet", PAIRS)
    bad = tmp_path / "in" / "part-9.parquet"
    bad.write_bytes(b"PAR1" + b"\0" * 64)
    code, err = _score(
        capsys, "--input", tmp_path / "in" / "*.parquet", "--output", out, "--model", bilstm_model
    )
    assert code == 2
    assert f"{bad}: not a readable Parquet file" in err
    assert "part-0" not in err


def test_truncated_parquet(tmp_path, out, good_input, bilstm_model, capsys):
    data = good_input.read_bytes()
    for cut in (len(data) // 2, len(data) - 3):
        bad = tmp_path / f"cut-{cut}.parquet"
        bad.write_bytes(data[:cut])
        code, err = _score(capsys, "--input", bad, "--output", out, "--model", bilstm_model)
        assert code == 2
        assert f"{bad}: not a readable Parquet file" in err
    assert not out.exists()


def test_corrupt_data_page_fails_naming_the_file(tmp_path, out, bilstm_model):
    """The footer reads fine, so the launcher's check passes; the data does not. The
    job fails naming the file, and nothing is published."""
    src = tmp_path / "pairs.parquet"
    rows = [(f"id{i}", f"how do I learn topic {i}? " * 3, f"topic {i}") for i in range(3000)]
    write_pairs(src, rows, row_group_size=500)
    data = bytearray(src.read_bytes())
    footer_start = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    for i in range(400, min(footer_start, 30000), 5):  # the first row groups' pages
        data[i] ^= 0x5A
    src.write_bytes(bytes(data))
    assert pq.ParquetFile(src).metadata.num_rows == 3000  # the footer is intact
    with pytest.raises(JobError) as e:
        job.run(["--input", str(src), "--output", str(out), "--model", bilstm_model])
    msg = str(e.value)
    assert "the job failed, _SUCCESS not written" in msg
    assert f"{src}: cannot read Parquet data" in msg
    _assert_nothing_final(out)


def test_schemas_that_disagree(tmp_path, out, bilstm_model, capsys):
    (tmp_path / "in").mkdir()
    a = tmp_path / "in" / "a.parquet"
    b = tmp_path / "in" / "b.parquet"
    write_pairs(a, PAIRS)
    pq.write_table(
        pa.table({"pair_id": pa.array([1, 2]), "text_a": ["x", "y"], "text_b": ["z", "w"]}), b
    )
    code, err = _score(
        capsys, "--input", tmp_path / "in" / "*.parquet", "--output", out, "--model", bilstm_model
    )
    assert code == 2
    assert f"{b}: schema differs from {a}" in err
    assert "pair_id: int64" in err and "pair_id: string" in err
    assert not out.exists()


@pytest.mark.parametrize(
    "column,array,shown",
    [
        ("text_a", pa.array([1, 2]), "int64"),
        ("text_b", pa.array([b"x", b"y"], pa.binary()), "binary"),
        ("text_a", pa.array([["x"], ["y"]]), "list<element: string>"),
    ],
)
def test_text_column_that_is_not_a_string(tmp_path, out, bilstm_model, capsys, column, array,
                                          shown):
    cols = {"pair_id": pa.array(["a", "b"]), "text_a": pa.array(["x", "y"]),
            "text_b": pa.array(["z", "w"])}
    cols[column] = array
    src = tmp_path / "pairs.parquet"
    pq.write_table(pa.table(cols), src)
    code, err = _score(capsys, "--input", src, "--output", out, "--model", bilstm_model)
    assert code == 2
    assert f"{src}: text column '{column}' has type {shown}, expected a string type" in err
    assert not out.exists()


def test_dictionary_encoded_text_columns_are_scored(tmp_path, out, bilstm_model):
    """Categorical (dictionary-encoded) columns, as pandas and Spark write them, are string
    columns: scored, and the labels keep the id column's values."""
    table = write_pairs(tmp_path / "plain.parquet", PAIRS)
    src = tmp_path / "categorical.parquet"
    pq.write_table(pa.table({name: table[name].dictionary_encode() for name in table.column_names}),
                   src)
    assert pa.types.is_dictionary(pq.read_table(src).schema.field("text_a").type)
    result = job.run(["--input", str(src), "--output", str(out), "--model", bilstm_model])
    assert result.summary["scored"] == len(PAIRS)
    labels = pq.read_table(out / "labels")
    assert sorted(labels["pair_id"].to_pylist()) == sorted(r[0] for r in PAIRS)


def test_missing_id_column(tmp_path, out, bilstm_model, capsys):
    src = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"id": ["a"], "text_a": ["x"], "text_b": ["y"]}), src)
    code, err = _score(capsys, "--input", src, "--output", out, "--model", bilstm_model)
    assert code == 2
    assert "required column 'pair_id' is missing; columns found: id, text_a, text_b" in err
    assert not out.exists()


def test_empty_file_is_not_an_error(tmp_path, out, bilstm_model):
    src = tmp_path / "pairs.parquet"
    write_pairs(src, [])
    assert pq.ParquetFile(src).metadata.num_rows == 0
    result = job.run(["--input", str(src), "--output", str(out), "--model", bilstm_model])
    assert result.summary["rows_in"] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["rows_in"], summary["scored"], summary["rejected"]) == (0, 0, 0)
    assert summary["invariant_holds"] is True
    assert (out / "_SUCCESS").exists()
    # The labels are an empty, readable dataset with the documented schema.
    labels = pq.read_table(out / "labels")
    assert labels.num_rows == 0
    assert labels.schema.names == ["pair_id", "score", "is_duplicate"]
    assert not (out / "_staging").exists()


# --- the model directory --------------------------------------------------------------


@pytest.mark.parametrize(
    "piece", ["saved_model.pb", "variables", "assets/tokenizer.json", "assets/vocab.txt",
              "pairscore.json"],
)
def test_model_dir_missing_a_piece(tmp_path, out, good_input, bilstm_model, capsys, piece):
    def remove(d):
        path = d / piece
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    model = _corrupt_model(bilstm_model, tmp_path, remove)
    code, err = _score(capsys, "--input", good_input, "--output", out, "--model", model)
    assert code == 2
    shown = "variables/" if piece == "variables" else piece
    assert f"model directory {model} is missing {shown}" in err
    assert not out.exists()


def test_model_dir_that_does_not_exist(tmp_path, out, good_input, capsys):
    code, err = _score(capsys, "--input", good_input, "--output", out,
                       "--model", tmp_path / "no-model")
    assert code == 2
    assert f"model directory {tmp_path / 'no-model'} does not exist" in err


@pytest.mark.parametrize("version", [2, None, "1"])
def test_model_dir_with_unknown_format_version(tmp_path, out, good_input, bilstm_model, capsys,
                                               version):
    def edit(d):
        meta = json.loads((d / "pairscore.json").read_text())
        meta["format_version"] = version
        (d / "pairscore.json").write_text(json.dumps(meta))

    model = _corrupt_model(bilstm_model, tmp_path, edit)
    code, err = _score(capsys, "--input", good_input, "--output", out, "--model", model)
    assert code == 2
    assert f"{model / 'pairscore.json'}: unknown format_version {version!r}" in err
    assert not out.exists()


def test_model_metadata_that_is_not_json(tmp_path, out, good_input, bilstm_model, capsys):
    model = _corrupt_model(
        bilstm_model, tmp_path, lambda d: (d / "pairscore.json").write_text("{not json")
    )
    code, err = _score(capsys, "--input", good_input, "--output", out, "--model", model)
    assert code == 2
    assert f"{model / 'pairscore.json'}: not valid JSON" in err


def _swap_vocabulary(d):
    """Another tokenizer.json of the same kind: two words' ids exchanged, as a tokenizer
    from a different export would map words to other ids."""
    spec = json.loads((d / "assets" / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[5:7]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (d / "assets" / "tokenizer.json").write_text(json.dumps(spec))


def _truncate_shard(d):
    [shard] = (d / "variables").glob("variables.data-*")
    shard.write_bytes(shard.read_bytes()[:-100])


@pytest.mark.parametrize("edit,named", [(_swap_vocabulary, "assets/tokenizer.json"),
                                        (_truncate_shard, "variables/variables.data-")])
def test_model_dir_whose_files_do_not_match_its_manifest(tmp_path, out, good_input,
                                                         bilstm_model, capsys, edit, named):
    model = _corrupt_model(bilstm_model, tmp_path, edit)
    code, err = _score(capsys, "--input", good_input, "--output", out, "--model", model)
    assert code == 2
    assert err.startswith("pairscore score: error: ") and named in err
    assert not out.exists()


def test_model_dir_from_before_the_manifest_still_scores_with_a_warning(
    tmp_path, out, good_input, bilstm_model, caplog
):
    def drop_manifest(d):
        meta = json.loads((d / "pairscore.json").read_text())
        del meta["manifest"]
        (d / "pairscore.json").write_text(json.dumps(meta))

    model = _corrupt_model(bilstm_model, tmp_path, drop_manifest)
    result = job.run(["--input", str(good_input), "--output", str(out), "--model", str(model)])
    assert result.summary["scored"] == len(PAIRS)
    assert any("manifest" in r.getMessage() and r.levelname == "WARNING"
               for r in caplog.records)


def test_a_mistyped_flag_stops_the_job_before_any_work(out, good_input, bilstm_model, capsys):
    code, err = _score(capsys, "--input", good_input, "--output", out, "--model", bilstm_model,
                       "--treshold", "0.99")
    assert code == 2
    assert err.strip().splitlines() == [
        "pairscore score: error: unknown flag --treshold; did you mean --threshold?"]
    assert not out.exists()


def test_a_second_run_on_the_same_output_is_refused_naming_the_first(
    out, good_input, bilstm_model, capsys
):
    """A run in progress (its marker names this live process and another run id) keeps a
    second launch out before it touches anything."""
    from pipeline import io as pio

    with pio.acquire_run_marker(str(out), "run-in-progress"):
        (out / "_staging").mkdir()
        (out / "_staging" / "its-work").write_text("x")
        code, err = _score(capsys, "--input", good_input, "--output", out,
                           "--model", bilstm_model)
        assert code == 2
        assert "is in use by run run-in-progress" in err
        assert (out / "_staging" / "its-work").exists()  # the other run's work is untouched
    assert not (out / "_RUN.json").exists()


# --- settings and output -------------------------------------------------------------


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan"])
def test_threshold_outside_unit_interval(out, good_input, bilstm_model, capsys, value):
    code, err = _score(capsys, "--input", good_input, "--output", out, "--model", bilstm_model,
                       "--threshold", value)
    assert code == 2
    assert f"--threshold {float(value)} is outside [0, 1]" in err
    assert not out.exists()


def test_threshold_at_the_bounds_is_accepted(good_input, bilstm_model):
    opts = job.ScoreOptions(["--input", str(good_input), "--output", "unused",
                             "--model", bilstm_model, "--threshold", "1.0"])
    assert job.resolve(opts, dry_run=True).threshold == 1.0


def test_model_threshold_outside_unit_interval(tmp_path, out, good_input, bilstm_model, capsys):
    def edit(d):
        meta = json.loads((d / "pairscore.json").read_text())
        meta["threshold"] = 7
        (d / "pairscore.json").write_text(json.dumps(meta))

    model = _corrupt_model(bilstm_model, tmp_path, edit)
    code, err = _score(capsys, "--input", good_input, "--output", out, "--model", model)
    assert code == 2
    assert "threshold 7 is outside [0, 1]" in err


def test_unwritable_output(tmp_path, good_input, bilstm_model, capsys):
    # Running as root defeats permission bits, so the output sits under a regular file.
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = blocker / "out"
    code, err = _score(capsys, "--input", good_input, "--output", out, "--model", bilstm_model)
    assert code == 2
    assert f"output location {out} is not writable" in err
    assert blocker.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_read_only_output(tmp_path, good_input, bilstm_model, capsys):
    out = tmp_path / "ro"
    out.mkdir(mode=0o555)
    code, err = _score(capsys, "--input", good_input, "--output", out, "--model", bilstm_model)
    assert code == 2
    assert f"output location {out} is not writable" in err


def test_missing_required_options(capsys):
    code, err = _score(capsys, "--input", "x.parquet")
    assert code == 2
    assert "missing required option(s): --output, --model" in err
