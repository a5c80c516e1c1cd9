"""The embedding store: embeddings of texts seen on earlier runs, per model fingerprint,
shared across runs so that a night encodes only the texts it has not seen before.

    pairscore score ... --embedding-store gs://bucket/embeddings
    pairscore store info gs://bucket/embeddings
    pairscore store compact gs://bucket/embeddings [--model-fingerprint F]

Layout (format version 2; docs/store.md documents it for other tools)::

    URI/<namespace>/_FORMAT.json            {"format_version": 2, "dim": D, "namespace": ...}
    URI/<namespace>/gen-<id>/part-*.parquet key: fixed_size_binary(16),
                                            embedding: fixed_size_list<float32>[D]
    URI/<namespace>/gen-<id>/_COMMITTED.json written last: the generation's files
                                            (name, rows, bytes), entries, and the
                                            generations it supersedes (compaction)

A namespace is `<model fingerprint>-<hash of max_length, tokenizer settings, numerics>`:
everything that shapes an embedding. Format 1 (`URI/<model fingerprint>/`) stays readable.

The key is the first 16 bytes of SHA-256 of the text's exact UTF-8 bytes. Generations are
append-only; a generation without `_COMMITTED.json` (a run in progress, or one that died)
is invisible to readers. A reader takes the committed generations that no other committed
generation supersedes, and reads exactly the files their commit lists, checking each
file's size, Parquet page checksums and schema: a file that fails is skipped with a
warning naming it, and its texts are simply encoded again.

Plain functions here (tested without Beam in tests/test_store.py); the Beam stages that
use them (`LookupStore`, `WriteStore`) are in `pipeline.stages.store`.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import math
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from model.storage import join
from pipeline.io import JobError

log = logging.getLogger("pairscore.store")

FORMAT_VERSION = 2  # what new namespaces are written under
READ_VERSIONS = (1, 2)  # what this pairscore reads (and compacts, keeping their version)
# The numeric class of every embedding a store holds: float32 computed exactly (runs with a
# store refuse --precision bfloat16 and turn TensorFlow's TF32 matmuls off).
NUMERICS = "float32"
FORMAT_FILE = "_FORMAT.json"
COMMIT_FILE = "_COMMITTED.json"
GENERATION_PREFIX = "gen-"
KEY_ALGORITHM = "sha256-128"  # the first 16 bytes of SHA-256 of the text's UTF-8 bytes
KEY_BYTES = 16
# Rows per Parquet file the job and compaction write: about 24 MB of MiniLM embeddings.
ROWS_PER_FILE = 16_384
# Store entries per keyed-join bucket: one bucket's entries (about 0.3 GB at D = 384) are
# held by one worker.
ENTRIES_PER_BUCKET = 200_000
# An uncommitted generation older than this is a dead run's, and `compact` removes it; a
# younger one may be a run still writing.
STALE_GENERATION_S = 86400.0
LOOKUPS = ("side-input", "keyed-join")


class StoreError(JobError):
    """An embedding store the job cannot use: not writable, another format version."""


# --- keys ---------------------------------------------------------------------------------


def text_keys(texts) -> np.ndarray:
    """The store key of each text: SHA-256 of its exact UTF-8 bytes, first 16 bytes, as
    numpy `S16` (sortable, compared bytewise). Texts must be non-null."""
    arr = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    raw = arr.cast(pa.large_binary()).to_pylist()
    buf = b"".join(hashlib.sha256(b).digest()[:KEY_BYTES] for b in raw)
    return np.frombuffer(buf, dtype=f"S{KEY_BYTES}").copy() if raw else np.zeros(0, "S16")


def key_buckets(keys: np.ndarray, buckets: int) -> np.ndarray:
    """Bucket of each key: its first 8 bytes as a big-endian uint64, modulo `buckets`."""
    if buckets <= 1 or not len(keys):
        return np.zeros(len(keys), np.int64)
    high = np.frombuffer(keys.tobytes(), dtype=">u8")[0::2]
    return (high % np.uint64(buckets)).astype(np.int64)


def split_by_bucket(keys: np.ndarray, buckets: int) -> list[tuple[int, np.ndarray]]:
    """(bucket, positions of the keys in it) for each non-empty bucket."""
    bucket = key_buckets(keys, buckets)
    order = np.argsort(bucket, kind="stable")
    bounds = np.searchsorted(bucket[order], np.arange(buckets + 1))
    return [(b, order[bounds[b] : bounds[b + 1]]) for b in range(max(buckets, 1))
            if bounds[b + 1] > bounds[b]]


# --- layout ---------------------------------------------------------------------------------


def root(uri: str, namespace: str) -> str:
    """URI/<namespace>: one model's part of the store, for one set of settings (format 2),
    or URI/<fingerprint> (format 1)."""
    return join(uri, namespace)


def namespace_settings(fingerprint: str, meta: dict) -> dict:
    """Everything that shapes an embedding: the model's files (its fingerprint), the
    settings pairscore.json holds outside them (max_length, the tokenizer's), and the
    numeric class (`NUMERICS`)."""
    return {"model_fingerprint": fingerprint, "max_length": int(meta.get("max_length") or 0),
            "tokenizer": dict(sorted((meta.get("tokenizer") or {}).items())),
            "numerics": NUMERICS}


def namespace_of(settings: dict) -> str:
    """<fingerprint>-<the first 16 hex digits of SHA-256 of the settings' canonical JSON>."""
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    return f"{settings['model_fingerprint']}-{digest}"


def exported_differences(model_dir: str, meta: dict) -> list[str]:
    """How the model's pairscore.json settings differ from those its own (fingerprinted)
    assets/tokenizer.json was exported with: max_length (its truncation) and the tokenizer
    settings. Empty: the settings are the export's, the ones a format-1 store of this
    fingerprint was written with unless pairscore.json was edited since."""
    from tokenizers import Tokenizer

    from model import tokenization
    from model.config import TOKENIZER_FILE
    from model.modeldir import ModelDir

    try:
        text = ModelDir.open(model_dir, verify=False).read_bytes(TOKENIZER_FILE).decode()
        exported = (json.loads(text).get("truncation") or {}).get("max_length")
        info = tokenization.tokenizer_info(Tokenizer.from_str(text))
    except Exception as e:  # noqa: BLE001
        return [f"cannot read {TOKENIZER_FILE} ({type(e).__name__}: {e})"]
    out = []
    if exported != meta.get("max_length"):
        out.append(f"max_length {meta.get('max_length')}, exported with {exported}")
    for k, v in info.items():
        if (meta.get("tokenizer") or {}).get(k) != v:
            out.append(f"tokenizer {k} {(meta.get('tokenizer') or {}).get(k)!r}, exported "
                       f"with {v!r}")
    return out


def generation_name(run_id: str) -> str:
    return f"{GENERATION_PREFIX}{run_id}"


def schema(dim: int, fingerprint: str = "", version: int = FORMAT_VERSION) -> pa.Schema:
    return pa.schema(
        [pa.field("key", pa.binary(KEY_BYTES), nullable=False),
         pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False)],
        metadata={"pairscore.store.format_version": str(version),
                  "pairscore.store.key": KEY_ALGORITHM,
                  "pairscore.model_fingerprint": fingerprint},
    )


