"""The output's life cycle around a run: checks that delete nothing, the clearing of an
earlier run's files, the run marker that keeps two runs off one output, and the count
of what was written. Real local files throughout, and one object store (moto's S3
server, as in test_storage.py) for the marker."""

import datetime
import json
import logging
import os
import socket
import subprocess
import sys
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model.storage import join
from pipeline import io as pio
from pipeline.io import JobError
from tests.conftest import write_pairs
from tests.test_storage import BUCKET, s3  # noqa: F401  (the moto S3 fixture)


def _files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _finished_run(out):
    """What a finished run leaves, plus a stale staged file."""
    for kind in ("labels", "rejects"):
        (out / kind).mkdir(parents=True)
    write_pairs(out / "labels" / "part-00000-of-00001.parquet", [("old", "a", "b")])
    write_pairs(out / "rejects" / "part-00000-of-00001.parquet", [])
    (out / "_staging" / "labels").mkdir(parents=True)
    (out / "_staging" / "labels" / "x.parquet").write_bytes(b"PAR1")
    (out / "summary.json").write_text("{}")
    (out / "_SUCCESS").write_text("ok\n")


# --- check_output / clear_previous_output -------------------------------------------


def test_check_output_refuses_a_finished_run_and_deletes_nothing(tmp_path):
    out = tmp_path / "out"
    _finished_run(out)
    before = _files(out)
    with pytest.raises(JobError, match=r"already holds a finished run \(_SUCCESS exists\); "
                                       r"pass --overwrite"):
        pio.check_output(str(out), overwrite=False)
    assert _files(out) == before


def test_check_output_with_overwrite_deletes_nothing_and_leaves_no_probe(tmp_path):
    out = tmp_path / "out"
    _finished_run(out)
    before = _files(out)
    pio.check_output(str(out), overwrite=True)
    assert _files(out) == before


def test_check_output_creates_a_new_location(tmp_path):
    out = tmp_path / "new" / "out"
    pio.check_output(str(out), overwrite=False)
    assert out.is_dir() and _files(out) == []


def test_check_output_names_an_unwritable_location(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(JobError, match=rf"output location {blocker}/out is not writable"):
        pio.check_output(str(blocker / "out"), overwrite=False)


def test_clear_previous_output_removes_every_earlier_file_but_the_marker(tmp_path):
    out = tmp_path / "out"
    _finished_run(out)
    (out / pio.RUN_MARKER).write_text("{}")
    pio.clear_previous_output(str(out))
    assert _files(out) == [pio.RUN_MARKER]
    assert not (out / "labels").exists() and not (out / "_staging").exists()


def test_clear_previous_output_of_a_crashed_run(tmp_path):
    """Killed during the final moves: some labels in place, the rest still staged."""
    out = tmp_path / "out"
    (out / "labels").mkdir(parents=True)
    write_pairs(out / "labels" / "part-00000-of-00002.parquet", [("stale", "a", "b")])
    (out / "_staging" / "labels" / "beam-temp-part-0").mkdir(parents=True)
    (out / "_staging" / "labels" / "beam-temp-part-0" / "x.part.parquet").write_bytes(b"PAR1")
    pio.check_output(str(out), overwrite=False)  # no _SUCCESS: not refused
    assert len(_files(out)) == 2
    pio.clear_previous_output(str(out))
    assert _files(out) == []


def test_clear_previous_output_of_an_empty_location(tmp_path):
    pio.clear_previous_output(str(tmp_path / "nothing-here"))
    pio.clear_previous_output(str(tmp_path))


# --- run marker ----------------------------------------------------------------------


def _iso(seconds_ago: float) -> str:
    t = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=seconds_ago)
    return f"{t:%Y-%m-%dT%H:%M:%SZ}"


