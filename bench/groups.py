"""Duplicate groups at scale: connected components of 1M and 10M duplicate edges.

    .venv/bin/python bench/groups.py [--edges 1000000,10000000]

Synthetic graphs with known components, shuffled: chains of 50 records, stars of 100,
cliques of 10 (45 edges each), and random edges among their own records (component count
not known in advance, so only the others are checked). Each size runs in a fresh process
(`pipeline.groups.connected_groups` then `group_stats`, what the Groups stage does on its
one worker), measuring wall and CPU seconds and peak RSS. Figures: per-edge time and
memory of the larger run over the smaller, in the same invocation.
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--edges", default="1000000,10000000")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return
    runs = []
    for n in (int(x) for x in args.edges.split(",")):
        out = subprocess.run([sys.executable, __file__, "--one", str(n)], check=True,
                             capture_output=True, text=True, cwd=REPO)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), flush=True)
    small, large = runs[0], runs[-1]
    scale = large["edges"] / small["edges"]
    per_edge = {
        "cpu_s_per_edge_ratio": round(large["cpu_s"] / small["cpu_s"] / scale, 3),
        "wall_s_per_edge_ratio": round(large["wall_s"] / small["wall_s"] / scale, 3),
        "rss_growth_mb_per_million_edges": round(
            (large["peak_rss_mb"] - small["peak_rss_mb"])
            / ((large["edges"] - small["edges"]) / 1e6), 1),
    }
    print(json.dumps(per_edge))


if __name__ == "__main__":
    main()
