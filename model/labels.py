"""The labels dataset: people's duplicate / not-duplicate decisions on pairs, kept as data.

A dataset is a directory or bucket prefix (local, gs://, s3://) of Parquet files, append-only:
every save writes one new file, URI/labels-<UTC yyyymmddTHHMMSSffffffZ>-<labeller>-<uuid8>.parquet,
and no file is ever rewritten, so two people labelling at once lose nothing. Columns:
`LABEL_SCHEMA` (docs/people.md, "Labels as data").

    from model import labels
    path = labels.save_labels("labels/", table)      # one new file
    table = labels.read_labels("labels/")            # every row of every file
    resolved, disagreements = labels.resolve(table)  # one row per pair
"""

from __future__ import annotations

import concurrent.futures
import datetime
import glob
import hashlib
import io
import os
import re
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from model import storage
from model.storage import join

LABEL_SCHEMA = pa.schema([
    pa.field("pair_id", pa.string()),
    pa.field("text_a", pa.string()),
    pa.field("text_b", pa.string()),
    pa.field("label", pa.int8()),  # 1 duplicate, 0 not, null unsure
    pa.field("labeller", pa.string()),
    pa.field("labelled_at", pa.timestamp("us", tz="UTC")),
    pa.field("run_id", pa.string()),
    pa.field("model_fingerprint", pa.string()),
    pa.field("score", pa.float32()),
    pa.field("stratum", pa.string()),  # null when the pair is not from a sample
    pa.field("inclusion_probability", pa.float64()),  # ditto
    pa.field("stratum_size", pa.int64()),  # ditto
    # The stratum's score range under the model that drew the sample (the design's low
    # and high): lets `pairscore threshold` rule out cells a stratum cannot hold. Ditto.
    pa.field("stratum_low", pa.float64()),
    pa.field("stratum_high", pa.float64()),
])
# Columns a table may leave out: they are filled with nulls.
OPTIONAL = ("run_id", "model_fingerprint", "score", "stratum", "inclusion_probability",
            "stratum_size", "stratum_low", "stratum_high")
# Columns that may hold no null.
NOT_NULL = ("pair_id", "labeller", "labelled_at")
PATTERN = "labels-*.parquet"
_READERS = 16  # files read at once (a review session writes one small file per label)


def _kind_ok(column: str, t: pa.DataType) -> bool:
    """Whether a column of type `t` can stand for `column` (a lossless or obvious cast)."""
    want = LABEL_SCHEMA.field(column).type
    if pa.types.is_null(t):
        return True
    if pa.types.is_string(want):
        return pa.types.is_string(t) or pa.types.is_large_string(t) or (
            pa.types.is_dictionary(t) and (pa.types.is_string(t.value_type)
                                           or pa.types.is_large_string(t.value_type)))
    if column == "label":
        return pa.types.is_integer(t) or pa.types.is_boolean(t)
    if pa.types.is_integer(want):
        return pa.types.is_integer(t)
    if pa.types.is_floating(want):
        return pa.types.is_floating(t) or pa.types.is_integer(t)
    if pa.types.is_timestamp(want):
        return pa.types.is_timestamp(t)
    return t.equals(want)


def _first(mask: pa.Array) -> int:
    return int(np.flatnonzero(mask.to_numpy(zero_copy_only=False))[0])


def conform(table: pa.Table, where: str = "labels table") -> pa.Table:
    """`table` checked and cast to LABEL_SCHEMA (in its column order, other columns
    dropped). Optional columns (OPTIONAL) that are absent become nulls; a naive
    labelled_at is read as UTC. Raises ValueError naming the column (and row) at fault:
    a missing column, a wrong type, a label not 0, 1 or null, a null pair_id, labeller or
    labelled_at."""
    n = table.num_rows
    columns = []
    for field in LABEL_SCHEMA:
        name = field.name
        if name not in table.column_names:
            if name in OPTIONAL:
                columns.append(pa.nulls(n, field.type))
                continue
            raise ValueError(f"{where}: missing column {name!r} (needed: "
                             f"{', '.join(f.name for f in LABEL_SCHEMA if f.name not in OPTIONAL)};"
                             f" optional: {', '.join(OPTIONAL)})")
        col = table.column(name).combine_chunks()
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        if not _kind_ok(name, col.type):
            raise ValueError(f"{where}: column {name!r} is {col.type}, not {field.type}")
        if name in NOT_NULL and col.null_count:
            raise ValueError(f"{where}: column {name!r} is null in row {_first(col.is_null())}")
        if name == "label":
            if pa.types.is_boolean(col.type):
                col = col.cast(pa.int8())
            bad = pc.and_(pc.is_valid(col), pc.invert(pc.is_in(col, pa.array([0, 1], col.type))))
            if pc.any(bad).as_py():
                row = _first(bad)
                raise ValueError(f"{where}: column 'label' is {col[row].as_py()} in row {row}; "
                                 "a label is 1 (duplicate), 0 (not) or null (unsure)")
        if pa.types.is_timestamp(col.type) and col.type.tz is None:
            col = col.cast(pa.timestamp(col.type.unit, tz="UTC"))
        try:
            col = col.cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise ValueError(f"{where}: column {name!r} ({col.type}) does not cast to "
                             f"{field.type}: {e}") from None
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=LABEL_SCHEMA)


