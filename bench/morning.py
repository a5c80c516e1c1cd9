"""What the morning check costs: the run report, review pairs, baseline, canaries, gates.

    python bench/morning.py [--pairs 100000] [--repeats 2] [--real]

Three variants of one job (pair mode, real-text pairs from ../shared/data), each in a fresh
process, interleaved `--repeats` times in one invocation; the least CPU of each is kept:

    without     no report.html (its writer replaced by a no-op here) and --review-pairs 0
    report      the default: report.html and the 1,000 pairs nearest the threshold
    everything  report, review, --baseline (the first run), 200 canaries from mrpc_dev and
                every gate set (loose enough to pass)

The score histogram is computed in every variant (it is part of the final step). Figures:
each variant's CPU and wall time as a ratio to `without`. By default the model is a stand-in
that returns varied scores without arithmetic (so that the check's cost is not hidden
behind the model's; the worst case for the ratio); `--real` scores with models/default.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

VARIANTS = ("without", "report", "everything")


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def child(variant: str, argv: list[str], real: bool) -> dict:
    import numpy as np

    from pipeline import handler, job, publish

    if not real:
        from bench.measure import NoopModel

        class SpreadModel(NoopModel):
            """Scores spread over [0, 1] from the token ids: no model arithmetic."""

            def score(self, left, right):
                mixed = left.astype(np.int64).sum(1) * 31 + right.astype(np.int64).sum(1)
                return ((mixed % 1000) / 1000.0).astype(np.float32)

        handler.LoadedPairModel = lambda *args, **kwargs: SpreadModel()
    if variant == "without":
        publish.write_report = lambda output, summary: summary.update(report_error=None)
    wall, cpu = time.perf_counter(), _cpu()
    result = job.run(argv)
    s = result.summary
    return {"variant": variant, "pairs": s["rows_in"], "scored": s["scored"],
            "wall_s": round(time.perf_counter() - wall, 3), "cpu_s": round(_cpu() - cpu, 3),
            "review_pairs": (s.get("review") or {}).get("pairs", 0),
            "canaries": (s.get("canaries") or {}).get("pairs", 0), "status": s["status"]}


def _measure(variant: str, argv: list[str], real: bool) -> dict:
    cmd = [common.PYTHON, str(Path(__file__).resolve()), "--child", variant,
           *(["--real"] if real else []), "--", *argv]
    return common.run_child(cmd)


def run(pairs: int, repeats: int, real: bool) -> dict:
    import pyarrow.parquet as pq

    data = common.require_shared_data()
    model = common.ensure_model("minilm")
    inp = common.write(common.real_pairs(pairs, seed=3), f"morning{pairs}.parquet")
    canaries = str(common.WORK / "morning-canaries.parquet")
    pq.write_table(pq.read_table(data / "mrpc_dev.parquet",
                                 columns=["text_a", "text_b", "label"]).slice(0, 200), canaries)
    base = str(common.WORK / "morning-baseline")
    extra = {
        "without": ["--review-pairs", "0"],
        "report": [],
        "everything": ["--baseline", base, "--canaries", canaries, "--max-score-psi", "10",
                       "--max-duplicate-rate-change", "1", "--max-reject-rate", "1",
                       "--min-canary-accuracy", "0"],
    }
    # The baseline the `everything` runs compare with: a `report` run.
    _measure("report", common.job_args(inp, base, model, "--mode", "pairs"), real)
    runs = {v: [] for v in VARIANTS}
    for _ in range(repeats):
        for v in VARIANTS:
            out = str(common.WORK / f"morning-{v}")
            r = _measure(v, common.job_args(inp, out, model, "--mode", "pairs", *extra[v]), real)
            runs[v].append(r)
            print(json.dumps(r), flush=True)
    best = {v: common.best(rs, "cpu_s") for v, rs in runs.items()}
    base_run = best["without"]
    figures = {
        "command": f"python bench/morning.py --pairs {pairs} --repeats {repeats}"
        + (" --real" if real else ""),
        "model": "minilm" if real else "no-op (minilm tokenizer, varied scores)",
        "runs": best,
        "ratios": {v: {"cpu": common.ratio(best[v]["cpu_s"], base_run["cpu_s"]),
                       "wall": common.ratio(best[v]["wall_s"], base_run["wall_s"])}
                   for v in VARIANTS},
    }
    r = figures["ratios"]
    print(f"morning check at {pairs} pairs, CPU against `without`: report "
          f"{r['report']['cpu']}x, everything {r['everything']['cpu']}x (wall "
          f"{r['report']['wall']}x, {r['everything']['wall']}x)", flush=True)
    return figures


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        real, rest = common.child_argv(argv[2:], "--real")
        print(json.dumps(child(argv[1], rest, real)))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--real", action="store_true", help="score with models/default")
    a = p.parse_args(argv)
    common.report("morning", run(a.pairs, a.repeats, a.real))


if __name__ == "__main__":
    main()
