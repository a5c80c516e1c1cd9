"""Storage around the job: the input scan and checks before any work, the output's
layout, check and clearing, the run marker, and reading the pinned input.

Everything goes through Beam's `FileSystems`, so local paths, gs:// and s3:// behave alike.

While the job runs, Beam writes under OUT/_staging/RUN_ID/ (a leading underscore hides it
from Parquet dataset readers such as pyarrow, Spark and Hive). The pipeline's last step
(`pipeline.publish`) moves the files to OUT/labels/, OUT/rejects/ (and OUT/groups/) once
the rows add up, then writes summary.json and _SUCCESS.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import functools
import getpass
import json
import logging
import os
import posixpath
import socket
import sys
import time
import uuid

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import parquetio
from apache_beam.io.filesystems import FileSystems

from model import storage
from model.storage import join
from pipeline.validate import decode_dictionaries, decode_schema

storage.share()

LABELS = "labels"
REJECTS = "rejects"
GROUPS = "groups"
GROUP_CHANGES = "group_changes"
REVIEW = "review"
SAMPLE = "sample"
REPORT = "report.html"
SUMMARY = "summary.json"
SUCCESS = "_SUCCESS"
STAGING = "_staging"

log = logging.getLogger("pairscore.io")


class JobError(Exception):
    """A problem found before or after the job that the user must fix; exit non-zero."""


class JobGated(JobError):
    """The job ran, but a gate held its output back (exit GATED_EXIT): summary.json and
    report.html say which gate, with the figures; `pairscore publish OUT --accept`."""


# `pairscore score`'s exit status when a gate held the run back (2 is bad input).
GATED_EXIT = 3


@dataclasses.dataclass
class InputScan:
    files: list[str]
    schema: pa.Schema
    rows: int
    file_rows: list[int] = dataclasses.field(default_factory=list)  # rows per file


def _footer(path: str) -> tuple[pa.Schema, int]:
    try:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            meta = pq.ParquetFile(f).metadata
            return meta.schema.to_arrow_schema(), meta.num_rows
    except Exception as e:  # noqa: BLE001  (pyarrow raises several types for bad files)
        raise JobError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None


def scan_inputs(pattern: str) -> InputScan:
    """Match the input pattern and read every file's footer: schema and row count.

    The schema is reported with dictionary-encoded columns (pandas categoricals) as
    their value type, as `ReadPairs` delivers them. Fails, naming the file, on a pattern
    that matches nothing, a file that is not Parquet, or schemas that disagree.
    """
    try:
        matched = FileSystems.match([pattern])[0].metadata_list
    except Exception as e:  # noqa: BLE001  (BeamIOError wraps the scheme's errors)
        raise JobError(f"input {pattern}: cannot list files ({e})") from None
    files = sorted(m.path for m in matched if not m.path.endswith("/"))
    if not files:
        if not any(c in pattern for c in "*?["):
            raise JobError(f"input {pattern} does not exist")
        raise JobError(f"input pattern {pattern} matches no files")
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        footers = list(pool.map(_footer, files))
    # Compared as the tables will be seen (`ReadPairs` decodes dictionaries), so that a
    # categorical column in one file matches a plain one in another.
    schema, rows = footers[0][0], 0
    decoded = decode_schema(schema.remove_metadata())
    for path, (other, n) in zip(files, footers, strict=True):
        rows += n
        if not decode_schema(other.remove_metadata()).equals(decoded):
            raise JobError(
                f"{path}: schema differs from {files[0]}:\n  {files[0]}: "
                f"{_describe(schema)}\n  {path}: {_describe(other)}"
            )
    return InputScan(files, decoded, rows, [n for _, n in footers])


def _describe(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in schema)


def check_columns(
    schema: pa.Schema, source: str, id_column: str, text_columns: tuple[str, str],
    keep_columns: list[str],
) -> None:
    names = schema.names
    for col in [id_column, *text_columns, *keep_columns]:
        if col not in names:
            raise JobError(
                f"{source}: required column {col!r} is missing; columns found: {', '.join(names)}"
            )
    for col in text_columns:
        t = schema.field(col).type
        # Dictionary-encoded strings (pandas categoricals) are strings once decoded.
        plain = t.value_type if pa.types.is_dictionary(t) else t
        if not (
            pa.types.is_string(plain) or pa.types.is_large_string(plain) or pa.types.is_null(t)
        ):
            raise JobError(f"{source}: text column {col!r} has type {t}, expected a string type")


def check_output(output: str, overwrite: bool) -> None:
    """Refuse a finished output without --overwrite and prove the location writable.

    Deletes nothing but its own probe, so that it can run with the other checks, before
    the run marker is taken (`acquire_run_marker`) and the output cleared
    (`clear_previous_output`). The probe's name is unique to this call, so that two
    launchers checking the same output do not delete each other's probe.
    """
    if FileSystems.exists(join(output, SUCCESS)) and not overwrite:
        raise JobError(
            f"{output} already holds a finished run ({SUCCESS} exists); "
            "pass --overwrite to replace it"
        )
    probe = join(output, f".pairscore-write-check-{uuid.uuid4().hex}")
    try:
        with FileSystems.create(probe) as f:
            f.write(b"ok")
        FileSystems.delete([probe])
    except Exception as e:  # noqa: BLE001
        raise JobError(f"output location {output} is not writable ({e})") from None


def clear_previous_output(output: str) -> None:
    """Delete what an earlier (finished or crashed) run left, so that no stale file
    survives: _SUCCESS, summary.json, report.html, labels/, rejects/, groups/,
    group_changes/, review/, sample/ and _staging/. Leaves the run marker alone; call it
    only while holding that marker."""
    # _SUCCESS first, so that a reader never sees it beside a half-cleared output; then
    # files before the directories holding them.
    stale = [join(output, SUCCESS), join(output, SUMMARY), join(output, REPORT)]
    kinds = (LABELS, REJECTS, GROUPS, GROUP_CHANGES, REVIEW, SAMPLE, STAGING)
    for kind in kinds:
        stale += [m.path for m in _match(join(output, kind, "*"))]
    stale += [join(output, kind) for kind in kinds]
    for path in stale:
        if not (FileSystems.exists(path) or FileSystems.exists(path + "/")):
            continue
        try:
            FileSystems.delete([path])
        except Exception as e:  # noqa: BLE001
            if FileSystems.exists(path):
                raise JobError(f"{output}: cannot clear the previous run's {path} ({e})") from None


RUN_MARKER = "_RUN.json"
STALE_RUN_AFTER_S = 86400.0
DATAFLOW = "DataflowRunner"
# Runners that run the job inside the launcher's process (p.run() returns once the job is
# over, --detach or not): the launcher's pid, boot and pid start time are the run's.
IN_PROCESS_RUNNERS = frozenset(
    {"", "FnApiRunner", "DirectRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner"})
# Dataflow job states after which the job writes nothing more (the API's names).
DATAFLOW_ENDED = frozenset({"JOB_STATE_DONE", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED",
                            "JOB_STATE_DRAINED", "JOB_STATE_UPDATED"})
# States of a job that is, or may yet be, running; any other answer is "unknown".
DATAFLOW_LIVE = frozenset({"JOB_STATE_RUNNING", "JOB_STATE_PENDING", "JOB_STATE_QUEUED",
                           "JOB_STATE_STOPPED", "JOB_STATE_DRAINING", "JOB_STATE_CANCELLING",
                           "JOB_STATE_RESOURCE_CLEANING_UP", "JOB_STATE_PAUSING",
                           "JOB_STATE_PAUSED"})
DATAFLOW_TIMEOUT_S = 30.0
# Object stores: how long a launcher waits between writing its marker and reading it
# back, so that another launcher's write racing its own shows up in the read-back.
REMOTE_SETTLE_S = 2.0
# Flags whose values are secrets, kept out of the marker's argv.
_SECRET_FLAG_WORDS = ("secret", "password", "token", "access_key", "credential")


@dataclasses.dataclass
class RunMarker:
    """OUT/_RUN.json: which run is writing OUT. The leading underscore keeps Parquet
    dataset readers away; `clear_previous_output` and `publish` leave it alone."""

    path: str
    run_id: str
    started_at: str  # UTC, ISO 8601 ("2025-01-31T12:00:00Z")
    host: str
    pid: int
    user: str
    argv: list[str]
    boot_id: str | None = None  # Linux: tells a reboot (pids start over) from a live pid
    pid_started: int | None = None  # Linux: the pid's start time, tells a reused pid
    # Where the job runs (`record_submission` adds the job once it is submitted): on a
    # runner outside the launcher, liveness asks the runner, not the launcher's pid.
    runner: str | None = None  # "FnApiRunner", "DataflowRunner", ...
    job_id: str | None = None  # Dataflow's job id (none for a template launch)
    region: str | None = None
    project: str | None = None
    job_name: str | None = None  # Dataflow's job name: how a template launch is found
    submitted_at: str | None = None  # UTC, when the job was handed to its runner
    released: bool = dataclasses.field(default=False, compare=False)

    JOB_FIELDS = ("runner", "job_id", "region", "project", "job_name", "submitted_at")
    FIELDS = ("run_id", "started_at", "host", "pid", "user", "argv", "boot_id", "pid_started",
              *JOB_FIELDS)

    def to_json(self) -> bytes:
        record = {"format": 1, **{k: getattr(self, k) for k in self.FIELDS}}
        return (json.dumps(record, indent=2) + "\n").encode()

    def release(self) -> bool:
        """Delete the marker if it is still ours; True if it was deleted. A marker
        another run took over (ours was judged stale) is left to that run."""
        if self.released:
            return False
        self.released = True
        return _release(self.path, self.run_id, quiet_if_gone=False)

    def __enter__(self) -> RunMarker:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _release(path: str, run_id: str, quiet_if_gone: bool) -> bool:
    current = _read_marker(path)
    if current is None:
        if not quiet_if_gone:
            log.warning("run marker %s is gone; nothing to release", path)
        return False
    if current.get("run_id") != run_id:
        log.warning("run marker %s now belongs to run %s, not %s; left in place",
                    path, current.get("run_id"), run_id)
        return False
    FileSystems.delete([path])
    return True


def release_run_marker(output: str, run_id: str) -> bool:
    """Release run `run_id`'s marker on OUT from anywhere (the pipeline's last step):
    deleted if it is still that run's; gone already (a retried step) is not an error."""
    return _release(join(output, RUN_MARKER), run_id, quiet_if_gone=True)


