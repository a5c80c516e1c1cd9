"""The scoring job on 100k real-text pairs: pairs/s and peak RSS per model and mode.

    .venv/bin/python bench/job_throughput.py [--pairs 100000]

Each run is a fresh process (bench/measure.py job) so peak RSS is that run's own. The
pair-mode run is the baseline: `vs_pairs` is each mode's pairs/s over it, same model,
same invocation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=100_000)
    ap.add_argument("--models", default="bilstm,minilm")
    args = ap.parse_args()
    common.require_shared_data()
    inp = common.write(common.real_pairs(args.pairs), f"real{args.pairs}.parquet")
    figures = {"pairs": args.pairs}
    for kind in args.models.split(","):
        model = common.ensure_model(kind)
        runs = {}
        for mode in ("pairs", "auto"):
            out = str(common.WORK / f"throughput-{kind}-{mode}")
            r = common.measure("job", *common.job_args(inp, out, model, "--mode", mode))
            runs[mode] = r
            print(kind, mode, r, flush=True)
        base = runs["pairs"]["wall_s"]
        figures[kind] = {
            mode: {
                "pairs_per_s": round(args.pairs / r["wall_s"], 1),
                "wall_s": round(r["wall_s"], 1),
                "peak_rss_mb": r.get("peak_rss_mb"),
                "vs_pairs": common.ratio(base, r["wall_s"]),
            }
            for mode, r in runs.items()
        }
    common.report("job_throughput", figures)


if __name__ == "__main__":
    main()
