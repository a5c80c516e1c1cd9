"""The cascade of docs/results.md: the Siamese model alone, the cross-encoder alone and
the cascade (Siamese for all, the cross-encoder for the band), on labelled pairs.

    python bench/cascade.py [--first models/mrpc-best] [--cross models/cross-best-banded] \
        [--data ../shared/data/mrpc_dev.parquet] [--repeats 2]

Quality: three whole jobs (`pipeline.job.run`, pair mode, local runner) on the labelled
pairs: --model FIRST, --model CROSS (a cross-encoder scores pair mode on its own) and
--model FIRST --rerank-model CROSS (the band stored by `pairscore rerank-band`); accuracy
and F1 of each one's is_duplicate against the labels, and the share re-scored.
Cost: CPU seconds (user + system of this process) per pair of the model calls, in this
one process, both models loaded first, best of --repeats: the Siamese model on every
pair, the cross-encoder on every pair, and the cascade (the Siamese model on every pair
plus the cross-encoder on the band's pairs); and their ratios; and the band `pairscore
rerank-band` would choose at other coverages, with the cascade's figures on the same
pairs (`coverage_sweep`). Tokenizing and Beam's own costs are the same for all three and left out.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

# --coverage values of `pairscore rerank-band` tried on the same scores (docs/results.md).
COVERAGES = (0.4, 0.5, 0.6, 0.7, 0.8)


def _cpu() -> float:
    import os

    t = os.times()
    return t.user + t.system


def _decisions(out: Path, labels: dict) -> dict:
    import pyarrow.parquet as pq

    from model.rerank import decision_metrics

    rows = pq.read_table(out / "labels").to_pylist()
    got = [r["is_duplicate"] for r in rows]
    want = [labels[r["pair_id"]] for r in rows]
    m = decision_metrics(got, want)
    if rows and "decided_by" in rows[0]:
        m["rescored"] = sum(r["decided_by"] == "rerank" for r in rows)
        m["rescored_share"] = m["rescored"] / len(rows)
    return m


def run(first: str, cross: str, data: str, repeats: int) -> dict:
    import pyarrow.parquet as pq

    from model import data as data_lib
    from model.predict import Scorer
    from model.rerank import in_band
    from pipeline import job

    table = pq.read_table(data)
    labels = dict(zip(table["pair_id"].to_pylist(), table["label"].to_pylist(), strict=True))
    quality = {}
    runs = {"siamese": ["--model", first], "cross": ["--model", cross],
            "cascade": ["--model", first, "--rerank-model", cross]}
    for name, flags in runs.items():
        out = common.WORK / f"cascade-{name}"
        job.run(["--input", data, "--output", str(out), "--overwrite", "--mode", "pairs",
                 "--review-sample", "0", *flags])
        quality[name] = _decisions(out, labels)
        print(name, quality[name], flush=True)

    pairs = data_lib.read_pairs(data, "text_a", "text_b", "label", "similarity")
    s1, s2 = Scorer(first), Scorer(cross)
    band_meta = s2.metadata.rerank or {}
    a, b = list(pairs.text_a), list(pairs.text_b)
    s1.score(a[:8], b[:8]), s2.score(a[:8], b[:8])  # traced before timing
    first_scores = s1.score(a, b)
    mask = in_band(first_scores, band_meta["lo"], band_meta["hi"])
    band_a = [t for t, m in zip(a, mask, strict=True) if m]
    band_b = [t for t, m in zip(b, mask, strict=True) if m]
    cost = {"siamese": [], "cross": [], "cross_band": []}
    for _ in range(repeats):
        for name, scorer, x, y in (("siamese", s1, a, b), ("cross", s2, a, b),
                                   ("cross_band", s2, band_a, band_b)):
            started = _cpu()
            scorer.score(x, y)
            cost[name].append(_cpu() - started)
    from model.rerank import cascade_decisions, choose_band, decision_metrics

    cross_scores = s2.score(a, b)
    t1, t2 = s1.metadata.threshold, s2.metadata.threshold
    sweep = []
    for coverage in COVERAGES:
        lo, hi = choose_band(first_scores, pairs.labels, t1, coverage)
        decided, band = cascade_decisions(first_scores, cross_scores, lo, hi, t1, t2)
        m = decision_metrics(decided, pairs.labels)
        sweep.append({"coverage": coverage, "band": [round(lo, 3), round(hi, 3)],
                      "share": round(float(band.mean()), 3),
                      "accuracy": round(m["accuracy"], 3), "f1": round(m["f1"], 3)})
    n = len(a)
    siamese, cross_all = min(cost["siamese"]), min(cost["cross"])
    cascade = siamese + min(cost["cross_band"])
    per_pair = {"siamese": siamese / n, "cross": cross_all / n, "cascade": cascade / n}
    return {
        "data": data, "first": first, "cross": cross, "pairs": n,
        "band": [band_meta.get("lo"), band_meta.get("hi")],
        "band_share": float(mask.mean()),
        "quality": quality,
        "coverage_sweep": sweep,
        "cpu_ms_per_pair": {k: round(1000 * v, 3) for k, v in per_pair.items()},
        "ratios": {"cross / siamese": common.ratio(per_pair["cross"], per_pair["siamese"]),
                   "cascade / siamese": common.ratio(per_pair["cascade"],
                                                     per_pair["siamese"]),
                   "cascade / cross": common.ratio(per_pair["cascade"], per_pair["cross"])},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--first", default=str(common.REPO / "models" / "mrpc-best"))
    p.add_argument("--cross", default=str(common.REPO / "models" / "cross-best-banded"))
    p.add_argument("--data", default=None)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    data = args.data or str(common.require_shared_data() / "mrpc_dev.parquet")
    for model in (args.first, args.cross):
        if not Path(model).exists():
            print(f"bench/cascade.py: {model} not here (make quality builds it); skipped")
            return 0
    started = time.time()
    figures = run(args.first, args.cross, data, args.repeats)
    figures["wall_s"] = round(time.time() - started, 1)
    common.report("cascade", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
