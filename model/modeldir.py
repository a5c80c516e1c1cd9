"""Open a model directory on any filesystem Beam knows, and check it whole.

    md = ModelDir.open("gs://bucket/models/m")   # contract, metadata and manifest checked
    tok = md.tokenizer()                          # assets/tokenizer.json, configured
    model = md.load_saved_model()                 # from a checked local copy when remote

`pairscore.json` holds a manifest of every other file the export wrote (size, sha256,
md5, crc32c). Before any work `ModelDir.open` compares it with the directory, as cheaply
as each filesystem allows:

- local: the listing, then every file read once and its sha256 compared;
- gs://: sizes from one listing and each object's crc32c from its metadata (Beam's
  `FileSystems.checksum`): no object is downloaded;
- s3://: sizes from one listing; an object whose ETag is its md5 (a single-part upload)
  is checked from that, any other (multipart, SSE-KMS) is read and its sha256 compared;
- anything else Beam knows: every file read and its sha256 compared.

Whatever is read afterwards (the tokenizer, the local copy TensorFlow loads) is hashed as
it is read and compared with the manifest's sha256, so the bytes a job uses are checked
even when the up-front check relied on crc32c or was skipped (`verify=False`).
"""

from __future__ import annotations

import atexit
import base64
import dataclasses
import hashlib
import logging
import os
import shutil
import tempfile
import threading
from typing import Any

from model import tokenization
from model.config import (
    METADATA_FILE,
    TOKENIZER_FILE,
    ModelDirError,
    ModelMetadata,
    check_model_dir,
)
from model.storage import filesystems, join

log = logging.getLogger("pairscore.modeldir")

CHUNK = 1 << 22
# TensorFlow's own summary of the SavedModel; a stable name for the model leaves it out.
_NOT_FINGERPRINTED = ("fingerprint.pb",)
# An unlisted file here changes what TensorFlow or the tokenizer may read: refused. An
# unlisted file elsewhere (a README someone added) is only reported.
_STRICT_DIRS = ("variables/", "assets/")

_COPIES: dict[tuple[str, str], str] = {}
_COPIES_LOCK = threading.Lock()


class _Digest:
    """Size and hashes of one stream, updated together in one pass."""

    def __init__(self, full: bool = True):
        self.size = 0
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False) if full else None
        self.crc32c = _crc32c() if full else None

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self.sha256.update(chunk)
        if self.md5 is not None:
            self.md5.update(chunk)
        if self.crc32c is not None:
            self.crc32c.update(chunk)

    def entry(self) -> dict[str, Any]:
        out: dict[str, Any] = {"size": self.size, "sha256": self.sha256.hexdigest()}
        if self.md5 is not None:
            out["md5"] = base64.b64encode(self.md5.digest()).decode("ascii")
        if self.crc32c is not None:
            out["crc32c"] = base64.b64encode(self.crc32c.digest()).decode("ascii")
        return out


def _crc32c():
    # google-crc32c comes with apache-beam[gcp] (google-cloud-storage needs it); without
    # it the manifest has no crc32c and gs:// directories are checked by reading them.
    try:
        import google_crc32c
    except ImportError:
        return None
    return google_crc32c.Checksum()


def build_manifest(local_dir: str) -> tuple[dict[str, dict[str, Any]], str]:
    """The manifest of a local model directory and its fingerprint, from one read.

    The fingerprint is sha256 over each file's relative path and bytes (all files but
    pairscore.json and fingerprint.pb, in walk order), first 16 hex digits: unchanged
    from the one pairscore has always written.
    """
    fingerprint = hashlib.sha256()
    manifest: dict[str, dict[str, Any]] = {}
    for root, _, files in sorted(os.walk(local_dir)):
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, local_dir)
            if rel == METADATA_FILE:
                continue
            named = rel not in _NOT_FINGERPRINTED
            if named:
                fingerprint.update(rel.encode())
            digest = _Digest()
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    digest.update(chunk)
                    if named:
                        fingerprint.update(chunk)
            manifest[rel.replace(os.sep, "/")] = digest.entry()
    return manifest, fingerprint.hexdigest()[:16]