@dataclasses.dataclass
class Generation:
    """One committed generation, as its commit marker lists it."""

    name: str
    files: list[dict]  # {"path", "rows", "bytes"}, paths absolute
    entries: int
    supersedes: list[str] = dataclasses.field(default_factory=list)
    committed_at: str = ""

    @property
    def bytes(self) -> int:
        return sum(f["bytes"] for f in self.files)


@dataclasses.dataclass
class Listing:
    """What one fingerprint's directory holds."""

    root: str
    format: dict | None
    live: list[Generation]  # committed, not superseded: what readers read
    superseded: list[Generation]  # committed, superseded by a compaction, not yet deleted
    uncommitted: dict[str, float]  # generation dir -> age in seconds of its newest file

    @property
    def entries(self) -> int:
        return sum(g.entries for g in self.live)

    @property
    def bytes(self) -> int:
        return sum(g.bytes for g in self.live)


def _match(pattern: str) -> list:
    try:
        return FileSystems.match([pattern])[0].metadata_list
    except Exception:  # noqa: BLE001  (nothing there yet)
        return []


def _read_json(path: str) -> dict:
    with FileSystems.open(path, compression_type="uncompressed") as f:
        return json.loads(f.read())


def _write_bytes(path: str, data: bytes) -> None:
    with FileSystems.create(path) as f:
        f.write(data)


def _write_json(path: str, record: dict) -> None:
    _write_bytes(path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())


def _check_version(record: dict, where: str) -> None:
    version = record.get("format_version")
    if version not in READ_VERSIONS:
        raise StoreError(
            f"embedding store {where} was written under format version {version}; this "
            f"pairscore reads format versions {_versions()} only: use another "
            "--embedding-store, or the pairscore that wrote it")