class OutputTakenOver(JobError):
    """The run marker no longer names this run: another run holds the output (or the
    marker was deleted by hand), so this run publishes nothing."""


def check_owner(output: str, run_id: str) -> None:
    """Raise OutputTakenOver unless OUT/_RUN.json still names run `run_id`: the final
    step asks just before it moves files or writes summary.json and _SUCCESS.

    A marker that is gone counts as ours only when summary.json names this run: its own
    earlier attempt wrote the outcome and released the marker (a retried step), and no
    other run has started since (a run clears summary.json once it holds the marker).
    """
    path = join(output, RUN_MARKER)
    record = _read_marker(path)
    if record is not None and record.get("run_id") == run_id:
        return
    kept = f"run {run_id} published nothing; its files stay in {staging(output, run_id)}"
    if record is None:
        summary = read_summary(output)
        if summary is not None and summary.get("run_id") == run_id:
            return
        raise OutputTakenOver(
            f"{output}: the run marker {path} is gone (deleted by hand?), so this run no "
            f"longer holds the output: {kept}; score it again")
    raise OutputTakenOver(
        f"{output} is now held by run {record.get('run_id', '?')} ({_holder(record)}), "
        f"which took it over from this run: {kept}; the other run's output is left as "
        "it is")


def _holder(record: dict) -> str:
    """Who holds a marker, for messages: the run's job on its runner, and its launcher."""
    launcher = (f"launched {record.get('started_at', '?')} on host {record.get('host', '?')}"
                f", pid {record.get('pid', '?')}, user {record.get('user', '?')}")
    if record.get("runner") == DATAFLOW and (record.get("job_id") or record.get("job_name")):
        return f"{_dataflow_job(record)}, {launcher}"
    return launcher


