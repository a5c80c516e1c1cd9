"""Duplicate groups at scale: connected components of 1M and 10M duplicate edges, on
both paths.

    .venv/bin/python bench/groups.py [--edges 1000000,10000000] [--paths one-worker,distributed]

Synthetic graphs with known components, shuffled: chains of 50 records, stars of 100,
cliques of 10 (45 edges each), and random edges among their own records (component count
not known in advance, so only the others are checked). Each size runs in a fresh process
(`pipeline.groups.connected_groups` then `group_stats`, what the Groups stage does on its
one worker), measuring wall and CPU seconds and peak RSS. The distributed path runs the
job's own stages (`Components` then `GroupIds`) in a Beam pipeline on the in-process
runner (one worker process: its peak RSS is one worker's), with the one-worker bound at
a tenth of the edges and one bucket per `edges / 16`, and reports the rounds taken and
the most edges any bucket held in a round. Figures: per-edge time and memory of the
larger run over the smaller, and of the distributed path over the one-worker path, in
the same invocation.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def graph(edges: int, seed: int = 0):
    """(left, right) int64 arrays of about `edges` edges, and the known components."""
    import numpy as np

    rng = np.random.default_rng(seed)
    quarter = edges // 4
    parts, known, base = [], 0, 0
    n_chain = quarter // 49  # chains of 50 records: 49 edges
    ids = base + np.arange(n_chain * 50).reshape(n_chain, 50)
    parts.append((ids[:, :-1].ravel(), ids[:, 1:].ravel()))
    known, base = known + n_chain, base + n_chain * 50
    n_star = quarter // 99  # stars of 100 records: 99 edges
    ids = base + np.arange(n_star * 100).reshape(n_star, 100)
    parts.append((np.repeat(ids[:, 0], 99), ids[:, 1:].ravel()))
    known, base = known + n_star, base + n_star * 100
    n_clique = quarter // 45  # cliques of 10 records: 45 edges
    a, b = np.triu_indices(10, 1)
    ids = base + np.arange(n_clique * 10).reshape(n_clique, 10)
    parts.append((ids[:, a].ravel(), ids[:, b].ravel()))
    known, base = known + n_clique, base + n_clique * 10
    rest = edges - sum(len(p[0]) for p in parts)
    # Random edges among 1.5 x as many records as edges: many small components.
    nodes = int(rest * 1.5)
    parts.append((base + rng.integers(nodes, size=rest), base + rng.integers(nodes, size=rest)))
    left = np.concatenate([p[0] for p in parts])
    right = np.concatenate([p[1] for p in parts])
    order = rng.permutation(len(left))
    return left[order], right[order], known, base


def measure(edges: int) -> dict:
    import numpy as np
    import pyarrow as pa

    from pipeline import groups

    left, right, known, structured_records = graph(edges)
    la, ra = pa.array(left), pa.array(right)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    wall, cpu = time.perf_counter(), time.process_time()
    table = groups.connected_groups(la, ra)
    stats = groups.group_stats(table)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    structured = table.filter(pa.compute.less(table["record_id"], structured_records))
    heads = structured.filter(pa.compute.equal(structured["record_id"], structured["group_id"]))
    assert heads.num_rows == known, (heads.num_rows, known)
    assert structured.num_rows == structured_records
    return {
        "edges": int(len(left)),
        "records_grouped": stats.records,
        "groups": stats.groups,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_mb": round(rss_before, 1),
        "known_components_ok": True,
        "edge_bytes_in": int(np.asarray(left).nbytes * 2),
    }


def measure_distributed(edges: int) -> dict:
    import apache_beam as beam
    import pyarrow as pa

    from pipeline import groups
    from pipeline.handler import NAMESPACE
    from pipeline.stages.groups import Components, GroupIds

    left, right, _, _ = graph(edges)
    bound, buckets = max(1, len(left) // 10), 16
    chunk = 200_000
    tables = [groups.edge_table(pa.array(left[i:i + chunk]), pa.array(right[i:i + chunk]))
              for i in range(0, len(left), chunk)]
    del left, right
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    wall, cpu = time.perf_counter(), time.process_time()
    p = beam.Pipeline("apache_beam.runners.portability.fn_api_runner.FnApiRunner")
    roots, counts = p | beam.Create(tables, reshuffle=False) | Components(
        bound, buckets, pa.int64())
    out = {"roots": roots, "previous": p | "NoPrevious" >> beam.Create([])} | GroupIds(
        "bench", 1, buckets, pa.int64())
    out["groups"] | "Done" >> beam.Map(lambda t: t.num_rows)
    result = p.run()
    result.wait_until_finish()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rounds, most = {}, {}
    metrics = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(NAMESPACE))
    for c in metrics["counters"]:
        name = c.key.metric.name
        if name.startswith("groups_round"):
            rounds[name] = rounds.get(name, 0) + (c.committed or c.attempted or 0)
    for d in metrics["distributions"]:
        name = d.key.metric.name
        if name.endswith("_bucket_edges"):
            got = d.committed or d.attempted
            most[int(name[len("groups_round"):-len("_bucket_edges")])] = got.max
    return {
        "edges": edges, "path": "distributed", "bound": bound, "buckets": buckets,
        "rounds": len([v for v in rounds.values() if v]),
        "edges_per_round": [rounds[k] for k in sorted(rounds, key=lambda k: int(
            k[len("groups_round"):-len("_edges")]))],
        "most_edges_in_one_bucket": [most[r] for r in sorted(most)],
        "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_mb": round(rss_before, 1),
    }


def run(edges: list[int], paths: list[str]) -> dict:
    """Each (path, size) in a fresh process, then the ratios: {"runs", "ratios"}."""
    runs = {}
    for path in paths:
        for n in edges:
            out = subprocess.run([sys.executable, __file__, "--one", str(n), "--path", path],
                                 check=True, capture_output=True, text=True, cwd=REPO)
            run = json.loads(out.stdout.strip().splitlines()[-1])
            run.setdefault("path", "one-worker")
            runs.setdefault(path, []).append(run)
            print(json.dumps(run), flush=True)
    ratios = {}
    for path, rs in runs.items():
        small, large = rs[0], rs[-1]
        scale = large["edges"] / small["edges"]
        if scale > 1:
            ratios[path] = {
                "cpu_s_per_edge_ratio": round(large["cpu_s"] / small["cpu_s"] / scale, 3),
                "wall_s_per_edge_ratio": round(large["wall_s"] / small["wall_s"] / scale, 3),
                "rss_growth_mb_per_million_edges": round(
                    (large["peak_rss_mb"] - small["peak_rss_mb"])
                    / ((large["edges"] - small["edges"]) / 1e6), 1)}
    if len(runs) == 2:
        one, dist = runs["one-worker"], runs["distributed"]
        ratios["distributed_over_one_worker"] = [
            {"edges": a["edges"], "cpu_s": round(b["cpu_s"] / a["cpu_s"], 2),
             "peak_rss_mb": round(b["peak_rss_mb"] / a["peak_rss_mb"], 2)}
            for a, b in zip(one, dist)]
    return {"runs": runs, "ratios": ratios}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--edges", default="1000000,10000000")
    ap.add_argument("--paths", default="one-worker,distributed")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child process
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        fn = measure_distributed if args.path == "distributed" else measure
        print(json.dumps(fn(args.one)))
        return
    from bench import common

    figures = run([int(x) for x in args.edges.split(",")], args.paths.split(","))
    common.report("groups", figures)


if __name__ == "__main__":
    main()
