"""What the morning check looks at: the score histogram, the comparison with a baseline
run, the gates, the canary pairs' metrics and the pairs scored nearest the threshold.

Plain functions, plus the `CombineFn`s the pipeline computes them with (`stages`), so each
figure is computed inside the job, on the workers, whatever the runner:

    histogram      fixed bins SCORE_EDGES (20 of width 0.05 on [0, 1])
    psi            population stability index of two histograms
    compare        this run's figures against a baseline run's summary.json
    check_gates    --max-score-psi, --max-duplicate-rate-change, --max-reject-rate,
                   --min-canary-accuracy
    canary_metrics accuracy, precision, recall, F1 of the canaries at the run's threshold
    nearest        the N rows scored nearest the threshold (pairs to review)
"""

from __future__ import annotations

import dataclasses
import math

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline.io import SUMMARY, JobError, read_summary

SCORE_BINS = 20
SCORE_EDGES = tuple(i / SCORE_BINS for i in range(SCORE_BINS + 1))
# A bin empty in one of the two histograms counts as this share in the PSI (ln 0 is
# undefined); the usual floor, which caps one bin's term near 0.0009 * ln(ratio).
PSI_FLOOR = 1e-4


# --- the score histogram -----------------------------------------------------------------


def histogram(scores) -> np.ndarray:
    """Counts of `scores` in SCORE_EDGES' bins; the last bin holds 1.0, scores outside
    [0, 1] are clipped into the end bins, NaN is not counted."""
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    values = np.clip(values[~np.isnan(values)], 0.0, 1.0)
    counts, _ = np.histogram(values, bins=SCORE_EDGES)
    return counts.astype(np.int64)


def histogram_dict(counts) -> dict:
    """The form summary.json stores: {"edges": 21 floats, "counts": 20 ints}."""
    return {"edges": list(SCORE_EDGES), "counts": [int(c) for c in counts]}


class ScoreHistogramFn(beam.CombineFn):
    """Label tables -> their scores' histogram (`histogram_dict`)."""

    def create_accumulator(self):
        return np.zeros(SCORE_BINS, np.int64)

    def add_input(self, acc, table):
        return acc + histogram(table["score"].to_numpy(zero_copy_only=False))

    def merge_accumulators(self, accs):
        return sum(accs, np.zeros(SCORE_BINS, np.int64))

    def extract_output(self, acc):
        return histogram_dict(acc)


def psi(expected, actual, floor: float = PSI_FLOOR) -> float | None:
    """Population stability index of `actual` against `expected` (two histograms on the
    same bins): sum over bins of (a - e) * ln(a / e), a and e the bins' shares, each at
    least `floor`. 0 for identical shares; above 0.25 is the usual "shifted". None when
    either histogram is empty."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape:
        raise ValueError(f"histograms on different bins: {e.shape[0]} and {a.shape[0]}")
    if e.sum() <= 0 or a.sum() <= 0:
        return None
    e = np.maximum(e / e.sum(), floor)
    a = np.maximum(a / a.sum(), floor)
    return float(np.sum((a - e) * np.log(a / e)))


def rate(part: int, whole: int | None) -> float | None:
    return part / whole if whole else None


def _change(now: float | None, then: float | None) -> float | None:
    return None if now is None or then is None else now - then


def baseline_of(summary: dict, output: str) -> dict:
    """What a run keeps of its baseline's summary.json (small: it travels with the job)."""
    return {
        "output": output,
        "run_id": summary.get("run_id"),
        "scores": summary["scores"],
        "duplicate_rate": summary.get("duplicate_rate"),
        "reject_rate": summary.get("reject_rate"),
    }


def compare(summary: dict, baseline: dict) -> dict:
    """summary.json's `baseline` field: the baseline's figures, the PSI of this run's
    scores against the baseline's, and the change (this run minus the baseline) of the
    duplicate and reject rates."""
    if list(baseline["scores"]["edges"]) != list(summary["scores"]["edges"]):
        raise ValueError("the baseline's score histogram has other bins than this run's")
    return {
        **baseline,
        "score_psi": psi(baseline["scores"]["counts"], summary["scores"]["counts"]),
        "duplicate_rate_change": _change(summary["duplicate_rate"],
                                         baseline["duplicate_rate"]),
        "reject_rate_change": _change(summary["reject_rate"], baseline["reject_rate"]),
    }


