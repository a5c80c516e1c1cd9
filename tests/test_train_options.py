"""The fine-tuning options of `pairscore train`, each on tiny data in a few seconds:
warm-up then decay, freezing the encoder for the first epochs, class weights, head dropout,
keeping the best epoch by a validation metric, graded (STS-style) targets."""

import json

import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from model.layers import DistanceHead
from model.predict import Scorer
from model.train import TrainConfig, _schedule, parse_class_weight, train
from pipeline.cli import main

WORDS = (
    "the cat dog house car tree river city music book water green red blue small big old "
    "new fast slow happy sad night day road school friend family market garden window door "
    "table chair light dark cold warm rain snow sun moon star ship train plane"
).split()


def _pairs(n, seed, graded=False):
    """Paraphrases (same words, reordered, one dropped) and unrelated pairs, half each;
    graded data gets a similarity 0-5 that falls with the share of words changed."""
    rng = np.random.default_rng(seed)
    a, b, label, sim = [], [], [], []
    for i in range(n):
        words = list(rng.choice(WORDS, size=6, replace=False))
        if graded:
            changed = int(rng.integers(0, 7))
            other = [w for w in WORDS if w not in words]
            new = list(rng.choice(other, size=changed, replace=False))
            b_words = words[: 6 - changed] + new
            rng.shuffle(b_words)
            sim.append(5.0 * (6 - changed) / 6)
            label.append(-1)
        elif i % 2 == 0:
            b_words = list(rng.permutation(words))[:5]
            label.append(1)
        else:
            b_words = list(rng.choice(WORDS, size=6, replace=False))
            label.append(0)
        a.append(" ".join(words))
        b.append(" ".join(b_words))
    cols = {
        "text_a": pa.array(a),
        "text_b": pa.array(b),
        "label": pa.array(label, pa.int8()),
        "similarity": pa.array(sim if graded else [None] * n, pa.float32()),
    }
    return pa.table(cols)


@pytest.fixture(scope="module")
def binary_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    pq.write_table(_pairs(128, 1), root / "train.parquet")
    pq.write_table(_pairs(64, 2), root / "val.parquet")
    return root / "train.parquet", root / "val.parquet"


@pytest.fixture(scope="module")
def graded_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("graded")
    pq.write_table(_pairs(128, 3, graded=True), root / "train.parquet")
    pq.write_table(_pairs(64, 4, graded=True), root / "val.parquet")
    return root / "train.parquet", root / "val.parquet"


def _cfg(data, out, **kw):
    base = dict(
        train=str(data[0]),
        validation=str(data[1]),
        output=str(out),
        encoder="bilstm",
        distance="l1",
        lstm_units=8,
        glove_extra_words=0,
        batch_size=16,
        epochs=1,
        seed=0,
    )
    base.update(kw)
    return TrainConfig(**base)


class _Snapshots(keras.callbacks.Callback):
    """Encoder and head weights before training and after every epoch."""

    def __init__(self):
        super().__init__()
        self.encoder, self.head = [], []

    def _take(self):
        encoder = next(layer for layer in self.model.layers if layer.name.endswith("encoder"))
        self.encoder.append([w.copy() for w in encoder.get_weights()])
        self.head.append([w.copy() for w in self.model.get_layer("head").get_weights()])

    def on_train_begin(self, logs=None):
        if not self.encoder:
            self._take()

    def on_epoch_end(self, epoch, logs=None):
        self._take()


def _same(x, y):
    return all(np.array_equal(a, b) for a, b in zip(x, y, strict=True))


def _validation_scores(model_dir, data):
    table = pq.read_table(data)
    scores = Scorer(str(model_dir)).score(table["text_a"].to_pylist(), table["text_b"].to_pylist())
    return scores, table


# -- warm-up then decay ------------------------------------------------------------------


def test_schedule_warms_up_then_decays_to_zero():
    cfg = TrainConfig(train="x", output="y", epochs=4, learning_rate=1e-3, warmup_ratio=0.25)
    schedule = _schedule(cfg, steps_per_epoch=10)
    lr = [float(schedule(step)) for step in (0, 5, 10, 25, 40)]
    assert lr[0] == 0.0
    assert lr[1] == pytest.approx(5e-4)
    assert lr[2] == pytest.approx(1e-3)
    assert lr[2] > lr[3] > lr[4]
    assert lr[4] == pytest.approx(0.0, abs=1e-9)
    assert _schedule(TrainConfig(train="x", output="y", learning_rate=3e-4), 10) == 3e-4


