"""The scoring job: Parquet candidate pairs in, duplicate labels (and rejects) out.

    pairscore score --input 'pairs/*.parquet' --output out/ --model models/default

`run()` resolves and checks everything that can fail before any work (`resolve`), takes
the output (a run marker), clears what an earlier run left there, builds the graph
(`build`: pair mode or unique-text mode, the stages of `pipeline.stages`) and runs it.
The pipeline's last stage (`stages.Finalize`, after both writes) counts what was
written, publishes it and writes summary.json, then _SUCCESS, only if rows_in equals
scored + rejected: the job completes even if the launcher is gone. The launcher, if it
waits, only reads summary.json.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (
    DirectOptions,
    GoogleCloudOptions,
    PipelineOptions,
    StandardOptions,
    TestOptions,
)
from apache_beam.runners.runner import PipelineResult

from model.config import ModelDirError
from model.modeldir import ModelDir
from pipeline import groups, monitor, planning, profiles, publish, rerank, stages, store
from pipeline import io as pio
from pipeline.config import JobConfig
from pipeline.handler import FLOAT32_EXACT, NAMESPACE
from pipeline.io import JobError
from pipeline.options import ScoreOptions, check_known_flags

log = logging.getLogger("pairscore.job")
FNAPI = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
# Distinct ids per CombinePerKey key when counting them: bounds one worker's share.
IDS_PER_BUCKET = 2_000_000


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
    group_by = _group_by(opts.group_by)
    pio.check_columns(scan.schema, opts.input, opts.id_column, text_columns,
                      keep + list(group_by or ()))
    if group_by and not dry_run:
        left, right = (scan.schema.field(c).type for c in group_by)
        if left != right:
            raise JobError(f"--group-by {opts.group_by}: the two record id columns have "
                           f"different types ({left} and {right}); they must name records "
                           "of one kind")
    try:
        meta = _read_model(opts.model, dry_run)
    except ModelDirError as e:
        raise JobError(str(e)) from None
    threshold = opts.threshold if opts.threshold is not None else float(meta["threshold"])
    gpu = opts.device == "gpu"
    # Before the output's write probe: a refused cross model leaves no output behind.
    rerank_spec = _rerank_spec(opts, meta, gpu, dry_run)
    # CPU: 128 pads less than 256 (finer length groups) at the same model cost per token.
    batch_size = opts.batch_size or (1024 if gpu else 128)
    max_tokens = opts.max_batch_tokens or batch_size * (64 if gpu else 32)
    gates = _gate_limits(opts)
    if opts.review_pairs < 0:
        raise JobError(f"--review-pairs {opts.review_pairs}: give 0 (none) or more")
    if opts.review_sample < 0:
        raise JobError(f"--review-sample {opts.review_sample}: give 0 (none) or more")
    if not 0.0 <= opts.review_sample_band <= 1.0:
        raise JobError(f"--review-sample-band {opts.review_sample_band} is outside [0, 1]")
    baseline = canaries = None
    canary_labels = []
    if opts.baseline and not dry_run:
        baseline = monitor.read_baseline(opts.baseline)
    if opts.groups_one_worker_max_edges < 1:
        raise JobError(f"--groups-one-worker-max-edges {opts.groups_one_worker_max_edges}: "
                       "give 1 or more")
    if opts.groups_from and not group_by:
        raise JobError("--groups-from carries groups: give --group-by LEFT_ID,RIGHT_ID too")
    previous = groups.Previous()
    if opts.groups_from and not dry_run:
        previous = groups.read_previous(opts.groups_from,
                                        scan.schema.field(group_by[0]).type)
    if opts.canaries and not dry_run:
        canaries, canary_labels = monitor.read_canaries(
            opts.canaries, scan.schema, opts.id_column, text_columns)
    if not dry_run:
        pio.check_output(opts.output, opts.overwrite)
    tok = meta.get("tokenizer", {})
    specials = (tok.get("cls_token") is not None) + (tok.get("sep_token") is not None)
    dim = int(meta.get("embedding_dim") or 0)
    mode = opts.mode
    if opts.embedding_store:
        # Only unique-text mode looks texts up: a store implies it.
        if mode == "pairs":
            raise JobError("--mode pairs cannot use --embedding-store (the store holds "
                           "distinct texts' embeddings): drop one of them")
        mode = "unique"
        if opts.precision != "float32":
            raise JobError(f"--precision {opts.precision} cannot use --embedding-store: the "
                           "store holds float32 embeddings, which other runs read as exact")
    plan = planning.plan(mode, scan.files, text_columns, rows_in, dry_run, dim,
                         opts.unique_join)
    if meta.get("architecture") == "cross" and plan.mode == "unique":
        raise JobError(f"--model {opts.model} is a cross-encoder: it reads both texts in one "
                       "sequence, so there is no text to encode once (unique-text mode, "
                       "--embedding-store); use --mode pairs, or give it as --rerank-model")

    run_id = pio.new_run_id()
    spec = None
    if opts.embedding_store:
        spec = store.open_for_run(opts.embedding_store, meta.get("fingerprint", ""), dim,
                                  run_id, planning.SIDE_INPUT_MAX_BYTES, dry_run,
                                  meta=meta, model_dir=opts.model)
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
        input_files=scan.files,
        input_file_rows=scan.file_rows,
        large_model=opts.large_model,
        model_copies=opts.model_copies,
        plan=plan,
        # With a store, float32 exactly (TF32 off): the store's embeddings are read as exact.
        precision=FLOAT32_EXACT if spec is not None else opts.precision,
        max_model_error_ratio=ratio,
        run_id=run_id,
        launched_at=time.time(),
        id_buckets=max(1, math.ceil((rows_in or 0) / IDS_PER_BUCKET)),
        group_by=group_by,
        max_group_size=opts.max_group_size,
        groups_one_worker_max_edges=opts.groups_one_worker_max_edges,
        group_buckets=groups.buckets_for(opts.groups_one_worker_max_edges, rows_in,
                                         previous.records),
        groups_from=opts.groups_from,
        groups_from_files=previous.files,
        groups_last_id=previous.last_group_id,
        baseline=baseline,
        gates=gates,
        canaries=canaries,
        canary_labels=canary_labels,
        canary_file=opts.canaries,
        review_pairs=opts.review_pairs,
        review_sample=opts.review_sample,
        review_sample_band=opts.review_sample_band,
        store=spec,
        rerank=rerank_spec,
    )


def _rerank_spec(opts: ScoreOptions, first: dict, gpu: bool,
                 dry_run: bool) -> rerank.RerankSpec | None:
    """--rerank-model checked whole (its manifest) and a cross-encoder, its band, batch
    sizes; None without --rerank-model."""
    rerank_flags = ("rerank_band", "rerank_batch_size", "rerank_max_batch_tokens")
    if not opts.rerank_model:
        given = [f"--{n.replace('_', '-')}" for n in rerank_flags if getattr(opts, n)]
        if given:
            raise JobError(f"{', '.join(given)} need --rerank-model CROSS_MODEL")
        return None
    try:
        meta = _read_model(opts.rerank_model, dry_run)
    except ModelDirError as e:
        raise JobError(f"--rerank-model {opts.rerank_model}: {e}") from None
    if meta.get("architecture", "cross" if dry_run else "siamese") != "cross":
        raise JobError(f"--rerank-model {opts.rerank_model} is a {meta.get('architecture')} "
                       "model; the second opinion is a cross-encoder (pairscore train "
                       "--architecture cross)")
    if first.get("architecture") == "cross":
        raise JobError(f"--model {opts.model} is a cross-encoder: the cascade's first model "
                       "is the Siamese one that scores every pair")
    try:
        if opts.rerank_band:
            band, source = rerank.parse_band(opts.rerank_band), "--rerank-band"
        elif dry_run:
            band, source = (0.0, 1.0), "dry run"
        else:
            band = rerank.stored_band(meta.get("rerank"), first.get("fingerprint", ""),
                                      opts.rerank_model, opts.model)
            source = "stored in the cross model (pairscore rerank-band)"
    except rerank.BandError as e:
        raise JobError(str(e)) from None
    batch_size = opts.rerank_batch_size or (512 if gpu else 64)
    if batch_size < 1:
        raise JobError(f"--rerank-batch-size {batch_size}: give 1 or more")
    tok = meta.get("tokenizer", {})
    return rerank.RerankSpec(
        model=opts.rerank_model, fingerprint=meta.get("fingerprint", ""),
        threshold=float(meta["threshold"]), max_length=int(meta["max_length"]),
        min_tokens=(tok.get("cls_token") is not None) + (tok.get("sep_token") is not None),
        band=band, band_source=source, batch_size=batch_size,
        max_batch_tokens=opts.rerank_max_batch_tokens or batch_size * (64 if gpu else 32))


def _gate_limits(opts: ScoreOptions) -> dict:
    """The gates set, by name, after checking each limit and what it needs."""
    limits = {g.name: getattr(opts, g.name) for g in monitor.GATES}
    for gate in monitor.GATES:
        limit = limits[gate.name]
        if limit is None:
            continue
        top = None if gate.name == "max_score_psi" else 1.0
        if limit < 0 or (top is not None and limit > top):
            raise JobError(f"{gate.flag} {limit:g} is outside "
                           + ("[0, inf)" if top is None else "[0, 1]"))
    for name in ("max_score_psi", "max_duplicate_rate_change"):
        if limits[name] is not None and not opts.baseline:
            raise JobError(f"{monitor.GATES_BY_NAME[name].flag} compares with a baseline: "
                           "give --baseline PREVIOUS_OUT (a finished run's output)")
    if limits["min_canary_accuracy"] is not None and not opts.canaries:
        raise JobError("--min-canary-accuracy needs --canaries URI (labelled pairs)")
    return {k: v for k, v in limits.items() if v is not None}


def _group_by(value: str | None) -> tuple[str, str] | None:
    if not value:
        return None
    names = [c.strip() for c in value.split(",")]
    if len(names) != 2 or not all(names):
        raise JobError(f"--group-by {value!r}: give two columns, LEFT_ID,RIGHT_ID")
    return names[0], names[1]


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


def build(p: beam.Pipeline, cfg: JobConfig, dry_run: bool = False):
    """The job graph: read, score in one of two modes, write, then the final step that
    counts, publishes and writes summary.json and _SUCCESS. Returns its output."""
    # A dry run resolves no files: the graph reads the pattern.
    files = cfg.input_files or [cfg.input]
    pairs = p | "ReadPairs" >> pio.ReadPairs(files)
    p | "Progress" >> stages.Progress(cfg.rows_in)
    if cfg.plan.mode == "unique":
        # Read twice rather than hold every pair until the embeddings are ready.
        texts = p | "ReadTexts" >> pio.ReadPairs(files)
        results = (pairs, texts) | "ScoreUniqueTexts" >> stages.ScoreUniqueTexts(cfg)
    else:
        results = pairs | "ScorePairs" >> stages.ScorePairs(cfg)
    written = results | "WriteResults" >> stages.WriteResults(cfg)
    def nothing(name):
        return p | name >> beam.Create([])

    if cfg.group_by:
        grouped = results["edges"] | "Groups" >> stages.Groups(cfg)
    else:
        grouped = {"files": nothing("NoGroupFiles"), "stats": nothing("NoGroupStats")}
    review = (results["review"] | "Review" >> stages.Review(cfg) if cfg.review_pairs
              else nothing("NoReview"))
    canaries = (p | "Canaries" >> stages.Canaries(cfg) if cfg.canaries is not None
                else nothing("NoCanaries"))
    sample = ({"labels": results["labels"], "candidates": results["sample"]}
              | "SampleForReview" >> stages.SampleForReview(cfg) if cfg.review_sample
              else {"files": nothing("NoSampleFiles"), "design": nothing("NoSampleDesign")})
    finals = {"labels": results["labels"], "written": written, "groups": grouped,
              "review": review, "canaries": canaries, "sample": sample}
    if cfg.store is not None:
        finals["store"] = {"files": results["store_files"], "stats": results["store_stats"]}
    return finals | "Finalize" >> stages.Finalize(cfg)


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


def _record_job(cfg: JobConfig, options: PipelineOptions, result: PipelineResult) -> None:
    """Once a runner that runs the job outside this process has it, the run marker names
    the job (on Dataflow: job id, or for a template launch the job name; region,
    project), so that a later launch asks the runner whether the run is alive: a
    --detach launcher exits here and its pid says nothing more. A local runner has run
    the whole job inside p.run() (--detach too): its marker is already released."""
    if cfg.runner in pio.IN_PROCESS_RUNNERS:
        return
    gcp = options.view_as(GoogleCloudOptions)
    try:
        job_id = result.job_id()  # DataflowPipelineResult; none for a template launch
    except Exception:  # noqa: BLE001  (no job id on this runner, or no job submitted)
        job_id = None
    try:
        pio.record_submission(cfg.output, cfg.run_id, cfg.runner, job_id=job_id,
                              region=gcp.region, project=gcp.project, job_name=gcp.job_name)
    except Exception as e:  # noqa: BLE001  (the job runs: say so, do not fail the launch)
        log.warning("could not record job %s in the run marker (%s); until it is, another "
                    "launch may take the output over once this launcher exits", job_id, e)


def run(argv=None, save_main_session=False, test_pipeline=None) -> PipelineResult:
    """Build and run the scoring job; returns the Beam PipelineResult, with `.summary`
    (summary.json plus the Beam counters) once the job has finished.

    Raises JobError (naming the file, column, flag or setting) for problems found before
    the job starts, and when the job fails or its final step withholds the output.
    With --detach the job is submitted and `run` returns at once (`.summary` None): the
    pipeline's own last step publishes and writes summary.json and _SUCCESS.
    """
    argv = list(argv) if argv is not None else None
    options = _pipeline_options(argv)
    opts = options.view_as(ScoreOptions)
    # The launcher's own reads and writes (checks, marker) use the job's storage
    # settings too, e.g. --s3_endpoint_url.
    FileSystems.set_options(options)
    dry_run = bool(options.view_as(TestOptions).dry_run)
    cfg = resolve(opts, dry_run)
    cfg.runner = str(options.view_as(StandardOptions).runner).rsplit(".", 1)[-1]
    if save_main_session:
        options.view_as(beam.options.pipeline_options.SetupOptions).save_main_session = True
    p = test_pipeline or beam.Pipeline(options=options)
    build(p, cfg, dry_run=dry_run)
    if dry_run:
        return p.run()
    pio.acquire_run_marker(cfg.output, cfg.run_id, opts.stale_run_after, runner=cfg.runner)
    try:
        pio.clear_previous_output(cfg.output)
        result = p.run()
        _record_job(cfg, options, result)
        # A Flex Template launch (template_location set) must exit once submitted.
        template = options.view_as(GoogleCloudOptions).template_location
        if opts.detach or template:
            log.info("submitted run %s; it publishes %s itself", cfg.run_id, cfg.output)
            result.summary = None
            return result
        result.wait_until_finish()
    except Exception as e:
        # The runner has logged the traceback; the user gets one line naming the cause.
        # The final step explains a withheld output in summary.json, and has released
        # the marker then.
        pio.release_run_marker(cfg.output, cfg.run_id)
        summary = pio.read_summary(cfg.output)
        if summary is not None and summary.get("run_id") == cfg.run_id and summary.get("error"):
            gated = summary.get("status") == publish.GATED
            raise (pio.JobGated if gated else JobError)(summary["error"]) from e
        raise JobError(
            f"the job failed, {pio.SUCCESS} not written: {type(e).__name__}: {e}"
        ) from e
    # The pipeline has published (or refused to); all that is left is to read its summary.
    summary = pio.read_summary(cfg.output) or {}
    if summary.get("run_id") != cfg.run_id or summary.get("status") != publish.PUBLISHED:
        raise JobError(f"the job finished but left no summary of run {cfg.run_id} in "
                       f"{cfg.output}; {pio.SUCCESS} not written")
    # `pairscore score` prints a short summary; the JSON only with --verbose.
    log.debug("summary: %s", json.dumps(summary))
    result.summary = {**summary, "counters": _counters(result)}
    result.output = cfg.output
    return result
