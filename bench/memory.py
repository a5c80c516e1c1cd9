"""Memory flat in input size: peak RSS of the job at 1M pairs versus 100k pairs.

    python bench/memory.py [--small 100000] [--large 1000000] [--model bilstm]
                           [--modes pairs,unique]

Each job runs in a fresh process (the in-process FnApiRunner, so the process's peak RSS
is the job's: reader, transforms, model, writer). Inputs are real-text pairs from
../shared/data in 10,000-row row groups. The built texts repeat (26k distinct texts make
the 1M pairs), so `auto` would choose unique mode: both modes are measured.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

TARGET = 1.3


def run(small: int, large: int, kind: str, modes: list[str]) -> dict:
    common.require_shared_data()
    model = common.ensure_model(kind)
    inputs = {n: common.write(common.real_pairs(n, seed=2), f"memory{n}.parquet")
              for n in (small, large)}
    figures = {
        "command": f"python bench/memory.py --small {small} --large {large} --model {kind} "
        f"--modes {','.join(modes)}",
        "model": kind,
    }
    for mode in modes:
        runs = {}
        for n, inp in inputs.items():
            out = str(common.WORK / f"memory-{mode}-{n}")
            runs[n] = common.measure("job", *common.job_args(inp, out, model, "--mode", mode))
        ratio = common.ratio(runs[large]["peak_rss_mb"], runs[small]["peak_rss_mb"])
        figures[mode] = {
            "small": runs[small],
            "large": runs[large],
            "peak_rss_ratio": ratio,
            "meets_target": ratio <= TARGET,
        }
        print(f"{mode}: peak RSS {runs[small]['peak_rss_mb']} MB at {small} pairs, "
              f"{runs[large]['peak_rss_mb']} MB at {large} -> {ratio}x", flush=True)
    return figures


def main(argv=None) -> None:
    import json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", type=int, default=100_000)
    p.add_argument("--large", type=int, default=1_000_000)
    p.add_argument("--model", default="bilstm")
    p.add_argument("--modes", default="pairs,unique")
    a = p.parse_args(argv)
    figures = run(a.small, a.large, a.model, a.modes.split(","))
    # A run of one mode keeps the other mode's last figures.
    saved = common.WORK / "memory.json"
    if saved.exists():
        old = json.loads(saved.read_text())
        figures = {**{m: old[m] for m in ("pairs", "unique") if m in old}, **figures}
    common.report("memory", figures)


if __name__ == "__main__":
    main()
