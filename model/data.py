"""Read labelled pairs (Parquet, CSV or TSV, or a labels dataset) for training and evaluation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclasses.dataclass
class Pairs:
    """Parallel arrays of texts, binary labels (or None) and graded similarity (or None)."""

    text_a: list[str]
    text_b: list[str]
    labels: np.ndarray | None
    similarity: np.ndarray | None
    source: str
    # From a labels dataset (model/labels.py): its other columns, row for row (pair_id,
    # run_id, model_fingerprint, score, stratum, ...); None for a file of pairs.
    provenance: pa.Table | None = None
    # From a labels dataset: the pairs read but not kept, by why ("unsure",
    # "disagreements", "no_text").
    left_out: dict | None = None

    def __len__(self) -> int:
        return len(self.text_a)

    def subset(self, index: np.ndarray) -> Pairs:
        return Pairs(
            [self.text_a[i] for i in index],
            [self.text_b[i] for i in index],
            None if self.labels is None else self.labels[index],
            None if self.similarity is None else self.similarity[index],
            self.source,
            None if self.provenance is None else self.provenance.take(pa.array(index, pa.int64())),
            self.left_out,
        )


def read_table(path: str) -> pa.Table:
    """A Parquet, CSV or TSV file (by extension) as an Arrow table."""
    lower = path.lower()
    if lower.endswith((".csv", ".tsv", ".txt")):
        from pyarrow import csv

        delimiter = "," if lower.endswith(".csv") else "\t"
        return csv.read_csv(
            path,
            parse_options=csv.ParseOptions(delimiter=delimiter, quote_char='"'),
            convert_options=csv.ConvertOptions(strings_can_be_null=True),
        )
    import pyarrow.parquet as pq

    return pq.read_table(path)


def is_labels_dataset(path: str) -> bool:
    """Whether `path` is a labels dataset (a directory or prefix holding labels-*.parquet,
    model/labels.py) rather than one file of pairs."""
    from model import labels

    if path.lower().endswith((".parquet", ".csv", ".tsv", ".txt")):
        return False
    return bool(labels.files(path))


def read_labels_dataset(path: str) -> Pairs:
    """The labelled pairs of a labels dataset: each pair once, with its labellers' common
    label (labels.resolve: the latest label of each labeller); pairs all labellers were
    unsure of, pairs they disagree on and pairs without both texts are left out and
    counted in `left_out`. `provenance` keeps the dataset's other columns."""
    from model import labels

    resolved, disagreements = labels.resolve(labels.read_labels(path))
    label = resolved["label"]
    has_text = pc.and_(pc.is_valid(resolved["text_a"]), pc.is_valid(resolved["text_b"]))
    disputed = pc.is_in(resolved["pair_id"], disagreements["pair_id"])
    keep = pc.and_(pc.is_valid(label), has_text)
    left_out = {
        "disagreements": disagreements.num_rows,
        "unsure": int(pc.sum(pc.and_(pc.is_null(label), pc.invert(disputed))).as_py() or 0),
        "no_text": int(pc.sum(pc.and_(pc.is_valid(label), pc.invert(has_text))).as_py() or 0),
    }
    kept = resolved.filter(keep)
    if kept.num_rows == 0:
        raise ValueError(f"labels dataset {path}: no pair labelled 0 or 1 ({resolved.num_rows} "
                         f"pairs: {left_out['unsure']} unsure, {left_out['disagreements']} "
                         f"disagreed on, {left_out['no_text']} without texts)")
    provenance = kept.drop_columns(["text_a", "text_b", "label", "labeller", "labelled_at"])
    return Pairs(kept["text_a"].to_pylist(), kept["text_b"].to_pylist(),
                 kept["label"].to_numpy(zero_copy_only=False).astype(np.float32), None, path,
                 provenance, left_out)


def read_pairs(
    path: str,
    text_a_column: str = "text_a",
    text_b_column: str = "text_b",
    label_column: str = "label",
    similarity_column: str = "similarity",
) -> Pairs:
    """Pairs with non-empty texts; rows with a null text are dropped.

    Labels are kept only when every row carries 0 or 1 (graded sets use -1 or omit
    them), similarity only when the column exists and has values. A labels dataset
    (is_labels_dataset) is read by read_labels_dataset: its own columns, the column
    arguments do not apply.
    """
    if is_labels_dataset(path):
        return read_labels_dataset(path)
    table = read_table(path)
    for col in (text_a_column, text_b_column):
        if col not in table.column_names:
            raise ValueError(
                f"{path}: no column {col!r}; columns found: {', '.join(table.column_names)}"
            )
    keep = pc.and_(pc.is_valid(table[text_a_column]), pc.is_valid(table[text_b_column]))
    table = table.filter(keep)
    labels = similarity = None
    if label_column in table.column_names:
        raw = table[label_column].to_numpy(zero_copy_only=False)
        if len(raw) and np.isin(raw, [0, 1]).all():
            labels = raw.astype(np.float32)
    if similarity_column in table.column_names and table[similarity_column].null_count == 0:
        if len(table):
            similarity = table[similarity_column].to_numpy(zero_copy_only=False).astype(
                np.float32
            )
    return Pairs(
        table[text_a_column].to_pylist(),
        table[text_b_column].to_pylist(),
        labels,
        similarity,
        path,
    )


def fingerprint(pairs: Pairs) -> str:
    """sha256 of the texts and labels, to name the training data in pairscore.json."""
    import hashlib

    digest = hashlib.sha256()
    for a, b in zip(pairs.text_a, pairs.text_b):
        digest.update(a.encode("utf-8", "surrogatepass") + b"\x00")
        digest.update(b.encode("utf-8", "surrogatepass") + b"\x01")
    if pairs.labels is not None:
        digest.update(pairs.labels.tobytes())
    return digest.hexdigest()[:16]