def empty() -> pa.Table:
    """A labels table with no rows."""
    return LABEL_SCHEMA.empty_table()


def _file_name(table: pa.Table) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    names = pc.unique(table.column("labeller")).to_pylist()
    who = names[0] if len(names) == 1 else ("mixed" if names else "nobody")
    # The name is for people listing the directory; the labeller column is the record.
    who = re.sub(r"[^A-Za-z0-9_.]+", "_", who).strip("._")[:40] or "labeller"
    return f"labels-{now}-{who}-{uuid.uuid4().hex[:8]}.parquet"


def _to_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, write_page_checksum=True)
    return sink.getvalue().to_pybytes()


def save_labels(uri: str, table: pa.Table) -> str:
    """Write `table` (conformed to LABEL_SCHEMA, see `conform`) as one new file under
    `uri` and return its path. Never overwrites: each call creates a file of its own
    (a UTC timestamp to the microsecond and a random suffix in its name). Local
    directories are created if missing; a local file appears whole (written aside, then
    renamed); on gs:// and s3:// an object appears when its upload completes."""
    data = _to_bytes(conform(table))
    name = _file_name(table)
    if "://" not in uri:
        os.makedirs(uri, exist_ok=True)
        path = os.path.join(uri, name)
        # A dot name is not matched by labels-*.parquet: readers never see it half written.
        tmp = os.path.join(uri, f".{name}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return path
    path = join(uri, name)
    with storage.filesystems().create(path) as f:
        f.write(data)
    return path


def files(uri: str) -> list[str]:
    """The dataset's files, oldest first (by name: their names start with the save time)."""
    if "://" not in uri:  # Beam's file systems cost seconds to load; a local glob does not
        return sorted(glob.glob(os.path.join(glob.escape(uri), PATTERN)), key=os.path.basename)
    fs = storage.filesystems()
    try:  # a directory or prefix that does not exist yet matches nothing
        matched = fs.match([join(uri, PATTERN)])[0].metadata_list
    except Exception as e:  # noqa: BLE001  (Beam wraps storage errors in its own)
        raise OSError(f"labels dataset {uri}: cannot list {PATTERN}: {e}") from None
    return sorted((m.path for m in matched), key=os.path.basename)


def _read_file(path: str) -> pa.Table:
    try:
        if "://" in path:
            with storage.filesystems().open(path, compression_type="uncompressed") as f:
                data = f.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
        # One small file: Arrow's own thread pool per call only adds contention.
        table = pq.read_table(io.BytesIO(data), use_threads=False)
    except Exception as e:  # noqa: BLE001  (pyarrow's errors do not name the file)
        raise ValueError(f"labels file {path} is not readable Parquet: {e}") from None
    return conform(table, where=f"labels file {path}")


def read_labels(uri: str) -> pa.Table:
    """Every row of every file URI/labels-*.parquet, in LABEL_SCHEMA, files oldest first
    and rows in file order (the order `latest` breaks ties by); an empty table when there
    is none. A file that is not readable Parquet, or whose columns do not fit
    LABEL_SCHEMA, raises ValueError naming it."""
    paths = files(uri)
    if not paths:
        return empty()
    if "://" not in uri:  # local reads are quick: threads would only contend
        tables = [_read_file(p) for p in paths]
    else:  # object stores: a round trip per file, so several at once
        with concurrent.futures.ThreadPoolExecutor(min(_READERS, len(paths))) as pool:
            tables = list(pool.map(_read_file, paths))
    return pa.concat_tables(tables)


def _sorted(table: pa.Table, keys: list[str]) -> np.ndarray:
    """Row indices of `table` sorted by `keys` then by row order (a stable sort)."""
    if not table.num_rows:
        return np.zeros(0, dtype=np.int64)
    order = pc.sort_indices(table.select(keys), sort_keys=[(k, "ascending") for k in keys])
    # Arrow's sort is stable, so equal keys keep their row order.
    return order.to_numpy()


def _changes(table: pa.Table, keys: list[str]) -> np.ndarray:
    """For a table sorted by `keys`: True where a row starts a new group of keys."""
    n = table.num_rows
    start = np.zeros(n, dtype=bool)
    if n:
        start[0] = True
        for k in keys:
            col = table.column(k)
            start[1:] |= pc.not_equal(col.slice(1), col.slice(0, n - 1)).to_numpy(
                zero_copy_only=False)
    return start


def _last_of_groups(table: pa.Table, keys: list[str], order_by: list[str]) -> pa.Table:
    """The last row of each group of `keys` when ordered by `order_by` then row order;
    the result sorted by `keys`."""
    table = table.take(_sorted(table, keys + order_by))
    start = _changes(table, keys)
    last = np.append(np.flatnonzero(start)[1:] - 1, table.num_rows - 1) if table.num_rows \
        else np.zeros(0, dtype=np.int64)
    return table.take(last)


def latest(table: pa.Table) -> pa.Table:
    """One row per (labeller, pair_id): the one with the latest labelled_at. Ties (equal
    labelled_at) go to the later row, and in `read_labels` rows come file by file, oldest
    file first: the later save wins. Sorted by pair_id, then labeller."""
    table = conform(table)
    return _last_of_groups(table, ["pair_id", "labeller"], ["labelled_at"])


def resolve(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(resolved, disagreements) from every labeller's latest label of each pair.

    resolved: one row per pair_id (sorted by it), its other columns from the pair's latest
    row (latest labelled_at, ties to the later row), `label` the labellers' common label
    when every non-null label agrees, null when all are unsure or when they disagree,
    and `n_labellers` (int32): labellers with a latest row for the pair, unsure ones too.
    disagreements: one row per pair_id whose labellers' non-null labels differ: pair_id,
    labels (list<int8>) and labellers (list<string>), aligned, every labeller of the pair
    (sorted by name) with their latest label, null for unsure. Unsure is not a vote: a 1
    and an unsure agree on 1."""
    per = latest(table)  # sorted by pair_id, labeller
    n = per.num_rows
    start = _changes(per, ["pair_id"])
    offsets = np.append(np.flatnonzero(start), n).astype(np.int32)
    heads = offsets[:-1]
    label = per.column("label").combine_chunks()
    unsure = label.is_null().to_numpy(zero_copy_only=False)
    values = pc.fill_null(label, 0).to_numpy().astype(np.int16)
    if n:
        low = np.minimum.reduceat(np.where(unsure, 2, values), heads)
        high = np.maximum.reduceat(np.where(unsure, -1, values), heads)
    else:
        low = high = np.zeros(0, dtype=np.int16)
    all_unsure = low == 2
    differ = ~all_unsure & (low != high)
    common = pa.array(low.astype(np.int8), mask=all_unsure | differ)

    last = _last_of_groups(per, ["pair_id"], ["labelled_at"])  # same pair order as heads
    resolved = last.set_column(last.schema.get_field_index("label"), "label", common)
    resolved = resolved.append_column("n_labellers", pa.array(np.diff(offsets), pa.int32()))

    groups = np.flatnonzero(differ)
    labels_list = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), label)
    labellers_list = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()),
                                              per.column("labeller").combine_chunks())
    disagreements = pa.table({
        "pair_id": per.column("pair_id").take(pa.array(heads[groups], pa.int64())),
        "labels": labels_list.take(pa.array(groups, pa.int64())),
        "labellers": labellers_list.take(pa.array(groups, pa.int64())),
    }, schema=DISAGREEMENT_SCHEMA)
    return resolved, disagreements


DISAGREEMENT_SCHEMA = pa.schema([
    pa.field("pair_id", pa.string()),
    pa.field("labels", pa.list_(pa.int8())),
    pa.field("labellers", pa.list_(pa.string())),
])


# --- other tools' labels, CSV, a summary ---------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def text_pair_id(text_a: str, text_b: str) -> str:
    """A stable id for a pair of texts without ids of their own: the first 16 hex digits
    of sha256 of the two texts, in sorted order (so (a, b) and (b, a) are one pair),
    joined by a unit separator."""
    low, high = sorted((text_a, text_b))
    return hashlib.sha256(f"{low}\x1f{high}".encode()).hexdigest()[:16]


def _plain(value):
    # dedupe's serializer writes tuples and frozensets as {"__class__": ..., "__value__": ...}.
    if isinstance(value, dict) and "__value__" in value:
        return value["__value__"]
    return value


def from_dedupe(training: dict, labeller: str, text_field: str | None = None,
                pair_id_field: str | None = None, run_id: str | None = None,
                where: str = "dedupe training") -> pa.Table:
    """A labels table from dedupe's training data ({"match": [[record_a, record_b], ...],
    "distinct": [...]}, each record a dict of fields): match is 1, distinct 0. The texts
    are `text_field` (default: the records' only string field); pair_id is
    "<a's pair_id_field>|<b's>" when `pair_id_field` is given, else `text_pair_id`."""
    if not isinstance(training, dict) or not {"match", "distinct"} & set(training):
        raise ValueError(f"{where}: not dedupe training data (a JSON object with "
                         "\"match\" and \"distinct\" lists of record pairs)")
    pairs = []
    for key, label in (("match", 1), ("distinct", 0)):
        for i, pair in enumerate(_plain(training.get(key, []))):
            pair = _plain(pair)
            if not (isinstance(pair, list) and len(pair) == 2
                    and all(isinstance(_plain(r), dict) for r in pair)):
                raise ValueError(f"{where}: {key}[{i}] is not a pair of records "
                                 "(two objects of fields)")
            pairs.append((key, i, [_plain(r) for r in pair], label))
    if text_field is None and pairs:
        names = sorted({k for _, _, recs, _ in pairs for r in recs for k, v in r.items()
                        if isinstance(_plain(v), str)})
        if len(names) != 1:
            raise ValueError(f"{where}: {len(names)} string fields "
                             f"({', '.join(names) or 'none'}): name the text with "
                             "--text-field")
        text_field = names[0]
    rows = {"pair_id": [], "text_a": [], "text_b": [], "label": []}
    for key, i, (a, b), label in pairs:
        for side, rec in (("first", a), ("second", b)):
            for field in filter(None, (text_field, pair_id_field)):
                if field not in rec:
                    raise ValueError(f"{where}: {key}[{i}]'s {side} record has no field "
                                     f"{field!r} (it has: {', '.join(sorted(rec))})")
        text_a, text_b = (None if r[text_field] is None else str(_plain(r[text_field]))
                          for r in (a, b))
        if pair_id_field:
            pid = f"{_plain(a[pair_id_field])}|{_plain(b[pair_id_field])}"
        else:
            pid = text_pair_id(text_a or "", text_b or "")
        rows["pair_id"].append(pid)
        rows["text_a"].append(text_a)
        rows["text_b"].append(text_b)
        rows["label"].append(label)
    n = len(pairs)
    return conform(pa.table({
        **rows, "label": pa.array(rows["label"], pa.int8()),
        "labeller": [labeller] * n, "labelled_at": pa.array([_now()] * n, LABEL_SCHEMA.field(
            "labelled_at").type), "run_id": pa.array([run_id] * n, pa.string()),
    }), where)


def from_splink(table: pa.Table, labeller: str | None, text_column_l: str = "text_l",
                text_column_r: str = "text_r", pair_id_column: str | None = None,
                run_id: str | None = None, where: str = "Splink labels") -> pa.Table:
    """A labels table from a Splink labels table (unique_id_l, unique_id_r,
    clerical_match_score in [0, 1]): label 1 when the score is >= 0.5, 0 below, null
    when it is null. pair_id is `pair_id_column` when given, else
    "<unique_id_l>|<unique_id_r>"; the texts are `text_column_l` and `text_column_r`.
    The labeller is `labeller`, else the table's labeller column."""
    have = table.column_names
    needed = ["clerical_match_score", text_column_l, text_column_r]
    needed += [pair_id_column] if pair_id_column else ["unique_id_l", "unique_id_r"]
    for col in needed:
        if col not in have:
            flag = {text_column_l: " (--text-column-l)", text_column_r: " (--text-column-r)",
                    pair_id_column: " (--pair-id-field)"}.get(col, "")
            raise ValueError(f"{where}: no column {col!r}{flag} (it has: {', '.join(have)})")
    if labeller is None and "labeller" not in have:
        raise ValueError(f"{where}: no labeller column: name one with --labeller")
    score = table.column("clerical_match_score").combine_chunks()
    if not (pa.types.is_floating(score.type) or pa.types.is_integer(score.type)):
        raise ValueError(f"{where}: column 'clerical_match_score' is {score.type}, not a number")
    score = score.cast(pa.float64())
    bad = pc.or_(pc.less(score, 0.0), pc.greater(score, 1.0))
    bad = pc.fill_null(pc.or_(bad, pc.is_nan(score)), False)
    if pc.any(bad).as_py():
        row = _first(bad)
        raise ValueError(f"{where}: column 'clerical_match_score' is {score[row].as_py()} in "
                         f"row {row}, not in [0, 1]")
    label = pc.cast(pc.greater_equal(score, 0.5), pa.int8())
    n = table.num_rows
    if pair_id_column:
        pid = table.column(pair_id_column).cast(pa.string())
    else:
        pid = pc.binary_join_element_wise(table.column("unique_id_l").cast(pa.string()),
                                          table.column("unique_id_r").cast(pa.string()), "|")
    who = pa.array([labeller] * n, pa.string()) if labeller is not None \
        else table.column("labeller").cast(pa.string())
    return conform(pa.table({
        "pair_id": pid, "text_a": table.column(text_column_l).cast(pa.string()),
        "text_b": table.column(text_column_r).cast(pa.string()), "label": label,
        "labeller": who,
        "labelled_at": pa.array([_now()] * n, LABEL_SCHEMA.field("labelled_at").type),
        "run_id": pa.array([run_id] * n, pa.string()),
    }), where)


def read_table_file(path: str) -> pa.Table:
    """A Parquet or CSV file (by its name's ending) from any filesystem."""
    with storage.filesystems().open(path, compression_type="uncompressed") as f:
        data = f.read()
    try:
        if path.lower().endswith(".csv"):
            return pa_csv.read_csv(io.BytesIO(data))
        return pq.read_table(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001  (pyarrow's errors do not name the file)
        kind = "CSV" if path.lower().endswith(".csv") else "Parquet"
        raise ValueError(f"{path} is not readable {kind}: {e}") from None


def write_csv(path: str, table: pa.Table) -> None:
    """`table` as CSV (a header line, labelled_at as ISO 8601 UTC) to a local path or
    a URL."""
    cols = {}
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_timestamp(col.type):
            col = pc.strftime(col, format="%Y-%m-%dT%H:%M:%SZ")  # %S: with microseconds
        cols[name] = col
    sink = pa.BufferOutputStream()
    pa_csv.write_csv(pa.table(cols), sink)
    data = sink.getvalue().to_pybytes()
    if "://" not in path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        return
    with storage.filesystems().create(path) as f:
        f.write(data)


def info(table: pa.Table, first: int = 5) -> dict:
    """What a labels dataset holds: rows, distinct pairs, each labeller's latest labels,
    the latest labels by value, the resolved pairs by outcome, and the disagreements
    (their count and the `first` few)."""
    per = latest(table)
    resolved, disagreements = resolve(table)

    def counts(labels_col) -> dict:
        values = labels_col.to_pylist()
        return {"duplicate": values.count(1), "not_duplicate": values.count(0),
                "unsure": values.count(None)}

    by_labeller = {}
    for name in sorted(set(per.column("labeller").to_pylist())):
        mine = per.filter(pc.equal(per.column("labeller"), name))
        by_labeller[name] = {"pairs": mine.num_rows, **counts(mine.column("label"))}
    outcome = counts(resolved.column("label"))
    outcome["unsure"] -= disagreements.num_rows  # a disagreement resolves to null too
    outcome["disagreed"] = disagreements.num_rows
    return {
        "rows": table.num_rows,
        "pairs": resolved.num_rows,
        "labellers": by_labeller,
        "latest_labels": {**counts(per.column("label")), "rows": per.num_rows},
        "resolved": outcome,
        "disagreements": {"count": disagreements.num_rows,
                          "first": disagreements.slice(0, first).to_pylist()},
    }
