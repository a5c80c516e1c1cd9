"""`store compact` time against store size: 0.5M and 4M entries, in one invocation.

    python bench/store_compact.py [--small 500000] [--large 4000000] [--per-generation 10000]
                                  [--dim 384] [--duplicates 0.02]

Each store is written as nights write it: many small committed generations
(`--per-generation` entries each, in files of at most `store.ROWS_PER_FILE`), with a share
of `--duplicates` of each generation's keys also in an earlier one (runs that overlapped).
Keys are random 16-byte strings (as SHA-256 prefixes are), embeddings float32[dim]. Each
store is then compacted once, in a fresh process (`--child`), timed there: wall, CPU
seconds, peak RSS. The figure is the ratio large / small: linear time is about
large / small entries (8x for the defaults); the compaction this replaced re-sorted all
keys seen so far for every file, so its ratio grew with the number of files (hours at
tens of millions of entries). Needs about 2 x 4 x dim x large bytes of disk (12 GB at the
defaults) under out/bench/; no shared data.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

FINGERPRINT = "bench0000compact"


def build(uri: str, entries: int, per_generation: int, dim: int, duplicates: float,
          seed: int = 0) -> dict:
    """A store of `entries` entries in committed generations of `per_generation`."""
    from pipeline import store

    rng = np.random.default_rng(seed)
    shutil.rmtree(uri, ignore_errors=True)
    root = store.root(uri, FINGERPRINT)
    # One block of embeddings reused: the files' bytes, not their values, cost time.
    block = rng.standard_normal((per_generation, dim)).astype(np.float32)
    earlier = np.zeros(0, "S16")
    written = generations = 0
    while written < entries:
        n = min(per_generation, entries - written)
        keys = np.frombuffer(rng.bytes(16 * n), "S16").copy()
        dup = min(int(duplicates * n), len(earlier))
        if dup:
            keys[:dup] = earlier[rng.integers(len(earlier), size=dup)]
        name = store.generation_name(f"night{generations:05d}")
        gen_dir = f"{root}/{name}"
        os.makedirs(gen_dir, exist_ok=True)
        step = store.ROWS_PER_FILE
        files = [store.write_file(f"{gen_dir}/part-{i:03d}.parquet", keys[a:a + step],
                                  block[a:a + step], FINGERPRINT)
                 for i, a in enumerate(range(0, n, step))]
        store.commit_generation(uri, FINGERPRINT, name, files, dim)
        earlier = keys[dup:dup + 64] if not len(earlier) else np.concatenate(
            [earlier[-4096:], keys[dup:dup + 64]])
        written += n
        generations += 1
    [row] = store.info(uri)
    return {"entries": row["entries"], "generations": row["generations"],
            "files": row["files"], "bytes": row["bytes"]}


def child(uri: str) -> None:
    """Compact the store at `uri` in this process; print the report and the figures."""
    from pipeline import store

    def cpu():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    wall, c0 = time.perf_counter(), cpu()
    report = store.compact(uri, FINGERPRINT)
    wall, used = time.perf_counter() - wall, cpu() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({**report, "wall_s": round(wall, 3), "cpu_s": round(used, 3),
                      "peak_rss_mb": round(peak, 1)}))


def run(small: int, large: int, per_generation: int, dim: int, duplicates: float) -> dict:
    figures = {"per_generation": per_generation, "dim": dim, "duplicates": duplicates,
               "command": f"python bench/store_compact.py --small {small} --large {large} "
               f"--per-generation {per_generation} --dim {dim} --duplicates {duplicates:g}"}
    for label, entries in (("small", small), ("large", large)):
        uri = str(common.WORK / "store-compact" / label)
        started = time.perf_counter()
        built = build(uri, entries, per_generation, dim, duplicates)
        print(f"{label}: {built['entries']} entries in {built['generations']} generations, "
              f"{built['files']} files, {built['bytes'] / 1e9:.2f} GB (written in "
              f"{time.perf_counter() - started:.0f} s); compacting", flush=True)
        got = common.run_child([common.PYTHON, str(Path(__file__).resolve()), "--child", uri])
        figures[label] = {**built, **{k: got[k] for k in (
            "wall_s", "cpu_s", "peak_rss_mb", "entries", "duplicates_dropped",
            "generations_merged", "generations_deleted")},
            "entries_in": built["entries"],
            "wall_s_per_million": round(got["wall_s"] * 1e6 / built["entries"], 2)}
        print(f"{label}: compacted in {got['wall_s']} s wall, {got['cpu_s']} CPU-s, peak RSS "
              f"{got['peak_rss_mb']} MB; {got['entries']} entries kept, "
              f"{got['duplicates_dropped']} duplicates dropped", flush=True)
        shutil.rmtree(uri, ignore_errors=True)
    s, g = figures["small"], figures["large"]
    figures["ratios"] = {"entries": common.ratio(g["entries_in"], s["entries_in"]),
                         "wall": common.ratio(g["wall_s"], s["wall_s"]),
                         "cpu": common.ratio(g["cpu_s"], s["cpu_s"]),
                         "peak_rss": common.ratio(g["peak_rss_mb"], s["peak_rss_mb"])}
    r = figures["ratios"]
    print(f"compact {g['entries_in']} / {s['entries_in']} entries ({r['entries']}x): wall "
          f"{r['wall']}x, CPU {r['cpu']}x, peak RSS {r['peak_rss']}x (linear: "
          f"{r['entries']}x)", flush=True)
    return figures


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        import logging

        logging.basicConfig(level=logging.WARNING)
        child(argv[1])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", type=int, default=500_000)
    p.add_argument("--large", type=int, default=4_000_000)
    p.add_argument("--per-generation", type=int, default=10_000,
                   help="entries per committed generation (a night's new texts)")
    p.add_argument("--dim", type=int, default=384, help="embedding width (MiniLM: 384)")
    p.add_argument("--duplicates", type=float, default=0.02,
                   help="share of each generation's keys already in an earlier one")
    a = p.parse_args(argv)
    common.report("store_compact", run(a.small, a.large, a.per_generation, a.dim,
                                       a.duplicates))


if __name__ == "__main__":
    main()
