"""Load: a million pairs through the local job with a bilstm model, the invariant holding
and memory bounded (the peak does not grow with the input). Slow: `make test-slow`."""

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.sample import sample_table
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _pairs(n, distinct, seed=11):
    table = sample_table(n, seed=seed)
    if distinct:  # every text different: the job scores pair by pair
        case = pa.array([f" (case {i})" for i in range(n)])
        for name in ("text_a", "text_b"):
            i = table.schema.get_field_index(name)
            table = table.set_column(i, name, pc.binary_join_element_wise(table[name], case, ""))
    return table


def _score(tmp_path, name, table, model, *extra):
    """Run `pairscore score` in a fresh process over `table` (in 4 files); return the
    summary-derived facts and the process's peak RSS in MB."""
    src = tmp_path / name
    src.mkdir()
    step = -(-table.num_rows // 4)
    for k in range(4):
        pq.write_table(table.slice(k * step, step), src / f"part-{k}.parquet",
                       row_group_size=50_000)
    out, log = tmp_path / f"{name}-out", tmp_path / f"{name}.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "score", "--input", str(src / "*.parquet"),
             "--output", str(out), "--model", model, *extra],
            cwd=REPO, stdout=err, stderr=err,
        )
        # wait4, not wait: it also gives the child's own peak RSS.
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, log.read_text()[-3000:]
    return out, usage.ru_maxrss / 1024


def _check_every_id_once(out, table):
    summary = json.loads((out / "summary.json").read_text())
    n = table.num_rows
    assert summary["rows_in"] == n == summary["scored"] + summary["rejected"]
    assert summary["invariant_holds"] and (out / "_SUCCESS").exists()
    ids = pa.concat_arrays([
        pq.read_table(out / kind, columns=["pair_id"])["pair_id"].combine_chunks()
        for kind in ("labels", "rejects")
    ])
    assert len(ids) == n
    want = table["pair_id"]
    assert ids.null_count == want.null_count
    # Sample ids are unique: every non-null id exactly once.
    assert pc.count_distinct(ids).as_py() == len(ids) - ids.null_count
    assert pc.all(pc.is_in(want.drop_null(), value_set=ids.drop_null())).as_py()
    return summary


def test_a_million_pairs_with_bounded_memory(tmp_path, bilstm_model):
    small = _pairs(100_000, distinct=True)
    out, peak_small = _score(tmp_path, "small", small, bilstm_model, "--mode", "pairs")
    _check_every_id_once(out, small)

    big = _pairs(1_000_000, distinct=True)
    out, peak_big = _score(tmp_path, "big", big, bilstm_model, "--mode", "pairs")
    summary = _check_every_id_once(out, big)
    assert summary["mode"] == "pairs"
    print(f"pairs mode: 100k peak {peak_small:.0f} MB, 1M peak {peak_big:.0f} MB, "
          f"{summary['pairs_per_s']} pairs/s")
    # Ten times the input, about the same memory: nothing holds the whole input.
    assert peak_big < peak_small + 512, (peak_small, peak_big)
    assert peak_big < 4096


def test_a_million_pairs_in_unique_text_mode(tmp_path, bilstm_model):
    """The sample's texts repeat, so auto mode encodes each distinct text once."""
    big = _pairs(1_000_000, distinct=False)
    out, peak = _score(tmp_path, "big", big, bilstm_model)
    summary = _check_every_id_once(out, big)
    assert summary["mode"] == "unique"
    print(f"auto mode: 1M peak {peak:.0f} MB, {summary['pairs_per_s']} pairs/s")
    assert peak < 4096