def _versions() -> str:
    return " and ".join(map(str, READ_VERSIONS))


def read_format(store_root: str) -> dict | None:
    """The fingerprint directory's `_FORMAT.json`, checked; None if there is none yet."""
    path = join(store_root, FORMAT_FILE)
    if not FileSystems.exists(path):
        return None
    try:
        record = _read_json(path)
    except Exception as e:  # noqa: BLE001
        raise StoreError(f"embedding store {path}: unreadable ({type(e).__name__}: {e})") from None
    _check_version(record, path)
    return record


def list_generations(store_root: str, now: float | None = None,
                     strict: bool = False) -> Listing:
    """The committed generations readers use (those no committed compaction supersedes),
    the superseded ones not yet deleted, and the uncommitted generation directories.
    `strict` (compaction): a commit marker that cannot be read raises StoreError instead
    of being skipped, for its generation would otherwise look uncommitted."""
    fmt = read_format(store_root)
    now = time.time() if now is None else now
    committed, dirs = [], {}
    for m in _match(join(store_root, f"{GENERATION_PREFIX}*", "*")):
        gen_dir = m.path.rstrip("/").rsplit("/", 1)[0]
        name = gen_dir.rsplit("/", 1)[-1]
        age = now - (m.last_updated_in_seconds or now)
        dirs[gen_dir] = min(dirs.get(gen_dir, age), age)
        if m.path.endswith("/" + COMMIT_FILE):
            try:
                record = _read_json(m.path)
            except Exception as e:  # noqa: BLE001  (deleted by a compaction meanwhile)
                if strict:
                    raise StoreError(
                        f"embedding store: cannot read {m.path} ({type(e).__name__}: {e}); "
                        "compaction stopped, nothing was deleted") from None
                log.warning("embedding store: cannot read %s (%s); generation %s skipped",
                            m.path, e, name)
                continue
            _check_version(record, m.path)
            committed.append(Generation(
                name=name,
                files=[{"path": join(gen_dir, f["name"]), "rows": int(f["rows"]),
                        "bytes": int(f["bytes"])} for f in record.get("files", [])],
                entries=int(record.get("entries", 0)),
                supersedes=list(record.get("supersedes", [])),
                committed_at=record.get("committed_at", ""),
            ))
    names = {g.name for g in committed}
    gone = {s for g in committed for s in g.supersedes}
    live = sorted((g for g in committed if g.name not in gone), key=lambda g: g.name)
    superseded = sorted((g for g in committed if g.name in gone), key=lambda g: g.name)
    uncommitted = {d: a for d, a in dirs.items() if d.rsplit("/", 1)[-1] not in names}
    return Listing(store_root, fmt, live, superseded, uncommitted)


# --- files ------------------------------------------------------------------------------------


def table_of(keys: np.ndarray, embeddings: np.ndarray, fingerprint: str = "",
             version: int = FORMAT_VERSION) -> pa.Table:
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, dim = embeddings.shape
    key_arr = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(KEY_BYTES), n, [None, pa.py_buffer(np.ascontiguousarray(keys).tobytes())])
    emb_arr = pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1)), dim)
    return pa.Table.from_arrays([key_arr, emb_arr], schema=schema(dim, fingerprint, version))


def write_file(path: str, keys: np.ndarray, embeddings: np.ndarray,
               fingerprint: str = "", version: int = FORMAT_VERSION) -> dict:
    """One store Parquet file (uncompressed: float32 embeddings do not compress; page
    checksums on, so that readers detect corrupt pages). Returns {"path", "rows", "bytes"}."""
    sink = pa.BufferOutputStream()
    pq.write_table(table_of(keys, embeddings, fingerprint, version), sink, compression="none",
                   use_dictionary=False, write_statistics=False, write_page_checksum=True,
                   row_group_size=ROWS_PER_FILE)
    data = sink.getvalue().to_pybytes()
    _write_bytes(path, data)
    return {"path": path, "rows": len(keys), "bytes": len(data)}


def _fetch(path: str) -> bytes:
    """A store file's bytes. Storage errors (missing, cannot open or read) raise OSError."""
    with FileSystems.open(path, compression_type="uncompressed") as f:
        return f.read()


