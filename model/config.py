"""Names, options and the model-directory contract shared by training and scoring.

A model directory holds everything a scoring job needs::

    MODEL_DIR/saved_model.pb, variables/   TensorFlow SavedModel (four signatures)
    MODEL_DIR/assets/tokenizer.json        Hugging Face `tokenizers` file
    MODEL_DIR/assets/vocab.txt             the same vocabulary, for tf-text in-graph
    MODEL_DIR/pairscore.json               metadata (see `ModelMetadata`), with a
                                           manifest of every other file

`score_embeddings` is the export's `DistanceHead` (`distance`, one Dense unit); where its
variables are `head/classifier/{kernel,bias}` of the shapes the distance implies, the job
computes it in numpy from them (`model.head`), without loading the SavedModel.

`check_model_dir` is the one place that decides whether a directory honours it;
`model.modeldir.ModelDir` opens one (any filesystem Beam knows) and checks its files
against the manifest.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
from typing import Any

from model.storage import filesystems, join

FORMAT_VERSION = 1
METADATA_FILE = "pairscore.json"
TOKENIZER_FILE = "assets/tokenizer.json"
VOCAB_FILE = "assets/vocab.txt"
REQUIRED_FILES = ("saved_model.pb", TOKENIZER_FILE, VOCAB_FILE, METADATA_FILE)
SIGNATURES = ("serving_default", "encode", "score_embeddings", "score_text")
# A cross-encoder reads both texts in one sequence: no embedding of one text to keep.
CROSS_SIGNATURES = ("serving_default", "score_text")
PAD_ID = 0


class _Choice(enum.StrEnum):
    """A string option whose bad value raises a ValueError naming the allowed ones."""

    @classmethod
    def parse(cls, value: str | _Choice) -> _Choice:
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in cls)
            raise ValueError(
                f"unknown {cls.__name__.lower()} {value!r}; allowed: {allowed}"
            ) from None

    @classmethod
    def values(cls) -> list[str]:
        return [m.value for m in cls]


class Architecture(_Choice):
    """siamese: one shared tower per text, a head on the two vectors (every signature);
    cross: both texts in one `[CLS] a [SEP] b [SEP]` sequence (serving_default and
    score_text only: there is no per-text embedding)."""

    SIAMESE = "siamese"
    CROSS = "cross"


class Encoder(_Choice):
    BILSTM = "bilstm"
    BERT = "bert"


class Pooling(_Choice):
    CLS = "cls"
    MEAN = "mean"
    POOLED = "pooled"


class Distance(_Choice):
    L1 = "l1"
    CONCAT = "concat"
    COSINE = "cosine"
    MANHATTAN = "manhattan"
    SBERT = "sbert"


class ModelDirError(ValueError):
    """The model directory does not honour the contract."""


@dataclasses.dataclass
class ModelMetadata:
    """What `pairscore.json` says about a model directory."""

    encoder: str
    distance: str
    max_length: int
    threshold: float
    embedding_dim: int
    tokenizer: dict[str, Any]
    pooling: str | None = None
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    training: dict[str, Any] = dataclasses.field(default_factory=dict)
    fingerprint: str = ""
    # Every file of the directory but pairscore.json: relative path (always "/") ->
    # {"size", "sha256", "md5", "crc32c"} (md5 and crc32c base64, as GCS reports them).
    # None in directories exported before pairscore recorded it.
    manifest: dict[str, dict[str, Any]] | None = None
    # How `pairscore threshold` chose `threshold` (model.threshold.ThresholdChoice), if it did.
    threshold_choice: dict[str, Any] | None = None
    # siamese (the default, and every directory written before cross-encoders) or cross.
    architecture: str = "siamese"
    # A cross model's re-scoring band for one first (Siamese) model, chosen on validation
    # pairs by `pairscore rerank-band` (model.rerank.RerankBand), if it was.
    rerank: dict[str, Any] | None = None
    created_at: str = dataclasses.field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC).isoformat(
            timespec="seconds"
        )
    )
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = METADATA_FILE) -> ModelMetadata:
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ModelDirError(
                f"{source}: unknown format_version {version!r}; "
                f"this pairscore reads format_version {FORMAT_VERSION}"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in data
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ModelDirError(f"{source}: missing keys {missing}")
        meta = cls(**{k: v for k, v in data.items() if k in names})
        if not 0.0 <= float(meta.threshold) <= 1.0:
            raise ModelDirError(f"{source}: threshold {meta.threshold} is outside [0, 1]")
        _check_manifest(meta.manifest, source)
        try:
            Architecture.parse(meta.architecture)
        except ValueError as e:
            raise ModelDirError(f"{source}: {e}") from None
        return meta

    @property
    def is_cross(self) -> bool:
        return Architecture.parse(self.architecture) == Architecture.CROSS


def _check_manifest(manifest: Any, source: str) -> None:
    if manifest is None:
        return
    if not isinstance(manifest, dict):
        raise ModelDirError(f"{source}: manifest is a {type(manifest).__name__}, not an object")
    for rel, entry in manifest.items():
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("size"), int)
            and isinstance(entry.get("sha256"), str)
        ):
            raise ModelDirError(
                f"{source}: manifest entry {rel!r} needs an integer size and a sha256"
            )


def read_metadata(model_dir: str) -> ModelMetadata:
    """Read and check `pairscore.json` from a local or remote model directory."""
    path = join(model_dir, METADATA_FILE)
    with filesystems().open(path) as f:
        raw = f.read()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ModelDirError(f"{path}: not valid JSON ({e})") from None
    return ModelMetadata.from_dict(data, source=path)


def check_model_dir(model_dir: str) -> ModelMetadata:
    """Fail fast, naming what is missing, when `model_dir` breaks the contract."""
    fs = filesystems()
    prefix = model_dir.rstrip("/") + "/"
    # On gs:// and s3:// a directory is only a key prefix: no object is named after it.
    if not (
        fs.exists(prefix) or fs.exists(model_dir) or fs.match([prefix + "*"])[0].metadata_list
    ):
        raise ModelDirError(f"model directory {model_dir} does not exist")
    missing = [name for name in REQUIRED_FILES if not fs.exists(join(model_dir, name))]
    if not fs.match([join(model_dir, "variables", "*")])[0].metadata_list:
        missing.append("variables/")
    if missing:
        raise ModelDirError(
            f"model directory {model_dir} is missing {', '.join(missing)} "
            f"(a pairscore model dir holds {', '.join(REQUIRED_FILES)} and variables/)"
        )
    return read_metadata(model_dir)