# --- gates -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Gate:
    name: str  # summary.json's name, and the JobConfig.gates key
    flag: str
    upper: bool  # True: trips above the limit; False: below it
    what: str

    def value(self, summary: dict) -> float | None:
        if self.name == "max_score_psi":
            return (summary.get("baseline") or {}).get("score_psi")
        if self.name == "max_duplicate_rate_change":
            change = (summary.get("baseline") or {}).get("duplicate_rate_change")
            return None if change is None else abs(change)
        if self.name == "max_reject_rate":
            return summary.get("reject_rate")
        if self.name == "min_canary_accuracy":
            return (summary.get("canaries") or {}).get("accuracy")
        raise KeyError(self.name)


GATES = (
    Gate("max_score_psi", "--max-score-psi", True, "PSI of the scores against the baseline"),
    Gate("max_duplicate_rate_change", "--max-duplicate-rate-change", True,
         "absolute change of the duplicate rate against the baseline"),
    Gate("max_reject_rate", "--max-reject-rate", True, "share of rows_in rejected"),
    Gate("min_canary_accuracy", "--min-canary-accuracy", False,
         "accuracy of the canary pairs at the run's threshold"),
)
GATES_BY_NAME = {g.name: g for g in GATES}


def check_gates(limits: dict, summary: dict) -> list[dict]:
    """summary.json's `gates`: one entry per gate that is set, with its figure and whether
    it tripped. A figure that cannot be computed (no rows scored, no rows in) trips its
    gate: a night with nothing to compare is not a night that looked like the others."""
    out = []
    for gate in GATES:
        limit = limits.get(gate.name)
        if limit is None:
            continue
        value = gate.value(summary)
        if value is None:
            tripped = True
        else:
            tripped = value > limit if gate.upper else value < limit
        out.append({"gate": gate.name, "flag": gate.flag, "limit": limit,
                    "value": None if value is None else round(float(value), 6),
                    "tripped": bool(tripped)})
    return out


def describe_tripped(gates: list[dict]) -> str:
    """One line naming each tripped gate with its figure and limit."""
    parts = []
    for g in gates:
        if not g["tripped"]:
            continue
        gate = GATES_BY_NAME[g["gate"]]
        value = "cannot be computed (no rows)" if g["value"] is None else f"{g['value']:.4g}"
        side = "above" if gate.upper else "below"
        parts.append(f"{g['flag']} {g['limit']:g}: {gate.what} is {value}"
                     + ("" if g["value"] is None else f", {side} the limit"))
    return "; ".join(parts)


# --- canaries ----------------------------------------------------------------------------


def canary_metrics(truth, predicted, scored: int, threshold: float) -> dict:
    """Accuracy, precision, recall and F1 of the canaries. `truth` holds every canary's
    label (0/1); `predicted` its is_duplicate, or None where the canary was not scored
    (rejected, failed in the model): a canary not scored counts as a wrong answer."""
    truth = np.asarray(truth, dtype=bool)
    got = np.array([p is not None for p in predicted], dtype=bool)
    pred = np.array([bool(p) for p in predicted], dtype=bool)
    right = got & (pred == truth)
    tp = int(np.sum(got & pred & truth))
    fp = int(np.sum(got & pred & ~truth))
    positives = int(np.sum(truth))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / positives if positives else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = len(truth)
    return {"pairs": n, "scored": scored, "accuracy": round(float(right.sum()) / n, 6),
            "precision": round(precision, 6), "recall": round(recall, 6),
            "f1": round(f1, 6), "threshold": threshold}


