"""A small OUT/sample/ as the night writes it (contract columns, _design.json), for the
review page's tests: written here, without running the pipeline."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

RUN_ID = "run-review-test"
FINGERPRINT = "fp0123456789"
THRESHOLD = 0.5
# pair_id, text_a, text_b, score: scores with digits no other figure on the page has.
PAIRS = [
    ("p1", "How do I learn Python fast?", "How can I learn Python quickly?", 0.8731),
    ("p2", "What is the capital of France?", "Which city is the capital of France?", 0.9412),
    ("p3", "Is coffee bad for you?", "Is tea good for your health?", 0.4637),
    ("p4", "How to cook rice", "How to cook rice in a microwave", 0.5519),
    ("p5", "Best laptop for students", "Cheapest flights to Spain", 0.0826),
    ("p6", "Why is the sky blue?", "Why is the sky blue", 0.9923),
    ("p7", "How do I sleep better?", "Tips to fall asleep faster", 0.3318),
]


def score_strings() -> list[str]:
    """How each score could appear in a page or a response: as shown (3 places) and as
    float32 turned into JSON."""
    import numpy as np

    return [s for *_, score in PAIRS
            for s in (f"{score:.3f}", str(float(np.float32(score)))[:7])]


def _stratum(score: float, band: float = 0.1) -> str:
    if abs(score - THRESHOLD) < band:
        return "near_threshold"
    return "duplicate" if score >= THRESHOLD else "non_duplicate"


def write_sample(out, pairs=PAIRS, run_id: str = RUN_ID) -> None:
    """OUT/sample/sample-00000-of-00001.parquet and OUT/sample/_design.json."""
    strata = [_stratum(s) for *_, s in pairs]
    sizes = {"duplicate": 40, "near_threshold": 20, "non_duplicate": 140}
    sampled = {h: strata.count(h) for h in sizes}
    table = pa.table({
        "pair_id": pa.array([p[0] for p in pairs], pa.string()),
        "text_a": pa.array([p[1] for p in pairs], pa.string()),
        "text_b": pa.array([p[2] for p in pairs], pa.string()),
        "score": pa.array([p[3] for p in pairs], pa.float32()),
        "is_duplicate": pa.array([p[3] >= THRESHOLD for p in pairs], pa.bool_()),
        "stratum": pa.array(strata, pa.string()),
        "inclusion_probability": pa.array([sampled[h] / sizes[h] for h in strata],
                                          pa.float64()),
        "stratum_size": pa.array([sizes[h] for h in strata], pa.int64()),
        "run_id": pa.array([run_id] * len(pairs), pa.string()),
        "model_fingerprint": pa.array([FINGERPRINT] * len(pairs), pa.string()),
        "threshold": pa.array([THRESHOLD] * len(pairs), pa.float64()),
    })
    where = out / "sample"
    where.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, where / "sample-00000-of-00001.parquet")
    bounds = {"duplicate": (0.6, 1.0), "near_threshold": (0.4, 0.6),
              "non_duplicate": (0.0, 0.4)}
    (where / "_design.json").write_text(json.dumps({
        "run_id": run_id, "threshold": THRESHOLD, "band": 0.1,
        "seed_key": "sha256(run_id|pair_id)",
        "strata": {h: {"low": bounds[h][0], "high": bounds[h][1], "size": sizes[h],
                       "sampled": sampled[h]} for h in sizes},
    }))
