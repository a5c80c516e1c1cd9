"""One measurement in this (fresh) process; prints one JSON line. Used by the benchmarks.

    python bench/measure.py job      JOB_ARGS...         the real job (pipeline.job.run)
    python bench/measure.py noop-job JOB_ARGS...         the job with a no-op model handler
    python bench/measure.py direct   MODEL INPUT [--batch-size N] [--precision P]
    python bench/measure.py tokenize MODEL INPUT         the tokenizer alone, same texts
    python bench/measure.py naive    JOB_ARGS...         the per-row pipeline (bench/naive.py)

wall_s is measured around the work; cpu_s is this process's user + system CPU time over
the same span (TensorFlow's and the tokenizer's threads included), so pairs per CPU
second is a per-core rate that other processes on the machine disturb little.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class _Timer:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), _cpu()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = _cpu() - self.cpu


class NoopModel:
    """Stands in for LoadedPairModel: right-shaped outputs, no arithmetic."""

    def score(self, left, right):
        return np.zeros(len(left), np.float32)

    def encode(self, ids):
        return np.zeros((len(ids), 8), np.float32)

    def score_embeddings(self, left, right):
        return np.zeros(len(left), np.float32)


def _job(argv: list[str], noop: bool = False) -> dict:
    from pipeline import handler, job

    if noop:
        # Every handler loads its model through this name, in this process (local runner).
        handler.LoadedPairModel = lambda *args, **kwargs: NoopModel()
    with _Timer() as t:
        result = job.run(argv)
    s = result.summary
    c = s.get("counters", {})
    return {
        "pairs": s["rows_in"],
        "scored": s["scored"],
        "rejected": s["rejected"],
        "mode": s.get("mode", "pairs"),
        "unique_join": s.get("unique_join"),
        "wall_s": round(t.wall, 3),
        "cpu_s": round(t.cpu, 3),
        "pairs_per_s": round(s["rows_in"] / t.wall, 1),
        "pairs_per_cpu_s": round(s["rows_in"] / t.cpu, 1),
        "real_tokens": c.get("real_tokens"),
        "computed_tokens": c.get("computed_tokens"),
        "peak_rss_mb": _peak_rss_mb(),
        "texts_encoded": c.get("texts_encoded", 0),
        "store": s.get("store"),
    }


def _load_table(path: str):
    import pyarrow.parquet as pq

    return pq.read_table(path)


def _tokenizer(model: str):
    from tokenizers import Tokenizer

    from model import tokenization
    from model.config import TOKENIZER_FILE, read_metadata

    meta = read_metadata(model)
    tok = Tokenizer.from_file(os.path.join(model, TOKENIZER_FILE))
    specials = (meta.tokenizer.get("cls_token") is not None) + (
        meta.tokenizer.get("sep_token") is not None
    )
    return tokenization.configure(tok, meta.max_length), specials


def _direct(model: str, path: str, batch_size: int = 128, precision: str = "float32") -> dict:
    """The model called directly on pre-tokenized batches, packed once over the whole
    input (the job packs 16,384 rows at a time) with the job's CPU batch limits."""
    from pipeline.handler import LoadedPairModel
    from pipeline.packing import pack_table

    table = _load_table(path)
    tok, specials = _tokenizer(model)
    batches, _ = pack_table(tok, table.select(["pair_id", "text_a", "text_b"]),
                            ("text_a", "text_b"), batch_size, batch_size * 32, specials)
    with _Timer() as load:
        m = LoadedPairModel(model, precision=precision) if precision != "float32" else (
            LoadedPairModel(model))
        m.score(batches[0].left[:4], batches[0].right[:4])  # warm-up
    scores = []
    with _Timer() as t:
        for b in batches:
            scores.append(m.score(b.left, b.right))
    n = sum(len(b) for b in batches)
    return {
        "pairs": n,
        "wall_s": round(t.wall, 3),
        "cpu_s": round(t.cpu, 3),
        "load_s": round(load.wall, 3),
        "pairs_per_s": round(n / t.wall, 1),
        "pairs_per_cpu_s": round(n / t.cpu, 1),
        "real_tokens": int(sum(b.real_tokens for b in batches)),
        "computed_tokens": int(sum(b.computed_tokens for b in batches)),
        "peak_rss_mb": _peak_rss_mb(),
    }


def _tokenize(model: str, path: str) -> dict:
    """The tokenizer alone on the job's texts (both columns), as the job calls it."""
    table = _load_table(path)
    tok, _ = _tokenizer(model)
    a, b = table["text_a"].to_pylist(), table["text_b"].to_pylist()
    tok.encode_batch_fast(a[:100])  # warm-up
    with _Timer() as t:
        for start in range(0, len(a), 8192):
            tok.encode_batch_fast(a[start:start + 8192])
            tok.encode_batch_fast(b[start:start + 8192])
    n = len(a)
    return {
        "pairs": n,
        "wall_s": round(t.wall, 3),
        "cpu_s": round(t.cpu, 3),
        "pairs_per_s": round(n / t.wall, 1),
        "pairs_per_cpu_s": round(n / t.cpu, 1),
    }


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.WARNING)
    kind, rest = argv[0], argv[1:]
    if kind == "job":
        out = _job(rest)
    elif kind == "noop-job":
        out = _job(rest, noop=True)
    elif kind == "direct":
        import argparse

        p = argparse.ArgumentParser()
        p.add_argument("model")
        p.add_argument("input")
        p.add_argument("--batch-size", type=int, default=128)
        p.add_argument("--precision", default="float32")
        a = p.parse_args(rest)
        out = _direct(a.model, a.input, a.batch_size, a.precision)
    elif kind == "tokenize":
        out = _tokenize(rest[0], rest[1])
    elif kind == "naive":
        from bench.naive import run_naive

        with _Timer() as t:
            n = run_naive(rest)
        out = {"pairs": n, "wall_s": round(t.wall, 3), "cpu_s": round(t.cpu, 3),
               "pairs_per_s": round(n / t.wall, 1), "peak_rss_mb": _peak_rss_mb()}
    else:
        raise SystemExit(f"unknown measurement {kind!r}")
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
