"""The `pairscore` command: train, evaluate and export models; score pairs with Beam.

    pairscore default-model --output models/default
    pairscore sample --output data/sample.parquet --pairs 1000
    pairscore store info URI;  pairscore store compact URI [--model-fingerprint F]
    pairscore labels import training.json --to labels/ --format dedupe;  pairscore labels info L
    pairscore score --input 'data/*.parquet' --output out/ --model models/default
    pairscore publish out/ --accept        (a run a gate held back, once looked at)
    pairscore review out/ --labels labels/ (label the night's sample in a local page)
    pairscore estimate out/ --labels labels/  (tonight's precision and recall, measured)
    pairscore train --train pairs.parquet --encoder bilstm --distance l1 --output models/m
    pairscore evaluate --model models/m --data dev.parquet
    pairscore rerank-band --model models/cross --first-model models/m --labelled dev.parquet \\
        --output models/cross-banded   (the cascade's band: score --rerank-model)
    pairscore threshold --model models/m --labelled dev.parquet --target-precision 0.95 \\
        --output models/m-p95
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# After the settings above: TensorFlow reads them when a command first imports it.
from model import cli as model_cli  # noqa: E402  (train, evaluate, default-model)
from pipeline import logs  # noqa: E402


class HelpFormatter(model_cli.HelpFormatter):
    """model_cli's (each option's default), with a flag's spellings named once before
    its value (`--id-column, --id_column ID_COLUMN`), no empty default shown, and a
    description or epilog of several lines printed as written."""

    def _get_help_string(self, action):
        if action.default == "":
            return action.help or ""
        return super()._get_help_string(action)

    def _format_action_invocation(self, action):
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        value = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{', '.join(action.option_strings)} {value}"

    def _fill_text(self, text, width, indent):
        if "\n" not in text:  # one paragraph: wrapped to the terminal
            return super()._fill_text(text, width, indent)
        return "".join(indent + line for line in text.splitlines(keepends=True))


def _parser(prog: str, description: str, **kwargs) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description,
                                   formatter_class=HelpFormatter, **kwargs)


SCORE_DESCRIPTION = """\
Score candidate pairs (Parquet: pair_id, text_a, text_b) with a model directory, on
Apache Beam. Writes OUT/labels/ (each pair's score and is_duplicate), OUT/rejects/ (rows
not scored, each with its reason), OUT/review/, OUT/report.html and OUT/summary.json,
then OUT/_SUCCESS. Runs in this process by default; on Dataflow with --runner
DataflowRunner (docs/dataflow.md).

Exit status: 0 published; 2 a usage or input error, or the job failed; 3 a gate held
the run back (look at OUT/report.html, then: pairscore publish OUT --accept)."""

# Beam's and Dataflow's own pipeline options, which `pairscore score` takes too: the ones
# most runs use (tests/test_help.py checks each is a flag Beam defines).
SCORE_EPILOG = """\
Beam and Dataflow pipeline options are accepted too (a mistyped one is refused, naming
the closest); the common ones:
  --runner NAME              DataflowRunner runs on Dataflow (default: in this process)
  --direct_num_workers N     in this process: parallel workers (default: 1)
  --project ID --region R    Dataflow: the Google Cloud project and region
  --temp_location gs://B/T   Dataflow: temporary and staging files
  --sdk_container_image IMG  Dataflow: the workers' image (the Dockerfile builds it)
  --machine_type T --num_workers N --max_num_workers N
                             Dataflow: the worker machines, and how many
  --experiments X --dataflow_service_options X
                             Dataflow: e.g. use_runner_v2, worker_accelerator=...
  --job_name NAME            Dataflow: the job's name
  --s3_endpoint_url URL --s3_access_key_id K --s3_secret_access_key S --s3_region_name R
                             s3:// paths on S3 or an S3-compatible store (MinIO)
  --dry_run True             build the job graph only: read nothing, run nothing
--profile dataflow-gpu sets the Dataflow GPU flags at once; docs/dataflow.md explains
each. Every option: https://cloud.google.com/dataflow/docs/reference/pipeline-options
and https://beam.apache.org/releases/pydoc/current/apache_beam.options.pipeline_options.html"""


def score_parser() -> argparse.ArgumentParser:
    """`pairscore score --help`: ScoreOptions' flags, under pairscore's name. Beam parses
    the command line itself (with every options class); this parser only prints help."""
    from pipeline.options import ScoreOptions

    p = _parser("pairscore score", SCORE_DESCRIPTION, epilog=SCORE_EPILOG,
                usage="pairscore score --input PAIRS --output OUT --model MODEL [flags] "
                "[Beam pipeline options]")
    ScoreOptions._add_argparse_args(p)
    return p


