"""A warm night pays only for what it uses (issue 19, item 9): with every text in the
embedding store, unique-text mode never loads the SavedModel (its head is computed from
the model's variables, `model.head`), and scores as the cold night did; a model that
cannot load still fails the night, at the first batch that needs it."""

import glob

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import cli, job
from tests.conftest import unloadable_model, write_pairs
from tests.tiny import TEXTS as TINY_TEXTS

TEXTS = [*TINY_TEXTS, "Café crème brûlée", "东京 is in 日本", "Is 2+2=4? 😀", "learn python",
         "cheap laptops for sale", "the mailman and the dog"]


def _pairs(n, seed=0):
    rng = np.random.default_rng(seed)
    i = rng.integers(len(TEXTS), size=n)
    j = (i + 1 + rng.integers(len(TEXTS) - 1, size=n)) % len(TEXTS)
    return [(f"w{k:04d}", TEXTS[a], TEXTS[b]) for k, (a, b) in enumerate(zip(i, j))]


def _labels(out):
    files = sorted(glob.glob(f"{out}/labels/*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]).sort_by("pair_id")


@pytest.fixture
def saved_model_loads(monkeypatch):
    """Every tf.saved_model.load of this process (the local runner runs the job here)."""
    import tensorflow as tf

    loads = []
    real = tf.saved_model.load

    def counted(path, *args, **kwargs):
        loads.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(tf.saved_model, "load", counted)
    return loads


@pytest.mark.parametrize("model", ["bilstm_model", "bert_model"])
def test_a_warm_night_never_loads_the_saved_model(tmp_path, request, saved_model_loads,
                                                  model):
    model = request.getfixturevalue(model)
    rows = _pairs(40)
    src, uri = tmp_path / "pairs.parquet", str(tmp_path / "store")
    write_pairs(src, rows)
    args = ["--input", str(src), "--model", model, "--embedding-store", uri]
    cold = job.run([*args, "--output", str(tmp_path / "cold")]).summary
    # The cold night loads the SavedModel once: encode and score_embeddings share it.
    assert len(saved_model_loads) == 1
    assert cold["store"]["texts_encoded"] == len(TEXTS)
    del saved_model_loads[:]
    warm = job.run([*args, "--output", str(tmp_path / "warm")]).summary
    assert (warm["store"]["texts_found"], warm["store"]["texts_encoded"]) == (len(TEXTS), 0)
    assert saved_model_loads == []
    assert warm["counters"]["rows_scored_on_cpu"] == len(rows)
    a, b = _labels(tmp_path / "cold"), _labels(tmp_path / "warm")
    assert a["pair_id"].equals(b["pair_id"]) and a["is_duplicate"].equals(b["is_duplicate"])
    np.testing.assert_allclose(b["score"].to_numpy(), a["score"].to_numpy(), rtol=0,
                               atol=1e-6)
    # The same pairs in pair mode, through serving_default: the same scores.
    pairs = job.run([*args[:4], "--mode", "pairs", "--output", str(tmp_path / "pairs")])
    assert pairs.summary["mode"] == "pairs"
    np.testing.assert_allclose(_labels(tmp_path / "pairs")["score"].to_numpy(),
                               b["score"].to_numpy(), rtol=0, atol=1e-5)


def test_a_model_that_cannot_load_fails_a_unique_night_at_its_first_batch(
        tmp_path, bilstm_model, capsys):
    # The head reads fine from the variables; the graph TensorFlow needs to encode is
    # broken (the manifest agrees, as if the export itself had gone wrong).
    model = unloadable_model(bilstm_model, tmp_path / "model")
    src, out = tmp_path / "pairs.parquet", tmp_path / "out"
    write_pairs(src, _pairs(20))
    capsys.readouterr()
    code = cli.main(["score", "--input", str(src), "--output", str(out), "--model",
                     str(model), "--mode", "unique", "--embedding-store",
                     str(tmp_path / "store")])
    err = capsys.readouterr().err
    assert code == 2
    assert "pairscore score: error: the job failed, _SUCCESS not written: " in err
    assert f"ModelLoadError: cannot load the model in {model}: " in err
    assert not (out / "_SUCCESS").exists() and not (out / "labels").exists()
    assert not glob.glob(str(tmp_path / "store" / "*" / "gen-*" / "_COMMITTED.json"))
