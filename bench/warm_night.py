"""A warm night against the embedding store: every text found, what does the run still cost?

    python bench/warm_night.py [--pairs 5000] [--distinct 4300] [--repeats 2] [--model minilm]
                               [--no-breakdown]

`--pairs` pairs over `--distinct` real texts of STS-B, SICK and QQP (../shared/data),
each text in 2 x pairs / distinct pairs. Each repeat, with a fresh store: a cold night
(the store empty: every distinct text encoded, the store written) and then a warm night
(the same pairs, every text found in the store). Each night is `pairscore score ...
--embedding-store STORE` in a fresh process, measured from outside: the child's user +
system CPU seconds from `os.wait4` (interpreter start, imports and exit included) and its
wall seconds. The least of the repeats is kept for each; the figure is warm / cold CPU
(target, issue 19 item 9: <= 0.4 at 5,000 pairs).

Then one more warm night runs in a child (`--child`) that wraps the job's boundaries with
CPU timers (process CPU, all threads, exclusive of the nested timers) to say where the warm
night's CPU-seconds go: imports, the launch checks (model manifest, store listing), graph
construction, TensorFlow's import, SavedModel loads (and how many), tokenizer loads, the
store read and index, model calls, the final step (report), and the runner's own share.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

HERE = common.WORK / "warm-night"
DATASETS = ("stsb_train", "sick_train", "qqp_sample")


def measured(cmd: list[str], cwd: Path = common.REPO) -> dict:
    """`cmd` in a fresh process; {"cpu_s", "wall_s", "child"} with CPU from os.wait4."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **common.CHILD_ENV},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Read both pipes while it runs (TensorFlow logs can fill a pipe), then reap with wait4.
    import threading

    chunks = {"out": [], "err": []}

    def drain(stream, key):
        for line in iter(stream.readline, b""):
            chunks[key].append(line)

    threads = [threading.Thread(target=drain, args=(proc.stdout, "out")),
               threading.Thread(target=drain, args=(proc.stderr, "err"))]
    for t in threads:
        t.start()
    _, status, usage = os.wait4(proc.pid, 0)
    for t in threads:
        t.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    out = b"".join(chunks["out"]).decode(errors="replace")
    if proc.returncode:
        sys.stderr.write(b"".join(chunks["err"]).decode(errors="replace")[-4000:])
        raise RuntimeError(f"failed ({proc.returncode}): {' '.join(cmd)}")
    lines = [x for x in out.splitlines() if x.startswith("{")]
    return {"cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "wall_s": round(wall, 2),
            "child": json.loads(lines[-1]) if lines else None}


def night_args(inp: str, out: str, model: str, store_uri: str) -> list[str]:
    return [*common.job_args(inp, out, model), "--embedding-store", store_uri]


def _store_figures(out: str) -> dict:
    summary = json.loads((Path(out) / "summary.json").read_text())
    st = summary["store"]
    return {"texts_found": st["texts_found"], "texts_encoded": st["texts_encoded"],
            "entries_read": st["entries_read"], "scored": summary["scored"]}


def night_pairs(pairs: int, distinct: int, seed: int = 0):
    """`pairs` pairs over `distinct` real texts of STS-B, SICK and QQP (../shared/data),
    each text in 2 x pairs / distinct pairs (`bench.candidates.candidate_set`)."""
    import pyarrow.parquet as pq

    from bench.candidates import candidate_set

    seen: dict[str, None] = {}
    for name in DATASETS:
        t = pq.read_table(common.require_shared_data() / f"{name}.parquet",
                          columns=["text_a", "text_b"])
        seen.update(dict.fromkeys(t["text_a"].to_pylist() + t["text_b"].to_pylist()))
    texts = [s for s in seen if s and s.strip()]
    return candidate_set(pairs, 2 * pairs / distinct, seed=seed, texts=texts)


def _nights(checkout: Path, tag: str, inp: str, model: str, r: int) -> tuple[dict, dict]:
    """One cold night (a fresh store) then one warm night (the same pairs), with the code
    of `checkout`, each in a fresh process."""
    store_uri = str(HERE / f"store{tag}{r}")
    score = [common.PYTHON, "-m", "pipeline.cli", "score"]
    nights = []
    for kind in ("cold", "warm"):
        out = str(HERE / f"{kind}{tag}{r}")
        night = measured(score + night_args(inp, out, model, store_uri), cwd=checkout)
        night.pop("child")
        night.update(_store_figures(out))
        nights.append(night)
    return nights[0], nights[1]


