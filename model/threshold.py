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

from model import stratified

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
    # Labels of nights' samples (a labels dataset): the strata, their sizes and labels,
    # the estimator; and, for any labels dataset, the pairs left out and re-scored.
    labels: dict | None = None

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


def _checked(scores, labels, metric: str, target: float, confidence: float):
    """(scores as float64, labels as bool, n, positives), or the error naming what is wrong
    with the arguments or why there is nothing to bound."""
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
    return scores, labels, n, positives


def choose_threshold(scores, labels, metric: str, target: float, confidence: float = 0.95,
                     start_share: float = START_SHARE) -> ThresholdChoice:
    """See the module docstring. Raises ThresholdError when no cut point meets the target
    (too few labels, or a model not good enough), naming the cut that failed (precision's
    first test) or the best bound reached, and the fewest labels a perfect model needs."""
    scores, labels, n, positives = _checked(scores, labels, metric, target, confidence)
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


STRATIFIED_BOUND = ("stratified Clopper-Pearson-type one-sided lower bound (model/stratified.py): "
                    "each labelled pair of stratum h weighs N_h / m_h, N_h the stratum's pairs "
                    "that night, m_h its labelled pairs")
STRATIFIED_PROCEDURES = {
    "precision": PROCEDURES["precision"],
    "recall": "fixed-sequence testing: every cut from the lowest threshold up, each at level "
              "{alpha:g}, stopping at the first failure; the highest that passed",
}
_CHUNK = 8  # cuts whose stratified bounds are drawn at once (draws x cuts x strata x 4)


@dataclasses.dataclass
class Design:
    """Where labels of nights' samples came from: each labelled pair's stratum (an index
    into `names`, one per (run_id, stratum)), each stratum's size N_h, and the score
    range its pairs have under the model being thresholded (None: not known, when the
    sample was drawn by another model: then every cell may occur in it)."""

    strata: np.ndarray
    names: list[str]
    sizes: np.ndarray
    ranges: list[tuple[float, float] | None]


def _stratified_cuts(scores, labels, design: Design):
    """Per cut (each distinct score, highest first): the cut score, the threshold that
    would be written (midway to the next lower score), the cell counts (cuts, H, 4) of
    the labelled pairs and the cells each stratum can hold there (cuts, H, 4)."""
    order = np.argsort(-scores, kind="stable")
    s, y, h = scores[order], labels[order], design.strata[order]
    idx = np.flatnonzero(np.append(s[1:] != s[:-1], True))
    one_hot = np.zeros((len(s), len(design.names)))
    one_hot[np.arange(len(s)), h] = 1.0
    predicted = np.cumsum(one_hot, 0)[idx]
    tp = np.cumsum(one_hot * y[:, None], 0)[idx]
    positives, labelled = (one_hot * y[:, None]).sum(0), one_hot.sum(0)
    fp = predicted - tp
    counts = np.stack([tp, fp, positives - tp, labelled - positives - fp], -1)
    cut = s[idx]
    lower = np.append(cut[1:], cut[-1] - 1e-6)
    threshold = np.clip((cut + lower) / 2, 0.0, 1.0)
    possible = np.ones(counts.shape, dtype=bool)
    for j, r in enumerate(design.ranges):
        if r is None:
            continue
        low, high = r
        above, below = high >= threshold, low < threshold
        possible[:, j] = np.stack([above, above, below, below], -1)
    return cut, threshold, counts, possible


