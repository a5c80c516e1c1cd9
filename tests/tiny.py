"""Tiny untrained Siamese models, exported to real model directories, for tests and
benchmarks: the same code paths as trained models at a fraction of the cost."""

from __future__ import annotations

import numpy as np

from model import data as data_lib
from model.config import ModelMetadata
from model.train import TrainConfig, build_model, build_tokenizer

TEXTS = [
    "How do I learn Python quickly?",
    "What is the fastest way to learn Python?",
    "Where can I buy a cheap laptop?",
    "The cat sat on the mat.",
    "A dog barked at the mailman all day long.",
]


def export_tiny(
    output: str,
    encoder: str = "bilstm",
    distance: str = "l1",
    pooling: str = "mean",
    max_length: int = 32,
    texts: list[str] | None = None,
    threshold: float = 0.5,
    seed: int = 0,
) -> ModelMetadata:
    import keras

    from model.export import export

    keras.utils.set_random_seed(seed)
    texts = texts or TEXTS
    cfg = TrainConfig(
        train="(tiny)", output=output, encoder=encoder, distance=distance, pooling=pooling,
        max_length=max_length, lstm_units=4, glove_extra_words=2000, bert_tiny=True, seed=seed,
    )
    pairs = data_lib.Pairs(texts, texts[::-1], np.zeros(len(texts), "float32"), None, "(tiny)")
    tok, matrix = build_tokenizer(cfg, pairs)
    _, enc, head = build_model(cfg, matrix)
    dim = enc.output.shape[-1]
    head(np.zeros((1, dim), "float32"), np.ones((1, dim), "float32"))
    meta = ModelMetadata(
        encoder=cfg.encoder,
        pooling=cfg.pooling if cfg.encoder == "bert" else None,
        distance=cfg.distance,
        max_length=max_length,
        threshold=threshold,
        embedding_dim=0,
        tokenizer={},
        training={"data": None, "note": "tiny untrained model for tests"},
    )
    return export(enc, head, tok, meta, output)
