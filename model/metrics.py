"""Evaluation metrics for duplicate scores: small pure functions, tested against sklearn."""

from __future__ import annotations

import numpy as np


def find_best_f1_and_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The threshold (score >= t is a duplicate) that maximises F1, and that F1.

    Sweeps every distinct score once, as sentence-transformers' evaluator does; the
    threshold returned is the midpoint between the chosen score and the next lower one,
    so it generalises rather than sitting exactly on a training score.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if len(scores) == 0:
        raise ValueError("no scores to choose a threshold from")
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    tp = np.cumsum(y)
    predicted = np.arange(1, len(s) + 1)
    positives = y.sum()
    # Only cut where the score changes, so tied scores fall on one side together.
    last_of_run = np.append(s[1:] != s[:-1], True)
    f1 = np.where(last_of_run, 2 * tp / (predicted + positives), -1.0)
    best = int(np.argmax(f1))
    if positives == 0:
        return 1.0, 0.0
    lower = s[best + 1] if best + 1 < len(s) else s[best] - 1e-6
    threshold = float((s[best] + lower) / 2)
    return min(max(threshold, 0.0), 1.0), float(f1[best])


def binary_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    from sklearn import metrics

    labels = np.asarray(labels).astype(int)
    predicted = (np.asarray(scores) >= threshold).astype(int)
    out = {
        "n": int(len(labels)),
        "threshold": float(threshold),
        "accuracy": float(metrics.accuracy_score(labels, predicted)),
        "precision": float(metrics.precision_score(labels, predicted, zero_division=0)),
        "recall": float(metrics.recall_score(labels, predicted, zero_division=0)),
        "f1": float(metrics.f1_score(labels, predicted, zero_division=0)),
        "majority_accuracy": float(max(labels.mean(), 1 - labels.mean())) if len(labels) else 0.0,
    }
    both = len(set(labels.tolist())) == 2
    out["roc_auc"] = float(metrics.roc_auc_score(labels, scores)) if both else None
    best_t, best_f1 = find_best_f1_and_threshold(scores, labels)
    out["best_f1_threshold"] = best_t
    out["best_f1"] = best_f1
    return out


def graded_metrics(scores: np.ndarray, similarity: np.ndarray) -> dict:
    from scipy import stats

    rho = stats.spearmanr(scores, similarity).statistic
    r = stats.pearsonr(scores, similarity).statistic
    return {"n": int(len(scores)), "spearman": float(rho), "pearson": float(r)}
