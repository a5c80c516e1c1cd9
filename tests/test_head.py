"""The model's head in numpy (`model.head`): the variables index read without TensorFlow
as TensorFlow reads it, and `Head` scoring as the SavedModel's `score_embeddings` for
every distance; anything else falls back to the SavedModel."""

import json
import shutil

import numpy as np
import pytest

from model import head as head_lib
from model.config import Distance
from model.modeldir import ModelDir, build_manifest
from pipeline.handler import LoadedPairModel
from tests.tiny import export_tiny


def _embeddings(dim: int, n: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(n, dim)).astype(np.float32)
    v = (u + 0.8 * rng.normal(size=(n, dim))).astype(np.float32)
    v[0] = u[0]  # identical texts
    u[1] = 0.0  # a zero vector (the cosine's 1e-12 floor)
    return u, v


@pytest.fixture(scope="module")
def models(tmp_path_factory, bilstm_model):
    """A tiny bilstm model per distance (l1 is the session's)."""
    out = {Distance.L1.value: bilstm_model}
    for distance in (d.value for d in Distance if d != Distance.L1):
        path = str(tmp_path_factory.mktemp("heads") / distance)
        export_tiny(path, encoder="bilstm", distance=distance)
        out[distance] = path
    return out


def test_the_index_reader_lists_what_tensorflow_lists(bilstm_model):
    import tensorflow as tf

    md = ModelDir.open(bilstm_model, verify=False)
    shards, entries = head_lib.read_index(md.read_bytes(head_lib.INDEX_FILE))
    want = dict(tf.train.list_variables(f"{bilstm_model}/variables/variables"))
    assert shards == 1
    assert {k: list(e.shape) for k, e in entries.items()} == want


@pytest.mark.parametrize("distance", [d.value for d in Distance])
def test_the_numpy_head_scores_as_score_embeddings(models, distance):
    import tensorflow as tf

    md = ModelDir.open(models[distance], verify=False)
    head = head_lib.load_head(md)
    assert head is not None and head.distance == distance
    u, v = _embeddings(md.metadata.embedding_dim)
    want = tf.saved_model.load(models[distance]).signatures["score_embeddings"](
        left=u, right=v)["score"].numpy()
    got = head(u, v)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_a_head_it_does_not_know_is_left_to_the_saved_model(tmp_path, bilstm_model):
    # pairscore.json says cosine, the variables hold an l1 head (a kernel per dimension):
    # not computed in numpy, the SavedModel is loaded at once even when lazy.
    model = tmp_path / "model"
    shutil.copytree(bilstm_model, model)
    meta = json.loads((model / "pairscore.json").read_text())
    meta["distance"] = "cosine"
    (model / "pairscore.json").write_text(json.dumps(meta))
    assert head_lib.load_head(ModelDir.open(str(model), verify=False)) is None
    assert LoadedPairModel(str(model), lazy=True).loaded


def test_a_tensor_whose_bytes_do_not_match_the_index_is_not_used(tmp_path, bilstm_model):
    model = tmp_path / "model"
    shutil.copytree(bilstm_model, model)
    md = ModelDir.open(str(model), verify=False)
    _, entries = head_lib.read_index(md.read_bytes(head_lib.INDEX_FILE))
    bias = entries["head/classifier/bias/.ATTRIBUTES/VARIABLE_VALUE"]
    data = model / "variables" / "variables.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[bias.offset] ^= 0xFF
    data.write_bytes(bytes(raw))
    meta = json.loads((model / "pairscore.json").read_text())
    meta["manifest"], _ = build_manifest(str(model))
    (model / "pairscore.json").write_text(json.dumps(meta))
    assert head_lib.load_head(ModelDir.open(str(model), verify=False)) is None


def test_a_lazy_model_loads_the_saved_model_at_the_first_encode(bilstm_model):
    lazy = LoadedPairModel(bilstm_model, lazy=True)
    eager = LoadedPairModel(bilstm_model)
    assert not lazy.loaded and eager.loaded
    u, v = _embeddings(ModelDir.open(bilstm_model, verify=False).metadata.embedding_dim)
    np.testing.assert_allclose(lazy.score_embeddings(u, v), eager.score_embeddings(u, v),
                               rtol=0, atol=1e-6)
    assert not lazy.loaded and lazy.device_name() == "CPU"
    ids = np.array([[5, 6, 7, 0], [8, 9, 0, 0]], np.int32)
    np.testing.assert_array_equal(lazy.encode(ids), eager.encode(ids))
    assert lazy.loaded