# -- freezing the encoder for the first epochs, warm-up in training, best-epoch restore --


@pytest.fixture(scope="module")
def frozen_run(binary_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("frozen") / "model"
    snaps = _Snapshots()
    cfg = _cfg(
        binary_data,
        out,
        epochs=3,
        freeze_epochs=1,
        warmup_ratio=0.5,
        learning_rate=5e-3,
        head_learning_rate=2e-2,
        select_metric="val_auc",
        patience=3,
        dropout=0.2,
    )
    meta = train(cfg, callbacks=[snaps])
    return meta, snaps, out


def test_freeze_epochs_trains_only_the_head_first(frozen_run):
    meta, snaps, _ = frozen_run
    assert len(snaps.encoder) == 4  # before training + 3 epochs
    assert _same(snaps.encoder[0], snaps.encoder[1]), "encoder moved while frozen"
    assert not _same(snaps.head[0], snaps.head[1]), "head did not train while frozen"
    assert not _same(snaps.encoder[1], snaps.encoder[2]), "encoder never unfrozen"
    assert meta.training["history"][0]["learning_rate"] == pytest.approx(2e-2)


def test_warmup_and_decay_happen_in_training(frozen_run):
    history = frozen_run[0].training["history"]
    # Unfrozen phase = epochs 2-3, warm-up over its first half, then cosine to zero.
    assert history[1]["learning_rate"] == pytest.approx(5e-3, rel=1e-3)
    assert history[2]["learning_rate"] == pytest.approx(0.0, abs=1e-6)


def test_best_epoch_by_val_auc_is_the_one_exported(frozen_run, binary_data):
    meta, _, out = frozen_run
    history = meta.training["history"]
    aucs = [h["val_auc"] for h in history]
    assert meta.training["best_epoch"] == int(np.argmax(aucs)) + 1
    scores, table = _validation_scores(out, binary_data[1])
    exported_auc = roc_auc_score(table["label"].to_numpy(), scores)
    assert exported_auc == pytest.approx(max(aucs), abs=1e-4)
    assert meta.metrics["validation"]["roc_auc"] == pytest.approx(max(aucs), abs=1e-6)


# No Keras warning either: an unused pooler left trainable ("Gradients do not exist") and
# fit's default shuffle on a dataset both used to warn at every epoch.
@pytest.mark.filterwarnings("error::UserWarning")
@pytest.mark.slow  # real training runs: `make test-slow`
def test_freeze_epochs_with_bert(binary_data, tmp_path, tiny_bert_preset):
    snaps = _Snapshots()
    cfg = _cfg(
        binary_data,
        tmp_path / "m",
        encoder="bert",
        bert_preset=tiny_bert_preset,
        pooling="mean",
        distance="sbert",
        epochs=2,
        freeze_epochs=1,
        max_length=16,
    )
    meta = train(cfg, callbacks=[snaps])
    assert _same(snaps.encoder[0], snaps.encoder[1])
    assert not _same(snaps.encoder[1], snaps.encoder[2])
    assert meta.training["epochs_run"] == 2


def test_bad_options_name_the_allowed_values():
    with pytest.raises(ValueError, match="val_auc"):
        TrainConfig(train="x", output="y", select_metric="auc")
    with pytest.raises(ValueError, match="similarity"):
        TrainConfig(train="x", output="y", target="sts")
    with pytest.raises(ValueError, match="freeze-epochs"):
        TrainConfig(train="x", output="y", epochs=2, freeze_epochs=2)
    with pytest.raises(ValueError, match="class-weight"):
        TrainConfig(train="x", output="y", class_weight="0:1")


# -- class weights -----------------------------------------------------------------------


def test_parse_class_weight():
    labels = np.array([1, 1, 1, 0])
    assert parse_class_weight("balanced", labels) == pytest.approx({0: 2.0, 1: 4 / 6})
    assert parse_class_weight("0:3,1:0.5", labels) == {0: 3.0, 1: 0.5}
    assert parse_class_weight("none", labels) is None
    with pytest.raises(ValueError, match="both classes"):
        parse_class_weight("balanced", np.ones(4))
    with pytest.raises(ValueError):
        parse_class_weight("0:-1,1:1", labels)


@pytest.mark.slow  # real training runs: `make test-slow`
def test_class_weights_shift_the_scores(binary_data, tmp_path):
    means = {}
    for spec in ("0:4,1:0.25", "0:0.25,1:4"):
        out = tmp_path / spec.replace(":", "").replace(",", "_")
        meta = train(_cfg(binary_data, out, class_weight=spec, learning_rate=5e-2))
        assert meta.training["class_weight"] == parse_class_weight(spec, np.array([0, 1]))
        means[spec] = float(np.mean(_validation_scores(out, binary_data[1])[0]))
    # Same seed and data: weighting positives 16x more than negatives, rather than the
    # reverse, can only pull the scores up.
    assert means["0:0.25,1:4"] > means["0:4,1:0.25"] + 0.05


# -- head dropout ------------------------------------------------------------------------


def test_head_dropout_acts_in_training_only():
    head = DistanceHead("l1", dropout=0.5)
    u = np.random.default_rng(0).normal(size=(64, 32)).astype("float32")
    v = u + 0.1
    inference = np.asarray(head(u, v, training=False))
    np.testing.assert_array_equal(inference, np.asarray(head(u, v, training=False)))
    assert not np.allclose(np.asarray(head(u, v, training=True)), inference)
    assert DistanceHead.from_config(head.get_config()).dropout == 0.5


def test_dropout_reaches_the_trained_head(frozen_run):
    meta, _, out = frozen_run
    assert meta.training["config"]["dropout"] == 0.2
    scorer = Scorer(str(out))
    first = scorer.score(["a cat", "the dog"], ["a cat", "a car"])
    np.testing.assert_array_equal(first, scorer.score(["a cat", "the dog"], ["a cat", "a car"]))


# -- graded data -------------------------------------------------------------------------


@pytest.mark.slow  # real training runs: `make test-slow`
def test_graded_similarity_target(graded_data, tmp_path):
    cfg = _cfg(
        graded_data,
        tmp_path / "m",
        target="similarity",
        select_metric="val_spearman",
        epochs=2,
        learning_rate=1e-2,
    )
    meta = train(cfg)
    val = meta.metrics["validation"]
    history = meta.training["history"]
    assert "spearman" in val and "val_spearman" in history[0]
    assert val["spearman"] == pytest.approx(max(h["val_spearman"] for h in history), abs=1e-6)
    # The decision threshold is chosen against similarity >= duplicate_similarity (4.0).
    sim = pq.read_table(graded_data[1])["similarity"].to_numpy()
    assert val["n"] == len(sim)
    assert val["majority_accuracy"] == pytest.approx(max(np.mean(sim >= 4), np.mean(sim < 4)))


def test_graded_data_needs_a_target(graded_data, tmp_path):
    with pytest.raises(ValueError, match="--target similarity"):
        train(_cfg(graded_data, tmp_path / "m"))


@pytest.mark.slow  # real training runs: `make test-slow`
def test_cli_threshold_target_with_class_weights(graded_data, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(
        [
            "train",
            "--train",
            str(graded_data[0]),
            "--validation",
            str(graded_data[1]),
            "--output",
            str(out),
            "--encoder",
            "bilstm",
            "--lstm-units",
            "8",
            "--glove-extra-words",
            "0",
            "--epochs",
            "2",
            "--freeze-epochs",
            "1",
            "--target",
            "threshold",
            "--duplicate-similarity",
            "3.5",
            "--class-weight",
            "balanced",
            "--select-metric",
            "val_f1",
            "--dropout",
            "0.1",
            "--warmup-ratio",
            "0.2",
        ]
    )
    assert code == 0
    stdout = capsys.readouterr().out
    printed = json.loads(stdout[stdout.rindex("\n{\n") :])
    meta = json.loads((out / "pairscore.json").read_text())
    sim = pq.read_table(graded_data[0])["similarity"].to_numpy()
    positives = np.mean(sim >= 3.5)
    assert meta["training"]["class_weight"]["1"] == pytest.approx(0.5 / positives)
    best_f1 = max(h["val_f1"] for h in meta["training"]["history"])
    assert printed["validation"]["f1"] == pytest.approx(best_f1, abs=1e-6)
    assert meta["training"]["config"]["freeze_epochs"] == 1


# -- cross-validation --------------------------------------------------------------------


@pytest.mark.slow  # real training runs: `make test-slow`
def test_cross_validation_holds_out_each_fold_once(binary_data, tmp_path, capsys):
    out = tmp_path / "cv"
    code = main(
        [
            "train",
            "--train",
            str(binary_data[0]),
            "--output",
            str(out),
            "--encoder",
            "bilstm",
            "--lstm-units",
            "8",
            "--glove-extra-words",
            "0",
            "--epochs",
            "1",
            "--cv-folds",
            "2",
        ]
    )
    assert code == 0
    summary = json.loads((out / "cv.json").read_text())
    folds = summary["folds"]
    assert [f["fold"] for f in folds] == [1, 2]
    assert sum(f["n"] for f in folds) == 128
    for f in folds:
        meta = json.loads((out / f"fold-{f['fold']}" / "pairscore.json").read_text())
        # Trained on the other fold minus its 10% validation split.
        assert meta["training"]["rows"] == 64 - 6
        assert meta["training"]["validation"] == "10% held out"
    accuracies = [f["accuracy"] for f in folds]
    assert summary["accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
    with pytest.raises(ValueError, match="drop --validation"):
        main(
            [
                "train",
                "--train",
                str(binary_data[0]),
                "--validation",
                str(binary_data[1]),
                "--output",
                str(out),
                "--cv-folds",
                "2",
            ]
        )


def test_one_feature_heads_start_with_a_positive_slope():
    u = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], "float32")
    v = np.array([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.2]], "float32")  # cos 1, 0.71, -0.98
    for distance in ("cosine", "manhattan"):
        scores = np.asarray(DistanceHead(distance)(u, v))
        assert scores[0] > scores[1] > scores[2], distance
        assert scores[0] > 0.9


