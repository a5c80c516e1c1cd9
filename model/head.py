"""The distance head of an exported model, read from its SavedModel's variables and
computed in numpy: `score_embeddings` without TensorFlow.

A job in unique-text mode scores every pair from its texts' embeddings with the model's
`score_embeddings` signature, which is the export's `DistanceHead` (model/layers.py) over
two embeddings: features of (u, v) by `distance`, then one Dense unit with a sigmoid. Its
weights are two small tensors in `variables/` (`head/classifier/{kernel,bias}`), so a
night whose texts all come from the embedding store needs neither TensorFlow nor the
encoder's graph: `load_head` reads them (the variables index, checked against the
manifest, and the two tensors' bytes, checked against the index's crc32c) and `Head`
computes the same sigmoid(features(u, v) @ kernel + bias) in float32.

`load_head` returns None, and the caller uses the SavedModel's signature, for anything
it does not recognise: an unknown distance, other variables under `head/`, shapes that
do not fit the distance and `embedding_dim`, another dtype, a compressed or sharded index.
tests/test_head.py checks `Head` against `score_embeddings` for every distance.

The variables index is TensorFlow's tensor bundle format: a LevelDB-style table (blocks
of prefix-compressed keys, a block index, a 48-byte footer) whose values are
`BundleEntryProto`s (dtype, shape, shard, offset, size, masked crc32c).
"""

from __future__ import annotations

import dataclasses
import logging
import struct

import numpy as np

from model.config import Distance

log = logging.getLogger("pairscore.head")

INDEX_FILE = "variables/variables.index"
_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_BYTES = 48
_DT_FLOAT = 1
_VARIABLE = "/.ATTRIBUTES/VARIABLE_VALUE"
_KERNEL_NAMES = ("head/classifier/_kernel", "head/classifier/kernel")
_BIAS_NAME = "head/classifier/bias"


class BundleFormatError(ValueError):
    """The variables index is not a tensor bundle this reader understands."""


# --- the tensor bundle index ----------------------------------------------------------------


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise BundleFormatError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise BundleFormatError("varint too long")


def _block(data: bytes, offset: int, size: int) -> list[tuple[bytes, bytes]]:
    """The (key, value) entries of one table block (uncompressed only)."""
    if offset + size + 5 > len(data):
        raise BundleFormatError("block past the end of the index")
    if data[offset + size] != 0:
        raise BundleFormatError(f"compressed block (type {data[offset + size]})")
    block = data[offset : offset + size]
    if len(block) < 4:
        raise BundleFormatError("block too short")
    restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    end = len(block) - 4 - 4 * restarts
    if end < 0:
        raise BundleFormatError("bad restart count")
    entries, pos, key = [], 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        length, pos = _varint(block, pos)
        if shared > len(key) or pos + unshared + length > end:
            raise BundleFormatError("bad block entry")
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        entries.append((key, block[pos : pos + length]))
        pos += length
    return entries