def _parse(record: dict, data: bytes, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(keys, embeddings) of a store file's bytes, checked against its commit record (size,
    rows), its Parquet page checksums and the schema; raises (ValueError, pyarrow's
    errors) when the bytes are proven wrong."""
    if "bytes" in record and len(data) != record["bytes"]:
        raise ValueError(f"{len(data)} bytes, its commit lists {record['bytes']}")
    table = pq.read_table(pa.BufferReader(data), page_checksum_verification=True)
    key_type, emb_type = pa.binary(KEY_BYTES), pa.list_(pa.float32(), dim)
    if table.schema.names != ["key", "embedding"] or table.schema.field(
            "key").type != key_type or table.schema.field("embedding").type != emb_type:
        raise ValueError(f"schema {table.schema.remove_metadata()}, expected key: "
                         f"{key_type}, embedding: {emb_type}")
    if "rows" in record and table.num_rows != record["rows"]:
        raise ValueError(f"{table.num_rows} rows, its commit lists {record['rows']}")
    keys_col = table["key"].combine_chunks()
    emb_col = table["embedding"].combine_chunks()
    if keys_col.null_count or emb_col.null_count:
        raise ValueError("null keys or embeddings")
    n = table.num_rows
    keys = np.frombuffer(keys_col.buffers()[1], dtype=f"S{KEY_BYTES}",
                         count=n, offset=keys_col.offset * KEY_BYTES).copy()
    emb = emb_col.flatten().to_numpy(zero_copy_only=False).reshape(n, dim)
    return keys, np.asarray(emb, np.float32)


def read_file(record: dict, dim: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(keys S16[n], embeddings float32[n, dim]) of one listed store file, or None, with a
    warning naming the file, when it is missing, truncated, corrupt or of another shape."""
    path = record["path"]
    try:
        return _parse(record, _fetch(path), dim)
    except Exception as e:  # noqa: BLE001  (never a failed night for a bad store file)
        log.warning("embedding store: skipping %s (%s: %s); its texts are encoded again",
                    path, type(e).__name__, e)
        return None


def commit_generation(uri: str, namespace: str, name: str, files: list[dict], dim: int,
                      supersedes: list[str] = (), fingerprint: str | None = None,
                      settings: dict | None = None) -> dict:
    """Make generation `name` of URI/<namespace> visible: write `_FORMAT.json` if the
    directory has none (with the namespace's `settings`), then the generation's commit
    marker, listing `files` ({"path", "rows", "bytes"}). Idempotent (a retried final step
    writes the same marker again)."""
    store_root = root(uri, namespace)
    fmt = read_format(store_root)
    if fmt is None:
        fmt = {"format": "pairscore-embedding-store", "format_version": FORMAT_VERSION,
               "key": KEY_ALGORITHM, "dim": dim,
               "model_fingerprint": fingerprint or namespace, "namespace": settings}
        _write_json(join(store_root, FORMAT_FILE), fmt)
    gen_dir = join(store_root, name)
    record = {
        # The namespace's own version: a format-1 store compacted stays format 1.
        "format_version": int(fmt["format_version"]),
        "generation": name,
        "files": [{"name": f["path"].rstrip("/").rsplit("/", 1)[-1], "rows": int(f["rows"]),
                   "bytes": int(f["bytes"])} for f in sorted(files, key=lambda f: f["path"])],
        "entries": sum(int(f["rows"]) for f in files),
        "supersedes": sorted(supersedes),
        "committed_at": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%dT%H:%M:%SZ}",
    }
    for f in files:
        if f["path"].rstrip("/").rsplit("/", 1)[0] != gen_dir:
            raise ValueError(f"{f['path']} is not in generation {gen_dir}")
    _write_json(join(gen_dir, COMMIT_FILE), record)
    return record


def files_gone(files: list[dict]) -> list[str]:
    """Of a generation's files ({"path", "bytes"}), each that is gone or of another size
    than written, saying which (a gated run's, before `publish --accept` commits them)."""
    out = []
    for f in files:
        found = _match(f["path"])
        if not found:
            out.append(f"{f['path']} is gone")
        elif "bytes" in f and found[0].size_in_bytes != int(f["bytes"]):
            out.append(f"{f['path']} holds {found[0].size_in_bytes} bytes, "
                       f"{f['bytes']} were written")
    return out


def check_writable(uri: str) -> None:
    """Write and delete a probe object under the store, or raise StoreError."""
    probe = join(uri, f".pairscore-write-check-{uuid.uuid4().hex}")
    try:
        _write_bytes(probe, b"ok")
        FileSystems.delete([probe])
    except Exception as e:  # noqa: BLE001
        raise StoreError(f"--embedding-store {uri} is not writable ({type(e).__name__}: "
                         f"{e})") from None


