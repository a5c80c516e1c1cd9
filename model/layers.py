"""Keras layers of the Siamese model: encoders (the shared tower) and distance heads."""

from __future__ import annotations

import keras
from keras import layers, ops

from model.config import Distance, Pooling


@keras.saving.register_keras_serializable(package="pairscore")
class MaskedMeanPooling(layers.Layer):
    """Mean of token vectors where `mask` is true."""

    def call(self, sequence, mask):
        mask = ops.cast(ops.expand_dims(mask, -1), sequence.dtype)
        total = ops.sum(sequence * mask, axis=1)
        count = ops.maximum(ops.sum(mask, axis=1), 1.0)
        return total / count


@keras.saving.register_keras_serializable(package="pairscore")
class DistanceHead(layers.Layer):
    """Combine two sentence vectors into a duplicate probability.

    l1: Dense(1 - |u - v|), the source article's head; concat: Dense([u, v]), its BERT
    recipe; cosine: sigmoid(a * cos(u, v) + b); manhattan: sigmoid(a * exp(-|u - v|_1) + b)
    (MaLSTM); sbert: Dense([u, v, |u - v|, u * v]).

    The one-feature heads (cosine, manhattan) start at a = 5, b = -2.5 (even odds at
    similarity 0.5): a random a can be negative, and then training pushes paraphrases
    apart until a changes sign, which at BERT learning rates takes most of an epoch.
    """

    def __init__(self, distance="l1", dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.distance = Distance.parse(distance).value
        self.dropout = float(dropout)
        self.drop = layers.Dropout(self.dropout) if self.dropout else None
        init = {}
        if self.distance in (Distance.COSINE, Distance.MANHATTAN):
            init = {
                "kernel_initializer": keras.initializers.Constant(5.0),
                "bias_initializer": keras.initializers.Constant(-2.5),
            }
        self.classifier = layers.Dense(1, activation="sigmoid", name="classifier", **init)

    def features(self, u, v):
        d = self.distance
        if d == Distance.L1:
            return 1.0 - ops.abs(u - v)
        if d == Distance.CONCAT:
            return ops.concatenate([u, v], axis=-1)
        if d == Distance.SBERT:
            return ops.concatenate([u, v, ops.abs(u - v), u * v], axis=-1)
        if d == Distance.COSINE:
            un = u / ops.maximum(ops.norm(u, axis=-1, keepdims=True), 1e-12)
            vn = v / ops.maximum(ops.norm(v, axis=-1, keepdims=True), 1e-12)
            return ops.sum(un * vn, axis=-1, keepdims=True)
        return ops.exp(-ops.sum(ops.abs(u - v), axis=-1, keepdims=True))

    def call(self, u, v, training=False):
        x = self.features(u, v)
        if self.drop is not None and x.shape[-1] != 1:
            x = self.drop(x, training=training)
        return ops.squeeze(self.classifier(x), axis=-1)

    def get_config(self):
        return {**super().get_config(), "distance": self.distance, "dropout": self.dropout}


def bilstm_encoder(embedding_matrix, units=256, name="bilstm_encoder") -> keras.Model:
    """ids int32[B, T] -> [B, 2 * units]: GloVe-initialised, trainable, masked Embedding
    then a Bidirectional LSTM (the source article's tower)."""
    ids = keras.Input(shape=(None,), dtype="int32", name="ids")
    x = layers.Embedding(
        input_dim=embedding_matrix.shape[0],
        output_dim=embedding_matrix.shape[1],
        embeddings_initializer=keras.initializers.Constant(embedding_matrix),
        mask_zero=True,
        trainable=True,
        name="embedding",
    )(ids)
    x = layers.Bidirectional(layers.LSTM(units), name="bilstm")(x)
    return keras.Model(ids, x, name=name)


def bert_encoder(backbone, pooling="mean", trainable=True, name="bert_encoder") -> keras.Model:
    """ids int32[B, T] -> [B, hidden] from a keras-hub BertBackbone with pooling
    cls (the [CLS] vector), mean (masked mean, as sentence-transformers) or pooled
    (BERT's tanh pooler)."""
    pooling = Pooling.parse(pooling)
    ids = keras.Input(shape=(None,), dtype="int32", name="ids")
    mask = ops.not_equal(ids, 0)
    out = backbone({"token_ids": ids, "segment_ids": ops.zeros_like(ids), "padding_mask": mask})
    if pooling == Pooling.CLS:
        x = out["sequence_output"][:, 0, :]
    elif pooling == Pooling.POOLED:
        x = out["pooled_output"]
    else:
        x = MaskedMeanPooling(name="mean_pooling")(out["sequence_output"], mask)
    encoder = keras.Model(ids, x, name=name)
    set_trainable(encoder, trainable, pooling)
    return encoder


def set_trainable(encoder: keras.Model, trainable: bool, pooling=None) -> None:
    """Freeze or unfreeze an encoder. A BERT encoder whose pooling is not `pooled` keeps
    BERT's pooler frozen: it is outside the graph, and trainable it only earns a Keras
    "Gradients do not exist" warning at every step."""
    encoder.trainable = trainable
    if not trainable or pooling is None or Pooling.parse(pooling) == Pooling.POOLED:
        return
    for layer in encoder.layers:
        if isinstance(layer, keras.Model) and "pooled_dense" in {
            sub.name for sub in layer.layers
        }:
            layer.get_layer("pooled_dense").trainable = False


def siamese(encoder: keras.Model, head: DistanceHead) -> keras.Model:
    """left_ids, right_ids -> score, both sides through the same `encoder` (shared weights)."""
    left = keras.Input(shape=(None,), dtype="int32", name="left_ids")
    right = keras.Input(shape=(None,), dtype="int32", name="right_ids")
    score = head(encoder(left), encoder(right))
    return keras.Model({"left_ids": left, "right_ids": right}, score, name="siamese")


@keras.saving.register_keras_serializable(package="pairscore")
class PairSequence(layers.Layer):
    """left_ids [B, Ta], right_ids [B, Tb] (each `[CLS] text [SEP]`, padded with 0) ->
    token_ids, segment_ids, padding_mask [B, Ta + Tb - 1] of one `[CLS] a [SEP] b [SEP]`
    sequence per pair: the left row's tokens, then the right row's without its [CLS], then
    padding. The cross-encoder reads the ids the Siamese model reads, so one tokenizer
    pass and one batch layout serve both."""

    def call(self, left, right):
        len_l = ops.sum(ops.cast(ops.not_equal(left, 0), "int32"), axis=1, keepdims=True)
        len_r = ops.sum(ops.cast(ops.not_equal(right, 0), "int32"), axis=1, keepdims=True)
        width_l, width_r = ops.shape(left)[1], ops.shape(right)[1]
        pos = ops.expand_dims(ops.arange(width_l + width_r - 1, dtype="int32"), 0)
        from_left = ops.take_along_axis(left, ops.minimum(pos, width_l - 1)
                                        + ops.zeros_like(len_l), axis=1)
        right_pos = pos - len_l + 1
        from_right = ops.take_along_axis(right, ops.clip(right_pos, 0, width_r - 1), axis=1)
        in_left = pos < len_l
        in_right = ops.logical_and(ops.logical_not(in_left), right_pos < len_r)
        zero = ops.zeros_like(from_left)
        ids = ops.where(in_left, from_left, ops.where(in_right, from_right, zero))
        segments = ops.cast(in_right, "int32")
        return ids, segments, ops.not_equal(ids, 0)


def cross_encoder(backbone, dropout=0.1, name="cross_encoder") -> keras.Model:
    """left_ids, right_ids -> duplicate probability from ONE `[CLS] a [SEP] b [SEP]`
    sequence through a keras-hub BertBackbone: the [CLS] vector, dropout, Dense(1, sigmoid).
    BERT's pooler stays frozen (outside the graph)."""
    left = keras.Input(shape=(None,), dtype="int32", name="left_ids")
    right = keras.Input(shape=(None,), dtype="int32", name="right_ids")
    ids, segments, mask = PairSequence(name="pair_sequence")(left, right)
    out = backbone({"token_ids": ids, "segment_ids": segments, "padding_mask": mask})
    x = out["sequence_output"][:, 0, :]
    if dropout:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    score = layers.Dense(1, activation="sigmoid", name="classifier")(x)
    score = ops.squeeze(score, axis=-1)
    model = keras.Model({"left_ids": left, "right_ids": right}, score, name=name)
    backbone.trainable = True
    if "pooled_dense" in {sub.name for sub in backbone.layers}:
        backbone.get_layer("pooled_dense").trainable = False
    return model
