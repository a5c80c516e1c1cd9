"""The `pairscore` command: train, evaluate and export models; score pairs with Beam.

    pairscore default-model --output models/default
    pairscore sample --output data/sample.parquet --pairs 1000
    pairscore store info URI;  pairscore store compact URI [--model-fingerprint F]
    pairscore score --input 'data/*.parquet' --output out/ --model models/default
    pairscore publish out/ --accept        (a run a gate held back, once looked at)
    pairscore train --train pairs.parquet --encoder bilstm --distance l1 --output models/m
    pairscore evaluate --model models/m --data dev.parquet
    pairscore threshold --model models/m --labelled dev.parquet --target-precision 0.95 \
        --output models/m-p95
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# After the settings above: TensorFlow reads them when a command first imports it.
from model import cli as model_cli  # noqa: E402  (train, evaluate, default-model)
from pipeline import logs  # noqa: E402


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=model_cli.HelpFormatter
    )


def _score(argv: list[str]) -> int:
    from pipeline.io import GATED_EXIT, JobGated
    from pipeline.job import JobError, run

    try:
        run(argv)
    except JobGated as e:
        print(f"pairscore score: {e}", file=sys.stderr)  # "gated: <which gates>; ..."
        return GATED_EXIT
    except JobError as e:
        print(f"pairscore score: error: {e}", file=sys.stderr)
        return 2
    return 0


def _publish(argv: list[str]) -> int:
    p = _parser("pairscore publish",
                "Publish a run that a gate held back, after a person has looked at its "
                "report: the staged output moves into place and _SUCCESS is written, "
                "without scoring again (the staged rows are counted again first).")
    p.add_argument("output", help="the gated run's output directory (local, gs://, s3://)")
    p.add_argument("--accept", action="store_true", required=True,
                   help="yes, publish it: its figures were looked at and are fine")
    p.add_argument("--stale-run-after", type=float, default=None, metavar="SECONDS",
                   help="as for pairscore score: a run marker older than this is stale")
    args = p.parse_args(argv)
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


def _sample(argv: list[str]) -> int:
    p = _parser("pairscore sample", "Write a sample candidate-pairs Parquet file.")
    p.add_argument("--output", required=True, help="Parquet file to write")
    p.add_argument("--pairs", type=int, default=1000, help="number of pairs")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    args = p.parse_args(argv)
    from pipeline.sample import write_sample

    n = write_sample(args.output, args.pairs, args.seed)
    print(f"wrote {n} pairs to {args.output}")
    return 0


def _store(argv: list[str]) -> int:
    p = _parser("pairscore store", "Inspect or compact an embedding store (--embedding-store).")
    p.error = lambda message: p.exit(2, f"pairscore store: error: {message}\n")
    sub = p.add_subparsers(dest="action", required=True, metavar="{info,compact}")
    info = sub.add_parser("info", help="entries, generations and bytes per model fingerprint")
    info.add_argument("uri", help="the store's URI (local, gs://, s3://)")
    info.add_argument("--json", action="store_true", help="print JSON")
    compact = sub.add_parser("compact", help="merge committed generations into one, "
                             "deduplicated; remove superseded and dead runs' generations")
    compact.add_argument("uri", help="the store's URI (local, gs://, s3://)")
    compact.add_argument("--model-fingerprint", "--model_fingerprint", dest="fingerprint",
                         help="compact this fingerprint's part only (default: every one)")
    compact.add_argument("--stale-after", "--stale_after", dest="stale_after", type=float,
                         default=None, metavar="SECONDS",
                         help="remove uncommitted generations older than this (default "
                         "86400: younger ones may be runs still writing)")
    for sp in (info, compact):
        sp.error = lambda message, sp=sp: sp.exit(2, f"{sp.prog}: error: {message}\n")
    args, beam_flags = p.parse_known_args(argv)
    import json

    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline import store
    from pipeline.io import JobError
    from pipeline.options import check_known_flags

    prog = f"pairscore store {args.action}"
    try:
        # Beam's storage flags (--s3_endpoint_url, ...) configure the file systems.
        check_known_flags(beam_flags)
        FileSystems.set_options(PipelineOptions(beam_flags))
        if args.action == "info":
            rows = store.info(args.uri)
            if not rows:
                raise JobError(f"{args.uri} holds no embedding store")
            if args.json:
                print(json.dumps(rows, indent=2))
            for r in [] if args.json else rows:
                print(f"{r['fingerprint']}: {r['entries']} entries, {r['generations']} "
                      f"generations, {r['files']} files, {r['bytes']} bytes (format "
                      f"{r['format_version']}, dim {r['dim']}; superseded "
                      f"{r['superseded_generations']}, uncommitted "
                      f"{r['uncommitted_generations']}; {len(r['set_aside'])} files set "
                      "aside)")
                for a in r["set_aside"]:
                    print(f"  set aside: {a['copy']} (was {a['file']}: {a['reason']})")
            return 0
        fps = [args.fingerprint] if args.fingerprint else store.fingerprints(args.uri)
        if not fps:
            raise JobError(f"{args.uri} holds no embedding store")
        known = store.fingerprints(args.uri)
        for fp in fps:
            if fp not in known:
                raise JobError(f"{args.uri} has no entries for model fingerprint {fp} "
                               f"(it has: {', '.join(known) or 'none'})")
            stale = store.STALE_GENERATION_S if args.stale_after is None else args.stale_after
            print(json.dumps(store.compact(args.uri, fp, stale)))
    except JobError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


COMMANDS = {
    **model_cli.COMMANDS,
    "score": _score,
    "publish": _publish,
    "sample": _sample,
    "store": _store,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        print("\ncommands: " + ", ".join(COMMANDS))
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    logs.quiet_startup(native=False)
    return COMMANDS[argv[0]](argv[1:])


def console() -> None:
    """The `pairscore` console script: `main`, with TensorFlow's native start-up noise
    dropped from stderr too (pipeline/logs.py)."""
    logs.quiet_startup(native=True)
    sys.exit(main())


if __name__ == "__main__":
    console()