def choose_threshold_stratified(scores, labels, design: Design, metric: str, target: float,
                                confidence: float = 0.95, draws: int = stratified.DRAWS,
                                start_share: float = START_SHARE) -> ThresholdChoice:
    """choose_threshold for labels of a stratified sample: the same fixed-sequence
    search (precision from the highest cut down, recall from the lowest up), each test
    the stratified lower bound at the full 1 - confidence (model/stratified.py), so the
    claim holds for the nights the samples were drawn from, not for the labelled pairs
    alone. Raises ThresholdError when no cut passes."""
    scores, labels, n, positives = _checked(scores, labels, metric, target, confidence)
    cut, threshold, counts, possible = _stratified_cuts(scores, labels, design)
    sizes = design.sizes.astype(float)
    need = perfect_model_needs(target, confidence)
    first = max(need, math.ceil(start_share * n))
    procedure = STRATIFIED_PROCEDURES[metric].format(start=first, alpha=1 - confidence)

    def bounds(sel):
        return stratified.lower_bound(counts[sel], possible[sel],
                                      np.broadcast_to(sizes, (len(sel), len(sizes))),
                                      metric, confidence, draws)

    predicted = counts[..., [stratified.TP, stratified.FP]].sum((-1, -2))
    if metric == "precision":
        sequence = np.arange(int(np.searchsorted(predicted, first)), len(cut))
    else:
        sequence = np.arange(len(cut) - 1, -1, -1)
    passed = []
    for i in range(0, len(sequence), _CHUNK):
        sel = sequence[i:i + _CHUNK]
        ok = bounds(sel) >= target
        passed.extend(sel[:np.argmin(ok)] if not ok.all() else sel)
        if not ok.all():
            break
    tested = min(len(passed) + 1, len(sequence))
    unreachable = (f"no threshold reaches a {confidence:g} stratified lower bound of {metric} "
                   f">= {target:g} on {n} labelled pairs ({positives} duplicates) from "
                   f"{len(design.names)} strata")
    if not passed:
        if not len(sequence):
            raise ThresholdError(f"{unreachable}: fewer than {first} labelled pairs")
        j = int(sequence[0])
        b = float(bounds(np.array([j]))[0])
        raise ThresholdError(f"{unreachable} by {procedure}: the first cut tested, threshold "
                             f"{threshold[j]:.6g}, has a bound of {b:.4f}; label more pairs "
                             "of the strata near the cuts, or lower the target")
    # Precision: the most recall (the lowest threshold that passed); recall: the most
    # precision (the highest that passed). Both are the last cut the sequence passed.
    pick = int(passed[-1])
    bound_pick = float(bounds(np.array([pick]))[0])
    figures = stratified.intervals_from_counts(counts[pick], possible[pick], sizes,
                                               confidence, draws)
    pp = int(predicted[pick])

    def figure(name):
        f = figures[name]
        return (round(float(f["estimate"]), 6),
                [round(float(f["low"]), 6), round(float(f["high"]), 6)])

    precision, precision_interval = figure("precision")
    recall, recall_interval = figure("recall")
    labelled = counts[0].sum(-1)
    return ThresholdChoice(
        threshold=float(threshold[pick]), metric=metric, target=target,
        confidence=confidence, bound=STRATIFIED_BOUND, procedure=procedure,
        tested=int(tested), lower_bound=round(bound_pick, 6), n=n, positives=positives,
        predicted=pp, precision=precision, precision_interval=precision_interval,
        recall=recall, recall_interval=recall_interval,
        labels={"estimator": "stratified ratio of expansion (Horvitz-Thompson) totals",
                "strata": {name: {"size": int(sizes[j]), "labelled": int(labelled[j]),
                                  "range": design.ranges[j] and list(design.ranges[j])}
                           for j, name in enumerate(design.names)}},
    )


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