def _breakdown(checkout: Path, tag: str, inp: str, model: str, store_uri: str) -> dict:
    """A warm night again (the store is unchanged: a warm night writes nothing), timed at
    the job's boundaries in the child."""
    out = str(HERE / f"warm-breakdown{tag}")
    child = measured([common.PYTHON, str(Path(__file__).resolve()), "--child", str(checkout),
                      "--", *night_args(inp, out, model, store_uri)], cwd=checkout)
    phases = child["child"]["phases"]
    inside = sum(p["cpu_s"] for p in phases.values())
    phases["interpreter exit, threads, the rest (outside the timers)"] = {
        "cpu_s": round(child["cpu_s"] - inside, 2), "calls": 1}
    return {"cpu_s": child["cpu_s"], "wall_s": child["wall_s"], "phases": phases,
            "imported": child["child"]["imported"]}


def run(pairs: int, distinct: int, repeats: int, kind: str, breakdown: bool = True,
        before: str | None = None, after: str | None = None) -> dict:
    model = common.ensure_model(kind)
    shutil.rmtree(HERE, ignore_errors=True)
    HERE.mkdir(parents=True)
    table = night_pairs(pairs, distinct)
    distinct = len(set(table["text_a"].to_pylist()) | set(table["text_b"].to_pylist()))
    inp = common.write(table, "warm-night.parquet")
    figures = {"model": kind, "pairs": pairs, "distinct_texts": distinct, "repeats": repeats,
               "command": f"python bench/warm_night.py --pairs {pairs} --distinct "
               f"{distinct} --repeats {repeats} --model {kind}"
               + (" --before DIR" if before else "") + (" --after DIR" if after else "")}
    checkouts = {"after": Path(after).resolve() if after else common.REPO}
    if before:
        checkouts = {"before": Path(before).resolve(), **checkouts}
    runs = {name: {"cold": [], "warm": []} for name in checkouts}
    for r in range(repeats):
        for name, checkout in checkouts.items():
            cold, warm = _nights(checkout, name, inp, model, r)
            runs[name]["cold"].append(cold)
            runs[name]["warm"].append(warm)
            print(f"{name}, repeat {r + 1}: cold {cold['cpu_s']} CPU-s ({cold['wall_s']} s "
                  f"wall, {cold['texts_encoded']} encoded); warm {warm['cpu_s']} CPU-s "
                  f"({warm['wall_s']} s wall, {warm['texts_found']} found, "
                  f"{warm['texts_encoded']} encoded); warm/cold "
                  f"{common.ratio(warm['cpu_s'], cold['cpu_s'])}", flush=True)
    for name, checkout in checkouts.items():
        colds, warms = runs[name]["cold"], runs[name]["warm"]
        cold, warm = common.best(colds, "cpu_s"), common.best(warms, "cpu_s")
        f = {"cold": cold, "warm": warm, "cold_runs": colds, "warm_runs": warms,
             "warm_over_cold_cpu": common.ratio(warm["cpu_s"], cold["cpu_s"]),
             "warm_over_cold_wall": common.ratio(common.best(warms, "wall_s")["wall_s"],
                                                 common.best(colds, "wall_s")["wall_s"]),
             "target": 0.4}
        print(f"{name}: warm / cold CPU {f['warm_over_cold_cpu']} (target <= 0.4): "
              f"{warm['cpu_s']} / {cold['cpu_s']} CPU-s", flush=True)
        if breakdown:
            f["breakdown"] = b = _breakdown(checkout, name, inp, model,
                                            str(HERE / f"store{name}{repeats - 1}"))
            print(f"{name}: a warm night, where its {b['cpu_s']} CPU-s go:")
            for phase, p in sorted(b["phases"].items(), key=lambda kv: -kv[1]["cpu_s"]):
                print(f"  {p['cpu_s']:7.2f}  {phase} (x{p['calls']})")
            print("  imported:", ", ".join(f"{k}={v}" for k, v in b["imported"].items()),
                  flush=True)
        figures[name] = f
    return figures


# --- the child: one job, CPU timers at its boundaries -------------------------------------


class Timers:
    """Process CPU (all threads) spent inside wrapped calls, exclusive of the wrapped
    calls nested in them (a stack per thread)."""

    def __init__(self):
        import threading

        self.cpu: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._local = threading.local()

    @property
    def stack(self) -> list[list]:
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        return self._local.stack

    def timed(self, name: str, fn):
        import functools

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            frame = [name, time.process_time(), 0.0]  # name, start, nested time
            self.stack.append(frame)
            try:
                return fn(*args, **kwargs)
            finally:
                self.stack.pop()
                spent = time.process_time() - frame[1]
                self.cpu[name] = self.cpu.get(name, 0.0) + spent - frame[2]
                self.calls[name] = self.calls.get(name, 0) + 1
                if self.stack:
                    self.stack[-1][2] += spent

        return wrapper

    def wrap(self, owner, attr: str, name: str) -> None:
        fn = getattr(owner, attr, None)
        if fn is not None:
            setattr(owner, attr, self.timed(name, fn))

    def add(self, name: str, cpu: float) -> None:
        self.cpu[name] = self.cpu.get(name, 0.0) + cpu
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.stack:
            self.stack[-1][2] += cpu


