import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data(name: str) -> pathlib.Path:
    """A file of ../shared/data, or skip the test cleanly where that folder is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not present (../shared/data is only on developer machines)")
    return path


@pytest.fixture(scope="session")
def tiny_bert_preset(tmp_path_factory):
    """A keras-hub preset directory of a tiny random BERT: pass it as
    `TrainConfig(bert_preset=...)` or `pairscore train --bert-preset`."""
    from tests.tiny import write_tiny_bert_preset

    return write_tiny_bert_preset(str(tmp_path_factory.mktemp("presets") / "tiny-bert"))


@pytest.fixture(scope="session")
def bilstm_model(tmp_path_factory):
    from tests.tiny import export_tiny

    out = str(tmp_path_factory.mktemp("models") / "bilstm")
    export_tiny(out, encoder="bilstm", distance="l1")
    return out


@pytest.fixture(scope="session")
def bert_model(tmp_path_factory, tiny_bert_preset):
    from tests.tiny import export_tiny

    out = str(tmp_path_factory.mktemp("models") / "bert")
    export_tiny(out, encoder="bert", distance="cosine", pooling="mean",
                bert_preset=tiny_bert_preset)
    return out


PAIRS = [
    ("p1", "How do I learn Python quickly?", "What is the fastest way to learn Python?"),
    ("p2", "Where can I buy a cheap laptop?", "Cheap laptops: where to buy?"),
    ("p3", "The cat sat on the mat.", "A dog barked at the mailman."),
    ("p4", "Café crème brûlée, s'il vous plaît!", "cafe creme brulee please"),
    ("p5", "东京 is in 日本", "Tokyo is in Japan"),
    ("p6", "word " * 500, "short"),
    ("p7", "Is 2+2=4? 😀", "Does two plus two equal four?"),
]


def write_pairs(path, rows, row_group_size=None, **extra_columns):
    ids, a, b = zip(*rows) if rows else ((), (), ())
    cols = {
        "pair_id": pa.array(list(ids), pa.string()),
        "text_a": pa.array(list(a), pa.string()),
        "text_b": pa.array(list(b), pa.string()),
    }
    cols.update(extra_columns)
    table = pa.table(cols)
    pq.write_table(table, str(path), row_group_size=row_group_size)
    return table


def unloadable_model(model_dir, dest):
    """A copy of `model_dir` at `dest` whose every file the checks look for is there and
    whose manifest agrees with them (as if the export itself had gone wrong), but whose
    graph TensorFlow cannot parse. Returns `dest`."""
    import json
    import shutil

    from model.modeldir import build_manifest

    shutil.copytree(model_dir, dest)
    (dest / "saved_model.pb").write_bytes(b"\x08\x01garbage, not a SavedModel proto")
    meta = json.loads((dest / "pairscore.json").read_text())
    meta["manifest"], _ = build_manifest(str(dest))
    (dest / "pairscore.json").write_text(json.dumps(meta))
    return dest