def _is_remote(uri: str) -> bool:
    return "://" in uri


def _strict(rel: str) -> bool:
    return rel.startswith(_STRICT_DIRS)


def _uncompressed():
    from apache_beam.io.filesystem import CompressionTypes

    # Beam guesses compression from the name by default; model files are bytes as stored.
    return CompressionTypes.UNCOMPRESSED


def _listing(uri: str) -> dict[str, int]:
    """Relative path ("/"-separated) -> size of every file under `uri`."""
    out: dict[str, int] = {}
    if not _is_remote(uri):
        for root, _, files in os.walk(uri):
            for name in files:
                path = os.path.join(root, name)
                out[os.path.relpath(path, uri).replace(os.sep, "/")] = os.path.getsize(path)
        return out
    base = uri.rstrip("/") + "/"
    for meta in filesystems().match([base + "**"])[0].metadata_list:
        rel = meta.path[len(base) :] if meta.path.startswith(base) else None
        if rel is None or rel == "" or rel.endswith("/"):
            continue  # a "folder" placeholder object that some tools create
        if any(part in ("", ".", "..") for part in rel.split("/")):
            raise ModelDirError(f"{meta.path}: a name no model directory holds")
        out[rel] = meta.size_in_bytes
    return out


def _open(path: str):
    if not _is_remote(path):
        return open(path, "rb")
    return filesystems().open(path, compression_type=_uncompressed())


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with _open(path) as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _short(digest: str) -> str:
    return digest[:16] + "..."


def _copies_cleanup() -> None:
    for path in _COPIES.values():
        shutil.rmtree(path, ignore_errors=True)


atexit.register(_copies_cleanup)