def _path(output: str, name: str) -> str:
    from model.storage import join

    return join(output, name)


def summary_lines(summary: dict, output: str) -> list[str]:
    """A published run in a few lines: what was scored, where everything is, what next.
    summary.json, on disk, has every figure."""
    reasons = ", ".join(f"{k} {v}" for k, v in summary["rejected_by_reason"].items())
    rate = summary.get("duplicate_rate")
    lines = [
        f"published run {summary['run_id']} in {output}:",
        f"  {summary['rows_in']} rows in: {summary['scored']} scored, "
        f"{summary['rejected']} rejected" + (f" ({reasons})" if reasons else ""),
        f"  {summary['duplicates']} duplicates"
        + (f" ({rate:.1%} of scored)" if rate is not None else "")
        + f" at threshold {summary['threshold']:g}",
    ]
    report = _path(output, "report.html")
    if summary.get("report_error"):
        seen = f"not written: {summary['report_error']}"
    elif "://" in output:
        seen = "the run's figures, one self-contained page"
    else:
        seen = "the run's figures: file://" + os.path.abspath(report)
    files = [(_path(output, "labels") + "/", "each pair's score and is_duplicate"),
             (_path(output, "rejects") + "/", "the rows not scored, each with its reason")]
    if summary.get("review"):
        files.append((summary["review"]["path"].rstrip("/") + "/",
                      f"the {summary['review']['pairs']} pairs scored nearest the "
                      "threshold, to label"))
    if summary.get("sample"):
        files.append((summary["sample"]["path"].rstrip("/") + "/",
                      f"a random sample of {summary['sample']['pairs']} pairs and its "
                      "design, to label for tonight's precision and recall"))
    if summary.get("groups"):
        files.append((_path(output, "groups") + "/",
                      f"{summary['groups']['groups']} groups of duplicates"))
    files += [(report, seen), (_path(output, "summary.json"), "every figure, as JSON")]
    width = max(len(path) for path, _ in files)
    lines += [f"  {path.ljust(width)}  {what}" for path, what in files]
    me = _command()
    lines += [f"next: {me} score --help   (every flag: your columns, the threshold, gates, "
              "Dataflow)",
              f"      {me} score --input 'mine/*.parquet' --output out/mine --model "
              + summary["model"]]
    return lines


def _command() -> str:
    """pairscore as it was typed when that was a relative path (`make demo`:
    .venv/bin/pairscore, not on PATH), else `pairscore`."""
    typed = sys.argv[0] if sys.argv else ""
    if os.path.basename(typed) == "pairscore" and "/" in typed and not os.path.isabs(typed):
        return typed
    return "pairscore"


