"""The scoring job: Parquet candidate pairs in, duplicate labels (and rejects) out.

    pairscore score --input 'pairs/*.parquet' --output out/ --model models/default

Shape: ReadPairs -> Validate -> Rebatch -> Tokenize -> Score (RunInference) -> Threshold
-> WriteLabels, with rejected rows from Validate and Tokenize -> WriteRejects. Every step
works on whole Arrow tables or padded numpy batches. After the run the launcher counts
what was written and writes summary.json, then _SUCCESS only if rows_in equals
scored + rejected.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import WriteToParquetBatched
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import (
    DirectOptions,
    PipelineOptions,
    StandardOptions,
    TestOptions,
)
from apache_beam.runners.runner import PipelineResult
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from model.config import ModelDirError, check_model_dir, join
from pipeline import io as pio
from pipeline import profiles, unique
from pipeline.handler import PRECISIONS, PairModelHandler
from pipeline.io import JobError
from pipeline.packing import label_table, pack_table
from pipeline.validate import REASON, reject_all, validate_table

log = logging.getLogger("pairscore.job")
NAMESPACE = "pairscore"
FNAPI = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"


class ScoreOptions(PipelineOptions):
    """pairscore's own flags; every other flag is a Beam pipeline option."""

    @classmethod
    def _add_argparse_args(cls, parser):
        # Not argparse-required: Beam parses every options class whenever any view is made.
        parser.add_argument("--input", help="Parquet file or glob of candidate pairs")
        parser.add_argument("--output", help="output directory (local, gs://, s3://)")
        parser.add_argument("--model", help="pairscore model directory")
        parser.add_argument("--id-column", "--id_column", dest="id_column", default="pair_id")
        parser.add_argument("--text-a-column", "--text_a_column", dest="text_a_column",
                            default="text_a")
        parser.add_argument("--text-b-column", "--text_b_column", dest="text_b_column",
                            default="text_b")
        parser.add_argument("--threshold", type=float, default=None,
                            help="duplicate if score >= threshold (default: the model's)")
        parser.add_argument("--keep-columns", "--keep_columns", dest="keep_columns", default="",
                            help="comma-separated input columns copied to the labels")
        parser.add_argument("--overwrite", action="store_true", default=False,
                            help="replace an output directory that holds a finished run")
        parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int,
                            default=None, help="max pairs per model call (CPU 128, GPU 1024)")
        parser.add_argument("--max-batch-tokens", "--max_batch_tokens", dest="max_batch_tokens",
                            type=int, default=None,
                            help="max padded tokens per side per model call")
        parser.add_argument("--rebatch-rows", "--rebatch_rows", dest="rebatch_rows", type=int,
                            default=16384, help="rows gathered before sorting by length")
        parser.add_argument("--large-model", "--large_model", dest="large_model",
                            action="store_true", default=False,
                            help="share one model per worker across SDK processes")
        parser.add_argument("--model-copies", "--model_copies", dest="model_copies", type=int,
                            default=None, help="model copies per worker (e.g. one per GPU)")
        parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu",
                            help="batch-size defaults for this device")
        parser.add_argument("--profile", choices=sorted(profiles.PROFILES), default=None,
                            help="flag preset, e.g. dataflow-gpu (see docs/dataflow.md)")
        parser.add_argument("--mode", choices=unique.MODES, default="auto",
                            help="pairs: encode both texts of every pair; unique: encode each "
                            "distinct text once (pipeline/unique.py); auto: unique when a "
                            "sample of the input shows repeated texts")
        parser.add_argument("--unique-join", "--unique_join", dest="unique_join",
                            choices=unique.JOINS, default="auto",
                            help="unique mode: join embeddings to pairs by side input (small "
                            "sets) or by shuffle (millions of distinct texts); auto sizes it")
        parser.add_argument("--precision", choices=PRECISIONS, default="float32",
                            help="bfloat16: oneDNN mixed precision on CPU, faster but scores "
                            "differ (see docs/performance.md)")
        parser.add_argument("--test-fail-once", "--test_fail_once", dest="test_fail_once",
                            default=None, help="test hook: marker file for one injected failure")


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
    fail_once_marker: str | None = None
    mode: str = "pairs"
    repeat_estimate: float | None = None
    text_buckets: int = 1
    unique_join: str = "side-input"
    join_buckets: int = 1
    precision: str = "float32"

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
        return self.input_schema.append(pa.field(REASON, pa.string()))


