"""Reduced precision on CPU: --precision bfloat16 versus float32, speed and score change.

    python bench/precision.py [--pairs 3000] [--models minilm,bilstm]

`--precision bfloat16` turns on TensorFlow's oneDNN auto mixed precision (grappler
rewrites the float32 graph so that matmuls run in bfloat16 on AVX512-BF16 / AMX; the
SavedModel is unchanged). Measured on the model called directly (pre-tokenized,
packed batches, loaded and warmed up first), float32 and bfloat16 alternating in fresh
processes, and through the job for the scores: the largest |score difference| over
the same real pairs. The issue's rule: bfloat16 becomes the default only if the
difference is <= 0.01 and it is faster.
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

MAX_DIFF = 0.01


def _scores(out: str) -> pa.Table:
    files = sorted(glob.glob(f"{out}/labels/*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]).sort_by("pair_id")


def run(pairs: int, kinds: list[str], repeats: int) -> dict:
    common.require_shared_data()
    inp = common.write(common.real_pairs(pairs, seed=4), f"precision{pairs}.parquet")
    figures = {"command": f"python bench/precision.py --pairs {pairs} --models "
               f"{','.join(kinds)}", "pairs": pairs}
    for kind in kinds:
        model = common.ensure_model(kind)
        direct = {"float32": [], "bfloat16": []}
        for _ in range(repeats):
            for precision in direct:
                direct[precision].append(
                    common.measure("direct", model, inp, "--precision", precision))
        jobs, scores = {}, {}
        for precision in ("float32", "bfloat16"):
            out = str(common.WORK / f"precision-{kind}-{precision}")
            jobs[precision] = common.measure(
                "job", *common.job_args(inp, out, model, "--mode", "pairs",
                                        "--precision", precision))
            scores[precision] = _scores(out)
        a, b = scores["float32"], scores["bfloat16"]
        assert a["pair_id"].equals(b["pair_id"])
        diff = np.abs(a["score"].to_numpy() - b["score"].to_numpy())
        flips = int(np.sum(a["is_duplicate"].to_numpy(zero_copy_only=False)
                           != b["is_duplicate"].to_numpy(zero_copy_only=False)))
        f32 = common.best(direct["float32"], "cpu_s")
        bf16 = common.best(direct["bfloat16"], "cpu_s")
        row = {
            "direct_float32": f32,
            "direct_bfloat16": bf16,
            "job_float32": jobs["float32"],
            "job_bfloat16": jobs["bfloat16"],
            "speedup_direct_cpu": common.ratio(f32["cpu_s"], bf16["cpu_s"]),
            "speedup_direct_wall": common.ratio(
                common.best(direct["float32"], "wall_s")["wall_s"],
                common.best(direct["bfloat16"], "wall_s")["wall_s"]),
            "speedup_job_cpu": common.ratio(jobs["float32"]["cpu_s"], jobs["bfloat16"]["cpu_s"]),
            "max_score_diff": round(float(diff.max()), 5),
            "p99_score_diff": round(float(np.quantile(diff, 0.99)), 5),
            "label_flips": flips,
        }
        row["qualifies_as_default"] = (row["max_score_diff"] <= MAX_DIFF
                                       and row["speedup_direct_cpu"] > 1.0)
        figures[kind] = row
        print(f"{kind}: bfloat16 {row['speedup_direct_cpu']}x (CPU, direct), "
              f"{row['speedup_job_cpu']}x (CPU, job); max |score diff| {row['max_score_diff']}, "
              f"p99 {row['p99_score_diff']}, {flips} labels flip of {len(diff)}", flush=True)
    return figures


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=3000)
    p.add_argument("--models", default="minilm,bilstm")
    p.add_argument("--repeats", type=int, default=1)
    a = p.parse_args(argv)
    common.report("precision", run(a.pairs, a.models.split(","), a.repeats))


if __name__ == "__main__":
    main()