class CanaryFn(beam.CombineFn):
    """The canaries' label tables -> `canary_metrics`. Canary ids are 0..n-1 (row numbers
    of the canary file, as `JobConfig.canaries` holds them)."""

    def __init__(self, id_column: str, truth: list[int], threshold: float):
        self.id_column = id_column
        self.truth = truth
        self.threshold = threshold

    def create_accumulator(self):
        return {}

    def add_input(self, acc, table):
        ids = table[self.id_column].to_pylist()
        for i, dup in zip(ids, table["is_duplicate"].to_pylist()):
            acc[int(i)] = dup
        return acc

    def merge_accumulators(self, accs):
        out = {}
        for acc in accs:
            out.update(acc)
        return out

    def extract_output(self, acc):
        predicted = [acc.get(i) for i in range(len(self.truth))]
        return canary_metrics(self.truth, predicted, len(acc), self.threshold)


# --- the pairs nearest the threshold -----------------------------------------------------

REVIEW_DISTANCE = "distance_to_threshold"
REVIEW_LABEL = "label"


def review_schema(id_field: pa.Field, text_fields: tuple[pa.Field, pa.Field]) -> pa.Schema:
    """OUT/review/'s columns: the pair's id, its texts as text_a and text_b (the training
    data's names, so a labelled file feeds `pairscore train` and `pairscore threshold`),
    the score, its distance to the threshold, and an empty label to fill in."""
    return pa.schema([
        id_field,
        pa.field("text_a", text_fields[0].type),
        pa.field("text_b", text_fields[1].type),
        pa.field("score", pa.float32()),
        pa.field(REVIEW_DISTANCE, pa.float32()),
        pa.field(REVIEW_LABEL, pa.int8()),
    ])


def nearest(table: pa.Table, n: int) -> pa.Table:
    """The `n` rows of a review-schema table nearest the threshold, nearest first (ties
    by id, so the choice does not depend on the order rows arrive in)."""
    if table.num_rows <= n:
        idx = pc.sort_indices(table, [(REVIEW_DISTANCE, "ascending"),
                                      (table.column_names[0], "ascending")])
        return table.take(idx)
    dist = table[REVIEW_DISTANCE].to_numpy(zero_copy_only=False)
    # argpartition keeps the n smallest; rows tied with the n-th are then ordered by id.
    cut = np.partition(dist, n - 1)[n - 1]
    keep = table.filter(pa.array(dist <= cut))
    idx = pc.sort_indices(keep, [(REVIEW_DISTANCE, "ascending"),
                                 (keep.column_names[0], "ascending")])
    return keep.take(idx[:n])


def review_rows(rows: pa.Table, scores, threshold: float, id_column: str,
                text_columns: tuple[str, str], schema: pa.Schema, n: int) -> pa.Table:
    """A scored batch's `n` pairs nearest the threshold, in the review schema."""
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    dist = np.abs(scores.astype(np.float64) - threshold).astype(np.float32)
    table = pa.Table.from_arrays(
        [rows[id_column], rows[text_columns[0]], rows[text_columns[1]],
         pa.array(scores, pa.float32()), pa.array(dist, pa.float32()),
         pa.nulls(rows.num_rows, pa.int8())],
        schema=schema)
    return nearest(table, n)


class NearestFn(beam.CombineFn):
    """Review-schema tables -> one table of the `n` rows nearest the threshold. The
    accumulator holds at most 2n rows: it is cut back to n whenever it grows past that."""

    def __init__(self, n: int, schema: pa.Schema):
        self.n = n
        self.schema = schema

    def create_accumulator(self):
        return []

    def _cut(self, tables):
        if sum(t.num_rows for t in tables) <= 2 * self.n:
            return tables
        return [nearest(pa.concat_tables(tables), self.n)]

    def add_input(self, acc, table):
        return self._cut(acc + [table])

    def merge_accumulators(self, accs):
        return self._cut([t for acc in accs for t in acc])

    def extract_output(self, acc):
        if not acc:
            return self.schema.empty_table()
        return nearest(pa.concat_tables(acc), self.n)


