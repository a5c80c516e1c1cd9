"""Faults: a run killed midway, a model call that fails once, a model that cannot load,
and rows that do not add up. None may leave output that looks finished, and a rerun
must give exactly one row per input id.
"""

import collections
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipeline import cli, handler, job, publish
from pipeline import io as pio
from pipeline.io import JobError
from pipeline.packing import PackedBatch
from pipeline.sample import sample_table
from tests.conftest import PAIRS, REPO, unloadable_model, write_pairs


def _ids(out):
    """Every id in the published labels and rejects, with multiplicity."""
    tables = [pq.read_table(out / kind, columns=["pair_id"]) for kind in ("labels", "rejects")]
    return collections.Counter(id_ for t in tables for id_ in t["pair_id"].to_pylist())


def _distinct_sample(n, seed):
    """The sample generator's pairs (with its malformed rows), every text made distinct
    so that the job scores pair by pair (auto mode picks unique-text mode for repeats)."""
    table = sample_table(n, seed=seed)
    case = pa.array([f" (case {i})" for i in range(n)])
    for name in ("text_a", "text_b"):
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, pc.binary_join_element_wise(table[name], case, ""))
    return table


def _files(out):
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


# --- SIGKILL midway, then a rerun ----------------------------------------------------


@pytest.mark.slow  # a real subprocess run end to end: `make test-slow`
def test_sigkill_midway_leaves_nothing_final_and_the_rerun_is_exact(tmp_path, bilstm_model):
    src, out = tmp_path / "pairs.parquet", tmp_path / "out"
    table = _distinct_sample(12_000, seed=7)
    pq.write_table(table, src, row_group_size=1000)
    argv = ["--input", str(src), "--output", str(out), "--model", bilstm_model]
    # Small model calls keep the job busy long enough to be caught midway.
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "score", *argv, "--batch-size", "8"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.time() + 240
        while not list((out / "_staging").glob("*/labels/beam-temp-*/*")):
            assert proc.poll() is None, "the job ended before it wrote anything"
            assert time.time() < deadline, "the job never started writing labels"
            time.sleep(0.05)
        time.sleep(1.0)  # well into scoring: labels are being appended
        assert proc.poll() is None, "the job finished before it could be killed midway"
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    left = _files(out)
    assert left, "a killed run midway should have left its temporary files"
    # Beam's temporary files, and the run marker of a process that is now dead.
    assert all(f.startswith("_staging/") or f == "_RUN.json" for f in left), left
    assert not (out / "_SUCCESS").exists() and not (out / "summary.json").exists()
    assert not (out / "labels").exists() and not (out / "rejects").exists()
    # A Parquet dataset reader pointed at the output finds nothing to read.
    assert ds.dataset(str(out), format="parquet").files == []

    # No --overwrite needed: the killed run never finished; its marker names a dead pid.
    result = job.run(argv)
    assert result.summary["rows_in"] == table.num_rows
    assert result.summary["scored"] + result.summary["rejected"] == table.num_rows
    assert _ids(out) == collections.Counter(table["pair_id"].to_pylist())
    assert (out / "_SUCCESS").exists() and not (out / "_staging").exists()
    assert not (out / "_RUN.json").exists()


# --- model calls that fail: transient errors retried, poison batches to rejects -----------


@pytest.fixture(scope="module")
def many_batches(tmp_path_factory, bilstm_model):
    """A clean run over 3000 pairs in batches of 64 (about 50 model calls)."""
    base = tmp_path_factory.mktemp("faults")
    src = base / "pairs.parquet"
    table = _distinct_sample(3000, seed=3)
    pq.write_table(table, src, row_group_size=500)
    argv = ["--input", str(src), "--model", bilstm_model, "--batch-size", "64"]
    out = base / "clean"
    job.run([*argv, "--output", str(out), "--mode", "pairs"])
    return argv, out, collections.Counter(table["pair_id"].to_pylist())


def _scores(out):
    labels = pq.read_table(out / "labels")
    return dict(zip(labels["pair_id"].to_pylist(), labels["score"].to_pylist(), strict=True))


