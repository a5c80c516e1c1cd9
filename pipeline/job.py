"""The scoring job: Parquet candidate pairs in, duplicate labels (and rejects) out.

    pairscore score --input 'pairs/*.parquet' --output out/ --model models/default

`run()` resolves and checks everything that can fail before any work (`resolve`), takes
the output (a run marker), clears what an earlier run left there, builds the graph
(`build`: pair mode or unique-text mode, the stages of `pipeline.stages`) and runs it.
After the run the launcher counts what was written and writes summary.json, then
_SUCCESS only if rows_in equals scored + rejected (`finalize`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (
    DirectOptions,
    PipelineOptions,
    StandardOptions,
    TestOptions,
)
from apache_beam.runners.runner import PipelineResult

from model.config import ModelDirError, join
from model.modeldir import ModelDir
from pipeline import io as pio
from pipeline import planning, profiles, stages
from pipeline.io import JobError
from pipeline.options import ScoreOptions, check_known_flags
from pipeline.validate import ERROR, MODEL_ERROR, REASON

log = logging.getLogger("pairscore.job")
NAMESPACE = "pairscore"
FNAPI = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"


@dataclasses.dataclass
class JobConfig:
    """Everything the transforms need, resolved and checked before the pipeline runs."""

    input: str
    output: str
    model: str
    id_column: str
    text_columns: tuple[str, str]
    keep_columns: list[str]
    threshold: float
    fingerprint: str
    max_length: int
    min_tokens: int
    batch_size: int
    max_batch_tokens: int
    rebatch_rows: int
    input_schema: pa.Schema
    rows_in: int | None
    input_files: int = 0
    large_model: bool = False
    model_copies: int | None = None
    plan: planning.Plan = dataclasses.field(default_factory=planning.Plan)
    precision: str = "float32"
    max_model_error_ratio: float = 0.001
    run_id: str = ""

    @property
    def fail_fast(self) -> bool:
        """No dead-letter output for model errors: the first failed batch fails the job."""
        return self.max_model_error_ratio == 0

    @property
    def label_schema(self) -> pa.Schema:
        fields = [self.input_schema.field(self.id_column)]
        fields += [pa.field("score", pa.float32()), pa.field("is_duplicate", pa.bool_())]
        fields += [self.input_schema.field(c) for c in self.keep_columns]
        return pa.schema(
            fields,
            metadata={
                "pairscore.model_fingerprint": self.fingerprint,
                "pairscore.threshold": repr(self.threshold),
                "pairscore.model": self.model,
            },
        )

    @property
    def reject_schema(self) -> pa.Schema:
        return self.input_schema.append(pa.field(REASON, pa.string())).append(
            pa.field(ERROR, pa.string()))


def resolve(opts: ScoreOptions, dry_run: bool) -> JobConfig:
    """Every check that can fail before any work: inputs, columns, model, output. Reads,
    never writes (but for the output's write probe)."""
    missing = [f"--{n}" for n in ("input", "output", "model") if not getattr(opts, n)]
    if missing:
        raise JobError(f"missing required option(s): {', '.join(missing)}")
    text_columns = (opts.text_a_column, opts.text_b_column)
    keep = [c.strip() for c in (opts.keep_columns or "").split(",") if c.strip()]
    if opts.threshold is not None and not 0.0 <= opts.threshold <= 1.0:
        raise JobError(f"--threshold {opts.threshold} is outside [0, 1]")
    ratio = opts.max_model_error_ratio
    if not 0.0 <= ratio <= 1.0:
        raise JobError(f"--max-model-error-ratio {ratio} is outside [0, 1]")
    if dry_run:
        # A dry run builds the job graph only: nothing is read, so nothing can be checked.
        names = [opts.id_column, *text_columns, *keep]
        scan = pio.InputScan([], pa.schema([(n, pa.string()) for n in dict.fromkeys(names)]), 0)
        rows_in = None
    else:
        scan = pio.scan_inputs(opts.input)
        rows_in = scan.rows
    pio.check_columns(scan.schema, opts.input, opts.id_column, text_columns, keep)
    try:
        meta = _read_model(opts.model, dry_run)
    except ModelDirError as e:
        raise JobError(str(e)) from None
    threshold = opts.threshold if opts.threshold is not None else float(meta["threshold"])
    gpu = opts.device == "gpu"
    # CPU: 128 pads less than 256 (finer length groups) at the same model cost per token.
    batch_size = opts.batch_size or (1024 if gpu else 128)
    max_tokens = opts.max_batch_tokens or batch_size * (64 if gpu else 32)
    if not dry_run:
        pio.check_output(opts.output, opts.overwrite)
    tok = meta.get("tokenizer", {})
    specials = (tok.get("cls_token") is not None) + (tok.get("sep_token") is not None)
    plan = planning.plan(opts.mode, scan.files, text_columns, rows_in, dry_run,
                         int(meta.get("embedding_dim") or 0), opts.unique_join)
    return JobConfig(
        input=opts.input,
        output=opts.output,
        model=opts.model,
        id_column=opts.id_column,
        text_columns=text_columns,
        keep_columns=keep,
        threshold=threshold,
        fingerprint=meta.get("fingerprint", ""),
        max_length=int(meta["max_length"]),
        min_tokens=specials,
        batch_size=batch_size,
        max_batch_tokens=max_tokens,
        rebatch_rows=opts.rebatch_rows,
        input_schema=scan.schema,
        rows_in=rows_in,
        input_files=len(scan.files),
        large_model=opts.large_model,
        model_copies=opts.model_copies,
        plan=plan,
        precision=opts.precision,
        max_model_error_ratio=ratio,
        run_id=_run_id(),
    )


def _run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def _read_model(model_dir: str, dry_run: bool) -> dict:
    """The model's metadata, after checking the directory whole (its manifest) on a real
    run; a dry run reads a local directory if it can and never touches remote storage
    (without credentials the GCS client retries for minutes before giving up)."""
    placeholder = {"threshold": 0.5, "max_length": 128, "fingerprint": "dry-run"}
    if dry_run and "://" in model_dir:
        return placeholder
    if dry_run:
        try:
            return dataclasses.asdict(ModelDir.open(model_dir, verify=False).metadata)
        except Exception:  # noqa: BLE001  (a dry run only builds the graph)
            return placeholder
    return dataclasses.asdict(ModelDir.open(model_dir).metadata)


def build(p: beam.Pipeline, cfg: JobConfig, dry_run: bool = False) -> dict:
    """The job graph: read, score in one of two modes, write. Returns the writes' outputs."""
    pairs = p | "ReadPairs" >> pio.ReadPairs(cfg.input, validate=not dry_run)
    if cfg.plan.mode == "unique":
        # Read twice rather than hold every pair until the embeddings are ready.
        texts = p | "ReadTexts" >> pio.ReadPairs(cfg.input, validate=not dry_run)
        results = (pairs, texts) | "ScoreUniqueTexts" >> stages.ScoreUniqueTexts(cfg)
    else:
        results = pairs | "ScorePairs" >> stages.ScorePairs(cfg)
    return results | "WriteResults" >> stages.WriteResults(cfg)


def _pipeline_options(argv: list[str] | None) -> PipelineOptions:
    import sys

    argv = argv if argv is not None else sys.argv[1:]
    # Before the profile adds its flags, so that a typo is named as typed.
    check_known_flags(argv)
    options = PipelineOptions(profiles.expand(argv))
    std = options.view_as(StandardOptions)
    if std.runner is None:
        std.runner = FNAPI
    direct = options.view_as(DirectOptions)
    if std.runner == FNAPI and direct.direct_num_workers in (None, 0):
        direct.direct_num_workers = 1
    return options


def _counters(result: PipelineResult) -> dict:
    out = {}
    try:
        for c in result.metrics().query(beam.metrics.MetricsFilter().with_namespace(NAMESPACE))[
            "counters"
        ]:
            name = c.key.metric.name
            value = c.committed if c.committed is not None else c.attempted
            out[name] = out.get(name, 0) + (value or 0)
    except Exception:  # noqa: BLE001  (not every runner reports metrics)
        pass
    return out


def finalize(cfg: JobConfig, result: PipelineResult | None, runner: str,
             elapsed: float) -> dict:
    """Count what was written; if nothing is lost and model errors stay within
    --max-model-error-ratio, move it into place and write summary.json, then _SUCCESS.
    Otherwise leave it staged, write summary.json and fail."""
    label_files = pio.output_files(pio.staging(cfg.output), pio.LABELS)
    reject_files = pio.output_files(pio.staging(cfg.output), pio.REJECTS)
    tally = pio.tally_outputs(label_files, reject_files, cfg.id_column)
    scored, rejected = tally.scored, tally.rejected
    model_errors = tally.by_reason.get(MODEL_ERROR, 0)
    summary = {
        "run_id": cfg.run_id,
        "rows_in": cfg.rows_in,
        "scored": scored,
        "rejected": rejected,
        "rejected_by_reason": dict(sorted(tally.by_reason.items())),
        "duplicates": tally.duplicates,
        "duplicate_ids_scored": scored - tally.distinct_ids,
        "threshold": cfg.threshold,
        "model": cfg.model,
        "model_fingerprint": cfg.fingerprint,
        "runner": runner,
        "mode": cfg.plan.mode,
        "unique_join": cfg.plan.join if cfg.plan.mode == "unique" else None,
        "repeat_estimate": cfg.plan.repeat_estimate,
        "model_errors": model_errors,
        "max_model_error_ratio": cfg.max_model_error_ratio,
        "elapsed_s": round(elapsed, 3),
        "pairs_per_s": round(cfg.rows_in / elapsed, 1) if elapsed > 0 else None,
        "input_files": cfg.input_files,
        "counters": _counters(result) if result is not None else {},
    }
    summary["invariant_holds"] = cfg.rows_in == scored + rejected
    summary_path = join(cfg.output, pio.SUMMARY)
    if not summary["invariant_holds"]:
        pio.write_json(summary_path, summary)
        raise JobError(
            f"rows lost: rows_in {cfg.rows_in} != scored {scored} + rejected {rejected}; "
            f"{pio.SUCCESS} not written, output left in {pio.staging(cfg.output)} "
            f"(see {summary_path})"
        )
    if model_errors > cfg.max_model_error_ratio * (cfg.rows_in or 0):
        pio.write_json(summary_path, summary)
        raise JobError(
            f"{model_errors} of {cfg.rows_in} rows failed in the model (reason model_error), "
            f"more than --max-model-error-ratio {cfg.max_model_error_ratio:g} allows; "
            f"{pio.SUCCESS} not written, output left in {pio.staging(cfg.output)} "
            f"(see {summary_path} and the rejects' error column)"
        )
    pio.publish(cfg.output)
    pio.write_json(summary_path, summary)
    # Not empty: Beam's S3 writer cannot create a zero-byte object (S3 rejects a
    # multipart upload with no parts).
    pio.write_text(join(cfg.output, pio.SUCCESS), "ok\n")
    return summary


def run(argv=None, save_main_session=False, test_pipeline=None) -> PipelineResult:
    """Build and run the scoring job; returns the Beam PipelineResult (with `.summary`).

    Raises JobError (naming the file, column, flag or setting) for problems found before
    the job starts, and when the written rows do not add up to the rows read.
    """
    argv = list(argv) if argv is not None else None
    options = _pipeline_options(argv)
    opts = options.view_as(ScoreOptions)
    # The launcher's own reads and writes (checks, summary) use the job's storage
    # settings too, e.g. --s3_endpoint_url.
    FileSystems.set_options(options)
    dry_run = bool(options.view_as(TestOptions).dry_run)
    cfg = resolve(opts, dry_run)
    if save_main_session:
        options.view_as(beam.options.pipeline_options.SetupOptions).save_main_session = True
    runner = str(options.view_as(StandardOptions).runner)
    p = test_pipeline or beam.Pipeline(options=options)
    build(p, cfg, dry_run=dry_run)
    if dry_run:
        return p.run()
    marker = pio.acquire_run_marker(cfg.output, cfg.run_id, opts.stale_run_after)
    try:
        pio.clear_previous_output(cfg.output)
        started = time.time()
        try:
            result = p.run()
            result.wait_until_finish()
        except Exception as e:
            # The runner has logged the traceback; the user gets one line naming the cause.
            raise JobError(
                f"the job failed, {pio.SUCCESS} not written: {type(e).__name__}: {e}"
            ) from e
        summary = finalize(cfg, result, runner.rsplit(".", 1)[-1], time.time() - started)
    finally:
        marker.release()
    log.info("summary: %s", json.dumps({k: v for k, v in summary.items() if k != "counters"}))
    result.summary = summary
    return result
