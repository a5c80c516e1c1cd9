"""`pairscore score`'s flags, and the check that refuses any flag nobody defines.

    pairscore score --input 'pairs/*.parquet' --output out/ --model models/default \\
        --threshold 0.9 --direct_num_workers 2

Beam parses its options with `parse_known_args` and only logs "Discarding unparseable
args" for the rest, so `--treshold 0.99` would score with the model's threshold.
`check_known_flags` parses the command line the way Beam does, with every registered
`PipelineOptions` subclass, and raises `JobError` naming the closest valid flag.
"""

from __future__ import annotations

import difflib

from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

from pipeline import profiles
from pipeline.handler import PRECISIONS
from pipeline.io import STALE_RUN_AFTER_S, JobError
from pipeline.planning import JOINS, MODES


class ScoreOptions(PipelineOptions):
    """pairscore's own flags; every other flag is a Beam pipeline option."""

    @classmethod
    def _add_argparse_args(cls, parser):
        # Not argparse-required: Beam parses every options class whenever any view is made.
        parser.add_argument("--input", metavar="PAIRS",
                            help="required: Parquet file or glob of candidate pairs")
        parser.add_argument("--output", metavar="OUT",
                            help="required: output directory (local, gs://, s3://)")
        parser.add_argument("--model", metavar="MODEL",
                            help="required: pairscore model directory (pairscore "
                            "default-model writes one)")
        parser.add_argument("--id-column", "--id_column", dest="id_column", default="pair_id",
                            help="input column identifying each pair (copied to the labels)")
        parser.add_argument("--text-a-column", "--text_a_column", dest="text_a_column",
                            default="text_a", help="input column of the first texts")
        parser.add_argument("--text-b-column", "--text_b_column", dest="text_b_column",
                            default="text_b", help="input column of the second texts")
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
        parser.add_argument("--mode", choices=MODES, default="auto",
                            help="pairs: encode both texts of every pair; unique: encode each "
                            "distinct text once; auto: unique when a sample of the input "
                            "shows repeated texts")
        parser.add_argument("--unique-join", "--unique_join", dest="unique_join",
                            choices=JOINS, default="auto",
                            help="unique mode: join embeddings to pairs by side input (small "
                            "sets) or by shuffle (millions of distinct texts); auto sizes it")
        parser.add_argument("--embedding-store", "--embedding_store", dest="embedding_store",
                            default=None, metavar="URI",
                            help="embedding store shared across runs (local, gs://, s3://): "
                            "texts found there are not encoded again, new embeddings are "
                            "added as one generation when the run succeeds; implies "
                            "unique-text mode")
        parser.add_argument("--precision", choices=PRECISIONS, default="float32",
                            help="bfloat16: oneDNN mixed precision on CPU, faster but scores "
                            "differ (see docs/performance.md)")
        parser.add_argument("--max-model-error-ratio", "--max_model_error_ratio",
                            dest="max_model_error_ratio", type=float, default=0.001,
                            help="fail the job when rows rejected with reason model_error "
                            "exceed this share of rows_in; 0 fails on the first failed batch")
        parser.add_argument("--group-by", "--group_by", dest="group_by", default=None,
                            metavar="LEFT_ID,RIGHT_ID",
                            help="the two columns naming each side's record: also write "
                            "OUT/groups/, the connected components of the duplicate pairs")
        parser.add_argument("--max-group-size", "--max_group_size", dest="max_group_size",
                            type=int, default=1000,
                            help="warn, naming it, about any group larger than this "
                            "(usually a threshold too low)")
        parser.add_argument("--groups-one-worker-max-edges", "--groups_one_worker_max_edges",
                            "--max-group-edges", "--max_group_edges",
                            dest="groups_one_worker_max_edges", type=int, default=20_000_000,
                            metavar="N",
                            help="most duplicate edges grouped on one worker (about 120 "
                            "bytes each); with more, the groups are found in rounds over "
                            "the shuffles, no worker holding much more than N edges "
                            "(--max-group-edges: the old name)")
        parser.add_argument("--groups-from", "--groups_from", dest="groups_from", default=None,
                            metavar="PREVIOUS_OUT",
                            help="a published run with --group-by: carry its groups into "
                            "tonight's (ids kept, merges and new groups in "
                            "OUT/group_changes/); without it, groups start over")
        parser.add_argument("--baseline", default=None, metavar="PREVIOUS_OUT",
                            help="a finished run's output directory: the report and "
                            "summary.json compare this run's scores and rates with it")
        parser.add_argument("--max-score-psi", "--max_score_psi", dest="max_score_psi",
                            type=float, default=None,
                            help="gate: hold the run back (exit 3, no _SUCCESS) when the "
                            "scores' PSI against --baseline is above this (0.25: shifted)")
        parser.add_argument("--max-duplicate-rate-change", "--max_duplicate_rate_change",
                            dest="max_duplicate_rate_change", type=float, default=None,
                            help="gate: hold the run back when the duplicate rate moved "
                            "more than this (absolute, e.g. 0.05) from --baseline's")
        parser.add_argument("--max-reject-rate", "--max_reject_rate", dest="max_reject_rate",
                            type=float, default=None,
                            help="gate: hold the run back when more than this share of "
                            "rows_in is rejected")
        parser.add_argument("--canaries", default=None, metavar="URI",
                            help="labelled pairs (a Parquet file of text_a, text_b, label, or "
                            "a labels dataset) scored with the run through the same path; "
                            "their accuracy and F1 are reported")
        parser.add_argument("--min-canary-accuracy", "--min_canary_accuracy",
                            dest="min_canary_accuracy", type=float, default=None,
                            help="gate: hold the run back when the canaries' accuracy at "
                            "the run's threshold is below this")
        parser.add_argument("--review-pairs", "--review_pairs", dest="review_pairs", type=int,
                            default=1000,
                            help="write the N pairs scored nearest the threshold to "
                            "OUT/review/ for labelling; 0: none")
        parser.add_argument("--review-sample", "--review_sample", dest="review_sample",
                            type=int, default=300, metavar="N",
                            help="write a stratified random sample of N scored pairs, with "
                            "its design, to OUT/sample/ for people to label (precision and "
                            "recall are estimated from it); 0: none")
        parser.add_argument("--review-sample-band", "--review_sample_band",
                            dest="review_sample_band", type=float, default=0.1,
                            metavar="HALF_WIDTH",
                            help="the sample's near_threshold stratum: pairs with "
                            "|score - threshold| below this")
        parser.add_argument("--rerank-model", "--rerank_model", dest="rerank_model",
                            default=None, metavar="CROSS_MODEL",
                            help="the cascade: a cross-encoder model directory (pairscore "
                            "train --architecture cross) re-scores the pairs whose --model "
                            "score falls in the band; they take its score and threshold")
        parser.add_argument("--rerank-band", "--rerank_band", dest="rerank_band",
                            default=None, metavar="LO,HI",
                            help="re-score pairs with LO <= --model score <= HI (default: "
                            "the band pairscore rerank-band stored in the cross model for "
                            "this --model's fingerprint; none stored for it is an error)")
        parser.add_argument("--rerank-batch-size", "--rerank_batch_size",
                            dest="rerank_batch_size", type=int, default=None,
                            help="max pairs per cross-encoder call (default: CPU 64, GPU 512)")
        parser.add_argument("--rerank-max-batch-tokens", "--rerank_max_batch_tokens",
                            dest="rerank_max_batch_tokens", type=int, default=None,
                            help="max padded tokens per side per cross-encoder call "
                            "(default: --rerank-batch-size x 32 on CPU, x 64 on GPU)")
        parser.add_argument("--detach", action="store_true", default=False,
                            help="submit the job and return without waiting (Dataflow, "
                            "a scheduler): the pipeline's last step publishes and writes "
                            "summary.json and _SUCCESS itself")
        parser.add_argument("--stale-run-after", "--stale_run_after", dest="stale_run_after",
                            type=float, default=STALE_RUN_AFTER_S, metavar="SECONDS",
                            help="a run marker (OUT/_RUN.json) older than this is stale and "
                            "taken over; sooner, a marker is taken over only when its run is "
                            "known to be over (a Dataflow job in a terminal state, or a "
                            "local run's process gone from this host)")
        parser.add_argument("--verbose", action="store_true", default=False,
                            help="also log pairscore's debug lines, e.g. the whole "
                            "summary.json as one JSON line")


