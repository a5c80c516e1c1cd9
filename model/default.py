"""The built-in default model: pretrained all-MiniLM-L6-v2, mean pooling, cosine head.

No training of the encoder: score = sigmoid(SCALE * (cos - CENTER)), a one-feature
logistic regression (Platt scaling) of the MRPC *train* labels on the pretrained cosine.
The score therefore reads as "probability of a paraphrase" for MRPC-like data, and the
documented threshold 0.5 sits at even odds, cos = CENTER. Measured (docs/results.md):

    data          accuracy  precision  recall  F1     ROC-AUC   (threshold 0.5)
    mrpc_dev      0.734     0.755      0.910   0.826  0.763
    qqp_sample    0.722     0.584      0.932   0.718  0.860

MRPC is 68% paraphrases, so its even-odds cosine is lenient for data with fewer
duplicates (QQP's best-F1 cosine is 0.77): fit it to your own labels with

    pairscore default-model --output models/mine --calibrate labelled.parquet

and prefer a fine-tuned model (`pairscore train`) when you have a few thousand labels.
The best-F1 cosine on MRPC train (0.60) was rejected as the centre: it calls 95% of MRPC
pairs paraphrases and costs 4 accuracy points on QQP.
"""

from __future__ import annotations

import numpy as np

from model import tokenization
from model.config import ModelMetadata

# Fitted by `calibrate("../shared/data/mrpc_train.parquet")` (3,576 pairs).
SCALE = 6.90
CENTER = 0.673
THRESHOLD = 0.5


def build(max_length: int = 128, scale: float = SCALE, center: float = CENTER):
    """(encoder, head, tokenizer) of the default model, score = sigmoid(scale (cos - center))."""
    from model import layers, train

    encoder = layers.bert_encoder(train.bert_backbone(), "mean", trainable=False)
    head = layers.DistanceHead("cosine", name="head")
    dim = encoder.output.shape[-1]
    head(np.zeros((1, dim), "float32"), np.ones((1, dim), "float32"))
    head.classifier.set_weights(
        [np.array([[scale]], dtype="float32"), np.array([-scale * center], dtype="float32")]
    )
    tok = tokenization.configure(train.minilm_tokenizer(), max_length)
    return encoder, head, tok


def export_default(
    output: str, max_length: int = 128, calibrate_on: str | None = None
) -> ModelMetadata:
    """Export the default model; with `calibrate_on` (labelled pairs), its scale and centre
    are fitted to those labels first (see `calibrate`) and recorded in pairscore.json."""
    from model.export import export

    encoder, head, tok = build(max_length)
    scale, center, calibration = SCALE, CENTER, None
    if calibrate_on:
        calibration = calibrate(calibrate_on, encoder=(encoder, tok))
        scale, center = calibration["scale"], calibration["center"]
        encoder, head, tok = build(max_length, scale, center)
    meta = ModelMetadata(
        encoder="bert",
        pooling="mean",
        distance="cosine",
        max_length=max_length,
        threshold=THRESHOLD,
        embedding_dim=0,
        tokenizer={},
        training={
            "data": calibrate_on,
            "calibration": calibration,
            "note": "pretrained sentence-transformers/all-MiniLM-L6-v2, no fine-tuning; "
            f"score = sigmoid({scale:.4g} * (cos - {center:.4g}))",
        },
    )
    return export(encoder, head, tok, meta, output)


def _cosines(embed, tokenizer, text_a, text_b, batch_size: int):
    def unit(texts):
        ids = tokenization.encode_batch(tokenizer, texts)
        parts = [
            np.asarray(embed(tokenization.pad(ids[i : i + batch_size])))
            for i in range(0, len(ids), batch_size)
        ]
        out = np.concatenate(parts).astype(np.float64)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    return np.sum(unit(text_a) * unit(text_b), axis=1)


def cosines(model_dir: str, text_a: list[str], text_b: list[str], batch_size: int = 64):
    """Cosine of the two texts' embeddings from an exported model's `encode` signature."""
    from model.predict import Scorer

    scorer = Scorer(model_dir)
    encode = scorer.model.signatures["encode"]
    return _cosines(
        lambda ids: encode(ids=ids)["embedding"].numpy(), scorer.tokenizer, text_a, text_b,
        batch_size,
    )


