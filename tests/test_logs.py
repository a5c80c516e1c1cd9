"""A first run on a machine without a GPU: pairscore's progress and real warnings on
stderr, not TensorFlow's CUDA start-up lines or Beam's resource-module warning."""

import os
import subprocess
import sys

import pytest

from pipeline import logs
from tests.conftest import PAIRS, REPO, write_pairs

NOISE = ["failed call to cuInit", "Could not find cuda drivers", "absl::InitializeLog",
         "Resource module is not available"]


def test_filter_lines_drops_only_the_known_noise():
    read_end, write_end = os.pipe()
    out_read, out_write = os.pipe()
    lines = [
        b"E0000 00:00:1796 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error",
        b"W0000 real_op.cc:12] something a user should read",
        b"I0000 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not",
        b"Traceback (most recent call last):",
    ]
    os.write(write_end, b"\n".join(lines) + b"\nno newline at the end")
    os.close(write_end)
    logs.filter_lines(read_end, out_write)
    os.close(out_write)
    got = os.read(out_read, 1 << 16).decode()
    assert got == ("W0000 real_op.cc:12] something a user should read\n"
                   "Traceback (most recent call last):\nno newline at the end")


@pytest.mark.slow  # a whole first run in a subprocess (about 45 s)
def test_a_first_run_prints_no_start_up_noise_but_keeps_real_warnings(tmp_path, bilstm_model):
    src, out = tmp_path / "pairs.parquet", tmp_path / "out"
    write_pairs(src, PAIRS)
    # A crashed run's marker (its process is gone): taking it over is a real warning.
    subprocess.run([sys.executable, "-c", "from pipeline import io; "
                    f"io.acquire_run_marker({str(out)!r}, 'crashed-run')"],
                   cwd=REPO, check=True, timeout=120)
    assert (out / "_RUN.json").exists()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "score", "--input", str(src), "--output",
         str(out), "--model", bilstm_model, "--mode", "pairs"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for noise in NOISE:
        assert noise not in done.stderr, noise
    assert "crashed-run" in done.stderr  # the takeover warning names the dead run
    assert "pairscore.publish published" in done.stderr  # pairscore's own INFO lines show
    assert done.stdout.startswith("published run ")  # and the short summary, on stdout