def _import_hook(timers: Timers, module: str, name: str) -> None:
    """Time `module`'s first import, wherever it happens, as its own phase."""
    import builtins

    real = builtins.__import__

    def hooked(mod, *args, **kwargs):
        if (mod == module or mod.startswith(module + ".")) and module not in sys.modules:
            started = time.process_time()
            try:
                return real(mod, *args, **kwargs)
            finally:
                timers.add(name, time.process_time() - started)
        return real(mod, *args, **kwargs)

    builtins.__import__ = hooked


def child(argv: list[str]) -> None:
    """`--child CHECKOUT -- JOB_ARGS`: the job, with the pipeline of CHECKOUT."""
    timers = Timers()
    timers.add("python start, numpy, pyarrow (to the child's first line)",
               time.process_time())
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    sys.path.insert(0, argv[1])
    _, job_argv = common.child_argv(argv[2:], "--")
    _import_hook(timers, "tensorflow", "import tensorflow (+ tensorflow_text)")
    _import_hook(timers, "matplotlib", "import matplotlib")
    started = time.process_time()
    import apache_beam as beam  # noqa: F401
    import pyarrow  # noqa: F401

    timers.add("import apache_beam", time.process_time() - started)
    started = time.process_time()
    from model import modeldir
    from pipeline import cli, handler, job, publish, store  # noqa: F401

    timers.add("import pipeline (job, stages, ...)", time.process_time() - started)
    timers.wrap(job, "resolve", "launch checks (resolve: inputs, output, rest)")
    timers.wrap(modeldir.ModelDir, "verify", "launch: model manifest verify (sha256 of files)")
    timers.wrap(store, "open_for_run", "launch: store listing and write probe")
    timers.wrap(job, "build", "graph construction (job.build)")
    timers.wrap(beam.Pipeline, "run", "Beam runner (the rest of p.run)")
    timers.wrap(modeldir.ModelDir, "load_saved_model", "tf.saved_model.load")
    timers.wrap(modeldir.ModelDir, "tokenizer", "tokenizer load")
    try:
        from model import head
    except ImportError:  # a checkout from before the numpy head
        pass
    else:
        timers.wrap(head, "load_head", "the head's weights (variables index, 2 tensors)")
        timers.wrap(head.Head, "__call__", "model calls: score_embeddings (numpy head)")
    timers.wrap(store, "read_file", "store read (files, checksums)")
    timers.wrap(store.StoreIndex, "build", "store index build")
    timers.wrap(store.StoreIndex, "lookup", "store lookup")
    timers.wrap(store, "text_keys", "store keys (sha256 of texts)")
    for attr in ("encode", "score_embeddings", "score"):
        timers.wrap(handler.LoadedPairModel, attr, f"model calls: {attr}")
    # Last: the class itself, as the handlers call it (a module global).
    timers.wrap(handler, "LoadedPairModel", "handler model setup (devices, signatures)")
    timers.wrap(publish, "finalize_run", "final step (count, publish, summary)")
    timers.wrap(publish, "write_report", "final step: report.html")
    job.run(job_argv)
    print(json.dumps({
        "phases": {k: {"cpu_s": round(v, 2), "calls": timers.calls[k]}
                   for k, v in timers.cpu.items()},
        "imported": {m: m in sys.modules for m in ("tensorflow", "matplotlib", "keras",
                                                   "sklearn", "tokenizers")},
    }))


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        child(argv)
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=5000)
    p.add_argument("--distinct", type=int, default=4300, help="distinct texts in the pairs")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--model", default="minilm")
    p.add_argument("--no-breakdown", action="store_true")
    p.add_argument("--before", metavar="DIR",
                   help="also run every night with the code of another checkout, e.g. an "
                   "earlier commit: git archive COMMIT | tar -x -C DIR")
    p.add_argument("--after", metavar="DIR",
                   help="the code measured as 'after' (default: this checkout)")
    a = p.parse_args(argv)
    common.require_shared_data()
    common.report(f"warm_night_{a.model}", run(a.pairs, a.distinct, a.repeats, a.model,
                                               not a.no_breakdown, a.before, a.after))


if __name__ == "__main__":
    main()
