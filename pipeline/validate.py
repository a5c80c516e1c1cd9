"""Row validation on whole Arrow tables: split a batch into scorable rows and rejects."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

REASON = "reason"
# In the order they are checked: a row gets the first reason that applies.
REASONS = ("null_id", "empty_id", "null_record_id", "null_text", "empty_text", "invalid_text",
           "no_tokens")
# Rows whose model batch failed after its retries (pipeline.stages.RunModel).
MODEL_ERROR = "model_error"


def _blank(column) -> pa.ChunkedArray:
    return pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0)


def _is_text(column) -> bool:
    return pa.types.is_string(column.type) or pa.types.is_large_string(column.type)


def invalid_utf8(column) -> pa.Array | None:
    """Mask of values that are not valid UTF-8, or None when all are valid.

    Arrow trusts Parquet's string annotation, so bytes written by another producer
    (e.g. a lone surrogate encoded as CESU-8/WTF-8) arrive unchecked, and every
    string kernel and `to_pylist()` then raises for the whole batch.
    """
    if not _is_text(column):
        return None
    try:
        column.validate(full=True)
        return None
    except pa.ArrowInvalid:
        pass
    large = pa.types.is_large_string(column.type)
    binary = column.cast(pa.large_binary() if large else pa.binary())
    return pa.array([v is not None and not _decodes(v) for v in binary.to_pylist()], pa.bool_())


def _decodes(value: bytes) -> bool:
    try:
        value.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def decoded_type(t: pa.DataType) -> pa.DataType:
    """`t` with every dictionary, however deeply nested, replaced by its value type."""
    if pa.types.is_dictionary(t):
        return decoded_type(t.value_type)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        make = pa.list_ if pa.types.is_list(t) else pa.large_list
        return make(t.value_field.with_type(decoded_type(t.value_type)))
    if pa.types.is_fixed_size_list(t):
        return pa.list_(t.value_field.with_type(decoded_type(t.value_type)), t.list_size)
    if pa.types.is_map(t):
        return pa.map_(
            t.key_field.with_type(decoded_type(t.key_type)),
            t.item_field.with_type(decoded_type(t.item_type)),
            t.keys_sorted,
        )
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(decoded_type(f.type)) for f in t])
    return t


def decode_schema(schema: pa.Schema) -> pa.Schema:
    """`schema` with dictionary-encoded columns (pandas categoricals) as their values."""
    return pa.schema([f.with_type(decoded_type(f.type)) for f in schema], metadata=schema.metadata)


def decode_dictionaries(table: pa.Table) -> pa.Table:
    """`table` with dictionary-encoded columns decoded to their value type; the same
    table when it has none.

    A pandas categorical arrives as dictionary<values=string>: a string column for us,
    and every later step (validation, tokenization, the label and reject schemas)
    expects the plain type. Decoding costs a copy of those columns only.
    """
    schema = decode_schema(table.schema)
    if schema.equals(table.schema):
        return table
    return table.cast(schema)


def validate_table(
    table: pa.Table, id_column: str, text_columns: tuple[str, str],
    record_columns: tuple[str, ...] = (),
) -> tuple[pa.Table, pa.Table]:
    """(valid rows, rejected rows + `reason`). Every input row lands in exactly one.
    `record_columns` (--group-by) must not be null: a pair naming no record cannot be
    grouped."""
    ids = table[id_column]
    # An all-null column may come typed null (e.g. from pandas); the checks need strings.
    texts = [
        table[c].cast(pa.string()) if pa.types.is_null(table[c].type) else table[c]
        for c in text_columns
    ]
    invalid = pa.array([False] * table.num_rows, pa.bool_())
    for i, column in enumerate(texts):
        mask = invalid_utf8(column)
        if mask is not None:
            invalid = pc.or_(invalid, mask)
            # Placeholder so that the string checks below can run on the other rows.
            texts[i] = pc.if_else(mask, pa.scalar("?", column.type), column)
    checks = [("null_id", pc.is_null(ids))]
    if _is_text(ids):
        checks.append(("empty_id", _blank(ids)))
    for col in record_columns:
        checks.append(("null_record_id", pc.is_null(table[col])))
    checks.append(("null_text", pc.or_(pc.is_null(texts[0]), pc.is_null(texts[1]))))
    checks.append(("empty_text", pc.or_(_blank(texts[0]), _blank(texts[1]))))
    checks.append(("invalid_text", invalid))
    reason = pa.nulls(table.num_rows, pa.string())
    for name, mask in checks:
        mask = pc.fill_null(mask, False)
        reason = pc.if_else(pc.and_(mask, pc.is_null(reason)), name, reason)
    return split_by_reason(table, reason)


def split_by_reason(table: pa.Table, reason) -> tuple[pa.Table, pa.Table]:
    """Rows with a null reason are valid; the others go to rejects with their reason."""
    bad = pc.is_valid(reason)
    rejects = table.filter(bad).append_column(REASON, pc.filter(reason, bad))
    return table.filter(pc.invert(bad)), rejects


def reject_all(table: pa.Table, reason: str) -> pa.Table:
    return table.append_column(REASON, pa.array([reason] * table.num_rows, pa.string()))


# The exception behind a `model_error` reject; null for the other reasons.
ERROR = "error"


def describe_error(error) -> str:
    """'Type: message' of an exception, or of the (type, repr, traceback lines) that
    Beam's dead-letter outputs carry instead."""
    if isinstance(error, BaseException):
        return f"{type(error).__name__}: {error}"[:2000]
    kind, text, lines = error
    # traceback.format_exception ends with the "Type: message" line.
    last = lines[-1].strip() if lines else f"{kind.__name__}: {text}"
    return last.split(".", 1)[-1] if last.startswith(kind.__module__ + ".") else last[:2000]


def model_error_rows(rows: pa.Table, error) -> pa.Table:
    """A model batch's rows as rejects: reason `model_error`, the exception in `error`."""
    n = rows.num_rows
    message = describe_error(error)
    return rows.append_column(REASON, pa.repeat(pa.scalar(MODEL_ERROR), n)).append_column(
        ERROR, pa.repeat(pa.scalar(message), n)
    )
