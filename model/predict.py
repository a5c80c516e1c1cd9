"""Score pairs with an exported model directory, outside Beam (evaluation, benchmarks)."""

from __future__ import annotations

import os

import numpy as np
from tokenizers import Tokenizer

from model import tokenization
from model.config import TOKENIZER_FILE, ModelMetadata, read_metadata


def load_saved_model(model_dir: str):
    """tf.saved_model.load with tensorflow_text's ops registered (score_text needs them)."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the ops score_text uses)

    return tf.saved_model.load(model_dir)


class Scorer:
    """A loaded model directory: tokenizer + SavedModel, scoring lists of text pairs."""

    def __init__(self, model_dir: str):
        self.model_dir = model_dir
        self.metadata: ModelMetadata = read_metadata(model_dir)
        self.tokenizer = tokenization.configure(
            Tokenizer.from_file(os.path.join(model_dir, TOKENIZER_FILE)),
            self.metadata.max_length,
        )
        self.model = load_saved_model(model_dir)
        self._serve = self.model.signatures["serving_default"]

    def score_ids(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        return self._serve(left_ids=left, right_ids=right)["score"].numpy()

    def score(self, text_a: list[str], text_b: list[str], batch_size: int = 64) -> np.ndarray:
        """Scores in input order; batches are formed from similar lengths to limit padding."""
        ids_a = tokenization.encode_batch(self.tokenizer, list(text_a))
        ids_b = tokenization.encode_batch(self.tokenizer, list(text_b))
        lengths = np.array([max(len(a), len(b)) for a, b in zip(ids_a, ids_b)])
        order = np.argsort(lengths, kind="stable")
        out = np.empty(len(order), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self.score_ids(
                tokenization.pad([ids_a[i] for i in idx]),
                tokenization.pad([ids_b[i] for i in idx]),
            )
        return out
