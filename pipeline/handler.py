"""RunInference ModelHandler over a pairscore SavedModel directory.

Beam's stock TensorFlow handler cannot load SavedModels written under Keras 3
(apache/beam#30616), and `score_text` needs tensorflow_text's ops registered in the
loading process, so the project has its own. The loaded model exposes only methods, so
it works behind Beam's multi-process proxy (`large_model=True` / `model_copies`).
"""

from __future__ import annotations

import logging
import sys
import threading
import time

import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler
from apache_beam.utils import retry
from apache_beam.utils.shared import Shared

from model.modeldir import ModelDir
from pipeline.packing import PackedBatch

log = logging.getLogger("pairscore.handler")
NAMESPACE = "pairscore"
# Attempts per model call on a transient error, with exponential backoff from
# SCORE_BACKOFF_S (0.5 s, then 1 s).
SCORE_ATTEMPTS = 3
SCORE_BACKOFF_S = 0.5
PRECISIONS = ("float32", "bfloat16")
# float32 with TensorFlow's TF32 matmuls (its default on Ampere and later GPUs) turned off:
# what runs with an embedding store compute, since the store's embeddings are read as exact.
FLOAT32_EXACT = "float32-exact"


class ModelLoadError(RuntimeError):
    """The model directory passed the checks but TensorFlow cannot load it."""


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
    """The SavedModel's signatures as plain methods taking and returning numpy arrays.

    `lazy` (unique-text mode's handlers): `score_embeddings` is the model's head computed
    in numpy from its variables (`model.head`), and the SavedModel (TensorFlow, the
    encoder) is loaded on the first `encode` or `score` call, so that a night whose texts
    all come from the embedding store never loads it. A head `model.head` does not
    compute exactly, or another precision, loads the SavedModel at once, as without
    `lazy`."""

    def __init__(self, model_dir: str, precision: str = "float32", lazy: bool = False):
        if precision not in (*PRECISIONS, FLOAT32_EXACT):
            raise ValueError(f"unknown precision {precision!r}; allowed: {', '.join(PRECISIONS)}")
        self._model_dir = model_dir
        self._precision = precision
        self.device = None
        self.scored_on = None
        self._model = None
        self._load_error = None
        self._lock = threading.Lock()
        self._head = None
        if lazy and precision in ("float32", FLOAT32_EXACT):
            from model.head import load_head

            self._head = load_head(ModelDir.open(model_dir, verify=False))
        if self._head is None:
            self._load()

    def _load(self) -> None:
        """The SavedModel and its signatures, once per instance; a load that failed raises
        the same ModelLoadError again."""
        with self._lock:
            if self._model is not None:
                return
            if self._load_error is not None:
                raise self._load_error
            try:
                self._load_saved_model()
            except ModelLoadError as e:
                self._load_error = e
                raise

    def _load_saved_model(self) -> None:
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  (registers the ops score_text uses)

        model_dir, precision = self._model_dir, self._precision
        if precision == "bfloat16":
            # Grappler rewrites the float32 graphs to run matmuls in bfloat16 through
            # oneDNN (AVX512-BF16 / AMX); process-wide, so set before the first call.
            tf.config.optimizer.set_experimental_options(
                {"auto_mixed_precision_onednn_bfloat16": True}
            )
        if precision == FLOAT32_EXACT:
            # Process-wide, before the first call: TF32 keeps 10 bits of mantissa.
            tf.config.experimental.enable_tensor_float_32_execution(False)
        self.device = configure_devices()
        started = time.time()
        try:
            model = ModelDir.open(model_dir, verify=False).load_saved_model()
            sig = model.signatures
            self._serve = sig["serving_default"]
            # A cross-encoder (architecture cross) has no per-text signatures.
            self._encode = sig.get("encode")
            self._score_embeddings = sig.get("score_embeddings")
        except Exception as e:  # noqa: BLE001  (TF raises many types; name the model)
            raise ModelLoadError(
                f"cannot load the model in {model_dir}: {type(e).__name__}: {e}"
            ) from e
        self._model = model
        log.info("loaded model %s on %s in %.1fs", model_dir, self.device, time.time() - started)

    @property
    def loaded(self) -> bool:
        """Whether the SavedModel is loaded (a lazy model's is until a call needs it)."""
        return self._model is not None

    def score(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        self._load()
        out = self._serve(left_ids=left, right_ids=right)["score"]
        # Where TF placed the call, which is what a GPU run must prove; not the devices seen.
        self.scored_on = out.device
        return out.numpy()

    def encode(self, ids: np.ndarray) -> np.ndarray:
        self._load()
        out = self._encode(ids=ids)["embedding"]
        self.scored_on = out.device
        return out.numpy()

    def score_embeddings(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        if self._head is not None:
            # numpy, on this CPU; the device named stays the encoder's, where one ran.
            return self._head(left, right)
        out = self._score_embeddings(left=left, right=right)["score"]
        self.scored_on = out.device
        return out.numpy()

    def device_name(self) -> str:
        return self.scored_on or self.device or "CPU"


def is_transient(error: BaseException) -> bool:
    """Worth another attempt: a lost connection to a model process, a timeout, a device
    or runtime that was briefly unavailable or out of memory. Not a shape mismatch, a bad
    input or a model that cannot load: those fail the same way every time."""
    if isinstance(error, (ConnectionError, TimeoutError, EOFError)):
        return True
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return False
    errors = tf.errors
    return isinstance(error, (errors.UnavailableError, errors.AbortedError,
                              errors.DeadlineExceededError, errors.ResourceExhaustedError))


class PairModelHandler(ModelHandler[PackedBatch, PackedBatch, LoadedPairModel]):
    """Scores `PackedBatch`es with `serving_default`. Each element is already one
    length-grouped model batch: apply it through `.with_no_batching()`.

    Transient errors are retried per batch (`is_transient`, Beam's exponential backoff):
    the local FnApiRunner never retries a failed bundle (apache/beam#18640) and Dataflow
    retries a whole work item. Other errors reach RunInference at once, whose dead-letter
    output (`with_exception_handling`) turns the batch into rejects.
    """

    def __init__(
        self,
        model_dir: str,
        *,
        large_model: bool = False,
        model_copies: int | None = None,
        precision: str = "float32",
        shared: Shared | None = None,
        counter_prefix: str = "",
    ):
        super().__init__(large_model=large_model, model_copies=model_copies)
        # "canary_" for the canaries' scoring: their counters are not the night's.
        self._counter_prefix = counter_prefix
        self._model_dir = model_dir
        self._precision = precision
        # Handlers given the same Shared handle (unique-text mode's encode and
        # score_embeddings steps) load one model per process between them.
        self._shared = shared
        self._attempts = SCORE_ATTEMPTS
        self._backoff_s = SCORE_BACKOFF_S

    @property
    def model_dir(self) -> str:
        return self._model_dir

    # Load the SavedModel only when a call needs it (unique-text mode: see LoadedPairModel).
    LAZY = False

    def load_model(self) -> LoadedPairModel:
        def load():
            if self.LAZY:
                return LoadedPairModel(self._model_dir, self._precision, lazy=True)
            return LoadedPairModel(self._model_dir, self._precision)

        if self._shared is None:
            return load()
        lazy = "|lazy" if self.LAZY else ""
        return self._shared.acquire(load, tag=f"{self._model_dir}|{self._precision}{lazy}")

    def run_inference(self, batch, model: LoadedPairModel, inference_args=None) -> list:
        call = retry.with_exponential_backoff(
            num_retries=self._attempts - 1,
            initial_delay_secs=self._backoff_s,
            retry_filter=is_transient,
            logger=lambda *args: self._retrying(batch),
            fuzz=False,
        )(self._apply)
        scored = call(batch, model)
        # RunInference's own num_inferences counts rows here (each element is a batch).
        self._counter("model_calls").inc()
        self._count_device(model, len(scored))
        return [scored]

    def _retrying(self, batch) -> None:
        self._counter("score_retries").inc()
        log.warning("a model call on %d rows failed with a transient error; retrying",
                    len(batch))

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
        self._counter(f"rows_scored_on_{kind}").inc(rows)

    def _apply(self, packed: PackedBatch, model: LoadedPairModel) -> PackedBatch:
        """One model call on one batch; unique-text mode's handlers call other signatures."""
        packed.scores = model.score(packed.left, packed.right)
        return packed

    def get_num_bytes(self, batch: PackedBatch) -> int:
        return batch.left.nbytes + batch.right.nbytes

    def _counter(self, name: str):
        return Metrics.counter(NAMESPACE, self._counter_prefix + name)

    def get_metrics_namespace(self) -> str:
        # RunInference's own metrics (num_inferences, latencies): the canaries' apart.
        return NAMESPACE + ("_" + self._counter_prefix.rstrip("_") if self._counter_prefix
                            else "")


class EncodeHandler(PairModelHandler):
    """`TextBatch`es of distinct texts -> their embeddings (`encode`). The SavedModel is
    loaded at the first batch: with every text in the embedding store, never."""

    LAZY = True

    def _apply(self, batch, model):
        batch.embeddings = model.encode(batch.ids)
        return batch

    def _count_device(self, model, rows):
        pass  # rows_scored_on_* counts pairs: ScoreEmbeddingsHandler does that

    def get_num_bytes(self, batch) -> int:
        return batch.ids.nbytes


class ScoreEmbeddingsHandler(PairModelHandler):
    """`EmbeddedBatch`es of pairs -> scores from both texts' embeddings
    (`score_embeddings`: the model's head, in numpy where `model.head` computes it)."""

    LAZY = True

    def _apply(self, batch, model):
        batch.scores = model.score_embeddings(batch.left, batch.right)
        return batch

    def get_num_bytes(self, batch) -> int:
        return batch.left.nbytes + batch.right.nbytes
