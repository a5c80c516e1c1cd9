"""Precision and recall of a stratified sample's labels: expansion estimates and
Clopper-Pearson-type intervals, stratum by stratum (the method: pipeline/estimate.py's
docstring and docs/people.md). One place for the arithmetic that both `pairscore
estimate` (a night's figures) and `pairscore threshold` (a threshold's bound from
design-weighted labels, model/threshold.py) rest on.
"""

from __future__ import annotations

import numpy as np

DRAWS = 20_000
SEED = 20  # the same labels give the same interval, run after run

# The four cells of a stratum: (predicted duplicate, labelled duplicate).
TP, FP, FN, TN = range(4)
_PREDICTED = np.array([1, 1, 0, 0], dtype=bool)
_POSITIVE = np.array([1, 0, 1, 0], dtype=bool)


METRICS = {"precision": (_PREDICTED, FP), "recall": (_POSITIVE, FN)}


def _prepare(counts, possible, sizes):
    counts = np.asarray(counts, dtype=float)
    sizes = np.asarray(sizes, dtype=float)
    possible = np.asarray(possible, dtype=bool) | (counts > 0)
    labelled = counts.sum(-1)
    # A stratum labelled in full is known: no sampling error left to draw.
    full = (labelled >= sizes) & (labelled > 0)
    observed = np.divide(counts, labelled[..., None], out=np.zeros_like(counts),
                         where=labelled[..., None] > 0)
    return counts, possible, sizes, full, observed


def _prior(bad: int, lower: bool) -> np.ndarray:
    """Clopper-Pearson's bracketing, cell by cell: for the lower bound prior 1 on the cell
    that lowers the ratio (`bad`) and 0 on TP, for the upper bound the other way round;
    1/2 on the cells outside the ratio."""
    prior = np.full(4, 0.5)
    prior[[TP, bad]] = (0.0, 1.0) if lower else (1.0, 0.0)
    return prior


def _totals(counts, possible, sizes, full, observed, prior, draws, rng):
    """Posterior draws of the night's four cell totals: (draws, ..., 4)."""
    alpha = np.where(possible, counts + prior, 0.0)
    gam = rng.standard_gamma(np.broadcast_to(alpha, (draws, *alpha.shape)))
    total = gam.sum(-1, keepdims=True)
    share = np.divide(gam, total, out=np.zeros_like(gam), where=total > 0)
    share = np.where(full[..., None], observed, share)
    return (share * sizes[..., None]).sum(-2)


def _ratio(cells, denominator):
    num, den = cells[..., TP], cells[..., denominator].sum(-1)
    return np.divide(num, den, out=np.full_like(num, np.nan), where=den > 0)


def lower_bound(counts, possible, sizes, metric: str, confidence: float = 0.95,
                draws: int = DRAWS, seed: int = SEED) -> np.ndarray:
    """The one-sided lower bound at `confidence` of precision or recall (`metric`), the
    lower end of `intervals_from_counts`' interval at 2 * confidence - 1 (the same
    posterior draws, the 1 - confidence quantile), vectorised over the leading axes of
    `counts` (..., H, 4). 0 where there is no figure (nothing predicted, no duplicate)."""
    denominator, bad = METRICS[metric]
    counts, possible, sizes, full, observed = _prepare(counts, possible, sizes)
    rng = np.random.default_rng(seed)
    cells = _totals(counts, possible, sizes, full, observed, _prior(bad, lower=True),
                    draws, rng)
    low = np.quantile(_ratio(cells, denominator), 1 - confidence, axis=0)
    est = _ratio((observed * sizes[..., None]).sum(-2), denominator)
    support = counts[..., denominator].sum((-1, -2)) > 0
    return np.where(support & ~np.isnan(est), np.fmin(np.nan_to_num(low), est), 0.0)


def intervals_from_counts(counts, possible, sizes, confidence: float = 0.95,
                          draws: int = DRAWS, seed: int = SEED) -> dict[str, dict]:
    """The estimates and intervals from cell counts, vectorised over nights.

    counts: (..., H, 4) labelled pairs per stratum and cell (TP, FP, FN, TN);
    possible: (..., H, 4) bool, the cells that can occur in each stratum (a cell seen is
    possible whatever this says); sizes: (..., H) the strata sizes N_h. Returns
    {"precision": {...}, "recall": {...}}, each {"estimate", "low", "high"} arrays of
    shape (...) (NaN where there is no figure: no labelled predicted duplicate for
    precision, no labelled duplicate for recall), and "posterior" marks where a stratum
    without labels made the posterior median the estimate."""
    counts, possible, sizes, full, observed = _prepare(counts, possible, sizes)
    labelled = counts.sum(-1)  # (..., H)
    rng = np.random.default_rng(seed)

    def totals(prior):
        return _totals(counts, possible, sizes, full, observed, prior, draws, rng)

    point = (observed * sizes[..., None]).sum(-2)  # expansion totals, (..., 4)
    unlabelled = (labelled == 0) & (sizes > 0)  # a stratum the estimate cannot see
    tail = (1 - confidence) / 2
    out = {}
    for name, (denominator, bad) in METRICS.items():
        low_draws = _ratio(totals(_prior(bad, lower=True)), denominator)
        high_draws = _ratio(totals(_prior(bad, lower=False)), denominator)
        low = np.quantile(low_draws, tail, axis=0)
        high = np.quantile(high_draws, 1 - tail, axis=0)
        est = _ratio(point, denominator)
        # A stratum without labels that can hold cells of this ratio: only the prior
        # speaks for it, and the posteriors' median is the estimate.
        matters = unlabelled & possible[..., denominator].any(-1)
        blind = matters.any(-1)
        if blind.any():
            median = (np.median(low_draws, axis=0) + np.median(high_draws, axis=0)) / 2
            est = np.where(blind, median, est)
        support = counts[..., denominator].sum((-1, -2)) > 0
        none = ~support | np.isnan(est)
        out[name] = {
            "estimate": np.where(none, np.nan, est),
            "low": np.where(none, np.nan, np.fmin(low, est)),
            "high": np.where(none, np.nan, np.fmax(high, est)),
            "posterior": blind,
        }
    return out
