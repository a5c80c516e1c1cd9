"""`pairscore estimate` and `pairscore threshold --labelled` beside the truth: label a
scored run's sample (OUT/sample/) from a labelled pairs file's own `label` column, through
the review page's own API (the calls its y / n / u keys make, in its showing order),
estimate, optionally choose a threshold from those labels, and print the precision and
recall over all the run's pairs.

    pairscore default-model --output models/default
    pairscore score --input ../shared/data/qqp_sample.parquet --output out/qqp \\
        --model models/default --review-sample 300
    .venv/bin/python bench/estimate_truth.py out/qqp ../shared/data/qqp_sample.parquet \\
        --labels out/qqp-labels [--first 50] [--model models/default --target-precision 0.6]

Pairs whose label is not 0 or 1 (-1: graded sets) are labelled unsure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("output", help="the scored run's output (with sample/ and labels/)")
    p.add_argument("data", help="the Parquet file the run scored, with a label column")
    p.add_argument("--labels", required=True, help="the labels dataset to write (new)")
    p.add_argument("--first", type=int, default=None,
                   help="label only the first N pairs the page shows (default: all)")
    p.add_argument("--model", help="with --target-precision: the model to threshold")
    p.add_argument("--target-precision", type=float,
                   help="then run pairscore threshold --labelled LABELS for this target")
    args = p.parse_args(argv)
    if (args.model is None) != (args.target_precision is None):
        p.error("--model and --target-precision go together")

    import json
    import tempfile

    import numpy as np
    import pyarrow.parquet as pq

    from model.threshold import ThresholdError, threshold_model
    from pipeline import estimate, review

    data = pq.read_table(args.data, columns=["pair_id", "label"])
    truth = dict(zip(map(str, data["pair_id"].to_pylist()), data["label"].to_pylist()))
    page = review.create_app(args.output, args.labels, "from-file").test_client()
    done = 0
    while args.first is None or done < args.first:
        pair = page.get("/api/next").get_json()["pair"]
        if pair is None:
            break
        label = truth[pair["pair_id"]]
        r = page.post("/api/label", json={"pair_id": pair["pair_id"],
                                          "label": label if label in (0, 1) else None})
        assert r.status_code == 200, r.get_json()
        done += 1
    print(f"labelled {done} pairs through the review page's API")
    result = estimate.for_run(args.output, args.labels)
    print("\n".join(estimate.lines(result)))

    scored = pq.read_table(Path(args.output) / "labels", columns=["pair_id", "score",
                                                                  "is_duplicate"])
    y = np.array([truth[i] == 1 for i in scored["pair_id"].to_pylist()])
    pred = scored["is_duplicate"].to_numpy(zero_copy_only=False)
    print(f"truth over all {len(y)} pairs: precision {np.sum(pred & y) / pred.sum():.3f}, "
          f"recall {np.sum(pred & y) / y.sum():.3f}")
    if args.target_precision is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        try:
            choice = threshold_model(args.model, args.labels, str(Path(tmp) / "m"),
                                     "precision", args.target_precision)
        except ThresholdError as e:
            print(f"threshold: {e}")
            return
    print("threshold " + json.dumps({k: getattr(choice, k) for k in (
        "threshold", "lower_bound", "precision", "precision_interval", "recall",
        "recall_interval", "n")}))
    s = scored["score"].to_numpy(zero_copy_only=False).astype(np.float64)
    at = s >= choice.threshold
    print(f"truth at threshold {choice.threshold:.4f} over all {len(y)} pairs: precision "
          f"{np.sum(at & y) / max(at.sum(), 1):.3f}, recall {np.sum(at & y) / y.sum():.3f}")


if __name__ == "__main__":
    main()
