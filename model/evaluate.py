"""Evaluate a model directory on labelled (or graded) pairs.

    pairscore evaluate --model models/default --data mrpc_dev.parquet
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
) -> dict:
    """Metrics at the model's threshold (and the best-F1 threshold); Spearman for graded
    data. Returns a JSON-ready dict."""
    pairs = data_lib.read_pairs(
        data_path, text_a_column, text_b_column, label_column, similarity_column
    )
    scorer = scorer or Scorer(model_dir)
    scores = scorer.score(pairs.text_a, pairs.text_b, batch_size=batch_size)
    out: dict = {"model": model_dir, "data": data_path, "n": len(pairs)}
    if pairs.labels is not None:
        out.update(metrics.binary_metrics(scores, pairs.labels, scorer.metadata.threshold))
    if pairs.similarity is not None:
        out.update(metrics.graded_metrics(scores, pairs.similarity))
    if pairs.labels is None and pairs.similarity is None:
        raise ValueError(
            f"{data_path}: needs binary labels in {label_column!r} "
            f"or graded scores in {similarity_column!r}"
        )
    out["scores"] = scores
    out["labels"] = pairs.labels
    out["similarity"] = pairs.similarity
    return out
