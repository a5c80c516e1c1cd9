"""The job's last step, inside the pipeline: count what was written, check it, publish.

Run by `stages.Finalize` once both writes have finished (their written-file lists are its
side inputs), on whichever runner, so a job completes even when the process that
launched it is gone (a scheduler that submits and moves on)::

    count   rows in the written label files (Parquet footers), rejects by reason
    check   rows_in == scored + rejected; model errors within --max-model-error-ratio
    commit  the run's embedding-store generation (--embedding-store)
    publish OUT/_staging/RUN_ID/{labels,rejects}/* -> OUT/{labels,rejects}/
    write   OUT/summary.json, then OUT/_SUCCESS; release the run marker

Only while the run marker (OUT/_RUN.json) still names this run: it is read again
before the commit, before each batch of moves and before summary.json and _SUCCESS;
a run another run took the output from publishes nothing (`pio.OutputTakenOver`).

Idempotent: a runner may run the step again (a worker lost mid-step). Each written file is
looked for where it is staged, then where it is published, so a retry after some files
moved counts and moves the rest; summary.json and _SUCCESS are simply written again.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from model.storage import join
from pipeline import io as pio
from pipeline import monitor
from pipeline.validate import MODEL_ERROR

log = logging.getLogger("pairscore.publish")
PUBLISHED = "published"
WITHHELD = "withheld"
GATED = "gated"


class RunWithheld(RuntimeError):
    """The written rows do not add up, or too many failed in the model: summary.json says
    why; the output stays staged and no _SUCCESS is written."""


class RunGated(RunWithheld):
    """A gate tripped (--max-score-psi, ...): summary.json and report.html say which,
    with the figures; the output stays staged until `pairscore publish OUT --accept`."""


@dataclasses.dataclass
class Tally:
    scored: int = 0
    rejected: int = 0
    by_reason: dict = dataclasses.field(default_factory=dict)


def published_path(output: str, staged: str) -> str:
    """OUT/<kind>/<name> for OUT/_staging/<run>/<kind>/<name>."""
    kind = staged.rstrip("/").split("/")[-2]
    return join(output, kind, pio.basename(staged))


def locate(output: str, staged: str) -> str:
    """Where a written file is now: still staged, or published by an earlier attempt."""
    if FileSystems.exists(staged):
        return staged
    target = published_path(output, staged)
    if FileSystems.exists(target):
        return target
    raise FileNotFoundError(f"{staged}: written by the job, now neither staged nor at {target}")


def _open(path: str):
    return FileSystems.open(path, compression_type="uncompressed")


def count_written(label_files: list[str], reject_files: list[str]) -> Tally:
    """Rows in the label files (from their footers) and rejects per reason."""
    tally = Tally()
    for path in label_files:
        with _open(path) as f:
            tally.scored += pq.ParquetFile(f).metadata.num_rows
    for path in reject_files:
        with _open(path) as f:
            reasons = pq.read_table(f, columns=["reason"])["reason"]
        tally.rejected += len(reasons)
        for item in pc.value_counts(reasons.combine_chunks()).to_pylist():
            tally.by_reason[item["values"]] = tally.by_reason.get(item["values"], 0) + item[
                "counts"]
    return tally


# Files moved per rename call; the run marker is read again before each call.
PUBLISH_CHUNK = 16


def publish_files(output: str, staged: list[str], owner: str | None = None) -> None:
    """Move each staged file to its published place; a file already there (an earlier
    attempt moved it) is left as it is. With `owner`, the run marker must still name
    that run just before each batch of moves (`pio.check_owner`), else nothing more
    moves."""
    sources = [p for p in staged if FileSystems.exists(p)]
    targets = [published_path(output, p) for p in sources]
    if owner is not None:
        pio.check_owner(output, owner)
    if "://" not in output:  # object stores have no directories
        for d in sorted({t.rsplit("/", 1)[0] for t in targets}):
            if not FileSystems.exists(d):
                FileSystems.mkdirs(d)
    for i in range(0, len(sources), PUBLISH_CHUNK):
        if owner is not None and i:
            pio.check_owner(output, owner)
        # Rename over a target left by a copy-then-delete that stopped half-way.
        FileSystems.rename(sources[i:i + PUBLISH_CHUNK], targets[i:i + PUBLISH_CHUNK])


def _delete_tree(path: str) -> None:
    if not (FileSystems.exists(path) or FileSystems.exists(path + "/")):
        return
    try:
        FileSystems.delete([path])
    except Exception:  # noqa: BLE001  (object stores: no directory left to delete)
        if pio._match(join(path, "*")):
            raise


def summary_of(cfg, tally: Tally, duplicates: int, distinct_ids: int,
               scores: dict | None = None) -> dict:
    """summary.json's fields (docs/scoring.md lists them)."""
    elapsed = max(time.time() - cfg.launched_at, 0.0)
    model_errors = tally.by_reason.get(MODEL_ERROR, 0)
    return {
        "run_id": cfg.run_id,
        "rows_in": cfg.rows_in,
        "scored": tally.scored,
        "rejected": tally.rejected,
        "rejected_by_reason": dict(sorted(tally.by_reason.items())),
        "duplicates": duplicates,
        "duplicate_rate": monitor.rate(duplicates, tally.scored),
        "reject_rate": monitor.rate(tally.rejected, cfg.rows_in),
        "scores": scores or monitor.histogram_dict(monitor.histogram([])),
        "duplicate_ids_scored": tally.scored - distinct_ids,
        "threshold": cfg.threshold,
        "model": cfg.model,
        "model_fingerprint": cfg.fingerprint,
        "runner": cfg.runner,
        "mode": cfg.plan.mode,
        "unique_join": cfg.plan.join if cfg.plan.mode == "unique" else None,
        "repeat_estimate": cfg.plan.repeat_estimate,
        "model_errors": model_errors,
        "max_model_error_ratio": cfg.max_model_error_ratio,
        "elapsed_s": round(elapsed, 3),
        "pairs_per_s": round(cfg.rows_in / elapsed, 1) if elapsed > 0 else None,
        "input_files": [{"path": p, "rows": n} for p, n in zip(cfg.input_files,
                                                               cfg.input_file_rows)],
        "invariant_holds": cfg.rows_in == tally.scored + tally.rejected,
    }