# --- the index a run looks texts up in -----------------------------------------------------


@dataclasses.dataclass
class StoreIndex:
    """Store entries sorted by key, for lookups (one bucket's, or all of a small store)."""

    keys: np.ndarray  # S16[n], sorted, distinct
    embeddings: np.ndarray  # float32[n, D]

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def build(cls, chunks: list[tuple[np.ndarray, np.ndarray]], dim: int) -> StoreIndex:
        if not chunks:
            return cls(np.zeros(0, f"S{KEY_BYTES}"), np.zeros((0, dim), np.float32))
        keys = np.concatenate([k for k, _ in chunks])
        embs = np.concatenate([e for _, e in chunks])
        # Two generations may hold the same text (runs that overlapped): keep one.
        keys, first = np.unique(keys, return_index=True)
        return cls(keys, embs[first])

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Position of each key in the index, -1 where it is not there."""
        if not len(self.keys):
            return np.full(len(keys), -1, np.int64)
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return np.where(self.keys[pos] == keys, pos, -1)


# --- what a run reads and writes, resolved at launch -------------------------------------------


@dataclasses.dataclass
class StoreSpec:
    """The store as a run uses it, resolved at launch: the generations it reads (pinned,
    like the input files), where it writes its own, and how it looks texts up."""

    uri: str
    fingerprint: str
    dim: int
    generations: list[Generation]
    write_generation: str
    lookup: str = "side-input"  # "side-input" | "keyed-join"
    buckets: int = 1  # keyed join: buckets of keys
    namespace: str = ""  # URI/<namespace>, where the run writes; "" (older): the fingerprint
    settings: dict | None = None  # `namespace_settings`
    format1_read: str | None = None  # the format-1 URI/<fingerprint> also read, if any

    @property
    def root(self) -> str:
        return root(self.uri, self.namespace or self.fingerprint)

    @property
    def write_dir(self) -> str:
        return join(self.root, self.write_generation)

    @property
    def entries(self) -> int:
        return sum(g.entries for g in self.generations)

    @property
    def files(self) -> list[dict]:
        return [f for g in self.generations for f in g.files]


def entry_bytes(dim: int) -> int:
    return 4 * dim + KEY_BYTES


def open_for_run(uri: str, fingerprint: str, dim: int, run_id: str,
                 side_input_max_bytes: int, dry_run: bool = False, meta: dict | None = None,
                 model_dir: str | None = None) -> StoreSpec:
    """The launch-time checks and plan: the store is writable, of a version this reads,
    and its namespace's committed generations pinned (`namespace_settings` of the model's
    `meta`); side-input lookup while their entries fit in `side_input_max_bytes`, else a
    keyed join over `ENTRIES_PER_BUCKET`-entry buckets.

    A format-1 URI/<fingerprint> (written before namespaces) is read too, as the same
    namespace's, when the model's pairscore.json settings are those its files were exported
    with (`exported_differences`); else it is not read, with a warning saying why."""
    if not fingerprint or fingerprint == "dry-run":
        if not dry_run:
            raise StoreError(f"--embedding-store {uri}: the model has no fingerprint, so "
                             "its embeddings cannot be told from another model's")
        fingerprint = fingerprint or "dry-run"
    if not dim and not dry_run:
        raise StoreError(f"--embedding-store {uri}: the model's pairscore.json has no "
                         "embedding_dim")
    settings = namespace_settings(fingerprint, meta or {})
    namespace = namespace_of(settings)
    generations, format1 = [], None
    if not dry_run:
        check_writable(uri)
        listing = list_generations(root(uri, namespace))
        if listing.format is not None and int(listing.format.get("dim", dim)) != dim:
            raise StoreError(f"embedding store {listing.root} holds {listing.format['dim']}-"
                             f"wide embeddings; the model's are {dim}-wide")
        generations = listing.live
        legacy = root(uri, fingerprint)
        old = read_format(legacy) if FileSystems.exists(join(legacy, FORMAT_FILE)) else None
        if old is not None and int(old.get("format_version", 0)) == 1:
            differ = exported_differences(model_dir, meta or {}) if model_dir else [
                "no model directory to check"]
            if differ:
                log.warning(
                    "embedding store: format-1 namespace %s (written before the store was "
                    "keyed by max_length, the tokenizer settings and the numerics) not read: "
                    "this model's pairscore.json differs from its export (%s), so its "
                    "embeddings may not be this model's; texts are encoded again into %s",
                    legacy, "; ".join(differ), root(uri, namespace))
            elif int(old.get("dim", dim)) == dim:
                extra = list_generations(legacy).live
                generations = generations + extra
                format1 = legacy
                log.info(
                    "embedding store: reading format-1 namespace %s too (%d generations; its "
                    "settings were not recorded: this model's pairscore.json is as exported, "
                    "as runs wrote it unless it was edited); new embeddings go to %s",
                    legacy, len(extra), root(uri, namespace))
    spec = StoreSpec(uri, fingerprint, dim, generations, generation_name(run_id),
                     namespace=namespace, settings=settings, format1_read=format1)
    if spec.entries * entry_bytes(dim) > side_input_max_bytes:
        spec.lookup = "keyed-join"
        spec.buckets = max(1, math.ceil(spec.entries / ENTRIES_PER_BUCKET))
    log.info("embedding store %s: %d entries in %d generations; lookup %s (%d buckets)",
             spec.root, spec.entries, len(generations), spec.lookup, spec.buckets)
    return spec


def summary_field(spec: StoreSpec | None, files: list[dict], stats: dict | None) -> dict | None:
    """summary.json's `store`: what the run read, found, encoded and wrote."""
    if spec is None:
        return None
    stats = stats or {}
    written = sum(int(f["rows"]) for f in files)
    return {
        "uri": spec.uri,
        "fingerprint": spec.fingerprint,
        "namespace": spec.namespace or spec.fingerprint,
        "numerics": NUMERICS,
        "format1_read": spec.format1_read,
        "format_version": FORMAT_VERSION,
        "key": KEY_ALGORITHM,
        "lookup": spec.lookup,
        "generations_read": len(spec.generations),
        "entries_read": spec.entries,
        "files_skipped": int(stats.get("files_skipped", 0)),
        "texts_found": int(stats.get("texts_found", 0)),
        "texts_encoded": int(stats.get("texts_encoded", 0)),
        "generation_written": spec.write_generation if files else None,
        "entries_written": written,
    }


