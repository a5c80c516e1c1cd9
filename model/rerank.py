"""The cascade's band: which first-model (Siamese) scores a cross-encoder re-scores.

    pairscore rerank-band --model models/cross-best --first-model models/mrpc-best \
        --labelled mrpc_dev.parquet --output models/cross-best-banded

The band is in the FIRST model's score units, so it belongs to one pair of models:
`band_model` scores the labelled pairs with both, chooses the band on the first model's
errors (`choose_band`) and writes a copy of the cross model whose pairscore.json has
`rerank`: the band, the first model's fingerprint and threshold, and what the cascade
scored on those pairs. A scoring job takes that band by default only when --model has
that fingerprint; with any other first model it needs --rerank-band.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

# Chosen on mrpc_dev (docs/results.md): the largest share of errors whose band re-scores
# at most about a third of the pairs there.
DEFAULT_COVERAGE = 0.6


@dataclasses.dataclass
class RerankBand:
    """A band [lo, hi] of first-model scores and how it was chosen."""

    lo: float
    hi: float
    coverage: float  # the share of the first model's errors the band had to hold
    errors: int  # the first model's errors on the labelled pairs, at its threshold
    errors_held: int
    share: float  # the share of the labelled pairs inside the band (re-scored)
    first_model: str = ""
    first_model_fingerprint: str = ""
    first_threshold: float = 0.5
    data: str = ""
    data_fingerprint: str = ""
    n: int = 0
    cascade: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def in_band(scores: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """True where lo <= score <= hi (compared in float64, as the labels' threshold)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    return (s >= lo) & (s <= hi)


def choose_band(scores, labels, threshold: float, coverage: float = DEFAULT_COVERAGE):
    """(lo, hi) around `threshold` holding at least `coverage` of the first model's errors
    (score >= threshold but label 0, or below it but label 1) with the fewest pairs
    inside: of every split of the needed errors between the two sides, the nearest ones
    on each side, the band with the fewest scores in it."""
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"--coverage must be in (0, 1], got {coverage}")
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(int)
    if len(s) != len(y) or not len(s):
        raise ValueError("choose_band needs as many labels as scores, at least one")
    wrong = (s >= threshold) != (y == 1)
    below = np.sort(s[wrong & (s < threshold)])[::-1]  # nearest the threshold first
    above = np.sort(s[wrong & (s >= threshold)])
    need = math.ceil(coverage * int(wrong.sum()) - 1e-9)
    if need == 0:
        return float(threshold), float(threshold)
    best = None
    for i in range(max(0, need - len(above)), min(need, len(below)) + 1):
        j = need - i
        lo = float(below[i - 1]) if i else float(threshold)
        hi = float(above[j - 1]) if j else float(threshold)
        cost = int(in_band(s, lo, hi).sum())
        if best is None or cost < best[0]:
            best = (cost, lo, hi)
    return best[1], best[2]


def cascade_decisions(first, second, lo, hi, first_threshold, second_threshold):
    """(duplicate decisions, re-scored mask): the second model decides inside the band."""
    band = in_band(first, lo, hi)
    first = np.asarray(first, dtype=np.float64).reshape(-1)
    second = np.asarray(second, dtype=np.float64).reshape(-1)
    return np.where(band, second >= second_threshold, first >= first_threshold), band


def decision_metrics(predicted, labels) -> dict:
    """accuracy, precision, recall, F1 of 0/1 decisions."""
    p = np.asarray(predicted).astype(bool)
    y = np.asarray(labels).astype(int) == 1
    tp = int((p & y).sum())
    precision = tp / max(int(p.sum()), 1)
    recall = tp / max(int(y.sum()), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"n": int(len(y)), "accuracy": float((p == y).mean()), "precision": precision,
            "recall": recall, "f1": f1}


def band_model(cross_dir: str, first_dir: str, labelled: str, output: str,
               coverage: float = DEFAULT_COVERAGE, text_a_column: str = "text_a",
               text_b_column: str = "text_b", label_column: str = "label",
               batch_size: int = 64) -> RerankBand:
    """Score `labelled` with both models, choose the band, write `output`: `cross_dir`
    with `rerank` set in pairscore.json."""
    from model import data as data_lib
    from model.predict import Scorer
    from model.threshold import write_with_metadata

    pairs = data_lib.read_pairs(labelled, text_a_column, text_b_column, label_column)
    if pairs.labels is None:
        raise ValueError(f"{labelled}: needs 0/1 labels in {label_column!r}")
    first, cross = Scorer(first_dir), Scorer(cross_dir)
    if not cross.metadata.is_cross:
        raise ValueError(f"--model {cross_dir} is a {cross.metadata.architecture} model; "
                         "the band belongs to a cross-encoder (pairscore train "
                         "--architecture cross)")
    if first.metadata.is_cross:
        raise ValueError(f"--first-model {first_dir} is a cross-encoder; the first model "
                         "is the Siamese model that scores every pair")
    s1 = first.score(pairs.text_a, pairs.text_b, batch_size=batch_size)
    s2 = cross.score(pairs.text_a, pairs.text_b, batch_size=batch_size)
    t1, t2 = float(first.metadata.threshold), float(cross.metadata.threshold)
    lo, hi = choose_band(s1, pairs.labels, t1, coverage)
    decided, band = cascade_decisions(s1, s2, lo, hi, t1, t2)
    wrong = (np.asarray(s1, np.float64) >= t1) != (pairs.labels == 1)
    choice = RerankBand(
        lo=lo, hi=hi, coverage=coverage, errors=int(wrong.sum()),
        errors_held=int((wrong & band).sum()), share=float(band.mean()),
        first_model=first_dir, first_model_fingerprint=first.metadata.fingerprint,
        first_threshold=t1, data=labelled, data_fingerprint=data_lib.fingerprint(pairs),
        n=len(pairs),
        cascade={"first": decision_metrics(np.asarray(s1, np.float64) >= t1, pairs.labels),
                 "rerank": decision_metrics(np.asarray(s2, np.float64) >= t2, pairs.labels),
                 "cascade": decision_metrics(decided, pairs.labels)},
    )
    write_with_metadata(cross_dir, output, ValueError, rerank=choice.to_dict())
    return choice
