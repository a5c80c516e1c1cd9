"""A simulated week of nightly runs against one embedding store (--embedding-store).

    python bench/store_week.py [--texts 2000] [--nights 7] [--k 4] [--model minilm]

Night 1 is cold: `--texts` distinct real texts (../shared/data), `--k` pairs per text
(texts x k / 2 pairs). Each later night draws 90% of its distinct texts from the texts of
the nights before and 10% new ones; a last night holds known texts only. Every night runs
the job, in a fresh process, with the same store. In the same invocation, the same pairs
of nights 1, 2 and the all-known night are also scored cold (--mode unique, no store).

Figures per night: CPU seconds, wall seconds, texts encoded, store hits, and the ratio to
the cold run on the same pairs, whole job and steady state (minus each kind of run's fixed
cost: the best of two 64-pair jobs, as in bench/unique_speedup.py). Targets (issue 13):
night 2 <= 0.2 x the cold run's CPU, the all-known night encodes 0 texts, store bytes per
text within 10% of 4 x dim + 16. Then the store's read cost (every file read, checked and
indexed, as the job's lookup does) per million entries, against the cost of encoding a
million texts at the cold run's rate; and one `store compact` of the week's generations.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402
from bench.candidates import candidate_set  # noqa: E402

NEW_SHARE = 0.10


def nights(texts: list[str], distinct: int, count: int, seed: int = 0) -> list[list[str]]:
    """Each night's distinct texts: night 1 fresh; later nights 90% seen before, 10% new;
    a last night of seen texts only."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(texts))
    fresh = iter(order)
    seen: list[int] = []
    out = []
    for n in range(count + 1):
        new = distinct if n == 0 else (0 if n == count else round(NEW_SHARE * distinct))
        old = rng.choice(len(seen), size=distinct - new, replace=False) if n else []
        chosen = [seen[i] for i in old] + [next(fresh) for _ in range(new)]
        seen += chosen[len(old):]
        out.append([texts[i] for i in chosen])
    return out


def _job(inp: str, out: str, model: str, *extra: str) -> dict:
    return common.measure("job", *common.job_args(inp, out, model, *extra))


def read_cost(store_uri: str) -> dict:
    """Read, check and index every committed entry (what the lookup does), in this process."""
    import resource

    from pipeline import store

    def cpu():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    [row] = store.info(store_uri)
    listing = store.list_generations(store.root(store_uri, row["namespace"]))
    wall, c0 = time.perf_counter(), cpu()
    chunks = [store.read_file(f, row["dim"]) for g in listing.live for f in g.files]
    index = store.StoreIndex.build([c for c in chunks if c is not None], row["dim"])
    wall, c1 = time.perf_counter() - wall, cpu() - c0
    per_m = 1e6 / max(len(index), 1)
    return {"entries": len(index), "wall_s": round(wall, 3), "cpu_s": round(c1, 3),
            "wall_s_per_million": round(wall * per_m, 2),
            "cpu_s_per_million": round(c1 * per_m, 2)}


