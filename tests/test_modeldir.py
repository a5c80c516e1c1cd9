"""ModelDir: the manifest written at export, and directories that do not match it refused.

Each test copies a real tiny exported model (tests/conftest.py) and breaks the copy the
way a real one breaks: a swapped tokenizer, a truncated shard, a half-finished copy.
"""

import base64
import hashlib
import json
import logging
import os
import pathlib
import shutil

import google_crc32c
import numpy as np
import pytest

from model import tokenization
from model.config import ModelDirError, ModelMetadata
from model.modeldir import ModelDir
from model.predict import Scorer
from tests.conftest import PAIRS

SHARD = "variables/variables.data-00000-of-00001"


@pytest.fixture
def model_copy(bilstm_model, tmp_path) -> pathlib.Path:
    out = tmp_path / "model"
    shutil.copytree(bilstm_model, out)
    return out


def _manifest(model: pathlib.Path) -> dict:
    return json.loads((model / "pairscore.json").read_text())["manifest"]


def _old_fingerprint(model_dir: str) -> str:
    """The fingerprint as model/export.py computed it before the manifest existed."""
    digest = hashlib.sha256()
    for root, _, files in sorted(os.walk(model_dir)):
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, model_dir)
            if rel in ("pairscore.json", "fingerprint.pb"):
                continue
            digest.update(rel.encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:16]


def test_export_writes_a_manifest_of_every_file(bilstm_model):
    model = pathlib.Path(bilstm_model)
    meta = json.loads((model / "pairscore.json").read_text())
    on_disk = {
        p.relative_to(model).as_posix(): p.read_bytes() for p in model.rglob("*") if p.is_file()
    }
    del on_disk["pairscore.json"]
    assert {"saved_model.pb", "fingerprint.pb", "variables/variables.index", SHARD,
            "assets/tokenizer.json", "assets/vocab.txt"} <= set(on_disk)
    assert set(meta["manifest"]) == set(on_disk)
    for rel, data in on_disk.items():
        assert meta["manifest"][rel] == {
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "md5": base64.b64encode(hashlib.md5(data).digest()).decode(),
            "crc32c": base64.b64encode(google_crc32c.Checksum(data).digest()).decode(),
        }, rel
    # Computed in the same pass, and still the same name for the same files.
    assert meta["fingerprint"] == _old_fingerprint(bilstm_model)
    assert meta["format_version"] == 1

    md = ModelDir.open(bilstm_model)
    assert md.metadata == ModelMetadata.from_dict(meta)
    assert md.metadata.manifest == meta["manifest"]
    assert md.local_path() == bilstm_model


def _swap_same_size(path: pathlib.Path) -> None:
    """Give two words of the vocabulary each other's ids: same size, other vocabulary."""
    text = path.read_text()
    a, b = '"cat": 14,', '"dog": 18,'
    assert a in text and b in text
    swapped = text.replace(a, "\0").replace(b, '"cat": 18,').replace("\0", '"dog": 14,')
    assert len(swapped.encode()) == len(text.encode()) and swapped != text
    path.write_text(swapped)


def _other_tokenizer(path: pathlib.Path) -> None:
    tokenization.build_wordlevel(["[PAD]", "[UNK]", "other", "words"]).save(str(path))


@pytest.mark.parametrize(
    "swap, says", [(_swap_same_size, "sha256"), (_other_tokenizer, "bytes, the manifest says")]
)
def test_swapped_tokenizer_is_refused(model_copy, swap, says):
    swap(model_copy / "assets/tokenizer.json")
    with pytest.raises(ModelDirError) as err:
        ModelDir.open(str(model_copy))
    message = str(err.value)
    assert f"{model_copy / 'assets/tokenizer.json'}: " in message and says in message
    assert "vocab.txt" not in message and "variables" not in message


def test_truncated_variables_shard_is_refused(model_copy):
    shard = model_copy / SHARD
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size - 1000)
    with pytest.raises(ModelDirError, match=f"{SHARD}: {size - 1000} bytes, the manifest "
                       f"says {size} \\(truncated or replaced\\)"):
        ModelDir.open(str(model_copy))


def test_flipped_byte_in_a_shard_is_refused(model_copy):
    shard = model_copy / SHARD
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ModelDirError, match=f"{SHARD}: sha256 .* \\(other content\\)"):
        ModelDir.open(str(model_copy))


@pytest.mark.parametrize("missing", ["variables/variables.index", "fingerprint.pb"])
def test_missing_file_is_refused(model_copy, missing):
    (model_copy / missing).unlink()
    with pytest.raises(ModelDirError, match=f"{missing}: missing \\(the manifest lists it"):
        ModelDir.open(str(model_copy))


