"""The built-in default model: pretrained all-MiniLM-L6-v2, mean pooling, cosine head.

No training of the encoder: score = sigmoid(SCALE * (cos - CENTER)), a one-feature
logistic regression (Platt scaling) of the MRPC *train* labels on the pretrained cosine.
The score therefore reads as "probability of a paraphrase" for MRPC-like data, and the
documented threshold 0.5 sits at even odds, cos = CENTER. Measured (docs/results.md):

    data          accuracy  precision  recall  F1     ROC-AUC   (threshold 0.5)
    mrpc_dev      0.734     0.755      0.910   0.826  0.763
    qqp_sample    0.722     0.584      0.932   0.718  0.860

MRPC is 68% paraphrases, so its even-odds cosine is lenient for data with fewer
duplicates (QQP's best-F1 cosine is 0.77): re-fit on your own labels with

    python -m model.default --calibrate pairs.parquet

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


def build(max_length: int = 128, tiny: bool = False):
    """(encoder, head, tokenizer) of the default model."""
    from model import layers, train

    encoder = layers.bert_encoder(train.bert_backbone(tiny=tiny), "mean", trainable=False)
    head = layers.DistanceHead("cosine", name="head")
    dim = encoder.output.shape[-1]
    head(np.zeros((1, dim), "float32"), np.ones((1, dim), "float32"))
    head.classifier.set_weights(
        [np.array([[SCALE]], dtype="float32"), np.array([-SCALE * CENTER], dtype="float32")]
    )
    tok = tokenization.configure(train.minilm_tokenizer(), max_length)
    return encoder, head, tok


def export_default(output: str, max_length: int = 128, tiny: bool = False) -> ModelMetadata:
    from model.export import export

    encoder, head, tok = build(max_length, tiny)
    meta = ModelMetadata(
        encoder="bert",
        pooling="mean",
        distance="cosine",
        max_length=max_length,
        threshold=THRESHOLD,
        embedding_dim=0,
        tokenizer={},
        training={
            "data": None,
            "note": "pretrained sentence-transformers/all-MiniLM-L6-v2, no fine-tuning; "
            f"score = sigmoid({SCALE} * (cos - {CENTER}))",
        },
    )
    return export(encoder, head, tok, meta, output)


def cosines(model_dir: str, text_a: list[str], text_b: list[str], batch_size: int = 64):
    """Cosine of the two texts' embeddings from an exported model's `encode` signature."""
    from model.predict import Scorer

    scorer = Scorer(model_dir)
    encode = scorer.model.signatures["encode"]

    def embed(texts):
        ids = tokenization.encode_batch(scorer.tokenizer, texts)
        parts = [
            encode(ids=tokenization.pad(ids[i : i + batch_size]))["embedding"].numpy()
            for i in range(0, len(ids), batch_size)
        ]
        out = np.concatenate(parts).astype(np.float64)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    return np.sum(embed(text_a) * embed(text_b), axis=1)


def calibrate(data_path: str, model_dir: str | None = None) -> dict:
    """Fit SCALE and CENTER on labelled pairs: logistic regression of the labels on the
    pretrained cosine. Also reports the best-F1 and best-accuracy cosines for comparison."""
    import tempfile

    from sklearn.linear_model import LogisticRegression

    from model import data as data_lib
    from model import metrics

    pairs = data_lib.read_pairs(data_path)
    if pairs.labels is None:
        raise ValueError(f"{data_path}: calibration needs binary labels")
    with tempfile.TemporaryDirectory() as tmp:
        if model_dir is None:
            model_dir = tmp
            export_default(model_dir)
        cos = cosines(model_dir, pairs.text_a, pairs.text_b)
    fit = LogisticRegression(C=1e6).fit(cos[:, None], pairs.labels.astype(int))
    scale, bias = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    best_f1_cos, best_f1 = metrics.find_best_f1_and_threshold(cos, pairs.labels)
    grid = np.unique(cos)
    accuracy = [float(np.mean((cos >= t) == pairs.labels.astype(bool))) for t in grid]
    i = int(np.argmax(accuracy))
    return {
        "data": data_path,
        "n": len(pairs),
        "scale": scale,
        "center": -bias / scale,
        "best_f1_cosine": best_f1_cos,
        "best_f1": best_f1,
        "best_accuracy_cosine": float(grid[i]),
        "best_accuracy": accuracy[i],
    }


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Fit the default model's SCALE and CENTER.")
    parser.add_argument("--calibrate", required=True, help="labelled pairs (Parquet/CSV/TSV)")
    parser.add_argument("--model", help="an exported default model (else one is exported)")
    args = parser.parse_args()
    print(json.dumps(calibrate(args.calibrate, args.model), indent=2))
