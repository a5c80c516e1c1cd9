"""The scoring job end to end: real Beam pipeline, real Parquet, real tiny SavedModel."""

import json
import subprocess
import sys

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that

from model.predict import Scorer
from pipeline import job, stages
from pipeline.io import JobError
from tests.conftest import PAIRS, REPO, write_pairs

BAD_ROWS = [
    (None, "no id here", "still no id"),
    ("b1", None, "left text is null"),
    ("b2", "right text is empty", ""),
    ("b3", "   \t ", "whitespace only on the left"),
]


def _read(path_glob):
    import glob

    files = sorted(glob.glob(path_glob))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else None


def _run(tmp_path, model, rows, *extra, name="out", **columns):
    src = tmp_path / f"{name}.parquet"
    if rows is not None:
        write_pairs(src, rows, **columns)
    out = tmp_path / name
    result = job.run(
        ["--input", str(src), "--output", str(out), "--model", model, *extra]
    )
    return out, result


def test_scores_match_serving_default_and_nothing_is_lost(tmp_path, bilstm_model):
    rows = PAIRS + BAD_ROWS
    out, result = _run(tmp_path, bilstm_model, rows, "--batch-size", "3")
    labels = _read(str(out / "labels" / "*.parquet"))
    rejects = _read(str(out / "rejects" / "*.parquet"))

    # Every input row exactly once across labels and rejects.
    assert labels.num_rows + rejects.num_rows == len(rows)
    assert sorted(labels["pair_id"].to_pylist()) == sorted(r[0] for r in PAIRS)
    assert sorted(rejects["reason"].to_pylist()) == [
        "empty_text", "empty_text", "null_id", "null_text"
    ]
    # Rejects keep the row as given.
    assert set(rejects.column_names) == {"pair_id", "text_a", "text_b", "reason", "error"}
    assert rejects["error"].null_count == rejects.num_rows  # only model errors carry one

    scorer = Scorer(bilstm_model)
    expected = dict(
        zip(
            (r[0] for r in PAIRS),
            scorer.score([r[1] for r in PAIRS], [r[2] for r in PAIRS]),
        )
    )
    got = dict(zip(labels["pair_id"].to_pylist(), labels["score"].to_pylist()))
    for pid, score in expected.items():
        assert got[pid] == pytest.approx(float(score), abs=1e-5)

    threshold = scorer.metadata.threshold
    assert labels.schema.field("score").type == pa.float32()
    for score, dup in zip(labels["score"].to_pylist(), labels["is_duplicate"].to_pylist()):
        assert dup == (score >= threshold)

    meta = pq.read_schema(sorted((out / "labels").glob("*.parquet"))[0]).metadata
    assert meta[b"pairscore.model_fingerprint"].decode() == scorer.metadata.fingerprint

    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows_in"] == len(rows)
    assert summary["scored"] == len(PAIRS)
    assert summary["rejected"] == len(BAD_ROWS)
    assert summary["rejected_by_reason"] == {"empty_text": 2, "null_id": 1, "null_text": 1}
    assert summary["duplicates"] == sum(labels["is_duplicate"].to_pylist())
    assert summary["model_fingerprint"] == scorer.metadata.fingerprint
    assert summary["status"] == "published" and summary["run_id"] == result.summary["run_id"]
    assert meta[b"pairscore.run_id"].decode() == summary["run_id"]
    assert (out / "_SUCCESS").exists()
    # The launcher adds Beam's counters to what the pipeline wrote.
    assert result.summary == summary | {"counters": result.summary["counters"]}
    assert result.summary["counters"]["rows_read"] == len(rows)


def test_threshold_flag_overrides_model_and_keep_columns(tmp_path, bilstm_model):
    ids = pa.array([f"s{i}" for i in range(len(PAIRS))])
    out, _ = _run(
        tmp_path, bilstm_model, PAIRS, "--threshold", "0", "--keep-columns", "source,rank",
        source=pa.array(["web"] * len(PAIRS)), rank=pa.array(range(len(PAIRS)), pa.int16()),
    )
    del ids
    labels = _read(str(out / "labels" / "*.parquet"))
    assert all(labels["is_duplicate"].to_pylist())
    assert labels.column_names == ["pair_id", "score", "is_duplicate", "source", "rank"]
    assert labels.schema.field("rank").type == pa.int16()
    by_id = dict(zip(labels["pair_id"].to_pylist(), labels["rank"].to_pylist()))
    assert by_id == {r[0]: i for i, r in enumerate(PAIRS)}


