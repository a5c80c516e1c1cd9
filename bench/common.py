"""Shared parts of the benchmarks: real texts from ../shared/data, candidate sets, models,
and running one measurement in a fresh process (wall time, CPU time, peak RSS).

The texts stay in ../shared/data: generated inputs go to out/bench/ (git-ignored). When
that folder is absent (a user's machine), `require_shared_data` exits cleanly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PAIRSCORE_SHARED_DATA", REPO.parent / "shared" / "data"))
WORK = REPO / "out" / "bench"
PYTHON = sys.executable
MODELS = {"minilm": REPO / "models" / "default", "bilstm": REPO / "models" / "bilstm"}
CHILD_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}


def require_shared_data() -> Path:
    """../shared/data, or exit 0 with a message where it is absent."""
    files = sorted(SHARED_DATA.glob("*.parquet"))
    if not files:
        print(f"skipped: {SHARED_DATA} is not present (benchmarks need the real texts there)")
        sys.exit(0)
    return SHARED_DATA


def real_pairs_table() -> pa.Table:
    """Every pair of every ../shared/data file (pair_id, text_a, text_b), in file order."""
    tables = []
    for path in sorted(require_shared_data().glob("*.parquet")):
        t = pq.read_table(path, columns=["text_a", "text_b"])
        tables.append(t)
    return pa.concat_tables(tables)


def real_texts() -> list[str]:
    """The distinct non-blank texts of ../shared/data, in first-seen order."""
    t = real_pairs_table()
    seen = dict.fromkeys(t["text_a"].to_pylist() + t["text_b"].to_pylist())
    return [s for s in seen if s and s.strip()]


def real_pairs(n: int, seed: int = 0) -> pa.Table:
    """`n` real-text pairs: the datasets' own pairs first, then random pairings of their
    texts; rows shuffled so lengths mix as in a real candidate file."""
    t = real_pairs_table()
    a, b = t["text_a"].to_pylist(), t["text_b"].to_pylist()
    rng = np.random.default_rng(seed)
    if n > len(a):
        texts = real_texts()
        extra = n - len(a)
        i = rng.integers(len(texts), size=extra)
        j = (i + 1 + rng.integers(len(texts) - 1, size=extra)) % len(texts)
        a += [texts[k] for k in i]
        b += [texts[k] for k in j]
    order = rng.permutation(len(a))[:n]
    return pa.table(
        {
            "pair_id": pa.array([f"r{k:08d}" for k in range(n)], pa.string()),
            "text_a": pa.array([a[k] for k in order], pa.string()),
            "text_b": pa.array([b[k] for k in order], pa.string()),
        }
    )


def write(table: pa.Table, name: str, row_group_size: int = 10_000) -> str:
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / name
    pq.write_table(table, path, row_group_size=row_group_size)
    return str(path)


def ensure_model(kind: str) -> str:
    """models/default (exported) or models/bilstm (trained briefly), built if missing."""
    path = MODELS[kind]
    if (path / "pairscore.json").exists():
        return str(path)
    cli = [PYTHON, "-m", "pipeline.cli"]
    if kind == "minilm":
        cmd = cli + ["default-model", "--output", str(path)]
    else:
        cmd = cli + [
            "train", "--train", str(require_shared_data() / "mrpc_train.parquet"),
            "--encoder", "bilstm", "--distance", "l1", "--output", str(path), "--epochs", "2",
        ]
    print("building", kind, "model:", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, **CHILD_ENV},
                   stdout=subprocess.DEVNULL)
    return str(path)


def measure(kind: str, *args: str, env: dict | None = None) -> dict:
    """Run `bench/measure.py kind args...` in a fresh process; its JSON result."""
    cmd = [PYTHON, str(REPO / "bench" / "measure.py"), kind, *args]
    out = subprocess.run(
        cmd, cwd=REPO, env={**os.environ, **CHILD_ENV, **(env or {})},
        capture_output=True, text=True,
    )
    lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
    if out.returncode or not lines:
        sys.stderr.write(out.stderr[-4000:])
        raise RuntimeError(f"measurement failed ({out.returncode}): {' '.join(cmd)}")
    return json.loads(lines[-1])


def run_child(cmd: list[str]) -> dict:
    """Run a benchmark's child process (`cmd`, in the repo, quiet TensorFlow); the JSON
    object it printed last."""
    out = subprocess.run(cmd, cwd=REPO, env={**os.environ, **CHILD_ENV}, capture_output=True,
                         text=True)
    lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
    if out.returncode or not lines:
        sys.stderr.write(out.stderr[-4000:])
        raise RuntimeError(f"measurement failed ({out.returncode}): {' '.join(cmd)}")
    return json.loads(lines[-1])


def child_argv(argv: list[str], switch: str) -> tuple[bool, list[str]]:
    """A benchmark child's command line after `--child` (and its own arguments): whether
    `switch` leads it, and the job's flags after the `--`. Sets quiet logging."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    on = bool(argv) and argv[0] == switch
    rest = argv[1:] if on else argv
    return on, rest[1:] if rest and rest[0] == "--" else rest


def job_args(inp: str, out: str, model: str, *extra: str) -> list[str]:
    return ["--input", inp, "--output", out, "--model", model, "--overwrite", *extra]


def best(runs: list[dict], key: str) -> dict:
    """The fastest of repeated runs: on shared cores the minimum is the least noisy."""
    return min(runs, key=lambda r: r[key])


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def report(name: str, figures: dict) -> None:
    """Print the figures and save them to out/bench/NAME.json for run_all.py."""
    WORK.mkdir(parents=True, exist_ok=True)
    figures = {"bench": name, "at": time.strftime("%Y-%m-%dT%H:%M:%S"), **figures}
    (WORK / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
