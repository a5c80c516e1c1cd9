"""Row validation on whole Arrow tables: split a batch into scorable rows and rejects."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

REASON = "reason"
# In the order they are checked: a row gets the first reason that applies.
REASONS = ("null_id", "null_text", "empty_text", "invalid_text", "no_tokens")


def _blank(column: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0)


def validate_table(
    table: pa.Table, id_column: str, text_columns: tuple[str, str]
) -> tuple[pa.Table, pa.Table]:
    """(valid rows, rejected rows + `reason`). Every input row lands in exactly one."""
    reason = pa.nulls(table.num_rows, pa.string())
    checks = [("null_id", pc.is_null(table[id_column]))]
    checks.append(
        ("null_text", pc.or_(pc.is_null(table[text_columns[0]]), pc.is_null(table[text_columns[1]])))
    )
    checks.append(
        (
            "empty_text",
            pc.or_(_blank(table[text_columns[0]]), _blank(table[text_columns[1]])),
        )
    )
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
