"""Score pairs with an exported model directory, outside Beam (evaluation, benchmarks).

The directory may be local, gs:// or s3:// (see model/modeldir.py); it is checked
against its manifest before it is loaded.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from model.config import ModelMetadata
from model.modeldir import ModelDir
from model.tokenization import encode_texts, pad_rows, token_lengths


def load_saved_model(model_dir: str):
    """tf.saved_model.load with tensorflow_text's ops registered (score_text needs them).

    Kept for callers of the old name; `ModelDir.open(d).load_saved_model()` is the one."""
    return ModelDir.open(model_dir, verify=False).load_saved_model()


class Scorer:
    """A loaded model directory: tokenizer + SavedModel, scoring lists of text pairs."""

    def __init__(self, model_dir: str | ModelDir, verify: bool = True):
        md = model_dir if isinstance(model_dir, ModelDir) else ModelDir.open(model_dir, verify)
        self.model_dir = md.uri
        self.metadata: ModelMetadata = md.metadata
        self.tokenizer = md.tokenizer()
        self.model = md.load_saved_model()
        self._serve = self.model.signatures["serving_default"]

    def score_ids(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        return self._serve(left_ids=left, right_ids=right)["score"].numpy()

    def score(self, text_a: list[str], text_b: list[str], batch_size: int = 64) -> np.ndarray:
        """Scores in input order; batches are formed from similar lengths to limit padding."""
        ids_a = encode_texts(self.tokenizer, pa.array(list(text_a), pa.string()))
        ids_b = encode_texts(self.tokenizer, pa.array(list(text_b), pa.string()))
        len_a, len_b = token_lengths(ids_a), token_lengths(ids_b)
        order = np.argsort(np.maximum(len_a, len_b), kind="stable")
        out = np.empty(len(order), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self.score_ids(pad_rows(ids_a, len_a, idx), pad_rows(ids_b, len_b, idx))
        return out