def record_submission(output: str, run_id: str, runner: str, job_id: str | None = None,
                      region: str | None = None, project: str | None = None,
                      job_name: str | None = None) -> bool:
    """Rewrite run `run_id`'s marker once its job is submitted to `runner`, keeping the
    run and its launcher, adding the job: from then on the marker's liveness asks the
    runner (a --detach launcher exits at submission; its dead pid says nothing). Returns
    False, with a warning, when the marker is no longer that run's (left as it is)."""
    path = join(output, RUN_MARKER)
    record = _read_marker(path)
    if not record or record.get("run_id") != run_id:
        log.warning("run marker %s no longer names run %s; its job is not recorded there",
                    path, run_id)
        return False
    record.update(runner=runner, job_id=job_id, region=region, project=project,
                  job_name=job_name, submitted_at=f"{_now():%Y-%m-%dT%H:%M:%SZ}")
    data = (json.dumps(record, indent=2) + "\n").encode()
    if "://" in output:
        with FileSystems.create(path) as f:
            f.write(data)
        return True
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"  # written aside, replaced in one step
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return True


def dataflow_job_state(project: str | None, region: str | None, job_id: str | None,
                       job_name: str | None = None) -> str | None:
    """The Dataflow job's current state as the API names it ("JOB_STATE_RUNNING"): the
    job `job_id`, or without one (a template launch) the newest job named `job_name`;
    None when there is no such job by name. Raises whatever the client raises (no
    credentials, no permission, no such job id): the one place pairscore asks Dataflow,
    through the google-cloud-dataflow client that Beam's Dataflow runner uses."""
    from google.cloud import dataflow

    client = dataflow.JobsV1Beta3Client()
    if job_id:
        job = client.get_job(request=dataflow.GetJobRequest(
            project_id=project, location=region, job_id=job_id,
            view=dataflow.JobView.JOB_VIEW_SUMMARY), timeout=DATAFLOW_TIMEOUT_S)
        return dataflow.JobState(job.current_state).name
    jobs = client.list_jobs(request=dataflow.ListJobsRequest(
        project_id=project, location=region, filter=dataflow.ListJobsRequest.Filter.ALL),
        timeout=DATAFLOW_TIMEOUT_S)
    for job in jobs:  # newest first
        if job.name == job_name:
            return dataflow.JobState(job.current_state).name
    return None