def _score(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        score_parser().print_help()
        return 0
    if "--verbose" in argv:  # a store_true flag: no value can be spelt like it
        logging.getLogger("pairscore").setLevel(logging.DEBUG)
    from pipeline.io import GATED_EXIT, JobGated
    from pipeline.job import JobError, run
    from pipeline.publish import PUBLISHED

    try:
        result = run(argv)
    except JobGated as e:
        print(f"pairscore score: {e}", file=sys.stderr)  # "gated: <which gates>; ..."
        return GATED_EXIT
    except JobError as e:
        print(f"pairscore score: error: {e}", file=sys.stderr)
        return 2
    summary = getattr(result, "summary", None)  # None: --detach, or a dry run
    if summary and summary.get("status") == PUBLISHED:
        print("\n".join(summary_lines(summary, result.output)))
    return 0


def publish_parser() -> argparse.ArgumentParser:
    p = _parser("pairscore publish",
                "Publish a run that a gate held back, after a person has looked at its "
                "report: the staged output moves into place and _SUCCESS is written, "
                "without scoring again (the staged rows are counted again first).")
    p.add_argument("output", help="the gated run's output directory (local, gs://, s3://)")
    p.add_argument("--accept", action="store_true", required=True,
                   help="yes, publish it: its figures were looked at and are fine")
    p.add_argument("--stale-run-after", type=float, default=None, metavar="SECONDS",
                   help="as for pairscore score: a run marker older than this is stale")
    return p


def _publish(argv: list[str]) -> int:
    args = publish_parser().parse_args(argv)
    from pipeline import publish
    from pipeline.io import STALE_RUN_AFTER_S, JobError

    try:
        summary = publish.accept_run(args.output, args.stale_run_after or STALE_RUN_AFTER_S)
    except JobError as e:
        print(f"pairscore publish: error: {e}", file=sys.stderr)
        return 2
    gates = ", ".join(g["flag"] for g in summary["accepted"]["gates"])
    print(f"published run {summary['run_id']} in {args.output} ({summary['scored']} scored, "
          f"{summary['rejected']} rejected), accepted over {gates}")
    kept = summary["accepted"].get("store")
    if kept and not kept["committed"]:
        print(f"store generation not committed: {kept['why']}")
    return 0


def sample_parser() -> argparse.ArgumentParser:
    p = _parser("pairscore sample", "Write a sample candidate-pairs Parquet file.")
    p.add_argument("--output", required=True, help="Parquet file to write")
    p.add_argument("--pairs", type=int, default=1000, help="number of pairs")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    return p


def _sample(argv: list[str]) -> int:
    args = sample_parser().parse_args(argv)
    from pipeline.sample import write_sample

    n = write_sample(args.output, args.pairs, args.seed)
    print(f"wrote {n} pairs to {args.output}")
    return 0


def _configure_storage(beam_flags: list[str]) -> None:
    """The flags a command did not know must be Beam's storage flags (--s3_endpoint_url,
    ...): they configure the file systems. An unknown one raises JobError naming it."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.options import check_known_flags

    check_known_flags(beam_flags)
    FileSystems.set_options(PipelineOptions(beam_flags))


def store_parser() -> argparse.ArgumentParser:
    p = _parser("pairscore store", "Inspect or compact an embedding store (--embedding-store). "
                "Beam's storage flags (--s3_endpoint_url, ...) are accepted too.")
    p.error = lambda message: p.exit(2, f"pairscore store: error: {message}\n")
    sub = p.add_subparsers(dest="action", required=True, metavar="{info,compact}",
                           help="what to do (pairscore store ACTION --help: its flags)")
    info = sub.add_parser("info", help="entries, generations and bytes per model fingerprint",
                          formatter_class=HelpFormatter)
    info.add_argument("uri", help="the store's URI (local, gs://, s3://)")
    info.add_argument("--json", action="store_true", help="print JSON")
    compact = sub.add_parser("compact", help="merge committed generations into one, "
                             "deduplicated; remove superseded and dead runs' generations",
                             formatter_class=HelpFormatter)
    compact.add_argument("uri", help="the store's URI (local, gs://, s3://)")
    compact.add_argument("--model-fingerprint", "--model_fingerprint", dest="fingerprint",
                         help="compact this fingerprint's part only (default: every one)")
    compact.add_argument("--stale-after", "--stale_after", dest="stale_after", type=float,
                         default=None, metavar="SECONDS",
                         help="remove uncommitted generations older than this (default "
                         "86400: younger ones may be runs still writing)")
    for sp in (info, compact):
        sp.error = lambda message, sp=sp: sp.exit(2, f"{sp.prog}: error: {message}\n")
    return p


def _store(argv: list[str]) -> int:
    args, beam_flags = store_parser().parse_known_args(argv)
    import json

    from pipeline import store
    from pipeline.io import JobError

    prog = f"pairscore store {args.action}"
    try:
        _configure_storage(beam_flags)
        if args.action == "info":
            rows = store.info(args.uri)
            if not rows:
                raise JobError(f"{args.uri} holds no embedding store")
            if args.json:
                print(json.dumps(rows, indent=2))
            for r in [] if args.json else rows:
                print(f"{r['namespace']}: {r['entries']} entries, {r['generations']} "
                      f"generations, {r['files']} files, {r['bytes']} bytes (format "
                      f"{r['format_version']}, dim {r['dim']}; superseded "
                      f"{r['superseded_generations']}, uncommitted "
                      f"{r['uncommitted_generations']}; {len(r['set_aside'])} files set "
                      "aside)")
                for a in r["set_aside"]:
                    print(f"  set aside: {a['copy']} (was {a['file']}: {a['reason']})")
            return 0
        known = store.fingerprints(args.uri)  # namespaces: <fingerprint>-<settings>
        fps = known if not args.fingerprint else [
            n for n in known if args.fingerprint in (n, n.split("-")[0])]
        if not known:
            raise JobError(f"{args.uri} holds no embedding store")
        if not fps:
            raise JobError(f"{args.uri} has no entries for model fingerprint "
                           f"{args.fingerprint} (it has: {', '.join(known) or 'none'})")
        for fp in fps:
            stale = store.STALE_GENERATION_S if args.stale_after is None else args.stale_after
            print(json.dumps(store.compact(args.uri, fp, stale)))
    except JobError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


def review_parser() -> argparse.ArgumentParser:
    p = _parser("pairscore review",
                "Serve the review page: label the night's sample (OUT/sample/) in a local "
                "browser page, keys y / n / u (duplicate, not, unsure) and b (back). Each "
                "label is saved to the labels dataset as it is made. Another labeller: "
                "open the page at /?labeller=NAME, or run a second server on another "
                "--port. docs/people.md explains the page.")
    p.add_argument("output", help="the scored run's output directory, with its sample/ "
                   "(local, gs://, s3://)")
    p.add_argument("--labels", required=True, metavar="URI",
                   help="the labels dataset to save to and resume from (a directory or "
                   "bucket prefix; created if missing)")
    p.add_argument("--labeller", default=None, metavar="NAME",
                   help="who labels (letters, digits, . _ -; default: the OS user)")
    p.add_argument("--blind", action="store_true",
                   help="hide the model's score (and stratum) from the page")
    p.add_argument("--port", type=int, default=8765, help="the port to serve on")
    p.add_argument("--host", default="127.0.0.1",
                   help="the address to bind (this machine only by default)")
    return p


def _review(argv: list[str]) -> int:
    args = review_parser().parse_args(argv)
    from pipeline import review
    from pipeline.io import JobError

    try:
        app = review.create_app(args.output, args.labels, args.labeller, args.blind)
    except (JobError, ValueError) as e:
        print(f"pairscore review: error: {e}", file=sys.stderr)
        return 2
    # Werkzeug's own request lines stay out of the way of the URL printed here.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"review page for {args.output}: http://{host}:{args.port}/ (Ctrl-C stops it; "
          f"labels saved to {args.labels})", flush=True)
    try:
        app.run(host=args.host, port=args.port, threaded=True)
    except KeyboardInterrupt:
        pass
    return 0


def labels_parser() -> argparse.ArgumentParser:
    p = _parser("pairscore labels",
                "Work with a labels dataset (a directory or bucket prefix of Parquet files, "
                "docs/people.md \"Labels as data\"): import dedupe's or Splink's labels, "
                "export a CSV, or summarise it. Beam's storage flags (--s3_endpoint_url, ...) "
                "are accepted too.")
    p.error = lambda message: p.exit(2, f"pairscore labels: error: {message}\n")
    sub = p.add_subparsers(dest="action", required=True, metavar="{import,export,info}",
                           help="what to do (pairscore labels ACTION --help: its flags)")
    imp = sub.add_parser("import", help="convert dedupe's training JSON or a Splink labels "
                         "table into one new file of the dataset", formatter_class=HelpFormatter)
    imp.add_argument("source", help="the file to convert: dedupe's training JSON, or a Splink "
                     "labels table (.parquet or .csv)")
    imp.add_argument("--to", required=True, metavar="URI",
                     help="the labels dataset to add to (local, gs://, s3://; created if "
                     "missing)")
    imp.add_argument("--format", required=True, choices=["dedupe", "splink"],
                     help="the source's format")
    imp.add_argument("--labeller", default=None, metavar="NAME",
                     help="who labelled (default: Splink's labeller column, else the OS user)")
    imp.add_argument("--run-id", "--run_id", dest="run_id", default=None, metavar="R",
                     help="the run_id to record (default: null)")
    imp.add_argument("--text-field", "--text_field", dest="text_field", default=None,
                     metavar="FIELD", help="dedupe: the record field holding the text "
                     "(default: the records' only string field)")
    imp.add_argument("--pair-id-field", "--pair_id_field", dest="pair_id_field", default=None,
                     metavar="NAME", help="dedupe: a record id field (pair_id becomes "
                     "'<id of a>|<id of b>'; default: a hash of the two texts); splink: the "
                     "column holding pair_id (default: '<unique_id_l>|<unique_id_r>')")
    imp.add_argument("--text-column-l", "--text_column_l", dest="text_column_l",
                     default="text_l", metavar="COLUMN",
                     help="splink: the column of the left record's text")
    imp.add_argument("--text-column-r", "--text_column_r", dest="text_column_r",
                     default="text_r", metavar="COLUMN",
                     help="splink: the column of the right record's text")
    exp = sub.add_parser("export", help="write every row (or one row per pair, resolved) as "
                         "CSV", formatter_class=HelpFormatter)
    exp.add_argument("uri", help="the labels dataset (local, gs://, s3://)")
    exp.add_argument("--output", required=True, metavar="FILE.csv",
                     help="the CSV file to write (local, gs://, s3://)")
    exp.add_argument("--resolved", action="store_true",
                     help="one row per pair: the labellers' latest labels resolved, with "
                     "n_labellers (label empty when they disagree or are all unsure)")
    info = sub.add_parser("info", help="rows, pairs, labellers, labels and disagreements",
                          formatter_class=HelpFormatter)
    info.add_argument("uri", help="the labels dataset (local, gs://, s3://)")
    info.add_argument("--json", action="store_true", help="print JSON")
    for sp in (imp, exp, info):
        sp.error = lambda message, sp=sp: sp.exit(2, f"{sp.prog}: error: {message}\n")
    return p


def _labels_import(args) -> str:
    import getpass
    import json

    from model import labels

    if args.format == "dedupe":
        with labels.storage.filesystems().open(args.source,
                                               compression_type="uncompressed") as f:
            raw = f.read()
        try:
            training = json.loads(raw)
        except ValueError as e:
            raise ValueError(f"{args.source} is not JSON: {e}") from None
        table = labels.from_dedupe(training, args.labeller or getpass.getuser(),
                                   args.text_field, args.pair_id_field, args.run_id,
                                   where=args.source)
    else:
        table = labels.from_splink(labels.read_table_file(args.source), args.labeller,
                                   args.text_column_l, args.text_column_r, args.pair_id_field,
                                   args.run_id, where=args.source)
    if not table.num_rows:
        raise ValueError(f"{args.source} holds no labelled pairs")
    path = labels.save_labels(args.to, table)
    counts = table.column("label").to_pylist()
    return (f"imported {table.num_rows} labels ({counts.count(1)} duplicate, {counts.count(0)} "
            f"not, {counts.count(None)} unsure) from {args.source} into {path}")


def _labels_info_text(uri: str, got: dict) -> str:
    lines = [f"{uri}: {got['rows']} rows, {got['pairs']} pairs, "
             f"{len(got['labellers'])} labellers"]
    for name, c in got["labellers"].items():
        lines.append(f"  {name}: {c['pairs']} pairs ({c['duplicate']} duplicate, "
                     f"{c['not_duplicate']} not, {c['unsure']} unsure)")
    r = got["resolved"]
    lines.append(f"resolved pairs: {r['duplicate']} duplicate, {r['not_duplicate']} not, "
                 f"{r['unsure']} unsure, {r['disagreed']} disagreed")
    d = got["disagreements"]
    lines.append(f"disagreements: {d['count']}")
    for row in d["first"]:
        said = ", ".join(f"{who}={'unsure' if lab is None else lab}"
                         for who, lab in zip(row["labellers"], row["labels"]))
        lines.append(f"  {row['pair_id']}: {said}")
    if d["count"] > len(d["first"]):
        lines.append(f"  ... and {d['count'] - len(d['first'])} more (pairscore labels "
                     "export URI --resolved --output F.csv: every pair)")
    return "\n".join(lines)


def _labels(argv: list[str]) -> int:
    args, beam_flags = labels_parser().parse_known_args(argv)
    import json

    from model import labels
    from pipeline.io import JobError

    prog = f"pairscore labels {args.action}"
    try:
        _configure_storage(beam_flags)
        if args.action == "import":
            print(_labels_import(args))
        elif args.action == "export":
            table = labels.read_labels(args.uri)
            if args.resolved:
                table = labels.resolve(table)[0]
            labels.write_csv(args.output, table)
            print(f"wrote {table.num_rows} {'pairs' if args.resolved else 'rows'} to "
                  f"{args.output}")
        else:
            got = labels.info(labels.read_labels(args.uri))
            print(json.dumps(got, indent=2) if args.json else _labels_info_text(args.uri, got))
    except (JobError, ValueError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


def estimate_parser() -> argparse.ArgumentParser:
    p = _parser("pairscore estimate",
                "Tonight's precision and recall, measured from people's labels of the "
                "night's sample (OUT/sample/), each with an interval for the stratified "
                "design, and the same figures at other thresholds. Writes OUT/estimate.json "
                "and rewrites OUT/report.html with a \"Measured by people\" section. "
                "Beam's storage flags (--s3_endpoint_url, ...) are accepted too. "
                "docs/people.md explains the estimator and the interval.")
    p.add_argument("output", help="the scored run's output directory, with its sample/ "
                   "(local, gs://, s3://)")
    p.add_argument("--labels", required=True, metavar="URI",
                   help="the labels dataset (only the labels of this run's sample count)")
    p.add_argument("--confidence", type=float, default=0.95,
                   help="the intervals' confidence level, between 0 and 1")
    p.add_argument("--threshold", type=float, default=None, metavar="T",
                   help="estimate at this threshold instead of the night's (summary.json)")
    p.add_argument("--json", action="store_true",
                   help="print the estimate as JSON (the fields of OUT/estimate.json)")
    p.error = lambda message: p.exit(2, f"pairscore estimate: error: {message}\n")
    return p


def _estimate(argv: list[str]) -> int:
    args, beam_flags = estimate_parser().parse_known_args(argv)
    import json

    from pipeline import estimate
    from pipeline.io import JobError

    try:
        _configure_storage(beam_flags)
        result = estimate.for_run(args.output, args.labels, args.confidence, args.threshold)
    except (JobError, ValueError, OSError) as e:
        print(f"pairscore estimate: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("\n".join(estimate.lines(result)))
        print(f"  written: {_path(args.output, 'estimate.json')}, "
              f"{_path(args.output, 'report.html')}")
    return 0


COMMANDS = {
    **model_cli.COMMANDS,
    "score": _score,
    "publish": _publish,
    "sample": _sample,
    "store": _store,
    "labels": _labels,
    "review": _review,
    "estimate": _estimate,
}
# The parser behind each command's --help (tests/test_help.py: one per command).
PARSERS = {
    "train": model_cli.train_parser,
    "evaluate": model_cli.evaluate_parser,
    "default-model": model_cli.default_model_parser,
    "threshold": model_cli.threshold_parser,
    "rerank-band": model_cli.rerank_band_parser,
    "score": score_parser,
    "publish": publish_parser,
    "sample": sample_parser,
    "store": store_parser,
    "labels": labels_parser,
    "review": review_parser,
    "estimate": estimate_parser,
}
# `pairscore --help`, one line each (without building the parsers: train's loads Keras).
SUMMARIES = {
    "score": "score candidate pairs: labels, rejects, report.html, summary.json",
    "publish": "publish a run a gate held back, once its report was looked at",
    "sample": "write a sample candidate-pairs Parquet file",
    "default-model": "export the built-in pretrained MiniLM model",
    "store": "inspect (info) or compact an embedding store",
    "labels": "import (dedupe, Splink), export (CSV) or summarise a labels dataset",
    "review": "serve the review page: label the night's sample by keyboard",
    "estimate": "tonight's precision and recall from the sample's labels, with intervals",
    "train": "train a Siamese model or a cross-encoder (--architecture cross)",
    "evaluate": "evaluate models on labelled pairs; optionally write a report",
    "threshold": "choose a model's threshold for a target precision or recall",
    "rerank-band": "choose a cross-encoder's re-scoring band for one Siamese model",
}


def overview() -> str:
    """`pairscore --help`: the commands, then the module docstring's examples."""
    width = max(map(len, SUMMARIES))
    examples = __doc__.strip().split("\n", 1)[1].strip("\n")
    return "\n".join([
        "usage: pairscore COMMAND [flags]    (pairscore COMMAND --help: its flags)",
        "",
        "Score text pairs for duplicates with a Siamese model on Apache Beam; train,",
        "evaluate and export the models.",
        "",
        "commands:",
        *(f"  {name.ljust(width)}  {line}" for name, line in SUMMARIES.items()),
        "",
        "examples:",
        examples,
    ])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(overview())
        return 0
    if argv[0] not in COMMANDS:
        close = difflib.get_close_matches(argv[0], COMMANDS, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        print(f"pairscore: unknown command {argv[0]!r}{hint} (pairscore --help lists "
              "them)", file=sys.stderr)
        return 2
    logs.quiet_startup(native=False)
    return COMMANDS[argv[0]](argv[1:])


def console() -> None:
    """The `pairscore` console script: `main`, with TensorFlow's native start-up noise
    dropped from stderr too (pipeline/logs.py)."""
    logs.quiet_startup(native=True)
    sys.exit(main())


if __name__ == "__main__":
    console()