def resolve(opts: ScoreOptions, dry_run: bool) -> JobConfig:
    """Every check that can fail before any work: inputs, columns, model, output."""
    missing = [f"--{n}" for n in ("input", "output", "model") if not getattr(opts, n)]
    if missing:
        raise JobError(f"missing required option(s): {', '.join(missing)}")
    text_columns = (opts.text_a_column, opts.text_b_column)
    keep = [c.strip() for c in (opts.keep_columns or "").split(",") if c.strip()]
    if opts.threshold is not None and not 0.0 <= opts.threshold <= 1.0:
        raise JobError(f"--threshold {opts.threshold} is outside [0, 1]")
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
        pio.prepare_output(opts.output, opts.overwrite)
    tok = meta.get("tokenizer", {})
    specials = (tok.get("cls_token") is not None) + (tok.get("sep_token") is not None)
    mode = unique.choose_mode(opts.mode, scan.files, text_columns, rows_in, dry_run,
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
        fail_once_marker=opts.test_fail_once,
        mode=mode.mode,
        repeat_estimate=mode.repeat_estimate,
        text_buckets=mode.buckets,
        unique_join=mode.join,
        join_buckets=mode.join_buckets,
        precision=opts.precision,
    )


def _read_model(model_dir: str, dry_run: bool) -> dict:
    placeholder = {"threshold": 0.5, "max_length": 128, "fingerprint": "dry-run"}
    if dry_run and "://" in model_dir:
        # Never touch remote storage when dry-running: without credentials the GCS
        # client retries for minutes before giving up.
        return placeholder
    if dry_run:
        try:
            return dataclasses.asdict(check_model_dir(model_dir))
        except Exception:  # noqa: BLE001  (a dry run only builds the graph)
            return placeholder
    return dataclasses.asdict(check_model_dir(model_dir))


class ValidateFn(beam.DoFn):
    """Split each Arrow table into valid rows (main output) and rejects (tagged)."""

    def __init__(self, cfg: JobConfig):
        self.id_column = cfg.id_column
        self.text_columns = cfg.text_columns
        self.rows_read = Metrics.counter(NAMESPACE, "rows_read")
        self.rejected = Metrics.counter(NAMESPACE, "rows_rejected")

    def process(self, table):
        self.rows_read.inc(table.num_rows)
        valid, rejects = validate_table(table, self.id_column, self.text_columns)
        if rejects.num_rows:
            self.rejected.inc(rejects.num_rows)
            yield beam.pvalue.TaggedOutput("rejects", rejects)
        if valid.num_rows:
            yield valid


class RebatchFn(beam.DoFn):
    """Gather small tables (row groups can be tiny) into ones of about `rows` rows, so
    that sorting by length inside each has enough rows to make padding small. Holds at
    most about `max_bytes` of input, so that rows of long texts do not pile up."""

    def __init__(self, rows: int, max_bytes: int = 64 << 20):
        self.rows = rows
        self.max_bytes = max_bytes

    def start_bundle(self):
        self.buffer, self.count, self.bytes = [], 0, 0

    def process(self, table):
        self.buffer.append(table)
        self.count += table.num_rows
        self.bytes += table.nbytes
        if self.count >= self.rows or self.bytes >= self.max_bytes:
            yield from self._flush()

    def _flush(self):
        if self.buffer:
            table = pa.concat_tables(self.buffer, promote_options="permissive")
            self.buffer, self.count, self.bytes = [], 0, 0
            for start in range(0, table.num_rows, self.rows):
                yield table.slice(start, self.rows)

    def finish_bundle(self):
        for table in self._flush():
            yield WindowedValue(table, GlobalWindow().max_timestamp(), [GlobalWindow()])


