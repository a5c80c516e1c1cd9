"""Candidate sets where each text appears in k pairs on average, from real texts.

    python bench/candidates.py --pairs 8000 --k 4 --output out/bench/k4.parquet

Blocking and nearest-neighbour candidate generation give each text many partners; k =
2 x pairs / distinct texts is what unique-text mode saves (it encodes each text once).
Texts come from ../shared/data (distinct, real); pairs never join a text to itself.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402


def candidate_set(pairs: int, k: float, seed: int = 0,
                  texts: list[str] | None = None) -> pa.Table:
    """`pairs` rows (pair_id, text_a, text_b) over round(2 x pairs / k) distinct texts,
    each text in floor or ceil of k pairs."""
    texts = texts if texts is not None else common.real_texts()
    distinct = max(2, round(2 * pairs / k))
    if distinct > len(texts):
        raise ValueError(f"{pairs} pairs at k={k} need {distinct} distinct texts; "
                         f"only {len(texts)} available")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(texts), size=distinct, replace=False)
    slots = np.arange(2 * pairs) % distinct
    rng.shuffle(slots)
    a, b = slots[0::2].copy(), slots[1::2].copy()
    # Break self-pairs by swapping right-hand texts with random other pairs.
    for _ in range(100):
        same = np.flatnonzero(a == b)
        if not len(same):
            break
        other = rng.integers(pairs, size=len(same))
        b[same], b[other] = b[other], b[same].copy()
    return pa.table(
        {
            "pair_id": pa.array([f"c{i:08d}" for i in range(pairs)], pa.string()),
            "text_a": pa.array([texts[chosen[i]] for i in a], pa.string()),
            "text_b": pa.array([texts[chosen[i]] for i in b], pa.string()),
        }
    )


def repeat_factor(table: pa.Table) -> float:
    import pyarrow.compute as pc

    both = pa.concat_arrays([table["text_a"].combine_chunks(), table["text_b"].combine_chunks()])
    return 2 * table.num_rows / len(pc.unique(both))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, required=True)
    p.add_argument("--k", type=float, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True)
    args = p.parse_args()
    table = candidate_set(args.pairs, args.k, args.seed)
    import pyarrow.parquet as pq

    pq.write_table(table, args.output, row_group_size=10_000)
    print(f"wrote {table.num_rows} pairs, k = {repeat_factor(table):.2f}, to {args.output}")


if __name__ == "__main__":
    main()
