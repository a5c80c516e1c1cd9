"""The job's last step, inside the pipeline: count what was written, check it, publish.

Run by `stages.Finalize` once both writes have finished (their written-file lists are its
side inputs), on whichever runner, so a job completes even when the process that
launched it is gone (a scheduler that submits and moves on)::

    count   rows in the written label files (Parquet footers), rejects by reason
    check   rows_in == scored + rejected; model errors within --max-model-error-ratio
    commit  the run's embedding-store generation (--embedding-store)
    publish OUT/_staging/RUN_ID/{labels,rejects}/* -> OUT/{labels,rejects}/
    write   OUT/summary.json, then OUT/_SUCCESS; release the run marker

Idempotent: a runner may run the step again (a worker lost mid-step). Each written file is
looked for where it is staged, then where it is published, so a retry after some files
moved counts and moves the rest; summary.json and _SUCCESS are simply written again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from model.config import join
from pipeline import io as pio
from pipeline.validate import MODEL_ERROR

log = logging.getLogger("pairscore.publish")
PUBLISHED = "published"
WITHHELD = "withheld"


class RunWithheld(RuntimeError):
    """The written rows do not add up, or too many failed in the model: summary.json says
    why; the output stays staged and no _SUCCESS is written."""


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


def publish_files(output: str, staged: list[str]) -> None:
    """Move each staged file to its published place; a file already there (an earlier
    attempt moved it) is left as it is."""
    sources = [p for p in staged if FileSystems.exists(p)]
    targets = [published_path(output, p) for p in sources]
    if "://" not in output:  # object stores have no directories
        for d in sorted({t.rsplit("/", 1)[0] for t in targets}):
            if not FileSystems.exists(d):
                FileSystems.mkdirs(d)
    if sources:
        # Rename over a target left by a copy-then-delete that stopped half-way.
        FileSystems.rename(sources, targets)


def _delete_tree(path: str) -> None:
    if not (FileSystems.exists(path) or FileSystems.exists(path + "/")):
        return
    try:
        FileSystems.delete([path])
    except Exception:  # noqa: BLE001  (object stores: no directory left to delete)
        if pio._match(join(path, "*")):
            raise


def summary_of(cfg, tally: Tally, duplicates: int, distinct_ids: int) -> dict:
    """summary.json's fields (the README lists them)."""
    elapsed = max(time.time() - cfg.launched_at, 0.0)
    model_errors = tally.by_reason.get(MODEL_ERROR, 0)
    return {
        "run_id": cfg.run_id,
        "rows_in": cfg.rows_in,
        "scored": tally.scored,
        "rejected": tally.rejected,
        "rejected_by_reason": dict(sorted(tally.by_reason.items())),
        "duplicates": duplicates,
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


def finalize_run(cfg, label_files: list[str], reject_files: list[str], duplicates: int,
                 distinct_ids: int, group_files: list[str] = (),
                 group_stats: dict | None = None, store_files: list[dict] = (),
                 store_stats: dict | None = None) -> dict:
    """The whole last step (see the module docstring); returns the summary written.
    Raises RunWithheld, after writing summary.json, when the run must not publish.

    With --embedding-store, `store_files` (the run's new store files) are committed as
    one generation once the checks pass, before publishing; a withheld run commits
    nothing (its generation stays uncommitted, unread, and `store compact` removes it)."""
    from pipeline import store
    labels = [locate(cfg.output, p) for p in label_files]
    rejects = [locate(cfg.output, p) for p in reject_files]
    tally = count_written(labels, rejects)
    summary = summary_of(cfg, tally, duplicates, distinct_ids)
    summary["groups"] = group_stats
    summary["store"] = store.summary_field(getattr(cfg, "store", None), list(store_files),
                                           store_stats)
    for big in (group_stats or {}).get("over_max_group_size", []):
        log.warning("group %r has %d records, more than --max-group-size %d: one giant "
                    "component usually means a threshold too low", big["group_id"],
                    big["size"], cfg.max_group_size)
    summary_path = join(cfg.output, pio.SUMMARY)
    reason = withheld_because(cfg, summary)
    if reason is not None:
        summary.update(status=WITHHELD, error=reason)
        pio.write_json(summary_path, summary)
        # The run is over: the next one may take the output (and clear this staging).
        pio.release_run_marker(cfg.output, cfg.run_id)
        raise RunWithheld(f"{reason} (see {summary_path})")
    for p in group_files:
        locate(cfg.output, p)
    if getattr(cfg, "store", None) is not None:
        store.commit_run(cfg.store, list(store_files))
    publish_files(cfg.output, label_files + reject_files + list(group_files))
    _delete_tree(pio.staging(cfg.output, cfg.run_id))
    staging_root = join(cfg.output, pio.STAGING)
    if not pio._match(join(staging_root, "*")):
        _delete_tree(staging_root)
    summary.update(status=PUBLISHED, error=None)
    pio.write_json(summary_path, summary)
    # Not empty: Beam's S3 writer cannot create a zero-byte object (S3 rejects a
    # multipart upload with no parts).
    pio.write_text(join(cfg.output, pio.SUCCESS), "ok\n")
    pio.release_run_marker(cfg.output, cfg.run_id)
    log.info("published %s: %d scored, %d rejected", cfg.output, tally.scored, tally.rejected)
    return summary


def read_summary(output: str) -> dict | None:
    """OUT/summary.json, or None when the run wrote none."""
    path = join(output, pio.SUMMARY)
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as f:
        return json.loads(f.read())
