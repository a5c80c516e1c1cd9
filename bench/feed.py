"""Feed rate: how fast the job can feed a model, versus the tokenizer alone.

    python bench/feed.py [--pairs 200000] [--model minilm]

What a GPU worker needs from its CPUs: the job with scoring replaced by a no-op model
handler (read -> validate -> tokenize -> pack -> RunInference(no-op) -> threshold ->
write), pair mode, versus the model's tokenizer alone (encode_batch_fast on both texts
of every pair, 8192 rows per call) on the same texts. Both in fresh processes; the
figure is pairs per CPU second (per core), which other processes on shared cores
disturb little. Fixed costs (pipeline start, summary) are included in the job's figure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

TARGET = 0.7


def run(pairs: int, kind: str, repeats: int) -> dict:
    common.require_shared_data()
    model = common.ensure_model(kind)
    inp = common.write(common.real_pairs(pairs, seed=1), f"feed{pairs}.parquet")
    tok, job = [], []
    for _ in range(repeats):
        tok.append(common.measure("tokenize", model, inp))
        out = str(common.WORK / "feed-noop")
        job.append(common.measure("noop-job", *common.job_args(inp, out, model, "--mode", "pairs")))
    t, j = common.best(tok, "cpu_s"), common.best(job, "cpu_s")
    figures = {
        "command": f"python bench/feed.py --pairs {pairs} --model {kind}",
        "pairs": pairs,
        "tokenizer": t,
        "noop_job": j,
        "job_over_tokenizer_per_core": common.ratio(j["pairs_per_cpu_s"], t["pairs_per_cpu_s"]),
        "job_over_tokenizer_wall": common.ratio(j["pairs_per_s"], t["pairs_per_s"]),
    }
    figures["meets_target"] = figures["job_over_tokenizer_per_core"] >= TARGET
    print(f"feed: no-op job {j['pairs_per_cpu_s']} pairs/CPU-s vs tokenizer "
          f"{t['pairs_per_cpu_s']} -> {figures['job_over_tokenizer_per_core']}", flush=True)
    return figures


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=200_000)
    p.add_argument("--model", default="minilm")
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args(argv)
    common.report("feed", run(a.pairs, a.model, a.repeats))


if __name__ == "__main__":
    main()
