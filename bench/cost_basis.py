"""The CPU cost basis of docs/dataflow.md "Throughput and cost": pairs per CPU second.

    python bench/cost_basis.py [--real-pairs 20000] [--noop-pairs 100000] [--model minilm]

Two whole jobs (`pipeline.job.run`, pair mode, local runner, launch to return, every
fixed cost included), each in a fresh process, on `pairscore sample` pairs (short
templated texts, ~1% malformed rows): the real default model (models/default,
all-MiniLM-L6-v2) on REAL_PAIRS, and the same job with the no-op model handler of
`bench/measure.py noop-job` (what one Python process spends around the model: read,
validate, tokenize, pack, write, publish) on NOOP_PAIRS. Figures: pairs per CPU second
(user + system of the process) for each, and the ratio no-op / real.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402


def _sample(pairs: int) -> str:
    from pipeline.sample import write_sample

    common.WORK.mkdir(parents=True, exist_ok=True)
    path = common.WORK / f"sample{pairs}.parquet"
    write_sample(str(path), pairs, 0)
    return str(path)


def run(real_pairs: int, noop_pairs: int, kind: str) -> dict:
    model = common.ensure_model(kind)
    real_in, noop_in = _sample(real_pairs), _sample(noop_pairs)
    noop = common.measure("noop-job", *common.job_args(
        noop_in, str(common.WORK / "cost-noop"), model, "--mode", "pairs"))
    print(f"no-op model, {noop_pairs} pairs: {noop}", flush=True)
    real = common.measure("job", *common.job_args(
        real_in, str(common.WORK / "cost-real"), model, "--mode", "pairs"))
    print(f"real model, {real_pairs} pairs: {real}", flush=True)
    figures = {
        "command": f"python bench/cost_basis.py --real-pairs {real_pairs} "
        f"--noop-pairs {noop_pairs} --model {kind}",
        "model": kind,
        "real": real,
        "noop": noop,
        "noop_over_real_per_cpu_s": common.ratio(noop["pairs_per_cpu_s"],
                                                 real["pairs_per_cpu_s"]),
    }
    print(f"cost basis: real {real['pairs_per_cpu_s']} pairs/CPU-s, no-op "
          f"{noop['pairs_per_cpu_s']} -> {figures['noop_over_real_per_cpu_s']}x", flush=True)
    return figures


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real-pairs", type=int, default=20_000)
    p.add_argument("--noop-pairs", type=int, default=100_000)
    p.add_argument("--model", default="minilm")
    a = p.parse_args(argv)
    common.report("cost_basis", run(a.real_pairs, a.noop_pairs, a.model))


if __name__ == "__main__":
    main()
