"""Dictionary-encoded columns (pandas categoricals; pyarrow keeps them dictionary-encoded
through Parquet) are plain strings to the job: accepted by the column checks, reported
decoded by the input scan, and decoded in every table ReadPairs delivers."""

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline import io as pio
from pipeline.io import JobError
from pipeline.validate import decode_dictionaries, decode_schema, validate_table

TEXTS = ("text_a", "text_b")
ROWS = [  # pair_id, text_a, text_b, the reason it must be rejected for (or None)
    ("p1", "How do I learn Python?", "Fastest way to learn Python?", None),
    ("p2", "", "blank left", "empty_text"),
    ("p3", "null right", None, "null_text"),
    ("p4", "How do I learn Python?", "   ", "empty_text"),
    ("p5", "Cheap laptops", "Fastest way to learn Python?", None),
    ("", "empty id", "x", "empty_id"),
]


def _dictionary(values, index_type=None, value_type=None):
    """A DictionaryArray as pandas writes a categorical: indices into distinct values."""
    distinct = sorted({v for v in values if v is not None})
    indices = [None if v is None else distinct.index(v) for v in values]
    return pa.DictionaryArray.from_arrays(
        pa.array(indices, index_type or pa.int32()), pa.array(distinct, value_type or pa.string())
    )


def _write(path, rows=ROWS, id_dictionary=True, **kinds):
    ids, a, b, _ = zip(*rows)
    table = pa.table({
        "pair_id": _dictionary(ids) if id_dictionary else pa.array(ids),
        "text_a": _dictionary(a, pa.int8(), pa.large_string()),
        "text_b": _dictionary(b),
        "source": _dictionary(["s1" if i % 2 else "s2" for i in range(len(rows))]),
    })
    pq.write_table(table, str(path))
    return table


def test_parquet_really_reads_back_dictionary_encoded(tmp_path):
    _write(tmp_path / "cat.parquet")
    for schema in (pq.read_schema(tmp_path / "cat.parquet"),
                   pq.read_table(tmp_path / "cat.parquet").schema):
        for col in ("pair_id", "text_a", "text_b", "source"):
            assert pa.types.is_dictionary(schema.field(col).type), schema


def test_check_columns_accepts_dictionary_text_id_and_keep_columns(tmp_path):
    _write(tmp_path / "cat.parquet")
    raw = pq.read_schema(tmp_path / "cat.parquet")
    pio.check_columns(raw, "cat.parquet", "pair_id", TEXTS, ["source"])
    scan = pio.scan_inputs(str(tmp_path / "cat.parquet"))
    pio.check_columns(scan.schema, "cat.parquet", "pair_id", TEXTS, ["source"])


def test_scan_reports_the_schema_decoded(tmp_path):
    _write(tmp_path / "cat.parquet")
    scan = pio.scan_inputs(str(tmp_path / "cat.parquet"))
    assert scan.rows == len(ROWS)
    assert scan.schema == pa.schema([("pair_id", pa.string()), ("text_a", pa.string()),
                                     ("text_b", pa.string()), ("source", pa.string())])


def test_categorical_and_plain_files_are_one_input(tmp_path):
    _write(tmp_path / "a.parquet")
    ids, a, b, _ = zip(*ROWS)
    pq.write_table(pa.table({"pair_id": ids, "text_a": a, "text_b": b,
                             "source": ["s"] * len(ROWS)}), tmp_path / "b.parquet")
    scan = pio.scan_inputs(str(tmp_path / "*.parquet"))
    assert scan.rows == 2 * len(ROWS) and len(scan.files) == 2


def test_a_dictionary_of_non_strings_is_not_text(tmp_path):
    schema = pa.schema([("pair_id", pa.string()), ("text_a", pa.dictionary(pa.int32(), pa.int64())),
                        ("text_b", pa.string())])
    with pytest.raises(JobError, match=r"text column 'text_a' has type dictionary<values=int64"):
        pio.check_columns(schema, "f.parquet", "pair_id", TEXTS, [])


def test_decoded_table_validates_like_a_plain_one(tmp_path):
    _write(tmp_path / "cat.parquet")
    table = decode_dictionaries(pq.read_table(tmp_path / "cat.parquet"))
    assert not any(pa.types.is_dictionary(f.type) for f in table.schema)
    valid, rejects = validate_table(table, "pair_id", TEXTS)
    expected_valid = [r[0] for r in ROWS if r[3] is None]
    assert valid["pair_id"].to_pylist() == expected_valid
    assert dict(zip(rejects["pair_id"].to_pylist(), rejects["reason"].to_pylist())) == {
        r[0]: r[3] for r in ROWS if r[3] is not None
    }
    assert valid.num_rows + rejects.num_rows == len(ROWS)
    # The same rows, written plainly, split the same way.
    ids, a, b, _ = zip(*ROWS)
    plain = pa.table({"pair_id": ids, "text_a": a, "text_b": b})
    plain_valid, plain_rejects = validate_table(plain, "pair_id", TEXTS)
    assert valid.select(["pair_id", *TEXTS]).equals(plain_valid)
    assert rejects.select(["pair_id", *TEXTS, "reason"]).equals(plain_rejects)


def test_decode_is_a_no_op_without_dictionaries():
    table = pa.table({"pair_id": ["a"], "text_a": ["x"]})
    assert decode_dictionaries(table) is table


def test_nested_dictionaries_are_decoded():
    tags = pa.array([["x", "y"], None], pa.list_(pa.dictionary(pa.int8(), pa.string())))
    meta = pa.StructArray.from_arrays([_dictionary(["k", "k"])], ["key"])
    table = decode_dictionaries(pa.table({"tags": tags, "meta": meta}))
    assert table.schema == pa.schema([("tags", pa.list_(pa.string())),
                                      ("meta", pa.struct([("key", pa.string())]))])
    assert table.to_pylist() == [{"tags": ["x", "y"], "meta": {"key": "k"}},
                                 {"tags": None, "meta": {"key": "k"}}]
    assert decode_schema(pa.schema([("tags", tags.type)], metadata={"a": "b"})).metadata == {
        b"a": b"b"}


def test_read_pairs_delivers_decoded_tables(tmp_path):
    _write(tmp_path / "cat.parquet")
    scan = pio.scan_inputs(str(tmp_path / "cat.parquet"))
    with test_pipeline.TestPipeline() as p:
        tables = p | pio.ReadPairs(str(tmp_path / "cat.parquet"))
        schemas = tables | beam.Map(lambda t: str(t.schema.remove_metadata()))
        rows = tables | beam.FlatMap(lambda t: t.to_pylist())
        assert_that(schemas, equal_to([str(scan.schema)]), label="Decoded")
        assert_that(rows | beam.Map(lambda r: r["pair_id"]), equal_to([r[0] for r in ROWS]),
                    label="Rows")