class TokenizeFn(beam.DoFn):
    """Tokenize with the model's own tokenizer.json and pack length-grouped batches."""

    def __init__(self, cfg: JobConfig):
        self.cfg = cfg
        self.rejected = Metrics.counter(NAMESPACE, "rows_rejected")
        self.real = Metrics.counter(NAMESPACE, "real_tokens")
        self.computed = Metrics.counter(NAMESPACE, "computed_tokens")

    def setup(self):
        from apache_beam.io.filesystems import FileSystems
        from tokenizers import Tokenizer

        from model import tokenization
        from model.config import TOKENIZER_FILE

        with FileSystems.open(join(self.cfg.model, TOKENIZER_FILE)) as f:
            tok = Tokenizer.from_str(f.read().decode("utf-8"))
        self.tokenizer = tokenization.configure(tok, self.cfg.max_length)

    def process(self, table):
        cfg = self.cfg
        batches, no_tokens = pack_table(
            self.tokenizer,
            table,
            cfg.text_columns,
            [cfg.id_column, *[c for c in cfg.keep_columns if c != cfg.id_column]],
            cfg.batch_size,
            cfg.max_batch_tokens,
            cfg.min_tokens,
        )
        if no_tokens is not None:
            self.rejected.inc(no_tokens.num_rows)
            yield beam.pvalue.TaggedOutput("rejects", reject_all(no_tokens, "no_tokens"))
        for batch in batches:
            self.real.inc(batch.real_tokens)
            self.computed.inc(batch.computed_tokens)
            yield batch


class ThresholdFn(beam.DoFn):
    """Scores -> label tables; counts and logs progress every few seconds."""

    PROGRESS_EVERY_S = 5.0

    def __init__(self, cfg: JobConfig):
        self.threshold = cfg.threshold
        self.schema = cfg.label_schema
        self.scored = Metrics.counter(NAMESPACE, "rows_scored")
        self.duplicates = Metrics.counter(NAMESPACE, "duplicates")

    def setup(self):
        self.started = self.last = time.time()
        self.done = 0

    def process(self, batch):
        table = label_table(batch, self.threshold, self.schema)
        n = table.num_rows
        self.scored.inc(n)
        self.duplicates.inc(int(pa.compute.sum(table["is_duplicate"]).as_py() or 0))
        self.done += n
        now = time.time()
        if now - self.last >= self.PROGRESS_EVERY_S:
            self.last = now
            log.info("scored %d pairs, %.0f pairs/s", self.done, self.done / (now - self.started))
        yield table


class ScorePairs(beam.PTransform):
    """Arrow tables of candidate pairs -> {'labels': tables, 'rejects': tables}."""

    def __init__(self, cfg: JobConfig, texts: beam.PCollection | None = None):
        super().__init__()
        self.cfg = cfg
        # Unique mode only: a second read of the same tables, for the distinct texts.
        self.texts = texts

    def expand(self, tables):
        cfg = self.cfg
        checked = tables | "Validate" >> beam.ParDo(ValidateFn(cfg)).with_outputs(
            "rejects", main="valid"
        )
        rebatched = checked.valid | "Rebatch" >> beam.ParDo(RebatchFn(cfg.rebatch_rows))
        if cfg.mode == "unique":
            texts = tables if self.texts is None else self.texts
            out = (rebatched, texts) | "Unique" >> unique.ScoreUnique(cfg)
            scored, no_tokens = out["scored"], out["rejects"]
        else:
            packed = rebatched | "Tokenize" >> beam.ParDo(TokenizeFn(cfg)).with_outputs(
                "rejects", main="batches"
            )
            handler = PairModelHandler(
                cfg.model,
                large_model=cfg.large_model,
                model_copies=cfg.model_copies,
                fail_once_marker=cfg.fail_once_marker,
                precision=cfg.precision,
            )
            scored, no_tokens = packed.batches | "Score" >> RunInference(handler), packed.rejects
        labels = scored | "Threshold" >> beam.ParDo(ThresholdFn(cfg))
        rejects = (checked.rejects, no_tokens) | "MergeRejects" >> beam.Flatten()
        return {"labels": labels, "rejects": rejects}


