import json
import shutil

import pytest

from model.config import (
    FORMAT_VERSION,
    Distance,
    Encoder,
    ModelDirError,
    Pooling,
    check_model_dir,
)


@pytest.mark.parametrize("enum_cls", [Distance, Encoder, Pooling])
def test_unknown_option_names_allowed_values(enum_cls):
    with pytest.raises(ValueError) as err:
        enum_cls.parse("nope")
    for value in enum_cls.values():
        assert repr(value) in str(err.value)


def test_parse_is_case_insensitive():
    assert Distance.parse("L1") is Distance.L1
    assert Encoder.parse("BERT") is Encoder.BERT


def test_check_model_dir_reads_metadata(bilstm_model):
    meta = check_model_dir(bilstm_model)
    assert meta.encoder == "bilstm"
    assert meta.format_version == FORMAT_VERSION
    assert meta.embedding_dim == 8  # 2 x 4 LSTM units
    assert len(meta.fingerprint) == 16


@pytest.mark.parametrize(
    "remove", ["saved_model.pb", "assets/tokenizer.json", "assets/vocab.txt", "pairscore.json"]
)
def test_check_model_dir_names_missing_piece(bilstm_model, tmp_path, remove):
    broken = tmp_path / "m"
    shutil.copytree(bilstm_model, broken)
    (broken / remove).unlink()
    with pytest.raises(ModelDirError, match=remove.replace(".", r"\.")):
        check_model_dir(str(broken))


def test_check_model_dir_rejects_unknown_format_version(bilstm_model, tmp_path):
    broken = tmp_path / "m"
    shutil.copytree(bilstm_model, broken)
    meta = json.loads((broken / "pairscore.json").read_text())
    meta["format_version"] = 99
    (broken / "pairscore.json").write_text(json.dumps(meta))
    with pytest.raises(ModelDirError, match="format_version 99"):
        check_model_dir(str(broken))


def test_check_model_dir_missing_directory(tmp_path):
    with pytest.raises(ModelDirError, match="does not exist"):
        check_model_dir(str(tmp_path / "nowhere"))