def commit_run(spec: StoreSpec, files: list[dict]) -> dict | None:
    """The final step's part: commit the run's generation (nothing when it wrote none)."""
    if not files:
        return None
    record = commit_generation(spec.uri, spec.namespace or spec.fingerprint,
                               spec.write_generation, files, spec.dim,
                               fingerprint=spec.fingerprint, settings=spec.settings)
    log.info("embedding store: committed %s (%d entries)", spec.write_dir, record["entries"])
    return record


# --- compact, info -----------------------------------------------------------------------------


def fingerprints(uri: str) -> list[str]:
    """The fingerprint directories of a store (those with a format file or a generation)."""
    found = set()
    for m in _match(join(uri, "*", "*")):
        parts = m.path.rstrip("/").split("/")
        if parts[-1] == FORMAT_FILE or parts[-1].startswith(GENERATION_PREFIX):
            found.add(parts[-2])
    for m in _match(join(uri, "*", f"{GENERATION_PREFIX}*", "*")):
        found.add(m.path.rstrip("/").split("/")[-3])
    return sorted(found)


def _delete(paths: list[str]) -> None:
    for path in paths:
        try:
            FileSystems.delete([path])
        except Exception:  # noqa: BLE001  (already gone: another compaction, a retry)
            if FileSystems.exists(path):
                raise


def _delete_generation(gen_dir: str) -> None:
    # The commit marker first: a generation half deleted is uncommitted, never read.
    files = [m.path for m in _match(join(gen_dir, "*"))]
    commit = [p for p in files if p.endswith("/" + COMMIT_FILE)]
    _delete(commit)
    _delete([p for p in files if p not in commit])
    if "://" not in gen_dir:
        _delete([gen_dir])


