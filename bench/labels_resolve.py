"""latest() and resolve() of the labels dataset (model/labels.py) on many rows, and
read_labels() of a local dataset of one-label files (what the review page writes).

    .venv/bin/python bench/labels_resolve.py [--rows 1000000] [--files 300]

A synthetic labels table: ROWS labels of 0.3 * ROWS pairs by 5 labellers at random
times, a third of them unsure. Prints the wall seconds of each call (sort + take in
Arrow, numpy reductions per pair; no Python loop per row) and what they returned.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def table(rows: int, seed: int = 0):
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, rows).astype(np.int8)
    return pa.table({
        "pair_id": pa.array([f"p{i}" for i in rng.integers(0, int(0.3 * rows), rows)]),
        "text_a": pa.nulls(rows, pa.string()),
        "text_b": pa.nulls(rows, pa.string()),
        "label": pa.array(label, mask=label == 2),
        "labeller": pa.array([f"l{i}" for i in rng.integers(0, 5, rows)]),
        "labelled_at": pa.array(rng.integers(0, 10**12, rows), pa.timestamp("us", tz="UTC")),
    })


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="labels in the table")
    p.add_argument("--files", type=int, default=300, help="one-label files to read back")
    args = p.parse_args()
    from model import labels

    t = table(args.rows)
    start = time.perf_counter()
    per = labels.latest(t)
    latest_s = time.perf_counter() - start
    start = time.perf_counter()
    resolved, disagreements = labels.resolve(t)
    resolve_s = time.perf_counter() - start
    print(f"{args.rows} rows: latest {latest_s:.2f} s ({per.num_rows} rows); resolve "
          f"{resolve_s:.2f} s ({resolved.num_rows} pairs, {disagreements.num_rows} "
          "disagreements)")
    import tempfile

    with tempfile.TemporaryDirectory() as uri:
        one = t.slice(0, 1)
        for _ in range(args.files):
            labels.save_labels(uri, one)
        start = time.perf_counter()
        back = labels.read_labels(uri)
        print(f"read_labels of {args.files} one-label local files: "
              f"{time.perf_counter() - start:.2f} s ({back.num_rows} rows)")


if __name__ == "__main__":
    main()