def rerank_field(cfg, reranked: int | None, scored: int) -> dict | None:
    """summary.json's `rerank`: the cascade's second model, band and the pairs it
    re-scored (count and share of the labelled pairs); None without --rerank-model."""
    spec = cfg.rerank
    if spec is None:
        return None
    n = int(reranked or 0)
    return {"model": spec.model, "model_fingerprint": spec.fingerprint,
            "threshold": spec.threshold, "band": list(spec.band),
            "band_source": spec.band_source, "pairs": n, "share": monitor.rate(n, scored)}


def sample_field(output: str, design: dict | None) -> dict | None:
    """summary.json's `sample`: pairs sampled, where, and the design's strata; None
    without a sample (--review-sample 0)."""
    if design is None:
        return None
    strata = design["strata"]
    return {"pairs": sum(s["sampled"] for s in strata.values()),
            "path": join(output, pio.SAMPLE), "strata": strata}


def withheld_because(cfg, summary: dict) -> str | None:
    """Why this run must not publish, or None."""
    staged = pio.staging(cfg.output, cfg.run_id)
    if not summary["invariant_holds"]:
        return (f"rows lost: rows_in {cfg.rows_in} != scored {summary['scored']} + rejected "
                f"{summary['rejected']}; {pio.SUCCESS} not written, output left in {staged}")
    errors = summary["model_errors"]
    if errors > cfg.max_model_error_ratio * (cfg.rows_in or 0):
        return (f"{errors} of {cfg.rows_in} rows failed in the model (reason model_error), "
                f"more than --max-model-error-ratio {cfg.max_model_error_ratio:g} allows; "
                f"{pio.SUCCESS} not written, output left in {staged} (see the rejects' "
                "error column)")
    return None


def _rows(paths: list[str]) -> int:
    total = 0
    for path in paths:
        with _open(path) as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def write_report(output: str, summary: dict) -> None:
    """OUT/report.html. A report that cannot be written is a warning, never a lost
    night: summary.json, written next, says so in `report_error`."""
    from pipeline import report

    try:
        report.write_report(output, summary)
        summary["report_error"] = None
    except Exception as e:  # noqa: BLE001  (plotting, storage: the labels still count)
        log.warning("could not write %s: %s: %s", join(output, pio.REPORT),
                    type(e).__name__, e)
        summary["report_error"] = f"{type(e).__name__}: {e}"


def _write_outcome(output: str, summary: dict) -> None:
    write_report(output, summary)
    pio.write_json(join(output, pio.SUMMARY), summary)