def _dataflow_job(record: dict) -> str:
    which = (f"Dataflow job {record['job_id']}" if record.get("job_id")
             else f"Dataflow job named {record.get('job_name')}")
    return f"{which} (project {record.get('project')}, region {record.get('region')})"


def _ask_dataflow(record: dict) -> tuple[str | None, str]:
    """(why the marker's Dataflow job is over, or None; what Dataflow said)."""
    job = _dataflow_job(record)
    try:
        state = dataflow_job_state(record.get("project"), record.get("region"),
                                   record.get("job_id"), record.get("job_name"))
    except Exception as e:  # noqa: BLE001  (credentials, permissions, network: unknown)
        said = f"could not be asked ({type(e).__name__}: {e})"
    else:
        if state in DATAFLOW_ENDED:
            return f"{job} is {state}", ""
        if state in DATAFLOW_LIVE:
            return None, f"{job} is {state}"
        said = f"is {state}" if state else "was not found"
    if record.get("job_id"):
        check = (f"`gcloud dataflow jobs describe {record['job_id']} --project "
                 f"{record.get('project')} --region {record.get('region')}`")
    else:
        check = (f"`gcloud dataflow jobs list --project {record.get('project')} --region "
                 f"{record.get('region')} --filter name={record.get('job_name')}`")
    return None, f"{job} {said}: taken as still running; check it with {check}"


def new_run_id() -> str:
    return f"{_now():%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def acquire_run_marker(
    output: str,
    run_id: str | None = None,
    stale_after_s: float = STALE_RUN_AFTER_S,
    argv: list[str] | None = None,
    settle_s: float | None = None,
    runner: str | None = None,
) -> RunMarker:
    """Claim OUT for this run by writing OUT/_RUN.json, or raise JobError naming the
    run that holds it.

    A marker is stale, and taken over with a warning, when it is older than
    `stale_after_s` (--stale-run-after); otherwise its runner decides. A run whose job
    was submitted to Dataflow (`record_submission`) is over once Dataflow says the job
    has ended (`dataflow_job_state`: done, failed, cancelled, drained, updated); any
    other answer, or none, counts as running. A job submitted to another runner that
    runs it elsewhere cannot be asked: live until old. A run on a local runner, or
    still being submitted, is the launcher's process: over when it was left on this
    host by a process that is gone (the pid is not alive, or it now belongs to a process
    started later, or the host rebooted since); from another host it is live until old.

    Local paths are claimed atomically (a hard link, which fails if the marker exists).
    Beam's FileSystems have no create-if-absent for object stores (gs://, s3://): there
    the marker is written, read back after `settle_s` (default REMOTE_SETTLE_S) and
    kept only if it is still ours, so that of two launchers racing within that time the
    later writer wins and the other stops. Two launchers taking over the same stale
    marker at the same moment can still both proceed; that needs a dead run and two
    restarts within about a second of each other.
    """
    if stale_after_s < 0:
        raise JobError(f"--stale-run-after {stale_after_s} is negative")
    path = join(output, RUN_MARKER)
    local = "://" not in output
    mine = _this_process(path, run_id or new_run_id(), argv)
    mine.runner = runner
    for _ in range(3):
        existing = _read_marker(path)
        if existing is not None:
            why, said = _liveness(existing, stale_after_s)
            if why is None:
                raise JobError(_in_use(output, path, existing, stale_after_s, said))
            log.warning(
                "%s: taking over the run marker of run %s (%s)",
                output,
                existing.get("run_id", "?"),
                why,
            )
            try:
                FileSystems.delete([path])
            except Exception:  # noqa: BLE001  (another launcher took it over first)
                if _read_marker(path) == existing:
                    raise
        if _create(path, mine.to_json(), local):
            break
    else:
        raise JobError(f"{output}: cannot claim {path}: other runs keep replacing it")
    if not local:
        time.sleep(REMOTE_SETTLE_S if settle_s is None else settle_s)
    back = _read_marker(path)
    if back is None or back.get("run_id") != mine.run_id:
        raise JobError(
            _in_use(output, path, back, stale_after_s)
            if back
            else f"{output}: the run marker {path} vanished after it was written"
        )
    return mine