def _fail_calls(monkeypatch, method, calls, error):
    """Make LoadedPairModel.`method` raise `error` on the given call numbers (1-based) of
    this process: the local runner runs the job in the test's process."""
    original = getattr(handler.LoadedPairModel, method)
    seen = {"n": 0, "failed": 0}

    def flaky(self, *args):
        seen["n"] += 1
        if seen["n"] in calls:
            seen["failed"] += 1
            raise error
        return original(self, *args)

    monkeypatch.setattr(handler.LoadedPairModel, method, flaky)
    monkeypatch.setattr(handler, "SCORE_BACKOFF_S", 0.01)
    return seen


METHOD = {"pairs": "score", "unique": "score_embeddings"}


@pytest.mark.parametrize("mode", ["pairs", "unique"])
def test_a_transient_failure_is_retried_without_duplicates_or_losses(
    tmp_path, many_batches, mode, monkeypatch
):
    argv, clean, input_ids = many_batches
    out = tmp_path / "out"
    seen = _fail_calls(monkeypatch, METHOD[mode], {1}, ConnectionError("model server gone"))
    result = job.run([*argv, "--output", str(out), "--mode", mode])
    assert seen["failed"] == 1
    assert result.summary["counters"]["score_retries"] == 1
    assert result.summary["model_errors"] == 0
    assert _ids(out) == input_ids  # each id exactly as often as in the input
    got, want = _scores(out), _scores(clean)
    assert got.keys() == want.keys()
    assert np.allclose([got[k] for k in want], list(want.values()), atol=1e-5)
    assert result.summary["rejected_by_reason"] == json.loads(
        (clean / "summary.json").read_text()
    )["rejected_by_reason"]


def _model_error_rejects(out):
    rejects = pq.read_table(out / "rejects")
    return rejects.filter(pc.equal(rejects["reason"], "model_error"))


@pytest.mark.parametrize("mode,method", [("pairs", "score"), ("unique", "score_embeddings"),
                                         ("unique", "encode")])