def _plant(out, run_id="other-run", seconds_ago=5.0, **fields):
    """A marker as another launcher would have left it."""
    record = {"format": 1, "run_id": run_id, "started_at": _iso(seconds_ago),
              "host": socket.gethostname(), "pid": os.getpid(), "user": "someone",
              "argv": ["pairscore", "score"], "boot_id": pio._boot_id(),
              "pid_started": pio._pid_started(os.getpid())}
    record.update(fields)
    out.mkdir(parents=True, exist_ok=True)
    (out / pio.RUN_MARKER).write_text(json.dumps(record))
    return record


def _marker(out) -> dict:
    return json.loads((out / pio.RUN_MARKER).read_text())


def test_marker_records_the_run_and_release_removes_it(tmp_path):
    out = tmp_path / "out"
    argv = ["pairscore", "score", "--output", str(out), "--s3_secret_access_key", "hush",
            "--s3_session_token=hush"]
    marker = pio.acquire_run_marker(str(out), "run-1", 3600, argv=argv)
    record = _marker(out)
    assert record["run_id"] == "run-1" and marker.run_id == "run-1"
    assert record["host"] == socket.gethostname() and record["pid"] == os.getpid()
    assert record["user"]
    started = datetime.datetime.fromisoformat(record["started_at"])
    assert started.tzinfo is not None and record["started_at"].endswith("Z")
    assert abs((datetime.datetime.now(datetime.UTC) - started).total_seconds()) < 60
    assert record["argv"] == ["pairscore", "score", "--output", str(out),
                              "--s3_secret_access_key", "***", "--s3_session_token=***"]
    assert _files(out) == [pio.RUN_MARKER], "the temporary file was left behind"
    assert marker.release() is True
    assert not (out / pio.RUN_MARKER).exists()
    assert marker.release() is False


def test_second_run_on_the_same_output_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "out"
    first = pio.acquire_run_marker(str(out), "run-A", 3600)
    with pytest.raises(JobError) as err:
        pio.acquire_run_marker(str(out), "run-B", 3600)
    message = str(err.value)
    assert message.startswith(f"{out} is in use by run run-A started at ")
    assert f"on host {socket.gethostname()} (pid {os.getpid()}, user " in message
    assert f"delete {out / pio.RUN_MARKER} or pass --stale-run-after" in message
    assert _marker(out)["run_id"] == "run-A"
    first.release()
    pio.acquire_run_marker(str(out), "run-B", 3600).release()


