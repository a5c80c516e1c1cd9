"""A threshold chosen for a target precision or recall, with an honest confidence bound.

    pairscore threshold --model models/default --labelled dev.parquet \\
        --target-precision 0.95 [--confidence 0.95] --output models/default-p95

The labelled pairs are scored; each distinct score is a cut point (score >= t is a
duplicate) and the test at a cut is its one-sided exact binomial (Clopper-Pearson) lower
bound of precision (or recall) at `confidence` against the target.

Precision: fixed-sequence testing. The cuts are tested in one order fixed by the scores
alone, from the highest threshold down, each at the full 1 - confidence, stopping at the
first that fails; of the cuts that passed, the one with the most recall is chosen. The
sequence starts at the first cut keeping max(the fewest predicted duplicates a perfect
model needs, 5% of the labelled pairs) pairs: above the first even k of k right cannot
reach the target, and starting a little lower keeps one wrong label among the very top
scores from ending the sequence before it starts. Taking the best of every cut that
passes on its own, as before, looks at the same labels once per cut: with precision
0.945 everywhere against a 0.95 target it claimed a threshold in 12% of 2,000-pair
draws at a nominal 5%.

Why the family-wise error is at most 1 - confidence, whether or not precision is
monotone in the threshold: the cuts that pass are a prefix of the order. If any of them
has true precision under the target, so does the first such cut in the order, which is
fixed before the labels are seen; the prefix reaching it means that one cut's test,
at level 1 - confidence, rejected a true null. So every passing cut (the chosen one
among them) meets the target, together, with probability at least `confidence`.

Recall: the highest threshold whose bound meets the target (the most precision). Recall
and its bound only grow as the threshold falls, so the passing cuts are all those below
one point and the claim is a single test; nothing is gained by searching.

The output is the model directory with only `threshold` and a `threshold_choice` record in
pairscore.json changed; the manifest's files are copied unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

BOUND = "clopper-pearson (exact binomial), one-sided lower bound"
# Precision's sequence starts at the first cut keeping this share of the labelled pairs
# (or the fewest predicted duplicates a perfect model needs, if more): a threshold kept
# by fewer is rarely the one wanted, and one wrong label among the top 59 scores would
# otherwise end a 0.95 sequence before it starts.
START_SHARE = 0.05
PROCEDURES = {
    "precision": "fixed-sequence testing: every cut from the first with {start} predicted "
                 "duplicates down, each at level {alpha:g}, stopping at the first failure",
    "recall": "the highest cut whose bound meets the target (recall is monotone in the "
              "threshold: one test)",
}
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
    procedure: str  # how the cuts were searched; the error rate holds over all it tested
    tested: int  # cut points tested
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


@functools.lru_cache(maxsize=64)
def perfect_model_needs(target: float, confidence: float) -> int:
    """The fewest pairs k with k of k right whose lower bound, (1 - confidence) ** (1 / k),
    reaches `target`."""
    need = max(1, math.ceil(math.log(1 - confidence) / math.log(target)))
    # The closed form, checked against the bound itself (floating point at the edge).
    while need > 1 and lower_bound(need - 1, need - 1, confidence) >= target:
        need -= 1
    while lower_bound(need, need, confidence) < target:
        need += 1
    return need


def _fixed_sequence(tp, predicted, start: int, target: float, confidence: float) -> int:
    """Test the cuts from `start` on, in order, until the first whose precision bound is
    below `target`: the index of the last that passed (start - 1 if none did). Bounds are
    computed in doubling chunks, so a sequence that stops early costs little."""
    i, size = start, 64
    while i < len(tp):
        j = min(i + size, len(tp))
        failed = np.flatnonzero(lower_bound(tp[i:j], predicted[i:j], confidence) < target)
        if len(failed):
            return i + int(failed[0]) - 1
        i, size = j, size * 2
    return len(tp) - 1


def choose_threshold(scores, labels, metric: str, target: float, confidence: float = 0.95,
                     start_share: float = START_SHARE) -> ThresholdChoice:
    """See the module docstring. Raises ThresholdError when no cut point meets the target
    (too few labels, or a model not good enough), naming the cut that failed (precision's
    first test) or the best bound reached, and the fewest labels a perfect model needs."""
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
    need = perfect_model_needs(target, confidence)
    count = "predicted duplicates" if metric == "precision" else "labelled duplicates"
    first = max(need, math.ceil(start_share * n))
    procedure = PROCEDURES[metric].format(start=first, alpha=1 - confidence)
    unreachable = (f"no threshold reaches a {confidence:g} lower bound of {metric} >= "
                   f"{target:g} on {n} labelled pairs ({positives} duplicates)")
    if metric == "precision":
        # Cuts above `start` keep fewer than `first` pairs: not tested. The order and
        # where it starts depend on the scores and counts only, never on the labels.
        start = int(np.searchsorted(predicted, first))
        if need > n:
            bound = lower_bound(tp, predicted, confidence)
            raise ThresholdError(_best_message(unreachable, bound, tp, predicted, cut,
                                               int(np.argmax(bound)), metric, count, need))
        last = _fixed_sequence(tp, predicted, start, target, confidence)
        tested = min(last + 2, len(cut)) - start
        if last < start:
            k, pp = int(tp[start]), int(predicted[start])
            raise ThresholdError(
                f"{unreachable} by {procedure}: the first cut tested, threshold "
                f"{cut[start]:.6g} (the top {pp} scores), has {k} duplicates, a bound of "
                f"{float(lower_bound(k, pp, confidence)):.4f} (precision {k / pp:.4f}); even a "
                f"perfect model needs at least {need} {count}, all correct"
            )
        # Every cut start..last passed: the most recall (true positives only grow down
        # the sequence), then the fewest predicted, i.e. the first reaching tp[last].
        pick = start + int(np.searchsorted(tp[start:last + 1], tp[last]))
        bound_pick = float(lower_bound(tp[pick], predicted[pick], confidence))
    else:
        trials = np.full(len(tp), positives)
        bound = lower_bound(tp, trials, confidence)
        ok = np.flatnonzero(bound >= target)
        tested = len(cut)
        if not len(ok):
            raise ThresholdError(_best_message(unreachable, bound, tp, trials, cut,
                                               int(np.argmax(bound)), metric, count, need))
        # The most precision, i.e. the highest threshold that meets it.
        pick = int(ok[0])
        bound_pick = float(bound[pick])
    lower = nxt[pick] if not np.isnan(nxt[pick]) else cut[pick] - 1e-6
    # Midway to the next lower score: the same split of these pairs, and not sitting on
    # a labelled pair's score.
    threshold = float(min(max((cut[pick] + lower) / 2, 0.0), 1.0))
    k, pp = int(tp[pick]), int(predicted[pick])
    return ThresholdChoice(
        threshold=threshold, metric=metric, target=target, confidence=confidence, bound=BOUND,
        procedure=procedure, tested=int(tested), lower_bound=round(bound_pick, 6), n=n,
        positives=positives, predicted=pp,
        precision=round(k / pp, 6), precision_interval=interval(k, pp, confidence),
        recall=round(k / positives, 6), recall_interval=interval(k, positives, confidence),
    )


def _best_message(unreachable, bound, tp, trials, cut, best, metric, count, need) -> str:
    return (f"{unreachable}; the best is {bound[best]:.4f} ({metric} "
            f"{tp[best] / trials[best]:.4f} of {int(trials[best])} {count}) at threshold "
            f"{cut[best]:.6g}; even a perfect model needs at least {need} {count}")


def write_with_threshold(model_dir: str, output: str, choice: ThresholdChoice) -> None:
    """Copy `model_dir` to `output` (any Beam filesystem), every file unchanged but
    pairscore.json, whose threshold and threshold_choice record are the new ones."""
    write_with_metadata(model_dir, output, ThresholdError, threshold=choice.threshold,
                        threshold_choice=choice.to_dict())


def write_with_metadata(model_dir: str, output: str, error=ValueError, **changes) -> None:
    """Copy `model_dir` to `output` (any Beam filesystem), every file unchanged (and
    checked against the manifest as it is read) but pairscore.json, whose fields `changes`
    replaces. Refuses (`error`) to overwrite the original or a non-empty `output`."""
    from model.config import METADATA_FILE
    from model.modeldir import ModelDir
    from model.storage import filesystems, join

    fs = filesystems()
    if output.rstrip("/") == model_dir.rstrip("/"):
        raise error("--output must differ from --model: the original is kept as is")
    if fs.match([join(output, "*")])[0].metadata_list if fs.exists(output) else False:
        raise error(f"{output} is not empty; choose a new --output")
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
    meta = dataclasses.replace(md.metadata, **changes)
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

