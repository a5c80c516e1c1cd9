"""Both encoders and every head: shared tower, export -> reload round trip, and the
three scoring paths of the model-directory contract agreeing within 1e-5."""

import numpy as np
import pytest
import tensorflow as tf

from model import data as data_lib
from model import tokenization
from model.config import ModelMetadata, check_model_dir
from model.export import export
from model.predict import load_saved_model
from model.train import TrainConfig, build_model, build_tokenizer
from tests.conftest import PAIRS

LEFT = [a for _, a, _ in PAIRS] + ["", "!!!"]
RIGHT = [b for _, _, b in PAIRS] + ["something", "???"]
HEADS = ["l1", "concat", "cosine", "manhattan", "sbert"]
# Every head but manhattan (l1's code with another scale) on bilstm, and bert with mean
# pooling, in the default run; bert with the other heads and poolings, and manhattan, in
# the slow one (`make test-slow`).
SLOW = pytest.mark.slow
CONFIGS = [("bilstm", d, "cls") if d != "manhattan" else pytest.param("bilstm", d, "cls",
                                                                       marks=SLOW)
           for d in HEADS] + [
    ("bert", d, "mean") if d == "cosine" else pytest.param("bert", d, "mean", marks=SLOW)
    for d in HEADS
]
CONFIGS += [pytest.param("bert", "concat", "cls", marks=SLOW),
            pytest.param("bert", "l1", "pooled", marks=SLOW)]


@pytest.fixture
def build(tmp_path, tiny_bert_preset):
    """(cfg, tokenizer, siamese, encoder, head) of an untrained model; bert is the tiny
    preset's."""

    def _build(encoder, distance, pooling):
        import keras

        keras.utils.set_random_seed(1)
        cfg = TrainConfig(
            train="-", output=str(tmp_path / "m"), encoder=encoder, distance=distance,
            pooling=pooling, max_length=24, lstm_units=4, glove_extra_words=500,
            bert_preset=tiny_bert_preset if encoder == "bert" else None,
        )
        pairs = data_lib.Pairs(LEFT, RIGHT, None, None, "-")
        tok, matrix = build_tokenizer(cfg, pairs)
        siamese, enc, head = build_model(cfg, matrix)
        return cfg, tok, siamese, enc, head

    return _build


@pytest.mark.parametrize("encoder,distance,pooling", CONFIGS)
def test_export_round_trip_and_three_paths_agree(build, encoder, distance, pooling):
    cfg, tok, siamese, enc, head = build(encoder, distance, pooling)
    # One tower: the Siamese model holds exactly the encoder's and head's weights.
    assert len(siamese.weights) == len(enc.weights) + len(head.weights)

    tokenization.configure(tok, cfg.max_length)
    left = tokenization.pad(tokenization.encode_batch(tok, LEFT))
    right = tokenization.pad(tokenization.encode_batch(tok, RIGHT))
    in_memory = np.asarray(siamese({"left_ids": left, "right_ids": right}))
    assert in_memory.shape == (len(LEFT),)
    assert np.all((in_memory >= 0) & (in_memory <= 1))

    meta = ModelMetadata(
        encoder=encoder, distance=distance, pooling=pooling, max_length=cfg.max_length,
        threshold=0.5, embedding_dim=0, tokenizer={},
    )
    export(enc, head, tok, meta, cfg.output)
    assert check_model_dir(cfg.output).embedding_dim == enc.output.shape[-1]

    loaded = load_saved_model(cfg.output)
    sig = loaded.signatures
    served = sig["serving_default"](left_ids=left, right_ids=right)["score"].numpy()
    np.testing.assert_allclose(served, in_memory, atol=1e-5)

    emb_l = sig["encode"](ids=left)["embedding"]
    emb_r = sig["encode"](ids=right)["embedding"]
    via_embeddings = sig["score_embeddings"](left=emb_l, right=emb_r)["score"].numpy()
    np.testing.assert_allclose(via_embeddings, served, atol=1e-5)

    via_text = sig["score_text"](left=tf.constant(LEFT), right=tf.constant(RIGHT))["score"]
    np.testing.assert_allclose(via_text.numpy(), served, atol=1e-5)


def test_scores_depend_on_input(build):
    cfg, tok, siamese, enc, head = build("bilstm", "l1", "cls")
    tokenization.configure(tok, cfg.max_length)
    a = tokenization.pad(tokenization.encode_batch(tok, LEFT[:3]))
    b = tokenization.pad(tokenization.encode_batch(tok, RIGHT[:3]))
    same = np.asarray(siamese({"left_ids": a, "right_ids": a}))
    diff = np.asarray(siamese({"left_ids": a, "right_ids": b}))
    assert not np.allclose(same, diff)


def test_export_refuses_foreign_directory(build, tmp_path):
    cfg, tok, _, enc, head = build("bilstm", "l1", "cls")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "precious.txt").write_text("keep me")
    meta = ModelMetadata(
        encoder="bilstm", distance="l1", max_length=24, threshold=0.5, embedding_dim=0,
        tokenizer={},
    )
    with pytest.raises(FileExistsError, match="not a pairscore model directory"):
        export(enc, head, tok, meta, cfg.output)
    assert (tmp_path / "m" / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "pooling,pooler_trains", [("mean", False), ("cls", False), ("pooled", True)]
)
def test_unfreezing_trains_bert_pooler_only_when_pooling_uses_it(build, pooling, pooler_trains):
    from model.layers import set_trainable

    cfg, tok, siamese, enc, head = build("bert", "cosine", pooling)
    set_trainable(enc, False, pooling)
    assert enc.trainable_weights == []
    set_trainable(enc, True, pooling)
    names = {w.path for w in enc.trainable_weights}
    assert any("transformer_layer_0" in n for n in names)
    assert any("pooled_dense" in n for n in names) == pooler_trains
    # Every trainable weight gets a gradient: no Keras "Gradients do not exist" warning.
    a = tokenization.pad(tokenization.encode_batch(tok, LEFT[:3]))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(siamese({"left_ids": a, "right_ids": a[::-1]}))
    grads = tape.gradient(loss, enc.trainable_weights)
    assert all(g is not None for g in grads)