def finalize_run(cfg, files: dict, duplicates: int, distinct_ids: int,
                 scores: dict | None = None, group_stats: dict | None = None,
                 canaries: dict | None = None, store_files: list[dict] = (),
                 store_stats: dict | None = None, sample_design: dict | None = None,
                 reranked: int | None = None) -> dict:
    """The whole last step (see the module docstring); `files` holds the written files
    by kind (labels, rejects, groups, review, sample; `sample_design` is the sample's
    design, `pipeline.sampling.select`). Returns the summary written. Raises
    RunWithheld (rows lost, model errors) or RunGated (a gate tripped) after writing
    summary.json and report.html, when the run must not publish.

    With --embedding-store, `store_files` (the run's new store files) are committed as
    one generation when the run publishes, before its files move; a withheld run commits
    nothing (its generation stays uncommitted, unread, and `store compact` removes it),
    a gated one only if `pairscore publish --accept` publishes it: a night whose canaries
    failed must not leave its embeddings for the nights after."""
    from pipeline import store

    labels = [locate(cfg.output, p) for p in files[pio.LABELS]]
    rejects = [locate(cfg.output, p) for p in files[pio.REJECTS]]
    tally = count_written(labels, rejects)
    summary = summary_of(cfg, tally, duplicates, distinct_ids, scores)
    summary["groups"] = group_stats
    summary["rerank"] = rerank_field(cfg, reranked, tally.scored)
    summary["store"] = store.summary_field(cfg.store, list(store_files), store_stats)
    for big in (group_stats or {}).get("over_max_group_size", []):
        log.warning("group %r has %d records, more than --max-group-size %d: one giant "
                    "component usually means a threshold too low", big["group_id"],
                    big["size"], cfg.max_group_size)
    review = [locate(cfg.output, p) for p in files.get(pio.REVIEW, [])]
    summary["review"] = ({"pairs": _rows(review), "path": join(cfg.output, pio.REVIEW)}
                         if review else None)
    summary["sample"] = sample_field(cfg.output, sample_design)
    summary["canaries"] = {"file": cfg.canary_file, **canaries} if canaries else None
    summary["baseline"] = monitor.compare(summary, cfg.baseline) if cfg.baseline else None
    summary["gates"] = monitor.check_gates(cfg.gates, summary)
    reason = withheld_because(cfg, summary)
    if reason is not None:
        # Nothing of this run goes into OUT once another run holds it.
        pio.check_owner(cfg.output, cfg.run_id)
        summary.update(status=WITHHELD, error=reason)
        _write_outcome(cfg.output, summary)
        # The run is over: the next one may take the output (and clear this staging).
        pio.release_run_marker(cfg.output, cfg.run_id)
        raise RunWithheld(f"{reason} (see {join(cfg.output, pio.SUMMARY)})")
    staged = [p for kind in (pio.LABELS, pio.REJECTS, pio.GROUPS, pio.REVIEW, pio.SAMPLE)
              for p in files.get(kind, [])]
    for p in staged:
        locate(cfg.output, p)
    tripped = monitor.describe_tripped(summary["gates"])
    if tripped:
        summary.update(status=GATED, error=(
            f"gated: {tripped}; {pio.SUCCESS} not written, output left in "
            f"{pio.staging(cfg.output, cfg.run_id)}; look at {join(cfg.output, pio.REPORT)}, "
            f"then `pairscore publish {cfg.output} --accept` publishes it"))
        summary["staged_files"] = staged
        if cfg.store is not None and store_files:
            summary["staged_store"] = {"dim": cfg.store.dim, "files": list(store_files)}
        pio.check_owner(cfg.output, cfg.run_id)
        _write_outcome(cfg.output, summary)
        pio.release_run_marker(cfg.output, cfg.run_id)
        raise RunGated(summary["error"])
    pio.check_owner(cfg.output, cfg.run_id)  # a run that lost the output commits nothing
    if cfg.store is not None:
        store.commit_run(cfg.store, list(store_files))
    _publish(cfg.output, cfg.run_id, staged, summary)
    log.info("published %s: %d scored, %d rejected", cfg.output, tally.scored, tally.rejected)
    return summary