def _fields(buf: bytes) -> dict[int, list]:
    """A protobuf message's fields: number -> values (ints, or bytes for length-delimited)."""
    out: dict[int, list] = {}
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise BundleFormatError(f"protobuf wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


@dataclasses.dataclass
class BundleEntry:
    """Where one tensor's bytes are in the data files, and what they are."""

    dtype: int
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc32c: int | None  # masked, as TensorFlow writes it
    sliced: bool


def _entry(value: bytes) -> BundleEntry:
    f = _fields(value)
    shape = []
    for shape_msg in f.get(2, []):
        for dim in _fields(shape_msg).get(2, []):
            shape.append(int(_fields(dim).get(1, [0])[0]))
    return BundleEntry(dtype=f.get(1, [0])[0], shape=tuple(shape), shard=f.get(3, [0])[0],
                       offset=f.get(4, [0])[0], size=f.get(5, [0])[0],
                       crc32c=f.get(6, [None])[0], sliced=bool(f.get(7)))


def read_index(data: bytes) -> tuple[int, dict[str, BundleEntry]]:
    """(number of data shards, tensor name -> entry) of a tensor bundle index file."""
    if len(data) < _FOOTER_BYTES:
        raise BundleFormatError("shorter than a table footer")
    footer = data[-_FOOTER_BYTES:]
    if struct.unpack_from("<Q", footer, _FOOTER_BYTES - 8)[0] != _TABLE_MAGIC:
        raise BundleFormatError("not a table (bad magic)")
    pos = 0
    for _ in range(2):  # the metaindex handle, then the index handle
        offset, pos = _varint(footer, pos)
        size, pos = _varint(footer, pos)
    shards, entries = 1, {}
    for _, handle in _block(data, offset, size):
        block_offset, p = _varint(handle, 0)
        block_size, _ = _varint(handle, p)
        for key, value in _block(data, block_offset, block_size):
            if key == b"":  # the BundleHeaderProto
                header = _fields(value)
                shards = header.get(1, [1])[0]
                if header.get(2, [0])[0] != 0:
                    raise BundleFormatError("big-endian bundle")
                continue
            entries[key.decode("utf-8", "replace")] = _entry(value)
    return shards, entries


def _masked_crc32c(data: bytes) -> int | None:
    try:
        import google_crc32c
    except ImportError:  # without it the tensors' bytes are not checked (they are tiny)
        return None
    crc = int.from_bytes(google_crc32c.Checksum(data).digest(), "big")
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# --- the head -------------------------------------------------------------------------------


def feature_width(distance: str, dim: int) -> int:
    """Inputs of the head's Dense unit for embeddings of width `dim`."""
    return {Distance.L1: dim, Distance.CONCAT: 2 * dim, Distance.SBERT: 4 * dim}.get(
        Distance.parse(distance), 1)


@dataclasses.dataclass
class Head:
    """sigmoid(features(u, v) @ kernel + bias), as `DistanceHead` in model/layers.py."""

    distance: str
    kernel: np.ndarray  # float32[F, 1]
    bias: np.ndarray  # float32[1]

    def features(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        d = self.distance
        if d == Distance.L1:
            return np.float32(1.0) - np.abs(u - v)
        if d == Distance.CONCAT:
            return np.concatenate([u, v], axis=-1)
        if d == Distance.SBERT:
            return np.concatenate([u, v, np.abs(u - v), u * v], axis=-1)
        if d == Distance.COSINE:
            tiny = np.float32(1e-12)
            un = u / np.maximum(np.linalg.norm(u, axis=-1, keepdims=True), tiny)
            vn = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), tiny)
            return np.sum(un * vn, axis=-1, keepdims=True)
        return np.exp(-np.sum(np.abs(u - v), axis=-1, keepdims=True))

    def __call__(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        u = np.asarray(left, np.float32)
        v = np.asarray(right, np.float32)
        z = (self.features(u, v) @ self.kernel + self.bias)[:, 0]
        with np.errstate(over="ignore"):
            return (np.float32(1.0) / (np.float32(1.0) + np.exp(-z))).astype(np.float32)


def _tensor(md, shards: int, entry: BundleEntry) -> np.ndarray:
    from model.modeldir import _open
    from model.storage import join

    name = f"variables/variables.data-{entry.shard:05d}-of-{shards:05d}"
    with _open(join(md.uri, *name.split("/"))) as f:
        f.seek(entry.offset)
        data = f.read(entry.size)
    if len(data) != entry.size:
        raise BundleFormatError(f"{name}: {len(data)} bytes at {entry.offset}, expected "
                                f"{entry.size}")
    if entry.crc32c is not None:
        got = _masked_crc32c(data)
        if got is not None and got != entry.crc32c:
            raise BundleFormatError(f"{name}: crc32c of the tensor at {entry.offset} does "
                                    "not match the variables index")
    return np.frombuffer(data, "<f4").reshape(entry.shape).astype(np.float32)


def load_head(md) -> Head | None:
    """The head of the model directory `md` (a `model.modeldir.ModelDir`), or None (with
    the reason logged) when it is not a head this module computes exactly."""
    meta = md.metadata
    try:
        distance = Distance.parse(meta.distance).value
        dim = int(meta.embedding_dim or 0)
        if not dim:
            raise BundleFormatError("pairscore.json has no embedding_dim")
        # Checked against the manifest's sha256 as it is read.
        shards, entries = read_index(md.read_bytes(INDEX_FILE))
        head = {k[: -len(_VARIABLE)]: e for k, e in entries.items()
                if k.startswith("head/") and k.endswith(_VARIABLE)}
        kernels = [n for n in _KERNEL_NAMES if n in head]
        if len(kernels) != 1 or _BIAS_NAME not in head or len(head) != 2:
            raise BundleFormatError(f"head variables {sorted(head)}")
        kernel, bias = head[kernels[0]], head[_BIAS_NAME]
        width = feature_width(distance, dim)
        if kernel.shape != (width, 1) or bias.shape != (1,):
            raise BundleFormatError(f"head kernel {kernel.shape}, bias {bias.shape}; a "
                                    f"{distance} head over {dim}-wide embeddings has "
                                    f"({width}, 1) and (1,)")
        for e in (kernel, bias):
            if e.dtype != _DT_FLOAT or e.sliced or e.size != 4 * int(np.prod(e.shape)):
                raise BundleFormatError("head variables are not plain float32 tensors")
        return Head(distance, _tensor(md, shards, kernel), _tensor(md, shards, bias))
    except (BundleFormatError, ValueError, OSError, KeyError, struct.error) as e:
        log.info("%s: the head is computed by the SavedModel (%s: %s)", md.uri,
                 type(e).__name__, e)
        return None