def run(distinct: int, count: int, k: float, kind: str) -> dict:
    from pipeline import store

    texts = common.real_texts()
    model = common.ensure_model(kind)
    dim = json.loads((Path(model) / "pairscore.json").read_text())["embedding_dim"]
    figures = {"model": kind, "texts_per_night": distinct, "nights": count, "k": k,
               "command": f"python bench/store_week.py --texts {distinct} --nights {count} "
               f"--k {k:g} --model {kind}"}
    store_uri = str(common.WORK / "store-week" / "store")
    shutil.rmtree(common.WORK / "store-week", ignore_errors=True)
    tiny = common.write(candidate_set(64, 1, seed=9, texts=texts), "store-week-tiny.parquet")
    fixed = {}
    for name, extra in (("cold", ("--mode", "unique")),
                        ("store", ("--embedding-store", str(common.WORK / "store-week" / "t")))):
        runs = [_job(tiny, str(common.WORK / f"store-week-tiny-{name}"), model, *extra)
                for _ in range(2)]
        fixed[name] = {"cpu_s": common.best(runs, "cpu_s")["cpu_s"],
                       "wall_s": common.best(runs, "wall_s")["wall_s"]}
    figures["fixed"] = fixed
    rows = []
    week = nights(texts, distinct, count)
    for n, night in enumerate(week, start=1):
        last = n == len(week)
        table = candidate_set(round(len(night) * k / 2), k, seed=n, texts=night)
        inp = common.write(table, f"store-week-night{n}.parquet")
        r = _job(inp, str(common.WORK / "store-week" / f"out{n}"), model,
                 "--embedding-store", store_uri)
        st = r["store"]
        row = {"night": "all known" if last else n, "pairs": r["pairs"],
               "cpu_s": r["cpu_s"], "wall_s": r["wall_s"],
               "texts_encoded": st["texts_encoded"], "store_hits": st["texts_found"],
               "generations_read": st["generations_read"]}
        if n in (1, 2) or last:
            cold = _job(inp, str(common.WORK / "store-week" / f"cold{n}"), model,
                        "--mode", "unique")
            row.update(
                cold_cpu_s=cold["cpu_s"], cold_wall_s=cold["wall_s"],
                cold_texts_encoded=cold["texts_encoded"],
                cpu_ratio=common.ratio(r["cpu_s"], cold["cpu_s"]),
                wall_ratio=common.ratio(r["wall_s"], cold["wall_s"]),
                steady_cpu_ratio=common.ratio(r["cpu_s"] - fixed["store"]["cpu_s"],
                                              cold["cpu_s"] - fixed["cold"]["cpu_s"]),
                steady_wall_ratio=common.ratio(r["wall_s"] - fixed["store"]["wall_s"],
                                               cold["wall_s"] - fixed["cold"]["wall_s"]))
            if n == 1:
                # Encoding rate of the cold run, steady state: the yardstick for reads.
                figures["cold_texts_per_cpu_s"] = round(
                    cold["texts_encoded"] / (cold["cpu_s"] - fixed["cold"]["cpu_s"]), 1)
        rows.append(row)
        print("night {night}: {pairs} pairs, {cpu_s} CPU-s, {wall_s} s wall, "
              "{texts_encoded} encoded, {store_hits} store hits".format(**row)
              + (f"; vs cold CPU {row['cpu_ratio']}x (steady {row['steady_cpu_ratio']}x), "
                 f"wall {row['wall_ratio']}x" if "cpu_ratio" in row else ""), flush=True)
    figures["week"] = rows
    [info] = store.info(store_uri)
    figures["store"] = {**info, "bytes_per_text": round(info["bytes"] / info["entries"], 1),
                        "target_bytes_per_text": 4 * dim + store.KEY_BYTES,
                        "bytes_ratio": common.ratio(info["bytes"] / info["entries"],
                                                    4 * dim + store.KEY_BYTES)}
    cost = read_cost(store_uri)
    encode_cpu_per_m = 1e6 / figures["cold_texts_per_cpu_s"]
    cost["read_over_encode_cpu"] = common.ratio(cost["cpu_s_per_million"], encode_cpu_per_m)
    figures["read_cost"] = cost
    started = time.perf_counter()
    report = store.compact(store_uri, info["namespace"])
    figures["compact"] = {**report, "wall_s": round(time.perf_counter() - started, 3)}
    print(f"store: {info['entries']} entries, {figures['store']['bytes_per_text']} bytes per "
          f"text ({figures['store']['bytes_ratio']}x 4 x {dim} + 16); reading 1M entries "
          f"{cost['cpu_s_per_million']} CPU-s ({cost['read_over_encode_cpu']}x encoding 1M "
          f"texts); compact {figures['compact']['wall_s']} s", flush=True)
    return figures


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--texts", type=int, default=2000, help="distinct texts per night")
    p.add_argument("--nights", type=int, default=7)
    p.add_argument("--k", type=float, default=4.0, help="pairs per text")
    p.add_argument("--model", default="minilm")
    a = p.parse_args(argv)
    common.require_shared_data()
    common.report(f"store_week_{a.model}", run(a.texts, a.nights, a.k, a.model))


if __name__ == "__main__":
    main()
