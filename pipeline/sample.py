"""A sample candidate-pairs file: short realistic texts written for pairscore.

Pairs are near-duplicates (same template, light rewording), related pairs (same topic,
different question) and unrelated pairs, plus a few malformed rows (null id, null or
empty text) so that a demo run shows the rejects path too.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TOPICS = [
    "python", "a laptop", "my bike", "the kitchen sink", "a used car", "my passport",
    "a sourdough starter", "the garden", "a job interview", "my phone battery",
    "the printer", "a marathon", "my credit score", "the cat", "a wedding speech",
    "the router", "Spanish", "a mortgage", "my sleep", "a vegetable soup",
]
TEMPLATES = [
    ("How do I fix {t}?", "What is the best way to repair {t}?"),
    ("How can I get better at {t}?", "What should I do to improve at {t}?"),
    ("Where can I buy {t} cheaply?", "What is the cheapest place to buy {t}?"),
    ("How long does {t} usually last?", "What is the typical lifespan of {t}?"),
    ("Is {t} worth the money?", "Should I spend money on {t}?"),
    ("How do I clean {t}?", "What is the right way to clean {t}?"),
    ("Why does {t} keep breaking?", "What makes {t} break so often?"),
    ("Can you recommend a guide to {t}?", "Which guide about {t} would you suggest?"),
]


def sample_table(pairs: int, seed: int = 0) -> pa.Table:
    """`pairs` rows of pair_id, text_a, text_b; about 1% malformed."""
    rng = np.random.default_rng(seed)
    ids, left, right = [], [], []
    for i in range(pairs):
        t = TOPICS[rng.integers(len(TOPICS))]
        a, b = TEMPLATES[rng.integers(len(TEMPLATES))]
        kind = rng.random()
        if kind < 0.4:
            text_a, text_b = a.format(t=t), b.format(t=t)
        elif kind < 0.7:
            other = TEMPLATES[rng.integers(len(TEMPLATES))][1]
            text_a, text_b = a.format(t=t), other.format(t=t)
        else:
            t2 = TOPICS[rng.integers(len(TOPICS))]
            text_a, text_b = a.format(t=t), b.format(t=t2)
        ids.append(f"p{i:07d}")
        left.append(text_a)
        right.append(text_b)
    bad = rng.choice(pairs, size=max(1, pairs // 100), replace=False) if pairs >= 4 else []
    for k, i in enumerate(bad):
        fault = k % 4
        if fault == 0:
            ids[i] = None
        elif fault == 1:
            left[i] = None
        elif fault == 2:
            right[i] = ""
        else:
            left[i] = "   "
    return pa.table(
        {
            "pair_id": pa.array(ids, pa.string()),
            "text_a": pa.array(left, pa.string()),
            "text_b": pa.array(right, pa.string()),
        }
    )


def write_sample(path: str, pairs: int, seed: int = 0) -> int:
    import os

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    pq.write_table(sample_table(pairs, seed), path, row_group_size=4096)
    return pairs