def test_a_poison_batch_goes_to_rejects_and_the_night_goes_on(
    tmp_path, many_batches, mode, method, monkeypatch
):
    """A batch that fails with a non-transient error is not retried: its rows (or, when
    encoding fails, the pairs holding its texts) are rejected as model_error, with the
    exception, and everything else is scored as in a clean run."""
    argv, clean, input_ids = many_batches
    out = tmp_path / "out"
    seen = _fail_calls(monkeypatch, method, {2}, ValueError("shape mismatch: [64,7] vs [64,9]"))
    # Tables of 500 rows: several score_embeddings calls too (up to 4096 pairs each).
    result = job.run([*argv, "--output", str(out), "--mode", mode, "--rebatch-rows", "500",
                      "--max-model-error-ratio", "0.5"])
    assert seen["failed"] == 1 and seen["n"] > 2
    assert "score_retries" not in result.summary["counters"]  # not worth another attempt
    failed = _model_error_rejects(out)
    assert failed.num_rows == result.summary["model_errors"] > 0
    assert set(failed["error"].to_pylist()) == {"ValueError: shape mismatch: [64,7] vs [64,9]"}
    # The failed rows are kept as given, texts included.
    assert failed["text_a"].null_count == 0 and failed["text_b"].null_count == 0
    assert _ids(out) == input_ids  # nothing lost, nothing twice
    got, want = _scores(out), _scores(clean)
    assert set(want) - set(got) == set(failed["pair_id"].to_pylist())
    assert np.allclose([got[k] for k in got], [want[k] for k in got], atol=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rejected_by_reason"]["model_error"] == failed.num_rows
    assert (out / "_SUCCESS").exists()


def test_model_errors_past_the_ratio_fail_the_night_with_the_output_staged(
    tmp_path, many_batches, monkeypatch
):
    argv, _, _ = many_batches
    out = tmp_path / "out"
    _fail_calls(monkeypatch, "score", {2}, ValueError("bad batch"))
    # One batch of 64 rows in 3000 is 2%: over the default 0.1%.
    with pytest.raises(JobError, match=r"\d+ of 3000 rows failed in the model.*"
                       r"--max-model-error-ratio 0.001"):
        job.run([*argv, "--output", str(out), "--mode", "pairs"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model_errors"] > 0 and summary["invariant_holds"] is True
    assert not (out / "_SUCCESS").exists() and not (out / "labels").exists()
    assert list((out / "_staging").glob("*/rejects/*.parquet"))
    assert summary["status"] == "withheld" and not (out / "_RUN.json").exists()


def test_max_model_error_ratio_zero_fails_on_the_first_failed_batch(
    tmp_path, many_batches, monkeypatch
):
    argv, _, _ = many_batches
    out = tmp_path / "out"
    seen = _fail_calls(monkeypatch, "score", {2}, ValueError("bad batch"))
    with pytest.raises(JobError, match="the job failed, _SUCCESS not written: .*bad batch"):
        job.run([*argv, "--output", str(out), "--mode", "pairs", "--max-model-error-ratio", "0"])
    assert seen["failed"] == 1
    assert not (out / "_SUCCESS").exists() and not (out / "summary.json").exists()


class _FlakyModel:
    """Stands in for LoadedPairModel: fails the first `failures` calls with `error`."""

    def __init__(self, failures, error=ConnectionError):
        self.failures, self.calls, self.error = failures, 0, error

    def score(self, left, right):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error(f"failure {self.calls}")
        return left.sum(axis=1).astype(np.float32) / 100

    def device_name(self):
        return "CPU"


def _batch(n):
    ids = np.arange(1, n * 3 + 1, dtype=np.int32).reshape(n, 3)
    return PackedBatch(rows=pa.table({"pair_id": [f"p{i}" for i in range(n)]}), left=ids,
                       right=ids, real_tokens=n * 6)


def _handler():
    h = handler.PairModelHandler("unused")
    h._backoff_s = 0.0
    return h


def test_scoring_retries_transient_errors_up_to_its_attempts_then_succeeds():
    model = _FlakyModel(failures=handler.SCORE_ATTEMPTS - 1)
    [out] = _handler().run_inference(_batch(4), model)
    assert model.calls == handler.SCORE_ATTEMPTS
    assert out.scores.tolist() == pytest.approx([0.06, 0.15, 0.24, 0.33])


def test_scoring_that_keeps_failing_raises_after_its_attempts():
    model = _FlakyModel(failures=handler.SCORE_ATTEMPTS)
    with pytest.raises(ConnectionError, match=f"failure {handler.SCORE_ATTEMPTS}"):
        _handler().run_inference(_batch(2), model)
    assert model.calls == handler.SCORE_ATTEMPTS


@pytest.mark.parametrize("error", [ValueError, TypeError, KeyError])
def test_errors_that_repeat_are_not_retried(error):
    model = _FlakyModel(failures=1, error=error)
    with pytest.raises(error):
        _handler().run_inference(_batch(2), model)
    assert model.calls == 1


def test_only_transient_tensorflow_errors_are_retried():
    import tensorflow as tf

    assert handler.is_transient(tf.errors.UnavailableError(None, None, "device busy"))
    assert handler.is_transient(tf.errors.ResourceExhaustedError(None, None, "OOM"))
    assert not handler.is_transient(tf.errors.InvalidArgumentError(None, None, "shape"))
    assert not handler.is_transient(tf.errors.NotFoundError(None, None, "no such op"))
    assert handler.is_transient(ConnectionResetError()) and handler.is_transient(EOFError())


# --- a model that cannot load ---------------------------------------------------------


def test_a_crash_in_model_loading_gives_a_clear_error(tmp_path, bilstm_model, capsys):
    model = unloadable_model(bilstm_model, tmp_path / "model")
    src, out = tmp_path / "pairs.parquet", tmp_path / "out"
    write_pairs(src, PAIRS)
    capsys.readouterr()
    code = cli.main(["score", "--input", str(src), "--output", str(out), "--model", str(model)])
    err = capsys.readouterr().err
    assert code == 2
    assert "pairscore score: error: the job failed, _SUCCESS not written: " in err
    assert f"ModelLoadError: cannot load the model in {model}: " in err
    assert "saved_model.pb" in err
    assert not (out / "_SUCCESS").exists() and not (out / "labels").exists()


# --- the final step: rows that do not add up, retries, interruptions ---------------------


def _staged_run(tmp_path, model, drop_last=False):
    """A resolved job over PAIRS and what its writes would leave staged: two label files
    and one (empty) reject file. Returns (cfg, label files, reject files)."""
    src, out = tmp_path / "pairs.parquet", tmp_path / "out"
    write_pairs(src, PAIRS)
    cfg = job.resolve(
        job.ScoreOptions(["--input", str(src), "--output", str(out), "--model", model]),
        dry_run=False,
    )
    # As run() does before the pipeline: the final step runs under the run's marker.
    pio.acquire_run_marker(str(out), cfg.run_id, 3600)
    staged = out / "_staging" / cfg.run_id
    ids = [r[0] for r in (PAIRS[:-1] if drop_last else PAIRS)]
    labels = pa.table({"pair_id": ids, "score": pa.array([0.5] * len(ids), pa.float32()),
                       "is_duplicate": [i < 2 for i in range(len(ids))]})
    (staged / "labels").mkdir(parents=True)
    (staged / "rejects").mkdir()
    label_files = []
    for k, part in enumerate((labels.slice(0, 3), labels.slice(3))):
        path = staged / "labels" / f"part-0000{k}-of-00002.parquet"
        pq.write_table(part, path)
        label_files.append(str(path))
    reject = staged / "rejects" / "part-00000-of-00001.parquet"
    pq.write_table(pa.table({"pair_id": pa.array([], pa.string()),
                             "reason": pa.array([], pa.string())}), reject)
    return cfg, label_files, [str(reject)]


def _published(out):
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def test_rows_that_do_not_add_up_are_not_published(tmp_path, bilstm_model):
    # What a runner that silently dropped one row would leave staged.
    cfg, labels, rejects = _staged_run(tmp_path, bilstm_model, drop_last=True)
    out = tmp_path / "out"
    with pytest.raises(publish.RunWithheld, match=r"rows lost: rows_in 7 != scored 6 \+ "
                       r"rejected 0"):
        publish.finalize_run(cfg, {"labels": labels, "rejects": rejects},
            duplicates=2, distinct_ids=6)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["invariant_holds"] is False and summary["rows_in"] == 7
    assert summary["status"] == "withheld" and "rows lost" in summary["error"]
    assert not (out / "_SUCCESS").exists()
    assert not (out / "labels").exists(), "unverified rows were published"


def test_the_final_step_run_twice_publishes_once(tmp_path, bilstm_model):
    """A runner may retry the last step (a worker lost mid-step): the second run finds
    the files published and gives the same output, one _SUCCESS."""
    cfg, labels, rejects = _staged_run(tmp_path, bilstm_model)
    out = tmp_path / "out"
    first = publish.finalize_run(cfg, {"labels": labels, "rejects": rejects},
        duplicates=2, distinct_ids=7)
    after_first = _published(out)
    second = publish.finalize_run(cfg, {"labels": labels, "rejects": rejects},
        duplicates=2, distinct_ids=7)
    assert _published(out) == after_first == [
        "_SUCCESS", "labels/part-00000-of-00002.parquet", "labels/part-00001-of-00002.parquet",
        "rejects/part-00000-of-00001.parquet", "report.html", "summary.json"]
    for s in (first, second):
        assert (s["scored"], s["rejected"], s["status"]) == (7, 0, "published")
    assert pq.read_table(out / "labels")["pair_id"].to_pylist() == [r[0] for r in PAIRS]


def test_the_final_step_interrupted_mid_publish_is_completed_by_its_retry(
    tmp_path, bilstm_model, monkeypatch
):
    cfg, labels, rejects = _staged_run(tmp_path, bilstm_model)
    out = tmp_path / "out"
    real_rename = publish.FileSystems.rename

    def rename_half(sources, targets):
        # The worker is lost after moving the first file.
        real_rename(sources[:1], targets[:1])
        raise ConnectionError("worker lost")

    monkeypatch.setattr(publish.FileSystems, "rename", rename_half)
    with pytest.raises(ConnectionError):
        publish.finalize_run(cfg, {"labels": labels, "rejects": rejects},
            duplicates=2, distinct_ids=7)
    assert (out / "labels" / "part-00000-of-00002.parquet").exists()
    assert not (out / "_SUCCESS").exists() and not (out / "summary.json").exists()
    monkeypatch.setattr(publish.FileSystems, "rename", real_rename)
    summary = publish.finalize_run(cfg, {"labels": labels, "rejects": rejects},
        duplicates=2, distinct_ids=7)
    assert summary["scored"] == 7 and summary["invariant_holds"]
    assert pq.read_table(out / "labels")["pair_id"].to_pylist() == [r[0] for r in PAIRS]
    assert [p for p in _published(out) if p.startswith("_staging")] == []
    assert (out / "_SUCCESS").exists()


def test_the_pipeline_runs_the_final_step_after_both_writes_and_the_launcher_only_reads(
    tmp_path, bilstm_model, monkeypatch
):
    """On the local runner the launcher is the runner, so the ordering property is
    tested: once the pipeline has finished, `run()` touches storage only to read
    summary.json; counting, publishing, summary.json and _SUCCESS were the pipeline's."""
    src, out = tmp_path / "pairs.parquet", tmp_path / "out"
    write_pairs(src, PAIRS)
    calls = []
    fs = publish.FileSystems

    def record(name):
        real = getattr(fs, name)

        def wrapper(*args, **kwargs):
            calls.append((name, str(args[0]) if args else ""))
            return real(*args, **kwargs)
        return wrapper

    import apache_beam.runners.portability.fn_api_runner.fn_runner as fn_runner

    real_run = fn_runner.FnApiRunner.run_pipeline

    def run_then_record(self, *args, **kwargs):
        result = real_run(self, *args, **kwargs)
        for name in ("create", "rename", "delete", "copy", "mkdirs", "open", "exists",
                     "match"):
            monkeypatch.setattr(fs, name, record(name))
        return result

    monkeypatch.setattr(fn_runner.FnApiRunner, "run_pipeline", run_then_record)
    result = job.run(["--input", str(src), "--output", str(out), "--model", bilstm_model])
    assert result.summary["status"] == "published" and (out / "_SUCCESS").exists()
    touched = {path for _, path in calls}
    assert touched <= {str(out / "summary.json")}, calls
    assert {name for name, _ in calls} <= {"exists", "open"}, calls


def test_files_landing_in_the_glob_while_the_job_runs_are_neither_read_nor_counted(
    tmp_path, bilstm_model, monkeypatch
):
    """The input is pinned at launch: a file added after the glob was matched is left
    for the next run, and summary.json lists exactly the files read."""
    (tmp_path / "in").mkdir()
    write_pairs(tmp_path / "in" / "a.parquet", PAIRS)
    out = tmp_path / "out"
    real_scan = pio.scan_inputs

    def scan_then_a_file_lands(pattern):
        scan = real_scan(pattern)
        write_pairs(tmp_path / "in" / "b.parquet", [("late", "a late text", "another one")])
        return scan

    monkeypatch.setattr(pio, "scan_inputs", scan_then_a_file_lands)
    result = job.run(["--input", str(tmp_path / "in" / "*.parquet"), "--output", str(out),
                      "--model", bilstm_model])
    assert result.summary["rows_in"] == len(PAIRS) == result.summary["scored"]
    assert result.summary["input_files"] == [{"path": str(tmp_path / "in" / "a.parquet"),
                                              "rows": len(PAIRS)}]
    assert "late" not in pq.read_table(out / "labels")["pair_id"].to_pylist()


def test_a_crashed_runs_leftovers_are_cleared(tmp_path, bilstm_model):
    """Killed during the final moves: some labels in place, the rest still staged."""
    src, out = tmp_path / "pairs.parquet", tmp_path / "out"
    write_pairs(src, PAIRS)
    (out / "labels").mkdir(parents=True)
    write_pairs(out / "labels" / "part-00000-of-00002.parquet", [("stale", "a", "b")])
    (out / "_staging" / "labels" / "beam-temp-part-0").mkdir(parents=True)
    (out / "_staging" / "labels" / "beam-temp-part-0" / "x.part.parquet").write_bytes(b"PAR1")
    pio.clear_previous_output(str(out))
    assert _files(out) == []


# --- one run owns the output to the end: detached launches, a marker taken over ---------

JOB_ID = "2025-06-01_01_00_00-1234567890"


class _SubmittedToDataflow:
    """What DataflowRunner's run() returns once the job is submitted (a
    DataflowPipelineResult): the job runs on Dataflow, not in this process."""

    def job_id(self):
        return JOB_ID


def _submitting_pipeline():
    """A pipeline whose run() submits to a fake Dataflow service: the graph is built as
    for any run, nothing runs here."""
    import apache_beam as beam

    class Submitting(beam.Pipeline):
        def run(self, test_runner_api="AUTO"):
            return _SubmittedToDataflow()

    return Submitting(runner="FnApiRunner")


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _job_state(monkeypatch, state):
    """Fake the Dataflow API at its one boundary (`pio.dataflow_job_state`)."""
    calls = []

    def ask(project, region, job_id, job_name=None):
        calls.append((project, region, job_id))
        return state

    monkeypatch.setattr(pio, "dataflow_job_state", ask)
    return calls


def test_a_second_launch_while_a_detached_dataflow_run_is_live_is_refused(
    tmp_path, bilstm_model, monkeypatch, capsys
):
    src, out = tmp_path / "pairs.parquet", tmp_path / "out"
    write_pairs(src, PAIRS)
    argv = ["--input", str(src), "--output", str(out), "--model", bilstm_model]
    # The nightly launch: submitted with --detach, the launcher returns at once...
    first = job.run([*argv, "--runner", "DataflowRunner", "--project", "proj",
                     "--region", "us-central1", "--detach"], test_pipeline=_submitting_pipeline())
    assert first.summary is None
    marker = json.loads((out / pio.RUN_MARKER).read_text())
    assert (marker["runner"], marker["job_id"], marker["region"], marker["project"]) == (
        "DataflowRunner", JOB_ID, "us-central1", "proj")
    assert marker["submitted_at"]
    run_id = marker["run_id"]
    # ... and exits; its job runs on Dataflow and is writing under _staging/.
    marker["pid"], marker["pid_started"] = _dead_pid(), None
    (out / pio.RUN_MARKER).write_text(json.dumps(marker))
    staged = out / "_staging" / run_id / "labels" / "beam-temp-x" / "part-0.parquet"
    staged.parent.mkdir(parents=True)
    staged.write_bytes(b"PAR1 being written")
    before = _files(out)

    calls = _job_state(monkeypatch, "JOB_STATE_RUNNING")
    capsys.readouterr()
    assert cli.main(["score", *argv]) == 2
    err = capsys.readouterr().err
    assert f"pairscore score: error: {out} is in use by run {run_id} " in err
    assert f"Dataflow job {JOB_ID} (project proj, region us-central1) is JOB_STATE_RUNNING" in err
    assert calls == [("proj", "us-central1", JOB_ID)]
    assert _files(out) == before and staged.read_bytes() == b"PAR1 being written"
    assert json.loads((out / pio.RUN_MARKER).read_text()) == marker

    # The job failed on Dataflow (its last step never released the marker): taken over.
    _job_state(monkeypatch, "JOB_STATE_FAILED")
    result = job.run(argv)
    assert result.summary["status"] == "published" and (out / "_SUCCESS").exists()
    assert not (out / "_staging").exists() and not (out / pio.RUN_MARKER).exists()


def _other_run_publishing(out, run_id="run-B"):
    """What run B, which took the output over, has in place while it publishes: its
    marker, part of its labels published, the rest staged."""
    marker = {"format": 1, "run_id": run_id, "started_at": pio._now().strftime(
        "%Y-%m-%dT%H:%M:%SZ"), "host": "other-host", "pid": 4242, "user": "b",
        "argv": ["pairscore", "score"], "runner": "DataflowRunner", "job_id": "B-job",
        "region": "europe-west1", "project": "proj"}
    (out / "labels").mkdir(parents=True, exist_ok=True)
    write_pairs(out / "labels" / "part-00000-of-00001.parquet", [("b1", "B's", "row")])
    staged = out / "_staging" / run_id / "rejects"
    staged.mkdir(parents=True)
    write_pairs(staged / "part-00000-of-00001.parquet", [])
    (out / pio.RUN_MARKER).write_text(json.dumps(marker))
    return {p: (out / p).read_bytes() for p in _files(out)}


def test_a_run_whose_marker_was_taken_over_mid_run_publishes_nothing(
    tmp_path, bilstm_model, monkeypatch, capsys
):
    """A real local run; while it scores, run B takes the output over and starts to
    publish. This run's last step sees the marker is no longer its own: it moves nothing,
    writes no summary.json, report.html or _SUCCESS, and fails naming run B."""
    src, out = tmp_path / "pairs.parquet", tmp_path / "out"
    write_pairs(src, PAIRS)
    theirs = {}
    original = handler.LoadedPairModel.score

    def score_while_b_takes_over(self, *args):
        if not theirs:
            theirs.update(_other_run_publishing(out))
        return original(self, *args)

    monkeypatch.setattr(handler.LoadedPairModel, "score", score_while_b_takes_over)
    capsys.readouterr()
    code = cli.main(["score", "--input", str(src), "--output", str(out), "--model",
                     bilstm_model, "--mode", "pairs"])
    err = capsys.readouterr().err
    assert theirs, "the model was never called"
    assert code == 2, err
    assert f"{out} is now held by run run-B " in err and "Dataflow job B-job" in err
    assert "published nothing" in err
    # Run B's files, byte for byte, and nothing of this run's beside them.
    published = [p for p in _files(out) if not p.startswith("_staging/")]
    assert published == sorted(p for p in theirs if not p.startswith("_staging/"))
    for path, data in theirs.items():
        assert (out / path).read_bytes() == data, path
    assert pq.read_table(out / "labels")["pair_id"].to_pylist() == ["b1"]
    assert not (out / "_SUCCESS").exists() and not (out / "summary.json").exists()


@pytest.mark.parametrize("how", ["taken over", "deleted"])
@pytest.mark.parametrize("drop_last", [False, True], ids=["publishable", "withheld"])
def test_the_final_step_of_a_run_that_lost_its_marker_writes_nothing(
    tmp_path, bilstm_model, how, drop_last
):
    cfg, labels, rejects = _staged_run(tmp_path, bilstm_model, drop_last=drop_last)
    out = tmp_path / "out"
    if how == "deleted":
        (out / pio.RUN_MARKER).unlink()
        theirs, holder = {}, "the run marker .* is gone"
    else:
        theirs, holder = _other_run_publishing(out), f"{out} is now held by run run-B"
    staged = _files(out)
    with pytest.raises(pio.OutputTakenOver, match=holder) as err:
        publish.finalize_run(cfg, {"labels": labels, "rejects": rejects},
                             duplicates=2, distinct_ids=7)
    assert f"run {cfg.run_id} published nothing" in str(err.value)
    assert _files(out) == staged
    for path, data in theirs.items():
        assert (out / path).read_bytes() == data, path


def test_the_moves_stop_at_the_next_batch_once_the_marker_is_taken_over(tmp_path, monkeypatch):
    out = tmp_path / "out"
    pio.acquire_run_marker(str(out), "run-A", 3600)
    staged = out / "_staging" / "run-A" / "labels"
    staged.mkdir(parents=True)
    paths = []
    for i in range(40):
        paths.append(staged / f"part-{i:05d}-of-00040.parquet")
        paths[-1].write_bytes(b"PAR1")
    real_rename = publish.FileSystems.rename
    batches = []

    def rename_then_taken_over(sources, targets):
        batches.append(len(sources))
        real_rename(sources, targets)
        _other_run_publishing(out)  # run B takes the output over meanwhile

    monkeypatch.setattr(publish.FileSystems, "rename", rename_then_taken_over)
    with pytest.raises(pio.OutputTakenOver, match=r"now held by run run-B"):
        publish.publish_files(str(out), [str(p) for p in paths], "run-A")
    assert batches == [publish.PUBLISH_CHUNK]
    moved = [p for p in (out / "labels").iterdir() if p.name != "part-00000-of-00001.parquet"]
    assert len(moved) == publish.PUBLISH_CHUNK
