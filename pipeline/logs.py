"""Logging for the `pairscore` command: our progress and real warnings, not start-up noise.

On a machine without a GPU, importing TensorFlow prints, from C++ and before its logging
is configured (so `TF_CPP_MIN_LOG_LEVEL` cannot hide them), lines such as "failed call to
cuInit: ... UNKNOWN ERROR (303)" and "Could not find cuda drivers": they read like
failures and are not. Beam's RunInference warns "Resource module is not available for
current platform" wherever `resource` lacks what it wants for memory metrics. Neither
says anything a user can act on. `quiet_startup()` drops exactly those lines (`NOISE`);
everything else, C++ or Python, still reaches stderr.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading

# Each pattern is one known, harmless start-up message; nothing broader.
NOISE = re.compile(
    "|".join(
        [
            r"failed call to cuInit",
            r"Could not find cuda drivers on your machine",
            r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
            r"oneDNN custom operations are on\.",
            r"oneDNN supports DT_BOOL only on platforms with AVX-512",
            r"Unable to register cu(DNN|FFT|BLAS) factory",
            r"computation placer already registered",
            r"This TensorFlow binary is optimized to use available CPU instructions",
            r"To enable the following instructions: .* rebuild TensorFlow",
            r"Resource module is not available for current platform",
        ]
    )
)


def is_noise(line: str) -> bool:
    return NOISE.search(line) is not None


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not is_noise(record.getMessage())


def filter_lines(source: int, sink: int) -> None:
    """Copy lines from file descriptor `source` to `sink`, dropping noise, until EOF."""
    pending = b""
    while chunk := os.read(source, 65536):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        out = [line for line in lines if not is_noise(line.decode("utf-8", "replace"))]
        if out:
            os.write(sink, b"\n".join(out) + b"\n")
    if pending and not is_noise(pending.decode("utf-8", "replace")):
        os.write(sink, pending)


_installed = False


def _filter_native_stderr() -> None:
    """Route file descriptor 2 (what C++ and subprocesses write to) through
    `filter_lines`, so native noise is dropped too. Undone at exit, after a flush."""
    global _installed
    if _installed:
        return
    _installed = True
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    thread = threading.Thread(target=filter_lines, args=(read_end, real), daemon=True,
                              name="pairscore-stderr")
    thread.start()

    def restore():
        sys.stderr.flush()
        os.dup2(real, 2)  # closes the pipe's last write end in this process: EOF
        thread.join(timeout=2)

    atexit.register(restore)


def quiet_startup(native: bool = True) -> None:
    """pairscore's own INFO progress, WARNING and above from everyone else, without the
    known start-up noise. `native=False` leaves file descriptor 2 alone."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # Beam and TensorFlow narrate every stage at INFO; keep pairscore's own progress.
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("pairscore").setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _DropNoise) for f in handler.filters):
            handler.addFilter(_DropNoise())
    if native:
        _filter_native_stderr()