def duplicate_mask(keys: np.ndarray, per_bucket: int = 1 << 16) -> np.ndarray:
    """True at every key equal to an earlier one (the first of equal keys is kept).

    Linear time: the keys are split by bucket (a radix sort of small bucket ids), then each
    bucket of about `per_bucket` keys, small enough for the CPU's caches, is sorted on its
    own; sorting all keys at once grows as n log n and, past the caches, much worse."""
    n = len(keys)
    dup = np.zeros(n, bool)
    if n < 2:
        return dup
    halves = np.ascontiguousarray(keys).view(np.uint64).reshape(-1, 2)
    hi, lo = halves[:, 0], halves[:, 1]
    buckets = max(1, -(-n // per_bucket))
    bucket = (hi % np.uint64(buckets)).astype(np.uint16 if buckets <= 65535 else np.int64)
    order = np.argsort(bucket, kind="stable")
    bounds = np.searchsorted(bucket[order], np.arange(buckets + 1))
    for b in range(buckets):
        idx = order[bounds[b]:bounds[b + 1]]  # ascending: stable
        h, low = hi[idx], lo[idx]
        o = np.lexsort((low, h))  # stable: equal keys stay in their first-seen order
        same = (h[o[1:]] == h[o[:-1]]) & (low[o[1:]] == low[o[:-1]])
        dup[idx[o[1:][same]]] = True
    return dup


SET_ASIDE_DIR = "_set_aside"


def _read_for_compaction(rec: dict, dim: int) -> tuple[np.ndarray, np.ndarray] | str:
    """The file's (keys, embeddings), or why its bytes are proven corrupt against its
    commit (size, rows, page checksum, schema). A file that cannot be read at all (gone,
    cannot be opened or read: any OSError) raises StoreError naming it: compaction then
    stops, deleting nothing (a transient storage error must never cost entries)."""
    try:
        data = _fetch(rec["path"])
    except OSError as e:
        raise StoreError(
            f"embedding store: cannot read {rec['path']} ({type(e).__name__}: {e}), a file "
            "a committed generation lists; compaction stopped, nothing was deleted (run it "
            "again once the file can be read; if it is truly lost, delete its generation's "
            f"{COMMIT_FILE} first)") from None
    try:
        return _parse(rec, data, dim)
    except Exception as e:  # noqa: BLE001  (the bytes are wrong: set aside, never dropped)
        return f"{type(e).__name__}: {e}"


def _set_aside(store_root: str, rec: dict, gen: str, reason: str) -> dict:
    """Copy a corrupt file to URI/<namespace>/_set_aside/<generation>/<name>, with a
    <name>.json saying why, before its generation is deleted; `info` lists them."""
    name = rec["path"].rstrip("/").rsplit("/", 1)[-1]
    where = join(store_root, SET_ASIDE_DIR, gen)
    copy = join(where, name)
    if "://" not in where and not FileSystems.exists(where):
        FileSystems.mkdirs(where)
    FileSystems.copy([rec["path"]], [copy])
    entry = {"file": rec["path"], "copy": copy, "generation": gen, "reason": reason,
             "rows": rec.get("rows"), "bytes": rec.get("bytes"),
             "at": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%dT%H:%M:%SZ}"}
    _write_json(copy + ".json", entry)
    log.warning("embedding store: %s is corrupt (%s): set aside as %s, its entries are "
                "not in the merged generation", rec["path"], reason, copy)
    return entry


def set_aside_files(store_root: str) -> list[dict]:
    """The files compaction set aside as corrupt (`_set_aside/*/*.json`), oldest first."""
    out = []
    for m in _match(join(store_root, SET_ASIDE_DIR, "*", "*.json")):
        try:
            out.append(_read_json(m.path))
        except Exception as e:  # noqa: BLE001
            out.append({"file": None, "copy": m.path[: -len(".json")],
                        "reason": f"record unreadable ({type(e).__name__}: {e})"})
    return sorted(out, key=lambda r: (r.get("at") or "", r.get("copy") or ""))


def compact(uri: str, fingerprint: str, stale_after_s: float = STALE_GENERATION_S) -> dict:
    """Merge one namespace's live generations into one, deduplicated by key.

    Two passes over the files: the first reads and checks each (keeping its keys, 16
    bytes per entry), the second reads each again and writes the entries kept, so one
    file is in memory at a time; duplicates are found in linear time (`duplicate_mask`).
    A file that cannot be read (any OSError: gone, a transient storage error) stops the
    compaction before anything is deleted (StoreError naming it); a file proven corrupt
    against its commit is copied to `_set_aside/` and reported, never dropped unsaid.

    Atomic for readers: the merged generation is written, then committed listing the
    generations it supersedes (from then on readers take it instead of them), and only
    then are those deleted, each commit marker first. Uncommitted generations older than
    `stale_after_s` (dead runs) are deleted; younger ones may be runs still writing."""
    store_root = root(uri, fingerprint)
    listing = list_generations(store_root, strict=True)
    dim = int((listing.format or {}).get("dim", 0))
    version = int((listing.format or {}).get("format_version", FORMAT_VERSION))
    report = {"namespace": fingerprint,
              "fingerprint": (listing.format or {}).get("model_fingerprint", fingerprint),
              "generations_merged": 0, "entries": 0,
              "duplicates_dropped": 0, "files_set_aside": [], "generation_written": None,
              "generations_deleted": 0}
    if len(listing.live) > 1 or (listing.live and len(listing.live[0].files) > 1):
        if not dim:
            raise StoreError(f"embedding store {store_root}: no {FORMAT_FILE}, cannot compact")
        name = generation_name(f"{datetime.datetime.now(datetime.UTC):%Y%m%dT%H%M%SZ}-"
                               f"compact-{uuid.uuid4().hex[:8]}")
        gen_dir = join(store_root, name)
        files = [(g.name, rec) for g in listing.live for rec in g.files]
        # Pass 1: every file read and checked; its keys kept.
        keys, corrupt = [], []
        for gen, rec in files:
            got = _read_for_compaction(rec, dim)
            if isinstance(got, str):
                corrupt.append((gen, rec, got))
                keys.append(None)
            else:
                keys.append(got[0])
        good = [k for k in keys if k is not None]
        dup = duplicate_mask(np.concatenate(good) if good else np.zeros(0, "S16"))
        report["duplicates_dropped"] = int(dup.sum())
        pending_k, pending_e, written = [], [], []

        def flush(final: bool) -> None:
            nonlocal pending_k, pending_e
            while pending_k and (final or sum(map(len, pending_k)) >= ROWS_PER_FILE):
                keys, embs = np.concatenate(pending_k), np.concatenate(pending_e)
                head = ROWS_PER_FILE if not final else len(keys)
                path = join(gen_dir, f"part-{len(written):05d}.parquet")
                written.append(write_file(path, keys[:head], embs[:head], fingerprint,
                                          version))
                pending_k = [keys[head:]] if len(keys) > head else []
                pending_e = [embs[head:]] if len(keys) > head else []

        # Pass 2: the entries kept, written out. A file that changed or became unreadable
        # since pass 1 stops it too; this pass's own files are then removed.
        try:
            offset = 0
            for (_, rec), first in zip(files, keys, strict=True):
                if first is None:
                    continue
                got = _read_for_compaction(rec, dim)
                if isinstance(got, str) or not np.array_equal(got[0], first):
                    raise StoreError(f"embedding store: {rec['path']} changed while "
                                     "compaction read it; compaction stopped, nothing was "
                                     "deleted")
                keep = ~dup[offset:offset + len(first)]
                offset += len(first)
                pending_k.append(got[0][keep])
                pending_e.append(got[1][keep])
                flush(final=False)
            flush(final=True)
        except BaseException:
            _delete_generation(gen_dir)
            raise
        report["files_set_aside"] = [_set_aside(store_root, rec, gen, why)
                                     for gen, rec, why in corrupt]
        supersedes = [g.name for g in listing.live + listing.superseded]
        commit_generation(uri, fingerprint, name, written, dim, supersedes)
        report.update(generations_merged=len(listing.live),
                      entries=sum(int(f["rows"]) for f in written), generation_written=name)
        to_delete = listing.live + listing.superseded
    else:
        report["entries"] = listing.entries
        to_delete = listing.superseded
    for gen in to_delete:
        _delete_generation(join(store_root, gen.name))
        report["generations_deleted"] += 1
    for gen_dir, age in listing.uncommitted.items():
        if age > stale_after_s:
            log.warning("embedding store: deleting %s, uncommitted for %.0f s (a run that "
                        "died)", gen_dir, age)
            _delete_generation(gen_dir)
            report["generations_deleted"] += 1
    return report


def info(uri: str) -> list[dict]:
    """Per fingerprint: format version, entries, live generations, bytes, what
    compaction would clean (superseded and uncommitted generations), and the files it set
    aside as corrupt."""
    out = []
    for fp in fingerprints(uri):
        listing = list_generations(root(uri, fp))
        fmt = listing.format or {}
        out.append({
            "fingerprint": fmt.get("model_fingerprint", fp),
            "namespace": fp,
            "settings": fmt.get("namespace"),
            "format_version": (listing.format or {}).get("format_version"),
            "dim": (listing.format or {}).get("dim"),
            "entries": listing.entries,
            "generations": len(listing.live),
            "files": sum(len(g.files) for g in listing.live),
            "bytes": listing.bytes,
            "superseded_generations": len(listing.superseded),
            "uncommitted_generations": len(listing.uncommitted),
            "set_aside": set_aside_files(listing.root),
        })
    return out