def progress_line(done: int, total: int | None, elapsed: float) -> str:
    """`scored 120,000 of 1,000,000 pairs (12.0%), 2,300 pairs/s, ETA 6m23s`."""
    speed = done / elapsed if elapsed > 0 else 0.0
    if not total:
        return f"scored {done:,} pairs, {speed:,.0f} pairs/s"
    left = max(total - done, 0)
    eta = _duration(left / speed) if speed > 0 else "unknown"
    return (f"scored {done:,} of {total:,} pairs ({100.0 * done / total:.1f}%), "
            f"{speed:,.0f} pairs/s, ETA {eta}")


def _duration(seconds: float) -> str:
    seconds = int(math.ceil(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


# --- reading a baseline and canaries at launch ------------------------------------------

CANARY_COLUMNS = ("text_a", "text_b", "label")


def read_canaries(path: str, schema: pa.Schema, id_column: str,
                  text_columns: tuple[str, str]) -> tuple[pa.Table, list[int]]:
    """The canary file (the training data's schema: text_a, text_b, label 0/1) as a table
    in the job's input schema, ids 0..n-1 in its id column, other columns null; and the
    labels. `path` may also be a labels dataset (model/labels.py): its pairs labelled 0 or 1
    (people's labels as canaries; unsure and disputed pairs are left out). Raises JobError
    naming the file, row or column."""
    from model import data

    try:
        if data.is_labels_dataset(path):
            pairs = data.read_labels_dataset(path)
            table = pa.table({"text_a": pairs.text_a, "text_b": pairs.text_b,
                              "label": pa.array(pairs.labels.astype(np.int8))})
        else:
            with FileSystems.open(path, compression_type="uncompressed") as f:
                table = pq.read_table(f)
    except Exception as e:  # noqa: BLE001  (missing file, not Parquet: both name the file)
        raise JobError(f"--canaries {path}: not a readable Parquet file or labels dataset "
                       f"({type(e).__name__}: {e})") from None
    missing = [c for c in CANARY_COLUMNS if c not in table.column_names]
    if missing:
        raise JobError(f"--canaries {path}: column(s) {', '.join(missing)} missing; a canary "
                       f"file has the training data's columns {', '.join(CANARY_COLUMNS)}")
    if table.num_rows == 0:
        raise JobError(f"--canaries {path}: no rows")
    labels = table["label"].to_pylist()
    for row, label in enumerate(labels):
        if label not in (0, 1):
            raise JobError(f"--canaries {path}: row {row}: label {label!r}, expected 0 or 1")
    n = table.num_rows
    id_type = schema.field(id_column).type
    ids = (pa.array([str(i) for i in range(n)], id_type)
           if pa.types.is_string(id_type) or pa.types.is_large_string(id_type)
           else pa.array(range(n)).cast(id_type))
    cols = {}
    for field in schema:
        if field.name == id_column:
            cols[field.name] = ids
        elif field.name in text_columns:
            source = CANARY_COLUMNS[text_columns.index(field.name)]
            cols[field.name] = table[source].combine_chunks().cast(field.type)
        else:
            cols[field.name] = pa.nulls(n, field.type)
    return pa.Table.from_pydict(cols, schema=schema), [int(x) for x in labels]


def read_baseline(output: str) -> dict:
    """`baseline_of` a finished run's summary.json; JobError naming --baseline when the
    directory holds no finished run or one written before runs kept a histogram."""
    try:
        summary = read_summary(output)
    except Exception as e:  # noqa: BLE001  (unreadable JSON, storage error)
        raise JobError(f"--baseline {output}: cannot read its {SUMMARY} ({e})") from None
    if summary is None:
        raise JobError(f"--baseline {output}: no {SUMMARY} there; give the output "
                       "directory of a finished run")
    if summary.get("status") != "published":
        raise JobError(f"--baseline {output}: that run was not published (status "
                       f"{summary.get('status')!r}); compare with a night that was")
    if not summary.get("scores"):
        raise JobError(f"--baseline {output}: its {SUMMARY} has no score histogram (a "
                       "run from before pairscore kept one)")
    if list(summary["scores"].get("edges", [])) != list(SCORE_EDGES):
        raise JobError(f"--baseline {output}: its score histogram has other bins than "
                       f"this pairscore's ({SCORE_BINS} of width {1 / SCORE_BINS:g})")
    return baseline_of(summary, output)
