"""Run every benchmark (`make bench`) and print their figures as one table.

    python bench/run_all.py [--only NAME,...]   (overhead, unique, feed, memory, launcher,
                                                 cost, naive, precision, morning, store,
                                                 warm, compact, groups, cascade)

Each benchmark is also a script of its own (see its docstring for the command and what
it measures); each saves its figures to out/bench/NAME.json. Figures are ratios of
runs made in the same invocation: on shared cores absolute rates move, ratios much
less (and the CPU-second ones least). Needs ../shared/data (real texts); without it
every benchmark says so and exits 0. Takes about an hour on 2 shared cores, most of
it MiniLM in pair mode and bilstm over 1M pairs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import (  # noqa: E402
    cascade,
    common,
    cost_basis,
    feed,
    groups,
    launcher,
    memory,
    morning,
    naive,
    overhead,
    precision,
    store_compact,
    store_week,
    unique_speedup,
    warm_night,
)

BENCHES = {
    "overhead": lambda: common.report("overhead", overhead.run(20_000, ["minilm", "bilstm"], 1)),
    "unique": lambda: common.report(
        "unique_speedup_minilm", unique_speedup.run(4000, [1.0, 4.0, 16.0], "minilm")),
    "feed": lambda: common.report("feed", feed.run(200_000, "minilm", 2)),
    "memory": lambda: common.report(
        "memory", memory.run(100_000, 1_000_000, "bilstm", ["pairs", "unique"])),
    "launcher": lambda: common.report(
        "launcher", launcher.run(100_000, 1_000_000, "minilm", False)),
    "cost": lambda: common.report("cost_basis", cost_basis.run(20_000, 100_000, "minilm")),
    "naive": lambda: common.report("naive", naive.run(4000, "minilm")),
    "precision": lambda: common.report("precision", precision.run(3000, ["minilm", "bilstm"], 1)),
    "morning": lambda: common.report("morning", morning.run(100_000, 2, False)),
    "store": lambda: common.report("store_week_minilm", store_week.run(2000, 7, 4.0, "minilm")),
    "warm": lambda: common.report("warm_night_minilm", warm_night.run(5000, 4300, 2, "minilm")),
    "compact": lambda: common.report(
        "store_compact", store_compact.run(500_000, 4_000_000, 10_000, 384, 0.02)),
    "groups": lambda: common.report(
        "groups", groups.run([1_000_000, 10_000_000], ["one-worker", "distributed"])),
    "cascade": lambda: cascade.main([]),
}


def summary_rows() -> list[tuple[str, str, str]]:
    """(figure, value, target) from the saved results."""
    import json

    def load(name):
        path = common.WORK / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    rows = []
    if o := load("overhead"):
        for kind in ("minilm", "bilstm"):
            if kind in o:
                f = o[kind]
                rows.append((f"job/direct {kind} (CPU; wall)",
                             f"{f['job_over_direct_cpu']}; {f['job_over_direct_wall']}",
                             ">= 0.85" if kind == "minilm" else "report"))
                rows.append((f"padding real/computed {kind}", str(f["padding_efficiency_job"]),
                             ">= 0.85"))
    if u := load("unique_speedup_minilm"):
        for key in [k for k in u if k.startswith("k=")]:
            f = u[key]
            rows.append((f"unique/pairs {key} steady (CPU; wall)",
                         f"{f['speedup_steady_cpu']}; {f['speedup_steady_wall']}",
                         f">= {f['target']} (ideal {f['ideal']})"))
            rows.append((f"unique/pairs {key} whole job (CPU; wall)",
                         f"{f['speedup_cpu']}; {f['speedup_wall']}", "report"))
    if f := load("feed"):
        rows.append(("feed: no-op job / tokenizer per core",
                     str(f["job_over_tokenizer_per_core"]), ">= 0.7"))
    if m := load("memory"):
        for mode in ("pairs", "unique"):
            if mode in m:
                rows.append((f"peak RSS 1M / 100k ({mode} mode)", str(m[mode]["peak_rss_ratio"]),
                             "<= 1.3"))
    if la := load("launcher"):
        r = la["ratios"]
        rows.append(("launcher after the pipeline 1M / 100k (wall s; peak RSS)",
                     f"{r['post_pipeline_wall_s']}; {r['peak_rss_mb']}", "flat (~1)"))
        rows.append(("launcher RSS growth after the pipeline, MB (100k; 1M)",
                     f"{la['small']['rss_growth_after_pipeline_mb']}; "
                     f"{la['large']['rss_growth_after_pipeline_mb']}", "flat"))
    if c := load("cost_basis"):
        rows.append(("pairs per CPU-s, sample pairs (real MiniLM; no-op model)",
                     f"{c['real']['pairs_per_cpu_s']}; {c['noop']['pairs_per_cpu_s']}", "report"))
    if n := load("naive"):
        rows.append(("ours / obvious pipeline (CPU; wall; steady CPU)",
                     f"{n['speedup_cpu']}; {n['speedup_wall']}; {n.get('speedup_steady_cpu')}",
                     ">= 5"))
    if p := load("precision"):
        for kind in ("minilm", "bilstm"):
            if kind in p:
                f = p[kind]
                rows.append((f"bfloat16 speedup {kind} (direct CPU); max diff",
                             f"{f['speedup_direct_cpu']}; {f['max_score_diff']}",
                             "default if diff <= 0.01 and faster"))
    if mo := load("morning"):
        r = mo["ratios"]
        rows.append(("report+review; everything / without (CPU, no-op model)",
                     f"{r['report']['cpu']}; {r['everything']['cpu']}", "report"))
    if w := load("store_week_minilm"):
        night2 = next(r for r in w["week"] if r["night"] == 2)
        known = w["week"][-1]
        rows.append(("store night 2 / cold, same pairs (CPU; steady CPU)",
                     f"{night2['cpu_ratio']}; {night2['steady_cpu_ratio']}", "<= 0.2"))
        rows.append(("store: texts encoded on an all-known night", str(known["texts_encoded"]),
                     "0"))
        rows.append(("store bytes per text / (4 x dim + 16)", str(w["store"]["bytes_ratio"]),
                     "within 10%"))
        rows.append(("store read, CPU-s per 1M entries (/ encoding 1M)",
                     f"{w['read_cost']['cpu_s_per_million']} "
                     f"({w['read_cost']['read_over_encode_cpu']})", "report"))
    if wn := load("warm_night_minilm"):
        a = wn["after"]
        rows.append((f"warm night / cold, {wn['pairs']} pairs, every text in the store (CPU; "
                     "wall)", f"{a['warm_over_cold_cpu']}; {a['warm_over_cold_wall']}",
                     "<= 0.4"))
    if sc := load("store_compact"):
        r = sc["ratios"]
        rows.append((f"store compact {sc['large']['entries_in']} / {sc['small']['entries_in']} "
                     "entries (wall; CPU)", f"{r['wall']}; {r['cpu']}",
                     f"linear (~{r['entries']})"))
    if g := load("groups"):
        for path, r in g["ratios"].items():
            if path == "distributed_over_one_worker":
                for row in r:
                    rows.append((f"groups distributed / one-worker, {row['edges']:,} edges "
                                 "(CPU; peak RSS)", f"{row['cpu_s']}; {row['peak_rss_mb']}",
                                 "report"))
            else:
                rows.append((f"groups {path}: CPU per edge, largest / smallest",
                             str(r["cpu_s_per_edge_ratio"]), "<= 1.2 (linear)"))
    if ca := load("cascade"):
        r = ca["ratios"]
        rows.append(("cascade CPU per pair / Siamese; / cross", f"{r['cascade / siamese']}; "
                     f"{r['cascade / cross']}", "report"))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(BENCHES))
    a = p.parse_args()
    common.require_shared_data()
    for name in a.only.split(","):
        started = time.time()
        print(f"== {name}", flush=True)
        BENCHES[name]()
        print(f"== {name} took {time.time() - started:.0f}s", flush=True)
    print("\nfigure | value | target")
    for row in summary_rows():
        print(" | ".join(row))


if __name__ == "__main__":
    main()
