"""RunInference ModelHandler over a pairscore SavedModel directory.

Beam's stock TensorFlow handler cannot load SavedModels written under Keras 3
(apache/beam#30616), and `score_text` needs tensorflow_text's ops registered in the
loading process, so the project has its own. The loaded model exposes only methods, so
it works behind Beam's multi-process proxy (`large_model=True` / `model_copies`).
"""

from __future__ import annotations

import collections
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence

import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler

from pipeline.packing import PackedBatch

log = logging.getLogger("pairscore.handler")
# Attempts per model call before the bundle fails. The local FnApiRunner never retries a
# failed bundle (apache/beam#18640) and Dataflow retries a whole work item, so a transient
# error (a GPU hiccup, a dead model-server process) is retried here, per batch.
SCORE_ATTEMPTS = 3
SCORE_BACKOFF_S = 0.5
PRECISIONS = ("float32", "bfloat16")


class ModelLoadError(RuntimeError):
    """The model directory passed the checks but TensorFlow cannot load it."""


def local_model_dir(model_dir: str) -> str:
    """`model_dir` itself when local; else a copy in a temp dir (gs://, s3://, ...).

    tf.saved_model.load reads gs:// itself but not s3://; copying once per process
    through Beam's filesystems works for every scheme Beam knows.
    """
    if "://" not in model_dir:
        return model_dir
    base = model_dir.rstrip("/") + "/"
    target = tempfile.mkdtemp(prefix="pairscore-model-")
    files = [m.path for m in FileSystems.match([base + "**"])[0].metadata_list]
    for path in files:
        rel = path[len(base):]
        dest = os.path.join(target, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with FileSystems.open(path) as src, open(dest, "wb") as out:
            while chunk := src.read(1 << 22):
                out.write(chunk)
    return target


def configure_devices() -> str:
    """Turn on GPU memory growth (so several SDK processes can share a GPU) and name
    the device scoring will run on."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised in this process
            pass
    return f"GPU x{len(gpus)} ({gpus[0].name})" if gpus else "CPU"


class LoadedPairModel:
    """The SavedModel's signatures as plain methods taking and returning numpy arrays."""

    def __init__(self, model_dir: str, precision: str = "float32"):
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  (registers the ops score_text uses)

        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; allowed: {', '.join(PRECISIONS)}")
        if precision == "bfloat16":
            # Grappler rewrites the float32 graphs to run matmuls in bfloat16 through
            # oneDNN (AVX512-BF16 / AMX); process-wide, so set before the first call.
            tf.config.optimizer.set_experimental_options(
                {"auto_mixed_precision_onednn_bfloat16": True}
            )
        self.device = configure_devices()
        self.scored_on = None
        started = time.time()
        try:
            self._model = tf.saved_model.load(local_model_dir(model_dir))
            sig = self._model.signatures
            self._serve = sig["serving_default"]
            self._encode = sig["encode"]
            self._score_embeddings = sig["score_embeddings"]
        except Exception as e:  # noqa: BLE001  (TF raises many types; name the model)
            raise ModelLoadError(
                f"cannot load the model in {model_dir}: {type(e).__name__}: {e}"
            ) from e
        log.info("loaded model %s on %s in %.1fs", model_dir, self.device, time.time() - started)

    def score(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        out = self._serve(left_ids=left, right_ids=right)["score"]
        # Where TF placed the call, which is what a GPU run must prove; not the devices seen.
        self.scored_on = out.device
        return out.numpy()

    def encode(self, ids: np.ndarray) -> np.ndarray:
        out = self._encode(ids=ids)["embedding"]
        self.scored_on = out.device
        return out.numpy()

    def score_embeddings(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        out = self._score_embeddings(left=left, right=right)["score"]
        self.scored_on = out.device
        return out.numpy()

    def device_name(self) -> str:
        return self.scored_on or self.device


_SHARED: collections.OrderedDict = collections.OrderedDict()
_SHARED_LOCK = threading.Lock()
_SHARED_KEEP = 2  # models kept after their job: a process that runs many jobs stays small


def _load_shared(key: tuple[str, str, str]) -> LoadedPairModel:
    with _SHARED_LOCK:
        model = _SHARED.get(key)
        if model is None:
            model = LoadedPairModel(key[1], key[2])
            _SHARED[key] = model
            while len(_SHARED) > _SHARED_KEEP:
                _SHARED.popitem(last=False)
        return model


class PairModelHandler(ModelHandler[PackedBatch, PackedBatch, LoadedPairModel]):
    """Scores `PackedBatch`es; each element is already one length-grouped model batch,
    so RunInference's own batching is set to one element per call."""

    def __init__(
        self,
        model_dir: str,
        *,
        large_model: bool = False,
        model_copies: int | None = None,
        fail_once_marker: str | None = None,
        precision: str = "float32",
        share_key: str | None = None,
    ):
        super().__init__(
            min_batch_size=1, max_batch_size=1, large_model=large_model, model_copies=model_copies
        )
        self._model_dir = model_dir
        self._precision = precision
        # Handlers built with the same key share one loaded model per process (unique
        # mode's encode and score_embeddings steps): one load, one copy in memory.
        self._share_key = share_key
        # Test-only fault injection: the first call that finds this file missing creates
        # it and raises, so a retry must succeed (see tests/test_faults.py).
        self._fail_once_marker = fail_once_marker
        self._attempts = SCORE_ATTEMPTS
        self._backoff_s = SCORE_BACKOFF_S

    def load_model(self) -> LoadedPairModel:
        if self._share_key is None:
            return LoadedPairModel(self._model_dir, self._precision)
        return _load_shared((self._share_key, self._model_dir, self._precision))

    def run_inference(
        self,
        batch: Sequence[PackedBatch],
        model: LoadedPairModel,
        inference_args: dict | None = None,
    ) -> Iterable[PackedBatch]:
        # A list, not a generator: nothing is emitted until every batch is scored.
        scored = [self._score(packed, model) for packed in batch]
        self._count_device(model, sum(len(p) for p in scored))
        return scored

    def _count_device(self, model: LoadedPairModel, rows: int) -> None:
        # Asked once: behind model_copies / large_model each call is a round trip to the
        # model's process, and a process never changes device.
        if getattr(self, "_device", None) is None:
            # Stand-in models (benchmarks, tests) may not say where they run.
            name = getattr(model, "device_name", None)
            self._device = name() if name else "unknown"
            log.info("scoring %s on %s", self._model_dir, self._device)
        device = self._device.upper()
        kind = "gpu" if ":GPU:" in device else "cpu" if "CPU" in device else "unknown"
        Metrics.counter("pairscore", f"rows_scored_on_{kind}").inc(rows)

    def _score(self, packed: PackedBatch, model: LoadedPairModel) -> PackedBatch:
        attempt = 1
        while True:
            try:
                self._inject_failure()
                return self._apply(packed, model)
            except Exception as e:  # noqa: BLE001
                if attempt >= self._attempts:
                    raise
                Metrics.counter("pairscore", "score_retries").inc()
                log.warning(
                    "scoring a batch of %d pairs failed (attempt %d of %d), retrying: %s: %s",
                    len(packed), attempt, self._attempts, type(e).__name__, e,
                )
                time.sleep(self._backoff_s * 2 ** (attempt - 1))
                attempt += 1

    def _apply(self, packed: PackedBatch, model: LoadedPairModel) -> PackedBatch:
        """One model call on one batch; unique-text mode's handlers call other signatures."""
        packed.scores = model.score(packed.left, packed.right)
        return packed

    def _inject_failure(self) -> None:
        if self._fail_once_marker and not os.path.exists(self._fail_once_marker):
            with open(self._fail_once_marker, "w") as f:
                f.write("failed once\n")
            raise RuntimeError("injected scoring failure (test hook)")

    def get_num_bytes(self, batch: Sequence[PackedBatch]) -> int:
        return sum(p.left.nbytes + p.right.nbytes for p in batch)

    def get_metrics_namespace(self) -> str:
        return "pairscore"