def _publish(output: str, run_id: str, staged: list[str], summary: dict,
             marker_id: str | None = None) -> None:
    """Move run `run_id`'s staged files into place, then write report.html, summary.json
    and, last, _SUCCESS; release the run marker (`marker_id`'s, by default the run's).
    Just before it moves files, and again before summary.json and _SUCCESS, the marker
    must still be that run's (`pio.check_owner`): a run whose output another run took
    over publishes nothing more and raises OutputTakenOver naming that run."""
    owner = marker_id or run_id
    publish_files(output, staged, owner)
    _delete_tree(pio.staging(output, run_id))
    staging_root = join(output, pio.STAGING)
    if not pio._match(join(staging_root, "*")):
        _delete_tree(staging_root)
    summary.update(status=PUBLISHED, error=None)
    pio.check_owner(output, owner)
    _write_outcome(output, summary)
    # Not empty: Beam's S3 writer cannot create a zero-byte object (S3 rejects a
    # multipart upload with no parts).
    pio.check_owner(output, owner)
    pio.write_text(join(output, pio.SUCCESS), "ok\n")
    pio.release_run_marker(output, owner)


def _commit_staged_store(summary: dict) -> None:
    """A gated run's embedding-store generation, committed once the run is accepted, if
    its files are all still there: `store compact` removes an uncommitted generation
    older than --stale-after, and a commit listing files that are gone would have every
    later night warn. Then the labels publish without it, and `accepted.store` says so."""
    staged = summary.pop("staged_store", None)
    if not staged:
        return
    from pipeline import store

    info = summary["store"]
    name = info["generation_written"]
    gone = store.files_gone(staged["files"])
    if gone:
        why = (f"its store files are gone ({'; '.join(gone)}): `pairscore store compact` "
               "removes an uncommitted generation older than --stale-after; its texts are "
               "encoded again by a later night")
        log.warning("run %s: embedding-store generation %s not committed: %s",
                    summary["run_id"], name, why)
        summary["accepted"]["store"] = {"generation": name, "committed": False, "why": why}
        info["generation_written"] = None
        return
    store.commit_generation(info["uri"], info.get("namespace") or info["fingerprint"], name,
                            staged["files"], staged["dim"])
    summary["accepted"]["store"] = {"generation": name, "committed": True, "why": None}


def accept_run(output: str, stale_run_after: float = pio.STALE_RUN_AFTER_S) -> dict:
    """`pairscore publish OUT --accept`: publish a gated run after a person has looked
    at it, without scoring again. Holds the output's run marker meanwhile, counts the
    staged files again and publishes only if they still add up to the run's summary
    (scored, rejected, rows_in). Returns the summary written; raises JobError."""
    summary = pio.read_summary(output)
    if summary is None:
        raise pio.JobError(f"{output}: no {pio.SUMMARY}; nothing to publish")
    status = summary.get("status")
    if status != GATED:
        why = {PUBLISHED: "it is already published",
               WITHHELD: f"it was withheld, not gated ({summary.get('error')}); run it again"}
        raise pio.JobError(f"{output}: run {summary.get('run_id')} cannot be accepted: "
                           + why.get(status, f"its status is {status!r}"))
    run_id = summary["run_id"]
    marker = pio.acquire_run_marker(output, f"accept-{run_id}", stale_run_after)
    try:
        staged = summary.get("staged_files") or []
        try:
            found = [locate(output, p) for p in staged]
        except FileNotFoundError as e:
            raise pio.JobError(f"{output}: cannot accept run {run_id}: {e}") from None
        kinds = [published_path(output, p).rstrip("/").split("/")[-2] for p in staged]
        tally = count_written([f for f, k in zip(found, kinds) if k == pio.LABELS],
                              [f for f, k in zip(found, kinds) if k == pio.REJECTS])
        expected = (summary["scored"], summary["rejected"])
        if ((tally.scored, tally.rejected) != expected
                or summary["rows_in"] != tally.scored + tally.rejected):
            raise pio.JobError(
                f"{output}: cannot accept run {run_id}: the staged files hold "
                f"{tally.scored} scored + {tally.rejected} rejected rows, the run's summary "
                f"says {expected[0]} + {expected[1]} of rows_in {summary['rows_in']}; "
                "score the night again")
        summary["accepted"] = {"at": pio._now().isoformat(), "by": pio._user(),
                               "gates": [g for g in summary.get("gates", []) if g["tripped"]]}
        summary.pop("staged_files", None)
        _commit_staged_store(summary)
        _publish(output, run_id, staged, summary, marker_id=marker.run_id)
    except BaseException:
        marker.release()
        raise
    return summary
