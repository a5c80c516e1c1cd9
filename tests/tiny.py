"""Tiny untrained Siamese models, exported to real model directories, and a tiny BERT
preset, for tests and benchmarks: the same code paths as trained models at a fraction of
the cost.

The tiny BERT reaches training the way a user's own BERT does: as a keras-hub preset
directory (`TrainConfig.bert_preset`, `pairscore train --bert-preset DIR`).
"""

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
# MiniLM's WordPiece vocabulary: the tokenizer training uses with any preset.
MINILM_VOCABULARY_SIZE = 30522


def write_tiny_bert_preset(output: str, seed: int = 0) -> str:
    """A one-layer, 16-wide BertBackbone with random weights (MiniLM's vocabulary), saved
    as a keras-hub preset directory; returns `output`."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=MINILM_VOCABULARY_SIZE,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=512,
    )
    backbone.save_to_preset(output)
    return output


def export_tiny(
    output: str,
    encoder: str = "bilstm",
    distance: str = "l1",
    pooling: str = "mean",
    max_length: int = 32,
    texts: list[str] | None = None,
    threshold: float = 0.5,
    seed: int = 0,
    bert_preset: str | None = None,
) -> ModelMetadata:
    """An untrained model directory; `encoder="bert"` needs `bert_preset` (see
    `write_tiny_bert_preset`)."""
    import keras

    from model.export import export

    if encoder == "bert" and bert_preset is None:
        raise ValueError("a tiny bert model needs bert_preset=write_tiny_bert_preset(dir)")
    keras.utils.set_random_seed(seed)
    texts = texts or TEXTS
    cfg = TrainConfig(
        train="(tiny)", output=output, encoder=encoder, distance=distance, pooling=pooling,
        max_length=max_length, lstm_units=4, glove_extra_words=2000, seed=seed,
        bert_preset=bert_preset,
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


def export_tiny_cross(output: str, bert_preset: str, max_length: int = 32,
                      threshold: float = 0.5, seed: int = 0) -> ModelMetadata:
    """An untrained cross-encoder directory (`--architecture cross`) on a tiny BERT
    preset (`write_tiny_bert_preset`)."""
    import keras

    from model import layers
    from model.export import export_cross
    from model.tokenization import configure
    from model.train import bert_backbone, minilm_tokenizer

    keras.utils.set_random_seed(seed)
    model = layers.cross_encoder(bert_backbone(bert_preset), dropout=0.1)
    meta = ModelMetadata(
        architecture="cross", encoder="bert", pooling="cls", distance="none",
        max_length=max_length, threshold=threshold, embedding_dim=0, tokenizer={},
        training={"data": None, "note": "tiny untrained cross-encoder for tests"},
    )
    return export_cross(model, configure(minilm_tokenizer(), max_length), meta, output)