def test_integer_id_column_keeps_its_type(tmp_path, bilstm_model):
    src = tmp_path / "ints.parquet"
    pq.write_table(
        pa.table({"id": pa.array([10, 20, None], pa.int64()),
                  "a": ["one text", "two text", "x"], "b": ["uno", "dos", "y"]}),
        src,
    )
    out = tmp_path / "o"
    job.run(["--input", str(src), "--output", str(out), "--model", bilstm_model,
             "--id-column", "id", "--text-a-column", "a", "--text-b-column", "b"])
    labels = _read(str(out / "labels" / "*.parquet"))
    assert labels.schema.field("id").type == pa.int64()
    assert sorted(labels["id"].to_pylist()) == [10, 20]


def test_finished_output_is_refused_without_overwrite(tmp_path, bilstm_model):
    out, _ = _run(tmp_path, bilstm_model, PAIRS[:2])
    with pytest.raises(JobError, match="--overwrite"):
        job.run(["--input", str(tmp_path / "out.parquet"), "--output", str(out),
                 "--model", bilstm_model])
    write_pairs(tmp_path / "out.parquet", PAIRS[2:5])
    job.run(["--input", str(tmp_path / "out.parquet"), "--output", str(out),
             "--model", bilstm_model, "--overwrite"])
    labels = _read(str(out / "labels" / "*.parquet"))
    assert sorted(labels["pair_id"].to_pylist()) == sorted(r[0] for r in PAIRS[2:5])


def test_crashed_output_is_cleared_and_redone(tmp_path, bilstm_model):
    out = tmp_path / "out"
    (out / "labels").mkdir(parents=True)
    stale = out / "labels" / "part-00000-of-00003.parquet"
    write_pairs(stale, [("stale", "old", "row")])
    (out / "summary.json").write_text("{}")
    out2, _ = _run(tmp_path, bilstm_model, PAIRS[:3])
    assert out2 == out
    assert not stale.exists()
    labels = _read(str(out / "labels" / "*.parquet"))
    assert "stale" not in labels["pair_id"].to_pylist()
    assert (out / "_SUCCESS").exists()


def test_score_pairs_transform_in_test_pipeline(bilstm_model, tmp_path):
    src = tmp_path / "in.parquet"
    table = write_pairs(src, PAIRS + BAD_ROWS)
    opts = job.ScoreOptions(["--input", str(src), "--output", str(tmp_path / "o"),
                             "--model", bilstm_model, "--batch-size", "2"])
    cfg = job.resolve(opts, dry_run=False)

    def ids_of(key):
        def check(tables):
            got = sorted(i for t in tables for i in t[cfg.id_column].to_pylist() if i)
            want = sorted(r[0] for r in (PAIRS if key == "labels" else BAD_ROWS[1:]))
            assert got == want, (key, got, want)
        return check

    with BeamTestPipeline(runner="FnApiRunner") as p:
        results = p | beam.Create([table.slice(0, 5), table.slice(5)]) | stages.ScorePairs(cfg)
        assert_that(results["labels"], ids_of("labels"), label="CheckLabels")
        assert_that(results["rejects"], ids_of("rejects"), label="CheckRejects")


def test_bert_model_through_the_job(tmp_path, bert_model):
    out, _ = _run(tmp_path, bert_model, PAIRS)
    labels = _read(str(out / "labels" / "*.parquet"))
    scorer = Scorer(bert_model)
    want = scorer.score([r[1] for r in PAIRS], [r[2] for r in PAIRS])
    got = dict(zip(labels["pair_id"].to_pylist(), labels["score"].to_pylist()))
    np.testing.assert_allclose([got[r[0]] for r in PAIRS], want, atol=1e-5)


@pytest.mark.slow  # a real subprocess run end to end: `make test-slow`
def test_cli_score_end_to_end(tmp_path, bilstm_model):
    src = tmp_path / "cli.parquet"
    write_pairs(src, PAIRS + BAD_ROWS)
    out = tmp_path / "cli_out"
    cmd = [sys.executable, "-m", "pipeline.cli", "score", "--input", str(src), "--output",
           str(out), "--model", bilstm_model]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scored"] + summary["rejected"] == summary["rows_in"] == len(PAIRS + BAD_ROWS)
    # A second run without --overwrite is refused with exit 2 and a clear message.
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2
    assert "--overwrite" in proc.stderr