class _FlagParser(_BeamArgumentParser):
    """Beam's parser, raising JobError where argparse would print usage and exit."""

    def error(self, message):
        if message.startswith("ambiguous option: "):
            return  # as Beam's parser does
        raise JobError(message)


def _option_classes() -> list[type]:
    """Every PipelineOptions subclass defining flags, nested ones too (Beam's own
    `get_all_options` walks only the direct subclasses, but a view of a nested class
    parses its flags)."""
    found, todo = [], list(PipelineOptions.__subclasses__())
    while todo:
        cls = todo.pop(0)
        if cls in found:
            continue
        found.append(cls)
        todo += cls.__subclasses__()
    return [cls for cls in found if "_add_argparse_args" in cls.__dict__]


def _parser() -> _FlagParser:
    # allow_abbrev=False as in Beam: `--thresh` is not `--threshold`. "resolve": an
    # options class defined twice (e.g. in a reloaded module) must not stop the check.
    parser = _FlagParser(allow_abbrev=False, add_help=False, conflict_handler="resolve")
    for cls in _option_classes():
        cls._add_argparse_args(parser)
    # Beam's parser has -h/--help; accept them rather than print help from here.
    parser.add_argument("-h", "--help", action="store_true", dest="_help")
    return parser


def known_flags() -> list[str]:
    """Every option string of pairscore and of the registered Beam options classes."""
    return sorted({s for a in _parser()._actions for s in a.option_strings})


def check_known_flags(argv: list[str]) -> None:
    """Raise JobError for an argument that no options class defines (naming the closest
    valid flag), a stray positional argument, or a flag whose value does not parse.

    Accepts `--flag value` and `--flag=value`; abbreviations are not flags, as in Beam.
    Call it before `profiles.expand` (whose flags are all known) so that a misspelt
    flag is named before a profile complains of a missing one. Options that a portable
    job server announces only at run time are unknown here.
    """
    parser = _parser()
    _, extras = parser.parse_known_args(list(argv))
    options = sorted(s for a in parser._actions for s in a.option_strings if s.startswith("--"))
    problems, i, start = [], 0, 0
    while i < len(extras):
        token = extras[i]
        # Where the token is in argv, to tell an unknown flag's value from a stray.
        at = argv.index(token, start)
        start = at + 1
        i += 1
        if token.startswith("-") and len(token) > 1 and token != "--":
            name = token.split("=", 1)[0]
            close = difflib.get_close_matches(name, options, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            problems.append(f"unknown flag {name}{hint}")
            nxt = i < len(extras) and start < len(argv) and argv[start] == extras[i]
            if "=" not in token and nxt and not extras[i].startswith("-"):
                i, start = i + 1, start + 1  # the unknown flag's value
        elif token != "--":
            problems.append(
                f"unexpected argument {token!r}: every option is --flag value or --flag=value"
            )
    if problems:
        raise JobError("; ".join(problems))