def _this_process(path: str, run_id: str, argv: list[str] | None) -> RunMarker:
    pid = os.getpid()
    return RunMarker(
        path=path,
        run_id=run_id,
        started_at=f"{_now():%Y-%m-%dT%H:%M:%SZ}",
        host=socket.gethostname(),
        pid=pid,
        user=_user(),
        argv=_redact(list(sys.argv if argv is None else argv)),
        boot_id=_boot_id(),
        pid_started=_pid_started(pid),
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001  (no login name, e.g. a container's bare uid)
        return str(os.getuid()) if hasattr(os, "getuid") else "?"


def _redact(argv: list[str]) -> list[str]:
    out, hide_next = [], False
    for token in argv:
        if hide_next and not token.startswith("--"):
            out.append("***")
            hide_next = False
            continue
        hide_next = False
        name, eq, _ = token.partition("=")
        secret = name.startswith("--") and any(w in name.lower() for w in _SECRET_FLAG_WORDS)
        if secret and eq:
            out.append(f"{name}=***")
        else:
            out.append(token)
            hide_next = secret
    return out


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _pid_started(pid: int) -> int | None:
    """Linux: the process's start time in clock ticks since boot, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        # Field 22, counted after the command name, which may hold spaces and ')'.
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _read_marker(path: str, attempts: int = 3) -> dict | None:
    """The marker's record; None when there is none; {} when it is unreadable."""
    try:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            data = f.read()
    except Exception:  # noqa: BLE001  (BeamIOError wraps each scheme's not-found)
        if not FileSystems.exists(path):
            return None
        if attempts > 1:  # another launcher created it between the open and the check
            return _read_marker(path, attempts - 1)
        raise
    try:
        record = json.loads(data)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _create(path: str, data: bytes, local: bool) -> bool:
    """Write the marker; False if a local marker appeared meanwhile (lost the race)."""
    if not local:
        with FileSystems.create(path) as f:
            f.write(data)
        return True
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # Written aside, then linked into place: atomic, and never seen half written.
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    finally:
        os.unlink(tmp)


def _age_s(record: dict) -> float | None:
    try:
        started = datetime.datetime.fromisoformat(str(record["started_at"]))
    except (KeyError, ValueError):
        return None
    if started.tzinfo is None:
        started = started.replace(tzinfo=datetime.UTC)
    return max(0.0, (_now() - started).total_seconds())


def _stale_because(record: dict, stale_after_s: float) -> str | None:
    """Why the marker's run is over, or None if it may still be running."""
    return _liveness(record, stale_after_s)[0]


def _liveness(record: dict, stale_after_s: float) -> tuple[str | None, str]:
    """(why the marker's run is over, or None if it may still be running; what its
    runner said, for the message refusing the output)."""
    age = _age_s(record)
    if age is None:
        return "the marker is unreadable or has no start time", ""
    if age > stale_after_s:
        return (f"started {age:.0f} s ago, more than --stale-run-after {stale_after_s:g} s",
                "")
    runner = record.get("runner") or ""
    if runner == DATAFLOW and (record.get("job_id") or record.get("job_name")):
        return _ask_dataflow(record)
    if record.get("submitted_at") and runner not in IN_PROCESS_RUNNERS:
        return None, (f"its job was submitted to {runner} at {record['submitted_at']}, "
                      "which pairscore cannot ask: taken as still running")
    return _launcher_gone_because(record), ""


def _launcher_gone_because(record: dict) -> str | None:
    """Why the launcher's process, which runs the job, is gone; None if it may be alive."""
    if record.get("host") != socket.gethostname() or os.name != "posix":
        return None  # another machine's pid tells nothing here
    boot_id, here = record.get("boot_id"), _boot_id()
    if boot_id and here and boot_id != here:
        return "this host has rebooted since"
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return "the marker has no valid pid"
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return f"pid {pid} is no longer alive on this host"
    except PermissionError:
        pass  # alive, another user's
    started = record.get("pid_started")
    now_started = _pid_started(pid)
    if isinstance(started, int) and now_started is not None and now_started != started:
        return f"pid {pid} is now another process"
    return None


def _in_use(output: str, path: str, record: dict, stale_after_s: float,
            said: str = "") -> str:
    age = _age_s(record)
    ago = f", {age:.0f} s ago" if age is not None else ""
    if said:  # its runner was asked, or cannot be
        how = (f"{said}; if that run is over, delete {path} or pass --stale-run-after with "
               f"fewer seconds than its age (now {stale_after_s:g})")
    else:
        how = (f"if that run is dead, delete {path} or pass --stale-run-after with fewer "
               f"seconds than its age (now {stale_after_s:g}; a marker left on this host by "
               "a dead pid is taken over at once)")
    return (
        f"{output} is in use by run {record.get('run_id', '?')} started at "
        f"{record.get('started_at', '?')}{ago} on host {record.get('host', '?')} "
        f"(pid {record.get('pid', '?')}, user {record.get('user', '?')}); {how}"
    )


def _match(pattern: str) -> list:
    try:
        return FileSystems.match([pattern])[0].metadata_list
    except Exception:  # noqa: BLE001  (no such directory)
        return []


def staging(output: str, run_id: str) -> str:
    """Where run `run_id` writes: OUT/_staging/RUN_ID/. The final stage
    (`pipeline.publish`) moves the files into place once they add up."""
    return join(output, STAGING, run_id)


class _ParquetSource(parquetio._ParquetSource):
    """Beam's Parquet source, whose read errors name the file (pyarrow's do not)."""

    def read_records(self, file_name, range_tracker):
        try:
            for table in super().read_records(file_name, range_tracker):
                yield decode_dictionaries(table)
        except Exception as e:  # noqa: BLE001  (pyarrow raises several types for bad data)
            raise InputReadError(
                f"{file_name}: cannot read Parquet data ({type(e).__name__}: {e})"
            ) from e


class InputReadError(IOError):
    """An input file passed the footer check but its data cannot be read."""


class ReadPairs(beam.PTransform):
    """The input files matched at launch, read as pyarrow Tables (one per row group,
    files split into ranges across workers), naming the file in read errors (a footer can
    be fine while a data page is corrupt) and with dictionary columns decoded
    (`validate.decode_dictionaries`), as `scan_inputs` reports them.

    Reading the list resolved at launch, not the glob again, pins the input: a file that
    lands in the glob while the job runs is neither read nor counted."""

    DESIRED_BUNDLE_SIZE = 64 << 20

    def __init__(self, files: list[str] | str):
        super().__init__()
        self.files = [files] if isinstance(files, str) else list(files)

    def expand(self, pbegin):
        from apache_beam.io import filebasedsource
        from apache_beam.io.filesystem import CompressionTypes

        read = filebasedsource.ReadAllFiles(
            True, CompressionTypes.UNCOMPRESSED, self.DESIRED_BUNDLE_SIZE, 0,
            functools.partial(_ParquetSource, min_bundle_size=0), False)
        return pbegin | "Files" >> beam.Create(self.files) | "Read" >> read


def write_text(path: str, text: str) -> None:
    with FileSystems.create(path) as f:
        f.write(text.encode())


def write_json(path: str, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/"))


def read_summary(output: str) -> dict | None:
    """OUT/summary.json, or None when the run wrote none."""
    path = join(output, SUMMARY)
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as f:
        return json.loads(f.read())