# -- swapped pairs and an intermediate task first ------------------------------------------


def test_swapped_pairs_are_every_pair_in_both_orders():
    from model.train import _training_batches

    left = [np.array([1, 2]), np.array([3])]
    right = [np.array([4]), np.array([5, 6, 7])]
    y, w = np.array([1.0, 0.0], "float32"), np.array([2.0, 1.0], "float32")
    plain = _training_batches(_cfg(("a", "b"), "o"), left, right, y, w)
    assert len(plain.left) == 2
    swapped = _training_batches(_cfg(("a", "b"), "o", swap_pairs=True), left, right, y, w)
    got = {(tuple(a), tuple(b), float(t), float(u)) for a, b, t, u in
           zip(swapped.left, swapped.right, swapped.y, swapped.weights, strict=True)}
    assert got == {((1, 2), (4,), 1.0, 2.0), ((3,), (5, 6, 7), 0.0, 1.0),
                   ((4,), (1, 2), 1.0, 2.0), ((5, 6, 7), (3,), 0.0, 1.0)}


class _Epochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.ended = 0

    def on_epoch_end(self, epoch, logs=None):
        self.ended += 1


def test_a_cross_encoder_pretrains_on_graded_pairs_then_trains(
    binary_data, graded_data, tmp_path, tiny_bert_preset
):
    kw = dict(architecture="cross", encoder="bert", bert_preset=tiny_bert_preset,
              max_length=16, batch_size=16, epochs=1, swap_pairs=True)
    epochs = _Epochs()
    meta = train(_cfg(binary_data, tmp_path / "pre", pretrain=str(graded_data[0]),
                      pretrain_epochs=2, **kw), callbacks=[epochs])
    assert epochs.ended == 2 + 1  # the pretraining epochs, then --train's
    pre = meta.training["pretrain"]
    assert pre["target"] == "similarity" and pre["rows"] == 128 and pre["epochs"] == 2
    assert meta.training["swap_pairs"] is True
    assert meta.training["epochs_run"] == 1  # selection counts --train's epochs only
    plain = train(_cfg(binary_data, tmp_path / "plain", **kw))
    assert plain.training["pretrain"] is None
    scores = [_validation_scores(tmp_path / m, binary_data[1])[0] for m in ("pre", "plain")]
    assert not np.allclose(scores[0], scores[1])  # the pretraining left its mark


def test_a_binary_pretraining_file_trains_on_its_labels(binary_data, tmp_path,
                                                        tiny_bert_preset):
    meta = train(_cfg(binary_data, tmp_path / "m", architecture="cross", encoder="bert",
                      bert_preset=tiny_bert_preset, max_length=16, batch_size=16,
                      pretrain=str(binary_data[1])))
    assert meta.training["pretrain"]["target"] == "label"
    with pytest.raises(ValueError, match="--pretrain-epochs must be at least 1"):
        _cfg(binary_data, tmp_path / "x", pretrain=str(binary_data[1]), pretrain_epochs=0)
