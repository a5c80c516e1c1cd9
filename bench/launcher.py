"""The launcher after the pipeline: flat in the number of rows (the job publishes itself).

    python bench/launcher.py [--small 100000] [--large 1000000] [--model minilm] [--real]

The job's last stage (stages.Finalize) counts, checks, publishes and writes summary.json;
after the runner returns, `pipeline.job.run` only reads summary.json and the counters.
This measures that tail: the job (pair mode, real-text pairs from ../shared/data) runs
at SMALL and LARGE pairs, each in a fresh process (`--child`) where
`FnApiRunner.run_pipeline` is wrapped to note the moment the runner returns, with the
process's VmRSS and VmHWM (/proc/self/status). When `job.run` returns the same are read
again: post-pipeline seconds (wall and CPU) and RSS growth after the pipeline
(VmRSS at return of job.run minus VmRSS when the runner returned; and VmHWM's growth).
Peak RSS of the whole job is reported too. By default the model is the no-op handler of
`bench/measure.py noop-job` (on models/default's tokenizer) to keep 1M pairs fast; the
launcher's tail does not depend on the model. `--real` scores with the model instead.
Figures: LARGE / SMALL ratios.
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


def _status() -> dict:
    """VmRSS and VmHWM of this process, MB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def child(argv: list[str], noop: bool) -> dict:
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from pipeline import handler, job

    if noop:
        from bench.measure import NoopModel

        handler.LoadedPairModel = lambda *args, **kwargs: NoopModel()
    marks = {}
    original = FnApiRunner.run_pipeline

    def run_pipeline(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        marks["returned"] = (time.perf_counter(), _cpu(), _status())
        return result

    FnApiRunner.run_pipeline = run_pipeline
    start_wall, start_cpu = time.perf_counter(), _cpu()
    result = job.run(argv)
    end_wall, end_cpu, end = time.perf_counter(), _cpu(), _status()
    ret_wall, ret_cpu, ret = marks["returned"]
    s = result.summary
    return {
        "pairs": s["rows_in"],
        "scored": s["scored"],
        "mode": s.get("mode"),
        "job_wall_s": round(end_wall - start_wall, 3),
        "job_cpu_s": round(end_cpu - start_cpu, 3),
        "post_pipeline_wall_s": round(end_wall - ret_wall, 4),
        "post_pipeline_cpu_s": round(end_cpu - ret_cpu, 4),
        "rss_at_runner_return_mb": ret["VmRSS"],
        "rss_at_run_return_mb": end["VmRSS"],
        "rss_growth_after_pipeline_mb": round(end["VmRSS"] - ret["VmRSS"], 1),
        "hwm_at_runner_return_mb": ret["VmHWM"],
        "hwm_growth_after_pipeline_mb": round(end["VmHWM"] - ret["VmHWM"], 1),
        "peak_rss_mb": end["VmHWM"],
    }


def _measure(argv: list[str], noop: bool) -> dict:

    cmd = [common.PYTHON, str(Path(__file__).resolve()), "--child", *(["--noop"] if noop else []),
           "--", *argv]
    return common.run_child(cmd)


def run(small: int, large: int, kind: str, real: bool) -> dict:
    common.require_shared_data()
    model = common.ensure_model(kind)
    runs = {}
    for n in (small, large):
        inp = common.write(common.real_pairs(n, seed=2), f"launcher{n}.parquet")
        out = str(common.WORK / f"launcher-{n}")
        runs[n] = _measure(common.job_args(inp, out, model, "--mode", "pairs"), noop=not real)
        print(f"{n} pairs: {json.dumps(runs[n])}", flush=True)
    s, b = runs[small], runs[large]
    figures = {
        "command": f"python bench/launcher.py --small {small} --large {large} --model {kind}"
        + (" --real" if real else ""),
        "model": kind if real else f"no-op ({kind} tokenizer)",
        "small": s,
        "large": b,
        "ratios": {
            "pairs": common.ratio(b["pairs"], s["pairs"]),
            "job_wall_s": common.ratio(b["job_wall_s"], s["job_wall_s"]),
            "post_pipeline_wall_s": common.ratio(b["post_pipeline_wall_s"],
                                                 s["post_pipeline_wall_s"]),
            "post_pipeline_cpu_s": common.ratio(b["post_pipeline_cpu_s"],
                                                s["post_pipeline_cpu_s"]),
            "peak_rss_mb": common.ratio(b["peak_rss_mb"], s["peak_rss_mb"]),
            "rss_at_run_return_mb": common.ratio(b["rss_at_run_return_mb"],
                                                 s["rss_at_run_return_mb"]),
        },
    }
    r = figures["ratios"]
    print(f"launcher tail {large}/{small}: post-pipeline wall {r['post_pipeline_wall_s']}x "
          f"({s['post_pipeline_wall_s']} -> {b['post_pipeline_wall_s']} s), RSS growth after "
          f"the pipeline {s['rss_growth_after_pipeline_mb']} -> "
          f"{b['rss_growth_after_pipeline_mb']} MB, peak RSS {r['peak_rss_mb']}x", flush=True)
    return figures


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        noop, rest = common.child_argv(argv[1:], "--noop")
        print(json.dumps(child(rest, noop)))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", type=int, default=100_000)
    p.add_argument("--large", type=int, default=1_000_000)
    p.add_argument("--model", default="minilm")
    p.add_argument("--real", action="store_true", help="score with the model, not a no-op")
    a = p.parse_args(argv)
    common.report("launcher", run(a.small, a.large, a.model, a.real))


if __name__ == "__main__":
    main()
