"""A threshold chosen for a target precision or recall, with an honest confidence bound.

    pairscore threshold --model models/default --labelled dev.parquet \\
        --target-precision 0.95 [--confidence 0.95] --output models/default-p95

The labelled pairs are scored, and among the cut points (score >= t is a duplicate) the
one chosen is where the one-sided exact binomial (Clopper-Pearson) lower bound of
precision (or recall) at `confidence` meets the target: for precision the one that keeps
the most recall, for recall the one that keeps the most precision (the highest t). The
output is the model directory with only `threshold` and a `threshold_choice` record in
pairscore.json changed; the manifest's files are copied unchanged.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

BOUND = "clopper-pearson (exact binomial), one-sided lower bound"
METRICS = ("precision", "recall")


class ThresholdError(ValueError):
    """No threshold meets the target on these labels; the message says the best one."""


def lower_bound(successes, trials, confidence: float) -> np.ndarray:
    """One-sided Clopper-Pearson lower bound of a proportion: the p below which seeing
    `successes` or more of `trials` has probability under 1 - confidence. 0 where there
    are no successes (or no trials)."""
    from scipy.stats import beta

    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        low = beta.ppf(1.0 - confidence, k, n - k + 1)
    return np.where((k > 0) & (n > 0), np.nan_to_num(low), 0.0)


def interval(successes: int, trials: int, confidence: float) -> list[float]:
    """Two-sided Clopper-Pearson interval at `confidence`."""
    from scipy.stats import beta

    if trials == 0:
        return [0.0, 1.0]
    a = 1.0 - confidence
    low = beta.ppf(a / 2, successes, trials - successes + 1) if successes else 0.0
    high = beta.ppf(1 - a / 2, successes + 1, trials - successes) if successes < trials else 1.0
    return [round(float(low), 6), round(float(high), 6)]


@dataclasses.dataclass
class ThresholdChoice:
    threshold: float
    metric: str  # "precision" | "recall"
    target: float
    confidence: float
    bound: str
    lower_bound: float
    n: int  # labelled pairs
    positives: int  # labelled duplicates
    predicted: int  # pairs at or above the threshold
    precision: float
    precision_interval: list[float]
    recall: float
    recall_interval: list[float]
    data: str = ""
    data_fingerprint: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _cuts(scores: np.ndarray, labels: np.ndarray):
    """Per cut point (each distinct score, highest first): the score, true positives and
    predicted positives when `score >= that score` is a duplicate, and the next lower
    distinct score (or None)."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last_of_run = np.append(s[1:] != s[:-1], True)
    idx = np.flatnonzero(last_of_run)
    tp = np.cumsum(y)[idx]
    predicted = idx + 1
    nxt = np.append(s[idx[1:]], np.nan)
    return s[idx], tp, predicted, nxt


def choose_threshold(scores, labels, metric: str, target: float,
                     confidence: float = 0.95) -> ThresholdChoice:
    """See the module docstring. Raises ThresholdError naming the best achievable bound
    when no cut point meets the target (too few labels, or a model not good enough)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; allowed: {', '.join(METRICS)}")
    if not 0.0 < target < 1.0:
        raise ValueError(f"target {target} must be in (0, 1)")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"--confidence {confidence} must be in (0, 1)")
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n, positives = len(scores), int(labels.sum())
    if n == 0 or positives == 0:
        raise ThresholdError(f"{n} labelled pairs with {positives} duplicates: nothing to "
                             f"bound {metric} with")
    cut, tp, predicted, nxt = _cuts(scores, labels)
    trials = predicted if metric == "precision" else np.full(len(tp), positives)
    bound = lower_bound(tp, trials, confidence)
    ok = np.flatnonzero(bound >= target)
    if not len(ok):
        best = int(np.argmax(bound))
        # With every counted pair a success, k of k bounds the proportion at
        # (1 - confidence) ** (1 / k): the fewest pairs any target needs.
        need = math.ceil(math.log(1 - confidence) / math.log(target))
        count = "predicted duplicates" if metric == "precision" else "labelled duplicates"
        raise ThresholdError(
            f"no threshold reaches a {confidence:g} lower bound of {metric} >= {target:g} "
            f"on {n} labelled pairs ({positives} duplicates); the best is {bound[best]:.4f} "
            f"({metric} {tp[best] / trials[best]:.4f} of {int(trials[best])} {count}) at "
            f"threshold {cut[best]:.6g}; even a perfect model needs at least {need} {count}"
        )
    # Precision: the most recall (most true positives, then fewest predicted);
    # recall: the most precision, i.e. the highest threshold that meets it.
    pick = int(ok[np.lexsort((predicted[ok], -tp[ok]))[0]]) if metric == "precision" else int(
        ok[0])
    lower = nxt[pick] if not np.isnan(nxt[pick]) else cut[pick] - 1e-6
    # Midway to the next lower score: the same split of these pairs, and not sitting on
    # a labelled pair's score.
    threshold = float(min(max((cut[pick] + lower) / 2, 0.0), 1.0))
    k, pp = int(tp[pick]), int(predicted[pick])
    return ThresholdChoice(
        threshold=threshold, metric=metric, target=target, confidence=confidence, bound=BOUND,
        lower_bound=round(float(bound[pick]), 6), n=n, positives=positives, predicted=pp,
        precision=round(k / pp, 6), precision_interval=interval(k, pp, confidence),
        recall=round(k / positives, 6), recall_interval=interval(k, positives, confidence),
    )


def write_with_threshold(model_dir: str, output: str, choice: ThresholdChoice) -> None:
    """Copy `model_dir` to `output` (any Beam filesystem), every file unchanged but
    pairscore.json, whose threshold and threshold_choice record are the new ones."""
    from model.config import METADATA_FILE
    from model.modeldir import ModelDir
    from model.storage import filesystems, join

    fs = filesystems()
    if output.rstrip("/") == model_dir.rstrip("/"):
        raise ThresholdError("--output must differ from --model: the original is kept as is")
    if fs.match([join(output, "*")])[0].metadata_list if fs.exists(output) else False:
        raise ThresholdError(f"{output} is not empty; choose a new --output")
    md = ModelDir.open(model_dir)
    for rel in sorted(md.files):
        if rel == METADATA_FILE:
            continue
        target = join(output, *rel.split("/"))
        if "://" not in output:
            import os

            os.makedirs(os.path.dirname(target), exist_ok=True)
        with fs.create(target) as f:
            f.write(md.read_bytes(rel))
    meta = dataclasses.replace(md.metadata, threshold=choice.threshold,
                               threshold_choice=choice.to_dict())
    with fs.create(join(output, METADATA_FILE)) as f:
        f.write((meta.to_json() + "\n").encode())


def threshold_model(model_dir: str, labelled: str, output: str, metric: str, target: float,
                    confidence: float = 0.95, text_a_column: str = "text_a",
                    text_b_column: str = "text_b", label_column: str = "label",
                    batch_size: int = 64) -> ThresholdChoice:
    """Score `labelled` with `model_dir`, choose the threshold, write `output`."""
    from model import data as data_lib
    from model.predict import Scorer

    pairs = data_lib.read_pairs(labelled, text_a_column, text_b_column, label_column)
    if pairs.labels is None:
        raise ThresholdError(f"{labelled}: needs 0/1 labels in {label_column!r}")
    scores = Scorer(model_dir).score(pairs.text_a, pairs.text_b, batch_size=batch_size)
    choice = choose_threshold(scores, pairs.labels, metric, target, confidence)
    choice.data, choice.data_fingerprint = labelled, data_lib.fingerprint(pairs)
    write_with_threshold(model_dir, output, choice)
    return choice

