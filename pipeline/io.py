"""Storage around the job: checks before any work, output layout, summary and _SUCCESS.

Everything goes through Beam's `FileSystems`, so local paths, gs:// and s3:// behave alike.

While the job runs, Beam writes under OUT/_staging/ (a leading underscore hides it from
Parquet dataset readers such as pyarrow, Spark and Hive). Only after the rows add up are
the files moved to OUT/labels/ and OUT/rejects/, then summary.json and _SUCCESS written.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import posixpath

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import parquetio
from apache_beam.io.filesystems import FileSystems

from pipeline import s3clients

s3clients.share()

LABELS = "labels"
REJECTS = "rejects"
SUMMARY = "summary.json"
SUCCESS = "_SUCCESS"
STAGING = "_staging"


class JobError(Exception):
    """A problem found before or after the job that the user must fix; exit non-zero."""


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base, *parts) if parts else base


@dataclasses.dataclass
class InputScan:
    files: list[str]
    schema: pa.Schema
    rows: int


def _footer(path: str) -> tuple[pa.Schema, int]:
    try:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            meta = pq.ParquetFile(f).metadata
            return meta.schema.to_arrow_schema(), meta.num_rows
    except Exception as e:  # noqa: BLE001  (pyarrow raises several types for bad files)
        raise JobError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None


def scan_inputs(pattern: str) -> InputScan:
    """Match the input pattern and read every file's footer: schema and row count.

    Fails, naming the file, on a pattern that matches nothing, a file that is not
    Parquet, or schemas that disagree.
    """
    try:
        matched = FileSystems.match([pattern])[0].metadata_list
    except Exception as e:  # noqa: BLE001  (BeamIOError wraps the scheme's errors)
        raise JobError(f"input {pattern}: cannot list files ({e})") from None
    files = sorted(m.path for m in matched if not m.path.endswith("/"))
    if not files:
        if not any(c in pattern for c in "*?["):
            raise JobError(f"input {pattern} does not exist")
        raise JobError(f"input pattern {pattern} matches no files")
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        footers = list(pool.map(_footer, files))
    schema, rows = footers[0][0], 0
    for path, (other, n) in zip(files, footers, strict=True):
        rows += n
        if not other.remove_metadata().equals(schema.remove_metadata()):
            raise JobError(
                f"{path}: schema differs from {files[0]}:\n  {files[0]}: "
                f"{_describe(schema)}\n  {path}: {_describe(other)}"
            )
    return InputScan(files, schema.remove_metadata(), rows)


def _describe(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in schema)


def check_columns(
    schema: pa.Schema, source: str, id_column: str, text_columns: tuple[str, str],
    keep_columns: list[str],
) -> None:
    names = schema.names
    for col in [id_column, *text_columns, *keep_columns]:
        if col not in names:
            raise JobError(
                f"{source}: required column {col!r} is missing; columns found: {', '.join(names)}"
            )
    for col in text_columns:
        t = schema.field(col).type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)):
            raise JobError(f"{source}: text column {col!r} has type {t}, expected a string type")


def prepare_output(output: str, overwrite: bool) -> None:
    """Refuse a finished output without --overwrite; clear what an earlier (finished or
    crashed) run left, so that no stale file survives; prove the location writable."""
    if FileSystems.exists(join(output, SUCCESS)) and not overwrite:
        raise JobError(
            f"{output} already holds a finished run ({SUCCESS} exists); "
            "pass --overwrite to replace it"
        )
    # _SUCCESS first, so that a reader never sees it beside a half-cleared output; then
    # files before the directories holding them.
    stale = [join(output, SUCCESS), join(output, SUMMARY)]
    for kind in (LABELS, REJECTS, STAGING):
        stale += [m.path for m in _match(join(output, kind, "*"))]
    stale += [join(output, LABELS), join(output, REJECTS), join(output, STAGING)]
    for path in stale:
        if not (FileSystems.exists(path) or FileSystems.exists(path + "/")):
            continue
        try:
            FileSystems.delete([path])
        except Exception as e:  # noqa: BLE001
            if FileSystems.exists(path):
                raise JobError(f"{output}: cannot clear the previous run's {path} ({e})") from None
    probe = join(output, ".pairscore-write-check")
    try:
        with FileSystems.create(probe) as f:
            f.write(b"ok")
        FileSystems.delete([probe])
    except Exception as e:  # noqa: BLE001
        raise JobError(f"output location {output} is not writable ({e})") from None


def _match(pattern: str) -> list:
    try:
        return FileSystems.match([pattern])[0].metadata_list
    except Exception:  # noqa: BLE001  (no such directory)
        return []


def output_files(output: str, kind: str) -> list[str]:
    return sorted(m.path for m in _match(join(output, kind, "*.parquet")))


def staging(output: str) -> str:
    """Where the job writes; `publish` moves the files into place once they add up."""
    return join(output, STAGING)


def publish(output: str) -> None:
    """Move the staged labels and rejects into OUT/labels/ and OUT/rejects/."""
    sources, targets = [], []
    for kind in (LABELS, REJECTS):
        files = output_files(staging(output), kind)
        sources += files
        targets += [join(output, kind, basename(f)) for f in files]
        if "://" not in output and not FileSystems.exists(join(output, kind)):
            FileSystems.mkdirs(join(output, kind))  # object stores have no directories
    if sources:
        FileSystems.rename(sources, targets)
    try:
        FileSystems.delete([staging(output)])
    except Exception:  # noqa: BLE001  (object stores: nothing left to delete)
        if _match(join(staging(output), "*")):
            raise


class _ParquetSource(parquetio._ParquetSource):
    """Beam's Parquet source, whose read errors name the file (pyarrow's do not)."""

    def read_records(self, file_name, range_tracker):
        try:
            yield from super().read_records(file_name, range_tracker)
        except Exception as e:  # noqa: BLE001  (pyarrow raises several types for bad data)
            raise InputReadError(
                f"{file_name}: cannot read Parquet data ({type(e).__name__}: {e})"
            ) from e


class InputReadError(IOError):
    """An input file passed the footer check but its data cannot be read."""


class ReadPairs(parquetio.ReadFromParquetBatched):
    """`ReadFromParquetBatched` (pyarrow Tables, one per row group) naming the file in
    its errors: a footer can be fine while a data page is corrupt."""

    def __init__(self, file_pattern: str, validate: bool = True):
        super().__init__(file_pattern, validate=validate)
        self._source = _ParquetSource(file_pattern, validate=validate)


@dataclasses.dataclass
class Tally:
    scored: int = 0
    rejected: int = 0
    duplicates: int = 0
    distinct_ids: int = 0
    by_reason: dict = dataclasses.field(default_factory=dict)


def tally_outputs(label_files: list[str], reject_files: list[str], id_column: str) -> Tally:
    """Count what the job wrote, reading each file once and only the columns needed.

    Distinct ids are counted as 64-bit hashes (8 bytes a row, whatever the id type) so
    that the launcher holds one file's ids at a time, not the whole output's.
    """
    import numpy as np
    import pyarrow.compute as pc

    tally = Tally()
    hashes = []
    for path in label_files:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            table = pq.read_table(f, columns=[id_column, "is_duplicate"])
        tally.scored += table.num_rows
        tally.duplicates += int(pc.sum(table["is_duplicate"]).as_py() or 0)
        ids = table[id_column].to_pylist()
        hashes.append(np.fromiter((hash(i) for i in ids), dtype=np.int64, count=len(ids)))
    tally.distinct_ids = int(len(np.unique(np.concatenate(hashes)))) if hashes else 0
    for path in reject_files:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            reasons = pq.read_table(f, columns=["reason"])["reason"]
        tally.rejected += len(reasons)
        for item in pc.value_counts(reasons.combine_chunks()).to_pylist():
            key = item["values"]
            tally.by_reason[key] = tally.by_reason.get(key, 0) + item["counts"]
    return tally


def write_text(path: str, text: str) -> None:
    with FileSystems.create(path) as f:
        f.write(text.encode())


def write_json(path: str, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/"))