@dataclasses.dataclass
class ModelDir:
    """A model directory (local, gs://, s3://, ...): its metadata, checked files and
    the tokenizer and SavedModel read from them. Build one with `ModelDir.open`."""

    uri: str
    metadata: ModelMetadata
    files: dict[str, int]  # relative path -> size, as listed when opened

    @classmethod
    def open(cls, uri: str, verify: bool = True) -> ModelDir:
        """Check the contract and read the metadata; with `verify`, also check every
        file against the manifest. Raises ModelDirError naming the file at fault."""
        metadata = check_model_dir(uri)
        md = cls(uri, metadata, _listing(uri))
        if verify:
            md.verify()
        return md

    def verify(self) -> None:
        """Compare the directory with its manifest: names, sizes, then contents."""
        manifest = self.metadata.manifest
        if manifest is None:
            log.warning(
                "%s: pairscore.json has no manifest (exported before pairscore recorded "
                "one), so its files cannot be checked; export it again to have them "
                "checked",
                self.uri,
            )
            return
        listed = {rel: size for rel, size in self.files.items() if rel != METADATA_FILE}
        # (file, what is wrong with it); names, sizes and contents, cheapest first.
        problems = [
            (rel, "missing (the manifest lists it; an incomplete copy?)")
            for rel in sorted(manifest.keys() - listed.keys())
        ]
        for rel in sorted(listed.keys() - manifest.keys()):
            if _strict(rel):
                problems.append((rel, "not in the manifest (the export did not write it)"))
            else:
                log.warning("%s: not in the manifest; ignored", join(self.uri, rel))
        for rel in sorted(manifest.keys() & listed.keys()):
            want = manifest[rel]["size"]
            if listed[rel] != want:
                problems.append(
                    (rel, f"{listed[rel]} bytes, the manifest says {want} (truncated or replaced)")
                )
        self._refuse(problems)
        for rel in sorted(manifest.keys() & listed.keys()):
            problem = self._content_problem(rel, manifest[rel])
            if problem:
                problems.append((rel, problem))
        self._refuse(problems)

    def _refuse(self, problems: list[tuple[str, str]]) -> None:
        if problems:
            raise ModelDirError(
                f"model directory {self.uri} does not match the manifest in {METADATA_FILE}: "
                + "; ".join(f"{join(self.uri, rel)}: {what}" for rel, what in problems)
            )

    def _content_problem(self, rel: str, entry: dict[str, Any]) -> str | None:
        path = join(self.uri, rel)
        scheme = filesystems().get_scheme(path) if _is_remote(path) else None
        if scheme == "gs" and entry.get("crc32c"):
            got = filesystems().checksum(path)  # the object's crc32c, base64, from its metadata
            if got == entry["crc32c"]:
                return None
            return f"crc32c {got}, the manifest says {entry['crc32c']} (other content)"
        if scheme == "s3" and entry.get("md5"):
            etag = str(filesystems().checksum(path)).strip('"')
            if etag == base64.b64decode(entry["md5"]).hex():
                return None
            # Multipart and SSE-KMS ETags are not the object's md5: read the bytes.
        got = _sha256(path)
        if got == entry["sha256"]:
            return None
        return f"sha256 {_short(got)}, the manifest says {_short(entry['sha256'])} (other content)"

    def _check_read(self, rel: str, size: int, sha256: str) -> None:
        """Bytes just read from `rel` against the manifest (no manifest: nothing to do)."""
        manifest = self.metadata.manifest
        if manifest is None or rel == METADATA_FILE:
            return
        entry = manifest.get(rel)
        path = join(self.uri, rel)
        if entry is None:
            if _strict(rel):
                raise ModelDirError(f"{path}: not in the manifest in {METADATA_FILE}")
            return
        if size != entry["size"] or sha256 != entry["sha256"]:
            raise ModelDirError(
                f"{path}: read {size} bytes with sha256 {_short(sha256)}, the manifest in "
                f"{METADATA_FILE} says {entry['size']} bytes, {_short(entry['sha256'])} "
                "(changed since it was checked?)"
            )

    def read_bytes(self, rel: str) -> bytes:
        """One file of the directory, checked against the manifest."""
        with _open(join(self.uri, rel)) as f:
            data = f.read()
        self._check_read(rel, len(data), hashlib.sha256(data).hexdigest())
        return data

    def tokenizer(self):
        """assets/tokenizer.json, truncating at the model's max_length, never padding."""
        from tokenizers import Tokenizer

        tok = Tokenizer.from_str(self.read_bytes(TOKENIZER_FILE).decode("utf-8"))
        return tokenization.configure(tok, self.metadata.max_length)

    def local_path(self) -> str:
        """The directory itself when local; else a checked copy in a temp dir, made
        once per process (TensorFlow reads gs:// itself but not s3://)."""
        if not _is_remote(self.uri):
            return self.uri
        key = (self.uri, hashlib.sha256(self.metadata.to_json().encode()).hexdigest())
        with _COPIES_LOCK:
            path = _COPIES.get(key)
            if path is None:
                path = self._copy()
                _COPIES[key] = path
        return path

    def _copy(self) -> str:
        target = tempfile.mkdtemp(prefix="pairscore-model-")
        try:
            for rel in sorted(self.files):
                dest = os.path.join(target, *rel.split("/"))
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                digest = _Digest(full=False)
                with _open(join(self.uri, rel)) as src, open(dest, "wb") as out:
                    while chunk := src.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                self._check_read(rel, digest.size, digest.sha256.hexdigest())
            missing = sorted((self.metadata.manifest or {}).keys() - self.files.keys())
            if missing:
                raise ModelDirError(
                    f"model directory {self.uri} is missing {', '.join(missing)} "
                    f"(the manifest in {METADATA_FILE} lists them)"
                )
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        log.info("copied model %s to %s", self.uri, target)
        return target

    def load_saved_model(self):
        """tf.saved_model.load of the (local copy of the) directory, with tensorflow_text's
        ops registered first (score_text needs them)."""
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  (registers the ops score_text uses)

        return tf.saved_model.load(self.local_path())
