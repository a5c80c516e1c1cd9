"""Evaluate a model directory on labelled (or graded) pairs.

    pairscore evaluate --model models/default --data mrpc_dev.parquet
    pairscore evaluate --model gs://bucket/models/m --data mrpc_dev.parquet

The model directory is opened (and checked against its manifest) by `Scorer`, so it may
be local, gs:// or s3://.
"""

from __future__ import annotations

from model import data as data_lib
from model import metrics
from model.predict import Scorer


def evaluate(
    model_dir: str,
    data_path: str,
    text_a_column: str = "text_a",
    text_b_column: str = "text_b",
    label_column: str = "label",
    similarity_column: str = "similarity",
    batch_size: int = 64,
    scorer: Scorer | None = None,
    duplicate_similarity: float | None = 4.0,
) -> dict:
    """Metrics at the model's threshold (and the best-F1 threshold); Spearman and Pearson
    for graded data. Graded data without binary labels is also scored as a detector of
    "similarity >= duplicate_similarity" (the labels `pairscore train` picks a graded
    model's threshold against); None skips that. Returns a JSON-ready dict."""
    pairs = data_lib.read_pairs(
        data_path, text_a_column, text_b_column, label_column, similarity_column
    )
    scorer = scorer or Scorer(model_dir)
    scores = scorer.score(pairs.text_a, pairs.text_b, batch_size=batch_size)
    out: dict = {"model": model_dir, "data": data_path, "n": len(pairs)}
    labels = pairs.labels
    if labels is None and pairs.similarity is not None and duplicate_similarity is not None:
        labels = (pairs.similarity >= duplicate_similarity).astype(int)
        out["labels_from"] = f"{similarity_column} >= {duplicate_similarity:g}"
    if labels is not None:
        out.update(metrics.binary_metrics(scores, labels, scorer.metadata.threshold))
    if pairs.similarity is not None:
        out.update(metrics.graded_metrics(scores, pairs.similarity))
    if pairs.labels is None and pairs.similarity is None:
        raise ValueError(
            f"{data_path}: needs binary labels in {label_column!r} "
            f"or graded scores in {similarity_column!r}"
        )
    out["scores"] = scores
    out["labels"] = labels
    out["similarity"] = pairs.similarity
    return out