class WriteResults(beam.PTransform):
    def __init__(self, cfg: JobConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, results):
        cfg = self.cfg
        return {
            "labels": results["labels"]
            | "WriteLabels" >> WriteToParquetBatched(
                join(pio.staging(cfg.output), pio.LABELS, "part"),
                schema=cfg.label_schema,
                file_name_suffix=".parquet",
            ),
            "rejects": results["rejects"]
            | "ConformRejects" >> beam.Map(_conform, cfg.reject_schema)
            | "WriteRejects" >> WriteToParquetBatched(
                join(pio.staging(cfg.output), pio.REJECTS, "part"),
                schema=cfg.reject_schema,
                file_name_suffix=".parquet",
            ),
        }


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    return table.select(schema.names).cast(schema)


def build(p: beam.Pipeline, cfg: JobConfig, dry_run: bool = False):
    tables = p | "ReadPairs" >> pio.ReadPairs(cfg.input, validate=not dry_run)
    texts = None
    if cfg.mode == "unique":
        # Read twice rather than hold every pair until the text index is ready.
        texts = p | "ReadTexts" >> pio.ReadPairs(cfg.input, validate=not dry_run)
    scored = tables | "ScorePairs" >> ScorePairs(cfg, texts)
    return scored | "WriteResults" >> WriteResults(cfg)


def _pipeline_options(argv: list[str] | None) -> PipelineOptions:
    options = PipelineOptions(profiles.expand(argv) if argv is not None else None)
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


def finalize(cfg: JobConfig, result: PipelineResult, runner: str, elapsed: float) -> dict:
    """Count what was written; if nothing is lost, move it into place and write
    summary.json, then _SUCCESS. Otherwise leave it staged, write summary.json and fail."""
    label_files = pio.output_files(pio.staging(cfg.output), pio.LABELS)
    reject_files = pio.output_files(pio.staging(cfg.output), pio.REJECTS)
    tally = pio.tally_outputs(label_files, reject_files, cfg.id_column)
    scored, rejected = tally.scored, tally.rejected
    summary = {
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
        "mode": cfg.mode,
        "unique_join": cfg.unique_join if cfg.mode == "unique" else None,
        "repeat_estimate": cfg.repeat_estimate,
        "elapsed_s": round(elapsed, 3),
        "pairs_per_s": round(cfg.rows_in / elapsed, 1) if elapsed > 0 else None,
        "input_files": cfg.input_files,
        "counters": _counters(result),
    }
    summary["invariant_holds"] = cfg.rows_in == scored + rejected
    if not summary["invariant_holds"]:
        pio.write_json(pio.join(cfg.output, pio.SUMMARY), summary)
        raise JobError(
            f"rows lost: rows_in {cfg.rows_in} != scored {scored} + rejected {rejected}; "
            f"{pio.SUCCESS} not written, output left in {pio.staging(cfg.output)} "
            f"(see {pio.join(cfg.output, pio.SUMMARY)})"
        )
    pio.publish(cfg.output)
    pio.write_json(pio.join(cfg.output, pio.SUMMARY), summary)
    # Not empty: Beam's S3 writer cannot create a zero-byte object (S3 rejects a
    # multipart upload with no parts).
    pio.write_text(pio.join(cfg.output, pio.SUCCESS), "ok\n")
    return summary


def run(argv=None, save_main_session=False, test_pipeline=None) -> PipelineResult:
    """Build and run the scoring job; returns the Beam PipelineResult.

    Raises JobError (naming the file, column or setting) for problems found before the
    job starts, and when the written rows do not add up to the rows read.
    """
    options = _pipeline_options(list(argv) if argv is not None else None)
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
    started = time.time()
    if dry_run:
        return p.run()
    try:
        result = p.run()
        result.wait_until_finish()
    except Exception as e:
        # The runner has logged the traceback; the user gets one line naming the cause.
        raise JobError(
            f"the job failed, {pio.SUCCESS} not written: {type(e).__name__}: {e}"
        ) from e
    summary = finalize(cfg, result, runner.rsplit(".", 1)[-1], time.time() - started)
    log.info("summary: %s", json.dumps({k: v for k, v in summary.items() if k != "counters"}))
    result.summary = summary
    return result