def calibrate(data_path: str, model_dir: str | None = None, encoder=None) -> dict:
    """Fit SCALE and CENTER on labelled pairs: logistic regression of the labels on the
    pretrained cosine, from an exported model (`model_dir`), an in-memory
    (encoder, tokenizer) or else the default model built here. Also reports the best-F1
    and best-accuracy cosines for comparison."""
    from sklearn.linear_model import LogisticRegression

    from model import data as data_lib
    from model import metrics

    pairs = data_lib.read_pairs(data_path)
    if pairs.labels is None:
        raise ValueError(f"{data_path}: calibration needs binary labels 0/1 in 'label'")
    if len(set(pairs.labels.tolist())) < 2:
        raise ValueError(f"{data_path}: calibration needs both labels, 0 and 1")
    if model_dir is not None:
        cos = cosines(model_dir, pairs.text_a, pairs.text_b)
    else:
        if encoder is None:
            built, _, tok = build()
        else:
            built, tok = encoder
        cos = _cosines(
            lambda ids: built(ids, training=False), tok, pairs.text_a, pairs.text_b, 64
        )
    fit = LogisticRegression(C=1e6).fit(cos[:, None], pairs.labels.astype(int))
    scale, bias = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    if scale <= 0:
        raise ValueError(
            f"{data_path}: duplicates do not have higher cosines than non-duplicates here "
            f"(fitted slope {scale:.3g}); check the labels (1 = duplicate)"
        )
    best_f1_cos, best_f1 = metrics.find_best_f1_and_threshold(cos, pairs.labels)
    # Accuracy of "cos >= t" at every distinct cosine t, vectorised: positives at or above
    # t plus negatives below it.
    labels = pairs.labels.astype(bool)
    grid = np.unique(cos)
    pos, neg = np.sort(cos[labels]), np.sort(cos[~labels])
    correct = (len(pos) - np.searchsorted(pos, grid, side="left")) + np.searchsorted(
        neg, grid, side="left"
    )
    accuracy = correct / len(cos)
    i = int(np.argmax(accuracy))
    return {
        "data": data_path,
        "n": len(pairs),
        "scale": scale,
        "center": -bias / scale,
        "best_f1_cosine": best_f1_cos,
        "best_f1": best_f1,
        "best_accuracy_cosine": float(grid[i]),
        "best_accuracy": float(accuracy[i]),
    }


def cross_validate_calibration(data_path: str, folds: int = 5, seed: int = 0) -> dict:
    """Held-out figures of the calibrated default model: for each of `folds` stratified
    folds (the same splits as `pairscore train --cv-folds` with `--seed`), fit scale and
    centre on the other folds and score this one at threshold 0.5. Returns per-fold
    metrics and their mean and standard deviation."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    from model import data as data_lib
    from model import metrics

    pairs = data_lib.read_pairs(data_path)
    if pairs.labels is None:
        raise ValueError(f"{data_path}: calibration needs binary labels 0/1 in 'label'")
    encoder, _, tok = build()
    cos = _cosines(
        lambda ids: encoder(ids, training=False), tok, pairs.text_a, pairs.text_b, 64
    )
    labels = pairs.labels.astype(int)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    per_fold = []
    for k, (train_idx, test_idx) in enumerate(splitter.split(cos, labels), 1):
        fit = LogisticRegression(C=1e6).fit(cos[train_idx, None], labels[train_idx])
        scores = fit.predict_proba(cos[test_idx, None])[:, 1]
        per_fold.append({"fold": k, **metrics.binary_metrics(scores, labels[test_idx], 0.5)})
    keys = ("accuracy", "precision", "recall", "f1", "roc_auc")
    summary = {
        key: {"mean": float(np.mean([f[key] for f in per_fold])),
              "std": float(np.std([f[key] for f in per_fold]))}
        for key in keys
    }
    return {"data": data_path, "folds": per_fold, **summary}


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Fit the default model's SCALE and CENTER.")
    parser.add_argument("--calibrate", required=True, help="labelled pairs (Parquet/CSV/TSV)")
    parser.add_argument("--model", help="an exported default model (else it is built here)")
    parser.add_argument("--cv-folds", type=int, default=0, metavar="K",
                        help="report held-out figures of the calibration over K folds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.cv_folds:
        result = cross_validate_calibration(args.calibrate, args.cv_folds, args.seed)
    else:
        result = calibrate(args.calibrate, args.model)
    print(json.dumps(result, indent=2))
