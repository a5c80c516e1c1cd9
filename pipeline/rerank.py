"""The cascade's plain functions: which scored pairs the cross-encoder re-scores, and
the decided batches both branches hand to `Threshold`.

Every pair is scored by the first (Siamese) model; a pair whose first score is in the
band [lo, hi] (inclusive, compared in float64) is scored again by the cross-encoder and
takes its score and its threshold. `stages.rerank.Rerank` wires these together.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa

from model.rerank import in_band

FIRST = "first"
RERANK = "rerank"
# The first model's score while a band row goes through the cross-encoder's branch.
FIRST_SCORE = "__pairscore_first_score"


class BandError(ValueError):
    """--rerank-band cannot be used (bad value, or no band stored for this model)."""


@dataclasses.dataclass
class RerankSpec:
    """The cascade's second model, resolved at launch."""

    model: str
    fingerprint: str
    threshold: float
    max_length: int
    min_tokens: int
    band: tuple[float, float]
    band_source: str  # "--rerank-band" or "stored in the cross model (pairscore rerank-band)"
    batch_size: int
    max_batch_tokens: int


@dataclasses.dataclass
class Decided:
    """Scored pairs with their final score, the first model's, which model decided and
    the threshold each row's label is taken at."""

    rows: pa.Table
    scores: np.ndarray
    first_scores: np.ndarray
    decided_by: str
    threshold: float

    def __len__(self) -> int:
        return self.rows.num_rows


def parse_band(value: str) -> tuple[float, float]:
    """'LO,HI' with 0 <= LO <= HI <= 1."""
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise BandError(f"--rerank-band {value!r}: give LO,HI, two scores in [0, 1]") from None
    if not 0.0 <= lo <= hi <= 1.0:
        raise BandError(f"--rerank-band {value!r}: need 0 <= LO <= HI <= 1")
    return lo, hi


def stored_band(rerank: dict | None, first_fingerprint: str, cross_model: str,
                first_model: str) -> tuple[float, float]:
    """The band `pairscore rerank-band` stored in the cross model, if it was chosen for
    this first model (its fingerprint); else BandError saying what to do."""
    if not rerank:
        raise BandError(f"--rerank-model {cross_model} has no stored band (pairscore "
                        "rerank-band chooses one on labelled pairs): run it, or give "
                        "--rerank-band LO,HI")
    if rerank.get("first_model_fingerprint") != first_fingerprint:
        raise BandError(
            f"--rerank-model {cross_model}: its band was chosen for the model with "
            f"fingerprint {rerank.get('first_model_fingerprint')!r}, but --model "
            f"{first_model} has {first_fingerprint!r} (the band is in that model's score "
            "units): run pairscore rerank-band for this pair, or give --rerank-band LO,HI")
    return float(rerank["lo"]), float(rerank["hi"])


def split_band(rows: pa.Table, scores: np.ndarray, band: tuple[float, float],
               threshold: float) -> tuple[Decided | None, pa.Table | None]:
    """(the rows the first model decides, or None; the band rows with their first score
    in FIRST_SCORE, for the cross-encoder, or None)."""
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    mask = in_band(scores, *band)
    kept = band_rows = None
    if (~mask).any():
        idx = pa.array(np.flatnonzero(~mask))
        kept = Decided(rows.take(idx), scores[~mask], scores[~mask], FIRST, threshold)
    if mask.any():
        band_rows = rows.take(pa.array(np.flatnonzero(mask))).append_column(
            FIRST_SCORE, pa.array(scores[mask], pa.float32()))
    return kept, band_rows


def strip_first_score(rows: pa.Table) -> tuple[pa.Table, np.ndarray]:
    """A band table's rows as read, and their first scores."""
    i = rows.schema.get_field_index(FIRST_SCORE)
    return rows.remove_column(i), rows.column(i).to_numpy().astype(np.float32)


def rescored(rows: pa.Table, scores: np.ndarray, threshold: float) -> Decided:
    """A cross-encoder batch (its rows still carry FIRST_SCORE) as decided rows."""
    plain, first = strip_first_score(rows)
    return Decided(plain, np.asarray(scores, np.float32).reshape(-1), first, RERANK, threshold)
