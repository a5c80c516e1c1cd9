"""The job under Beam's other local runners (slow: each starts its own workers)."""

import json

import pytest

from pipeline import job
from tests.conftest import PAIRS, write_pairs


@pytest.mark.slow
@pytest.mark.parametrize(
    "runner_args",
    [
        ["--runner", "DirectRunner"],
        ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"],
    ],
)
def test_job_under_other_local_runners(tmp_path, bilstm_model, runner_args):
    src = tmp_path / "in.parquet"
    write_pairs(src, [(f"{i}", a, b) for i, (_, a, b) in enumerate(PAIRS * 3)])
    out = tmp_path / "out"
    job.run(["--input", str(src), "--output", str(out), "--model", bilstm_model, *runner_args])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scored"] == summary["rows_in"] == len(PAIRS) * 3
    assert (out / "_SUCCESS").exists()