@pytest.mark.parametrize("extra", ["variables/variables.data-00001-of-00002", "assets/extra.txt"])
def test_unexpected_file_in_the_model_is_refused(model_copy, extra):
    (model_copy / extra).write_bytes(b"not written by the export")
    with pytest.raises(ModelDirError, match=f"{extra}: not in the manifest"):
        ModelDir.open(str(model_copy))


def test_other_extra_file_is_only_reported(model_copy, caplog):
    (model_copy / "README.md").write_text("notes someone added\n")
    with caplog.at_level(logging.WARNING, logger="pairscore.modeldir"):
        ModelDir.open(str(model_copy))
    assert f"{model_copy / 'README.md'}: not in the manifest; ignored" in caplog.text


def test_old_dir_without_manifest_loads_with_a_warning(model_copy, bilstm_model, caplog):
    meta = json.loads((model_copy / "pairscore.json").read_text())
    del meta["manifest"]
    (model_copy / "pairscore.json").write_text(json.dumps(meta))
    # Unchecked, so a swap there goes unnoticed: the warning is the only defence.
    _swap_same_size(model_copy / "assets/tokenizer.json")
    with caplog.at_level(logging.WARNING, logger="pairscore.modeldir"):
        md = ModelDir.open(str(model_copy))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "has no manifest" in warnings[0].getMessage()
    assert "cannot be checked" in warnings[0].getMessage()
    assert md.metadata.manifest is None
    assert md.tokenizer().get_vocab()["dog"] == 14
    scores = Scorer(md).score(["a cat"], ["a dog"])
    assert scores.shape == (1,) and 0.0 <= scores[0] <= 1.0


def test_files_read_after_open_are_checked_too(model_copy):
    md = ModelDir.open(str(model_copy))
    _swap_same_size(model_copy / "assets/tokenizer.json")
    with pytest.raises(ModelDirError, match="assets/tokenizer.json: read .* the manifest"):
        md.tokenizer()


def test_verify_false_skips_the_upfront_check(model_copy):
    with open(model_copy / SHARD, "r+b") as f:
        f.truncate(10)
    md = ModelDir.open(str(model_copy), verify=False)
    assert md.files[SHARD] == 10
    with pytest.raises(ModelDirError):
        md.verify()


def test_malformed_manifest_is_named(model_copy):
    meta = json.loads((model_copy / "pairscore.json").read_text())
    meta["manifest"]["saved_model.pb"] = {"size": "big"}
    (model_copy / "pairscore.json").write_text(json.dumps(meta))
    with pytest.raises(ModelDirError, match="manifest entry 'saved_model.pb' needs"):
        ModelDir.open(str(model_copy))


def _old_scores(model_dir: str, serve, a: list[str], b: list[str], batch_size: int):
    """Scorer as it was before ModelDir: tokenizer file, encode_batch, pad. (The same
    SavedModel signature: loading it again would only cost time.)"""
    from tokenizers import Tokenizer

    meta = json.loads(pathlib.Path(model_dir, "pairscore.json").read_text())
    tok = tokenization.configure(
        Tokenizer.from_file(os.path.join(model_dir, "assets/tokenizer.json")), meta["max_length"]
    )
    ids_a, ids_b = tokenization.encode_batch(tok, a), tokenization.encode_batch(tok, b)
    lengths = np.array([max(len(x), len(y)) for x, y in zip(ids_a, ids_b)])
    order = np.argsort(lengths, kind="stable")
    out = np.empty(len(order), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        out[idx] = serve(
            left_ids=tokenization.pad([ids_a[i] for i in idx]),
            right_ids=tokenization.pad([ids_b[i] for i in idx]),
        )["score"].numpy()
    return out


@pytest.mark.parametrize("model", ["bilstm_model", "bert_model"])
def test_scorer_gives_the_same_scores_as_before(model, request):
    model_dir = request.getfixturevalue(model)
    # Long texts too: encode_texts reads only the head of a text past max_length.
    a = [x for _, x, _ in PAIRS] + ["word " * 5000 + "end", "Ünïcödé  tabs\tand\nnewlines"]
    b = [y for _, _, y in PAIRS] + ["short", "x" * 3000]
    scorer = Scorer(model_dir)
    assert scorer.model_dir == model_dir
    serve = scorer.model.signatures["serving_default"]
    for batch_size in (3, 64):
        got = scorer.score(a, b, batch_size=batch_size)
        want = _old_scores(model_dir, serve, a, b, batch_size)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert len(set(np.round(got, 6))) > 1, "scores too alike to tell a mix-up"
    assert scorer.score([], []).shape == (0,)
