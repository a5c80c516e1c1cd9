"""`pairscore estimate` beside the truth: label a scored run's sample (OUT/sample/) from a
labelled pairs file's own `label` column, estimate, and print the precision and recall
over all the run's pairs.

    pairscore default-model --output models/default
    pairscore score --input ../shared/data/qqp_sample.parquet --output out/qqp \\
        --model models/default --review-sample 300
    .venv/bin/python bench/estimate_truth.py out/qqp ../shared/data/qqp_sample.parquet \\
        --labels out/qqp-labels

Pairs whose label is not 0 or 1 (-1: graded sets) are saved unsure.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("output", help="the scored run's output (with sample/ and labels/)")
    p.add_argument("data", help="the Parquet file the run scored, with a label column")
    p.add_argument("--labels", required=True, help="the labels dataset to write (new)")
    args = p.parse_args(argv)

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from model import labels
    from pipeline import estimate

    data = pq.read_table(args.data, columns=["pair_id", "label"])
    truth = dict(zip(map(str, data["pair_id"].to_pylist()), data["label"].to_pylist()))
    sample = pq.read_table(Path(args.output) / "sample")
    ids = sample["pair_id"].to_pylist()
    now = datetime.datetime.now(datetime.UTC)
    kept = ("pair_id", "text_a", "text_b", "run_id", "model_fingerprint", "score",
            "stratum", "inclusion_probability", "stratum_size")
    labels.save_labels(args.labels, pa.table({
        **{c: sample[c] for c in kept},
        "label": pa.array([truth[i] if truth[i] in (0, 1) else None for i in ids], pa.int8()),
        "labeller": ["from-file"] * len(ids),
        "labelled_at": pa.array([now] * len(ids), pa.timestamp("us", tz="UTC"))}))
    result = estimate.for_run(args.output, args.labels)
    print("\n".join(estimate.lines(result)))

    scored = pq.read_table(Path(args.output) / "labels", columns=["pair_id", "is_duplicate"])
    y = np.array([truth[i] == 1 for i in scored["pair_id"].to_pylist()])
    pred = scored["is_duplicate"].to_numpy(zero_copy_only=False)
    print(f"truth over all {len(y)} pairs: precision {np.sum(pred & y) / pred.sum():.3f}, "
          f"recall {np.sum(pred & y) / y.sum():.3f}")


if __name__ == "__main__":
    main()
