"""The built-in default model: pretrained all-MiniLM-L6-v2, mean pooling, cosine head.

No training: the cosine head's sigmoid(a * cos + b) is fixed so that 0.5 sits at the
cosine where F1 peaked when calibrated on public paraphrase data (see docs/results.md).
"""

from __future__ import annotations

import numpy as np

from model import tokenization
from model.config import ModelMetadata

# sigmoid(SCALE * (cos - CENTER)): CENTER is the cosine treated as "even odds".
SCALE = 10.0
CENTER = 0.75
THRESHOLD = 0.5


def build(max_length: int = 128, tiny: bool = False):
    """(encoder, head, tokenizer) of the default model."""
    from model import layers, train

    encoder = layers.bert_encoder(train.bert_backbone(tiny=tiny), "mean", trainable=False)
    head = layers.DistanceHead("cosine", name="head")
    dim = encoder.output.shape[-1]
    head(np.zeros((1, dim), "float32"), np.ones((1, dim), "float32"))
    head.classifier.set_weights(
        [np.array([[SCALE]], dtype="float32"), np.array([-SCALE * CENTER], dtype="float32")]
    )
    tok = tokenization.configure(train.minilm_tokenizer(), max_length)
    return encoder, head, tok


def export_default(output: str, max_length: int = 128, tiny: bool = False) -> ModelMetadata:
    from model.export import export

    encoder, head, tok = build(max_length, tiny)
    meta = ModelMetadata(
        encoder="bert",
        pooling="mean",
        distance="cosine",
        max_length=max_length,
        threshold=THRESHOLD,
        embedding_dim=0,
        tokenizer={},
        training={
            "data": None,
            "note": "pretrained sentence-transformers/all-MiniLM-L6-v2, no fine-tuning; "
            f"score = sigmoid({SCALE} * (cos - {CENTER}))",
        },
    )
    return export(encoder, head, tok, meta, output)