def design_of(provenance, fingerprint: str) -> tuple[Design | None, np.ndarray]:
    """The design of labels from nights' samples (a labels dataset's columns, row for
    row), and which rows it covers: the rows with a stratum, a stratum size and an
    inclusion probability. Strata are (run_id, stratum): each night's sample is its own
    stratified design. A stratum's score range counts only when the model that drew the
    sample (its rows' model_fingerprint) is `fingerprint`. (None, all False) when no row
    is from a sample."""
    cols = {c: provenance[c].to_pylist() for c in
            ("run_id", "stratum", "stratum_size", "inclusion_probability",
             "model_fingerprint", "stratum_low", "stratum_high")}
    rows = np.array([st is not None and size is not None and p is not None
                     for st, size, p in zip(cols["stratum"], cols["stratum_size"],
                                            cols["inclusion_probability"])], dtype=bool)
    if not rows.any():
        return None, rows
    names, index, sizes, ranges = [], {}, [], []
    strata = np.zeros(int(rows.sum()), dtype=np.int64)
    for k, i in enumerate(np.flatnonzero(rows)):
        key = f"{cols['run_id'][i]}/{cols['stratum'][i]}"
        size = int(cols["stratum_size"][i])
        low, high = cols["stratum_low"][i], cols["stratum_high"][i]
        known = (cols["model_fingerprint"][i] == fingerprint and low is not None
                 and high is not None)
        r = (float(low), float(high)) if known else None
        if key not in index:
            index[key] = len(names)
            names.append(key)
            sizes.append(size)
            ranges.append(r)
        j = index[key]
        if sizes[j] != size:
            raise ThresholdError(f"stratum {key}: labels disagree on its size ({sizes[j]} and "
                                 f"{size}): are two samples' labels mixed under one run id?")
        if ranges[j] != r:
            ranges[j] = None  # rows that disagree on the range: assume nothing
        strata[k] = j
    return Design(strata, names, np.array(sizes), ranges), rows


def labelled_scores(pairs, md, batch_size: int = 64) -> tuple[np.ndarray, int]:
    """The model's scores of labelled pairs and how many had to be computed: a labels
    dataset's stored `score` where its `model_fingerprint` is this model's, the model
    (loaded only then) for the rest, and for a file of pairs all of them."""
    from model.predict import Scorer

    n = len(pairs)
    scores = np.full(n, np.nan)
    if pairs.provenance is not None:
        stored = pairs.provenance["score"].to_numpy(zero_copy_only=False).astype(np.float64)
        same = np.array([f == md.metadata.fingerprint for f in
                         pairs.provenance["model_fingerprint"].to_pylist()], dtype=bool)
        reuse = same & ~np.isnan(stored)
        scores[reuse] = stored[reuse]
    todo = np.flatnonzero(np.isnan(scores))
    if len(todo):
        scorer = Scorer(md)
        scores[todo] = scorer.score([pairs.text_a[i] for i in todo],
                                    [pairs.text_b[i] for i in todo], batch_size=batch_size)
    return scores, len(todo)


def threshold_model(model_dir: str, labelled: str, output: str, metric: str, target: float,
                    confidence: float = 0.95, text_a_column: str = "text_a",
                    text_b_column: str = "text_b", label_column: str = "label",
                    batch_size: int = 64) -> ThresholdChoice:
    """Score `labelled` with `model_dir`, choose the threshold, write `output`.

    `labelled` is a file of pairs or a labels dataset (model/labels.py). From a labels
    dataset, pairs this model already scored (their model_fingerprint) keep their stored
    score; labels of nights' samples are weighed by their design
    (choose_threshold_stratified), and then labels not from a sample are left out (they
    are no random sample of anything) and counted."""
    from model import data as data_lib
    from model.modeldir import ModelDir

    pairs = data_lib.read_pairs(labelled, text_a_column, text_b_column, label_column)
    if pairs.labels is None:
        raise ThresholdError(f"{labelled}: needs 0/1 labels in {label_column!r}")
    md = ModelDir.open(model_dir)
    scores, rescored = labelled_scores(pairs, md, batch_size)
    design, rows = (design_of(pairs.provenance, md.metadata.fingerprint)
                    if pairs.provenance is not None else (None, None))
    if design is not None:
        choice = choose_threshold_stratified(scores[rows], pairs.labels[rows], design, metric,
                                             target, confidence)
        choice.labels["left_out"] = {**pairs.left_out, "not_from_a_sample": int((~rows).sum())}
    else:
        choice = choose_threshold(scores, pairs.labels, metric, target, confidence)
        if pairs.provenance is not None:
            choice.labels = {"left_out": dict(pairs.left_out)}
    if choice.labels is not None:
        choice.labels.update(rescored=rescored, stored_scores=len(pairs) - rescored)
    choice.data, choice.data_fingerprint = labelled, data_lib.fingerprint(pairs)
    write_with_threshold(model_dir, output, choice)
    return choice