def test_live_process_on_this_host_is_refused(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(["sleep", "60"])
    try:
        _plant(out, "sleeper", pid=proc.pid, pid_started=pio._pid_started(proc.pid))
        with pytest.raises(JobError, match=rf"in use by run sleeper .* \(pid {proc.pid}, "):
            pio.acquire_run_marker(str(out), "mine", 3600)
        assert _marker(out)["run_id"] == "sleeper"
    finally:
        proc.kill()
        proc.wait()
    # The same marker once that process is gone: taken over.
    marker = pio.acquire_run_marker(str(out), "mine", 3600)
    assert _marker(out)["run_id"] == "mine"
    marker.release()


def test_dead_pid_on_this_host_is_taken_over_with_a_warning(tmp_path, caplog):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    _plant(out, "crashed", pid=proc.pid, pid_started=None)
    with caplog.at_level(logging.WARNING, logger="pairscore.io"):
        marker = pio.acquire_run_marker(str(out), "mine", 3600)
    assert _marker(out)["run_id"] == "mine"
    assert f"taking over the run marker of run crashed (pid {proc.pid} is no longer alive" \
        in caplog.text
    marker.release()


def test_reused_pid_is_taken_over(tmp_path, caplog):
    """Our own pid, alive, but recorded with another start time: a process that died,
    whose pid the system has given to us since."""
    out = tmp_path / "out"
    if pio._pid_started(os.getpid()) is None:
        pytest.skip("no /proc here")
    _plant(out, "earlier", pid_started=pio._pid_started(os.getpid()) - 1)
    with caplog.at_level(logging.WARNING, logger="pairscore.io"):
        pio.acquire_run_marker(str(out), "mine", 3600).release()
    assert f"pid {os.getpid()} is now another process" in caplog.text


def test_reboot_since_the_marker_is_taken_over(tmp_path, caplog):
    out = tmp_path / "out"
    if pio._boot_id() is None:
        pytest.skip("no boot id here")
    _plant(out, "before-reboot", boot_id="another-boot")
    with caplog.at_level(logging.WARNING, logger="pairscore.io"):
        pio.acquire_run_marker(str(out), "mine", 3600).release()
    assert "this host has rebooted since" in caplog.text


def test_another_hosts_marker_is_live_until_stale_after(tmp_path, caplog):
    out = tmp_path / "out"
    _plant(out, "remote", seconds_ago=600, host="elsewhere.example", pid=1)
    with pytest.raises(JobError, match=r"in use by run remote .* on host elsewhere\.example"):
        pio.acquire_run_marker(str(out), "mine", 3600)
    with caplog.at_level(logging.WARNING, logger="pairscore.io"):
        marker = pio.acquire_run_marker(str(out), "mine", 300)
    assert "more than --stale-run-after 300 s" in caplog.text
    assert _marker(out)["run_id"] == "mine"
    marker.release()


def test_old_marker_is_taken_over_even_with_a_live_pid(tmp_path):
    out = tmp_path / "out"
    _plant(out, "ancient", seconds_ago=2 * 86400)  # our own, live pid
    pio.acquire_run_marker(str(out), "mine", pio.STALE_RUN_AFTER_S).release()


def test_unreadable_marker_is_taken_over(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / pio.RUN_MARKER).write_text("{not json")
    pio.acquire_run_marker(str(out), "mine", 3600).release()


def test_release_leaves_a_marker_that_is_no_longer_ours(tmp_path, caplog):
    out = tmp_path / "out"
    ours = pio.acquire_run_marker(str(out), "ours", 3600)
    # Judged stale meanwhile and taken over by another run.
    _plant(out, "theirs")
    with caplog.at_level(logging.WARNING, logger="pairscore.io"):
        assert ours.release() is False
    assert _marker(out)["run_id"] == "theirs"
    assert "now belongs to run theirs, not ours; left in place" in caplog.text


def test_marker_as_context_manager_releases(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), pio.acquire_run_marker(str(out), "ctx", 3600):
        assert (out / pio.RUN_MARKER).exists()
        raise RuntimeError("the job failed")
    assert not (out / pio.RUN_MARKER).exists()


def test_simultaneous_launches_one_wins(tmp_path):
    """Eight launchers released at the same instant: the local claim is atomic."""
    out = tmp_path / "out"
    barrier = threading.Barrier(8)
    won, refused = [], []

    def launch(i):
        barrier.wait()
        try:
            won.append(pio.acquire_run_marker(str(out), f"run-{i}", 3600))
        except JobError as e:
            refused.append(str(e))

    threads = [threading.Thread(target=launch, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 7, refused
    assert all(f"in use by run {won[0].run_id} " in r for r in refused)
    assert _marker(out)["run_id"] == won[0].run_id
    assert _files(out) == [pio.RUN_MARKER]


def test_negative_stale_after_is_refused(tmp_path):
    with pytest.raises(JobError, match=r"--stale-run-after -1 is negative"):
        pio.acquire_run_marker(str(tmp_path), "x", -1)


def test_marker_in_s3(s3):  # noqa: F811
    """Through Beam's S3 file system: claim, refuse a second run, release; and of two
    launchers writing within the settle time, the later one keeps the output."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    FileSystems.set_options(PipelineOptions(s3.flags()))
    out = f"s3://{BUCKET}/marker-test/out"
    key = f"marker-test/out/{pio.RUN_MARKER}"
    first = pio.acquire_run_marker(out, "s3-run-1", 3600, settle_s=0.0)
    assert json.loads(s3.get(key))["run_id"] == "s3-run-1"
    with pytest.raises(JobError, match=rf"{out} is in use by run s3-run-1 "):
        pio.acquire_run_marker(out, "s3-run-2", 3600, settle_s=0.0)
    pio.check_output(out, overwrite=False)
    pio.clear_previous_output(out)
    assert s3.keys("marker-test/") == [key]
    assert first.release() is True
    assert s3.keys("marker-test/") == []

    # Another launcher's write lands while this one waits to read its own back.
    later = threading.Timer(0.3, lambda: pio.write_text(
        join(out, pio.RUN_MARKER),
        json.dumps({"run_id": "s3-later", "started_at": _iso(0), "host": "other", "pid": 7}),
    ))
    later.start()
    with pytest.raises(JobError, match=r"in use by run s3-later .* on host other \(pid 7"):
        pio.acquire_run_marker(out, "s3-earlier", 3600, settle_s=1.5)
    later.join()
    assert json.loads(s3.get(key))["run_id"] == "s3-later"


# --- the run's identity on its runner: a detached Dataflow launch ---------------------

JOB_ID = "2025-06-01_01_00_00-1234567890"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _plant_dataflow(out, run_id="nightly", **fields):
    """The marker a detached Dataflow launch leaves on this host: the launcher's pid is
    dead (it exited at submission), the job runs on Dataflow."""
    record = {"pid": _dead_pid(), "pid_started": None, "runner": "DataflowRunner",
              "job_id": JOB_ID, "region": "us-central1", "project": "proj",
              "job_name": "pairscore-nightly", "submitted_at": _iso(5), **fields}
    return _plant(out, run_id, **record)


def _job_state(monkeypatch, state):
    """Fake the Dataflow API at its one boundary, `pio.dataflow_job_state`."""
    calls = []

    def ask(project, region, job_id, job_name=None):
        calls.append((project, region, job_id, job_name))
        if isinstance(state, Exception):
            raise state
        return state

    monkeypatch.setattr(pio, "dataflow_job_state", ask)
    return calls


@pytest.mark.parametrize("state", ["JOB_STATE_RUNNING", "JOB_STATE_PENDING",
                                   "JOB_STATE_QUEUED", "JOB_STATE_CANCELLING"])
def test_a_detached_dataflow_launch_is_live_while_its_job_runs(tmp_path, monkeypatch, state):
    out = tmp_path / "out"
    planted = _plant_dataflow(out)
    calls = _job_state(monkeypatch, state)
    with pytest.raises(JobError) as err:
        pio.acquire_run_marker(str(out), "mine", 3600)
    message = str(err.value)
    assert message.startswith(f"{out} is in use by run nightly started at ")
    assert f"Dataflow job {JOB_ID} (project proj, region us-central1) is {state}" in message
    assert calls == [("proj", "us-central1", JOB_ID, "pairscore-nightly")]
    assert _marker(out) == planted


@pytest.mark.parametrize("state", ["JOB_STATE_DONE", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED",
                                   "JOB_STATE_DRAINED", "JOB_STATE_UPDATED"])
def test_a_dataflow_runs_marker_is_taken_over_once_its_job_has_ended(tmp_path, monkeypatch,
                                                                      caplog, state):
    out = tmp_path / "out"
    _plant_dataflow(out, pid=os.getpid(), host="elsewhere.example")  # any host, any pid
    _job_state(monkeypatch, state)
    with caplog.at_level(logging.WARNING, logger="pairscore.io"):
        marker = pio.acquire_run_marker(str(out), "mine", 3600)
    assert _marker(out)["run_id"] == "mine"
    assert (f"taking over the run marker of run nightly (Dataflow job {JOB_ID} (project "
            f"proj, region us-central1) is {state})") in caplog.text
    marker.release()


@pytest.mark.parametrize("state", [None, "JOB_STATE_UNKNOWN", "JOB_STATE_SOMETHING_NEW",
                                   PermissionError("403 the caller may not read jobs")])
def test_a_dataflow_job_that_cannot_be_asked_is_taken_as_running(tmp_path, monkeypatch, state):
    out = tmp_path / "out"
    _plant_dataflow(out, seconds_ago=600)
    _job_state(monkeypatch, state)
    with pytest.raises(JobError) as err:
        pio.acquire_run_marker(str(out), "mine", 3600)
    message = str(err.value)
    assert f"Dataflow job {JOB_ID} (project proj, region us-central1)" in message
    if isinstance(state, Exception):
        assert "could not be asked (PermissionError: 403 the caller may not read jobs)" \
            in message
    assert "taken as still running" in message
    assert (f"gcloud dataflow jobs describe {JOB_ID} --project proj --region us-central1"
            in message)
    assert f"delete {out / pio.RUN_MARKER} or pass --stale-run-after" in message
    # What the message offers works: a --stale-run-after below the marker's age.
    pio.acquire_run_marker(str(out), "mine", 300).release()


def test_a_template_launch_is_asked_for_by_its_job_name(tmp_path, monkeypatch):
    """A Flex Template launcher writes the job for Dataflow to submit: it never learns the
    job id, only the job's name."""
    out = tmp_path / "out"
    _plant_dataflow(out, job_id=None)
    calls = _job_state(monkeypatch, "JOB_STATE_RUNNING")
    with pytest.raises(JobError, match=r"Dataflow job named pairscore-nightly \(project proj, "
                                       r"region us-central1\) is JOB_STATE_RUNNING"):
        pio.acquire_run_marker(str(out), "mine", 3600)
    assert calls == [("proj", "us-central1", None, "pairscore-nightly")]


def test_a_dataflow_launch_that_died_before_submitting_is_taken_over(tmp_path, monkeypatch,
                                                                      caplog):
    """No job recorded yet: the launcher was still submitting, so its pid is the run's."""
    out = tmp_path / "out"
    planted = _plant_dataflow(out, job_id=None, job_name=None, submitted_at=None)
    calls = _job_state(monkeypatch, "JOB_STATE_RUNNING")
    with caplog.at_level(logging.WARNING, logger="pairscore.io"):
        pio.acquire_run_marker(str(out), "mine", 3600).release()
    assert f"pid {planted['pid']} is no longer alive on this host" in caplog.text
    assert calls == []


def test_a_job_submitted_to_a_runner_that_cannot_be_asked_is_live_until_stale(tmp_path):
    out = tmp_path / "out"
    _plant(out, "flink-run", seconds_ago=600, pid=_dead_pid(), pid_started=None,
           runner="FlinkRunner", submitted_at=_iso(590))
    with pytest.raises(JobError, match=r"in use by run flink-run .*submitted to FlinkRunner"):
        pio.acquire_run_marker(str(out), "mine", 3600)
    pio.acquire_run_marker(str(out), "mine", 300).release()


def test_record_submission_keeps_the_run_and_adds_its_job(tmp_path):
    out = tmp_path / "out"
    marker = pio.acquire_run_marker(str(out), "run-1", 3600, runner="DataflowRunner")
    before = _marker(out)
    assert before["runner"] == "DataflowRunner" and before["job_id"] is None
    assert pio.record_submission(str(out), "run-1", "DataflowRunner", job_id=JOB_ID,
                                 region="us-central1", project="proj", job_name="n") is True
    after = _marker(out)
    assert {k: after[k] for k in before if k not in pio.RunMarker.JOB_FIELDS} == \
        {k: before[k] for k in before if k not in pio.RunMarker.JOB_FIELDS}
    assert (after["job_id"], after["region"], after["project"], after["job_name"]) == (
        JOB_ID, "us-central1", "proj", "n")
    assert after["submitted_at"].endswith("Z")
    assert _files(out) == [pio.RUN_MARKER]
    # Another run's marker is never rewritten.
    _plant(out, "theirs")
    assert pio.record_submission(str(out), "run-1", "DataflowRunner", job_id="x") is False
    assert _marker(out)["run_id"] == "theirs" and "job_id" not in _marker(out)
    marker.release()


def test_dataflow_job_state_asks_the_dataflow_api(monkeypatch):
    """The boundary itself, against a fake of the google-cloud-dataflow client Beam ships."""
    from google.cloud import dataflow

    asked = []

    class Jobs:
        def get_job(self, request, timeout=None):
            asked.append(("get", request.project_id, request.location, request.job_id))
            return dataflow.Job(id=request.job_id, name="n",
                                current_state=dataflow.JobState.JOB_STATE_RUNNING)

        def list_jobs(self, request, timeout=None):
            asked.append(("list", request.project_id, request.location))
            return [dataflow.Job(id="new", name="other",
                                 current_state=dataflow.JobState.JOB_STATE_RUNNING),
                    dataflow.Job(id="mid", name="n",
                                 current_state=dataflow.JobState.JOB_STATE_DONE),
                    dataflow.Job(id="old", name="n",
                                 current_state=dataflow.JobState.JOB_STATE_RUNNING)]

    monkeypatch.setattr(dataflow, "JobsV1Beta3Client", Jobs)
    assert pio.dataflow_job_state("proj", "eu", JOB_ID) == "JOB_STATE_RUNNING"
    assert pio.dataflow_job_state("proj", "eu", None, "n") == "JOB_STATE_DONE"  # the newest
    assert pio.dataflow_job_state("proj", "eu", None, "absent") is None
    assert asked == [("get", "proj", "eu", JOB_ID), ("list", "proj", "eu"),
                     ("list", "proj", "eu")]


# --- counting what was written, distinct ids ------------------------------------------


def _labels(path, ids, id_type):
    n = len(ids)
    pq.write_table(pa.table({
        "pair_id": pa.array(ids, id_type),
        "score": pa.array([0.5] * n, pa.float32()),
        "is_duplicate": pa.array([i % 2 == 0 for i in range(n)]),
    }), path)
    return str(path)


def _assert_distinct_ids(tables, buckets, want):
    """stages.CountDistinctIds in a real Beam pipeline gives `want`."""
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from pipeline import stages

    with beam.Pipeline("FnApiRunner") as p:
        count = p | beam.Create(tables) | stages.CountDistinctIds("pair_id", buckets)
        assert_that(count, equal_to([want]))


def test_distinct_ids_are_exact_where_python_hashes_collide():
    assert hash(-1) == hash(-2)  # why hash() could not count them
    table = pa.table({"pair_id": pa.array([-1, -2], pa.int64())})
    _assert_distinct_ids([table], 1, 2)
    _assert_distinct_ids([table, table], 3, 2)


@pytest.mark.parametrize("id_type", [pa.int64(), pa.int32(), pa.string(), pa.large_string(),
                                     pa.binary(), pa.float64()])
def test_distinct_ids_across_tables_and_buckets(id_type):
    def ids(values):
        if pa.types.is_binary(id_type):
            return [str(v).encode() for v in values]
        if pa.types.is_string(id_type) or pa.types.is_large_string(id_type):
            return [str(v) for v in values]
        return values

    tables = [pa.table({"pair_id": pa.array(ids(v), id_type)})
              for v in ([-1, -2, 3, 3], [3, 4, -1], [])]
    for buckets in (1, 2, 7):
        _assert_distinct_ids(tables, buckets, 4)


def test_distinct_ids_of_many_overlapping_tables():
    tables = [pa.table({"pair_id": pa.array(range(i, i + 50), pa.int64())})
              for i in range(0, 400, 25)]
    _assert_distinct_ids(tables, 5, 375 + 50)


def test_no_labels_count_no_ids():
    _assert_distinct_ids([], 2, 0)


def test_count_written_reads_footers_and_reasons(tmp_path):
    from pipeline import publish

    files = [_labels(tmp_path / "a.parquet", [1, 2, 3, 3], pa.int64()),
             _labels(tmp_path / "b.parquet", [], pa.int64())]
    rejects = tmp_path / "r.parquet"
    pq.write_table(pa.table({"pair_id": ["x", "y", "z"],
                             "reason": ["null_text", "empty_text", "null_text"]}), rejects)
    tally = publish.count_written(files, [str(rejects)])
    assert (tally.scored, tally.rejected) == (4, 3)
    assert tally.by_reason == {"null_text": 2, "empty_text": 1}
    assert publish.count_written([], []) == publish.Tally()
