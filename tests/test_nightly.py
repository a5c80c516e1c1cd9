"""The morning check: score histogram, baseline comparison, gates (each tripped by a real
run), `pairscore publish --accept`, canaries, the pairs nearest the threshold, progress."""

import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import PAIRS, write_pairs
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import cli, job, monitor, stages

# --- plain functions --------------------------------------------------------------------


def test_histogram_has_fixed_bins_and_keeps_every_score():
    scores = [0.0, 0.049, 0.05, 0.5, 0.999, 1.0, 1.2, -0.1, float("nan")]
    counts = monitor.histogram(scores)
    assert len(counts) == monitor.SCORE_BINS == len(monitor.SCORE_EDGES) - 1
    assert counts.sum() == 8  # NaN is not counted; out-of-range scores are clipped in
    assert counts[0] == 3 and counts[1] == 1 and counts[10] == 1 and counts[-1] == 3


def test_psi_is_zero_for_the_same_shares_and_large_for_a_shift():
    base = monitor.histogram(np.linspace(0, 1, 1000))
    assert monitor.psi(base, base * 7) == pytest.approx(0.0, abs=1e-12)
    shifted = monitor.histogram(np.clip(np.linspace(0, 1, 1000) + 0.3, 0, 1))
    assert monitor.psi(base, shifted) > 0.25
    # A small drift stays small.
    nudged = monitor.histogram(np.clip(np.linspace(0, 1, 1000) + 0.01, 0, 1))
    assert 0 < monitor.psi(base, nudged) < 0.1
    assert monitor.psi(base, np.zeros_like(base)) is None


def test_gates_trip_above_or_below_their_limits():
    summary = {"reject_rate": 0.2, "canaries": {"accuracy": 0.7},
               "baseline": {"score_psi": 0.3, "duplicate_rate_change": -0.06}}
    limits = {"max_score_psi": 0.25, "max_duplicate_rate_change": 0.05,
              "max_reject_rate": 0.25, "min_canary_accuracy": 0.9}
    gates = {g["gate"]: g for g in monitor.check_gates(limits, summary)}
    assert {k for k, g in gates.items() if g["tripped"]} == {
        "max_score_psi", "max_duplicate_rate_change", "min_canary_accuracy"}
    assert gates["max_duplicate_rate_change"]["value"] == pytest.approx(0.06)  # absolute
    text = monitor.describe_tripped(list(gates.values()))
    assert "--max-score-psi 0.25" in text and "--min-canary-accuracy 0.9" in text
    assert "--max-reject-rate" not in text
    assert monitor.check_gates({}, summary) == []
    # A figure that cannot be computed (nothing scored) trips its gate.
    empty = monitor.check_gates({"max_reject_rate": 0.5}, {"reject_rate": None})
    assert empty[0]["tripped"] and empty[0]["value"] is None


def test_canary_metrics_count_an_unscored_canary_as_wrong():
    m = monitor.canary_metrics([1, 1, 0, 0], [True, None, False, True], 3, 0.5)
    assert m["accuracy"] == 0.5 and m["scored"] == 3 and m["pairs"] == 4
    assert m["precision"] == 0.5 and m["recall"] == 0.5 and m["f1"] == 0.5


def _review_table(ids, scores, threshold):
    schema = monitor.review_schema(pa.field("pair_id", pa.string()),
                                   (pa.field("a", pa.string()), pa.field("b", pa.string())))
    rows = pa.table({"pair_id": ids, "a": ids, "b": ids})
    return rows, schema, monitor.review_rows(rows, scores, threshold, "pair_id", ("a", "b"),
                                             schema, len(ids))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1, width=32), min_size=1, max_size=80),
       st.integers(1, 10), st.integers(1, 6))
def test_nearest_over_batches_equals_nearest_over_all(scores, n, parts):
    ids = [f"r{i:03d}" for i in range(len(scores))]
    _, schema, whole = _review_table(ids, scores, 0.5)
    want = monitor.nearest(whole, n)
    fn = monitor.NearestFn(n, schema)
    accs = []
    for k in range(parts):  # batches spread over accumulators, as workers would
        acc = fn.create_accumulator()
        for start in range(k, len(scores), parts):
            acc = fn.add_input(acc, whole.slice(start, 1))
        accs.append(acc)
    got = fn.extract_output(fn.merge_accumulators(accs))
    assert got.to_pylist() == want.to_pylist()
    dist = np.abs(np.asarray(scores, np.float32).astype(np.float64) - 0.5)
    assert got.num_rows == min(n, len(scores))
    assert max(got["distance_to_threshold"].to_pylist()) <= np.sort(dist)[got.num_rows - 1] + 1e-6


def test_progress_line_names_done_total_rate_and_eta():
    line = monitor.progress_line(250, 1000, 10.0)
    assert line == "scored 250 of 1,000 pairs (25.0%), 25 pairs/s, ETA 30s"
    assert monitor.progress_line(10, 100_000, 1.0).endswith("ETA 2h46m")  # 99,990 at 10/s
    assert monitor.progress_line(5, None, 1.0) == "scored 5 pairs, 5 pairs/s"


# --- the job ------------------------------------------------------------------------------

ROWS = PAIRS[:5] + [(f"q{i}", f"question number {i} about python", f"python question {i}")
                    for i in range(20)]


def _score(src, out, model, *flags):
    return cli.main(["score", "--input", str(src), "--output", str(out), "--model", model,
                     *map(str, flags)])


def _summary(out):
    return json.loads((out / "summary.json").read_text())


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def night(tmp_path_factory, bilstm_model):
    """One real run, the others' baseline: (src, out, summary, the job's log lines).
    A progress line after every batch."""
    root = tmp_path_factory.mktemp("night")
    src, out = root / "pairs.parquet", root / "out"
    write_pairs(src, ROWS)
    lines, log = _Lines(), logging.getLogger("pairscore.job")
    log.addHandler(lines)
    level, log.level = log.level, logging.INFO
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(stages.score._ThresholdFn, "PROGRESS_EVERY_S", 0.0)
            assert _score(src, out, bilstm_model, "--review-pairs", 7, "--threshold", 0.5,
                          "--batch-size", 4) == 0
    finally:
        log.removeHandler(lines)
        log.setLevel(level)
    return src, out, _summary(out), lines.lines


def test_a_run_reports_its_histogram_rates_and_review_pairs(night):
    src, out, summary, _ = night
    labels = pq.read_table(out / "labels")
    scores = labels["score"].to_numpy()
    assert summary["scores"]["counts"] == monitor.histogram(scores).tolist()
    assert summary["scores"]["edges"] == list(monitor.SCORE_EDGES)
    assert summary["duplicate_rate"] == pytest.approx(labels["is_duplicate"].to_numpy().mean())
    assert summary["reject_rate"] == summary["rejected"] / summary["rows_in"]
    assert summary["gates"] == [] and summary["baseline"] is None
    assert (out / "report.html").stat().st_size > 1000
    # The 7 pairs nearest the threshold, with both texts, nearest first.
    review = pq.read_table(out / "review")
    assert summary["review"]["pairs"] == review.num_rows == 7
    dist = np.abs(scores.astype(np.float64) - 0.5)
    assert np.allclose(sorted(review["distance_to_threshold"].to_numpy()),
                       np.sort(dist)[:7], atol=1e-6)
    by_id = {r[0]: r for r in ROWS}
    for row in review.to_pylist():
        assert (row["text_a"], row["text_b"]) == by_id[row["pair_id"]][1:]
        assert row["label"] is None
    assert review["distance_to_threshold"].to_pylist() == sorted(
        review["distance_to_threshold"].to_pylist())


def test_a_run_compared_with_itself_has_no_drift(night, tmp_path, bilstm_model):
    src, base, _, _ = night
    out = tmp_path / "out"
    assert _score(src, out, bilstm_model, "--baseline", base, "--threshold", 0.5,
                  "--max-score-psi", 0.01, "--max-duplicate-rate-change", 0.0) == 0
    summary = _summary(out)
    assert summary["baseline"]["score_psi"] == pytest.approx(0.0, abs=1e-9)
    assert summary["baseline"]["duplicate_rate_change"] == 0.0
    assert summary["baseline"]["output"] == str(base)
    assert [g["tripped"] for g in summary["gates"]] == [False, False]
    assert (out / "_SUCCESS").exists()


def _assert_gated(out, code, gate):
    assert code == 3  # not 2, which is bad input
    summary = _summary(out)
    assert summary["status"] == "gated"
    assert [g["gate"] for g in summary["gates"] if g["tripped"]] == [gate]
    assert monitor.GATES_BY_NAME[gate].flag in summary["error"]
    assert not (out / "_SUCCESS").exists() and not (out / "labels").exists()
    assert (out / "report.html").exists()
    assert summary["staged_files"] and all("/_staging/" in p for p in summary["staged_files"])
    return summary


def test_a_threshold_typo_trips_the_duplicate_rate_gate(night, tmp_path, bilstm_model, capsys):
    src, base, before, _ = night
    out = tmp_path / "out"
    # 1.0 for 0.5: nothing is a duplicate tonight.
    code = _score(src, out, bilstm_model, "--baseline", base, "--threshold", 1.0,
                  "--max-duplicate-rate-change", 0.05)
    summary = _assert_gated(out, code, "max_duplicate_rate_change")
    assert summary["duplicate_rate"] == 0.0 < before["duplicate_rate"] - 0.05
    assert summary["baseline"]["duplicate_rate_change"] == pytest.approx(
        -before["duplicate_rate"])
    err = capsys.readouterr().err
    assert "pairscore score: gated: " in err and f"pairscore publish {out} --accept" in err

    # A gated night is no baseline for the next.
    assert _score(src, tmp_path / "next", bilstm_model, "--baseline", out) == 2
    assert "that run was not published (status 'gated')" in capsys.readouterr().err

    # Accepting re-counts the staged rows: with one lost, it refuses.
    label_file = next(p for p in summary["staged_files"] if "/labels/" in p)
    table = pq.read_table(label_file)
    pq.write_table(table.slice(1), label_file)
    assert cli.main(["publish", str(out), "--accept"]) == 2
    err = capsys.readouterr().err
    assert "cannot accept run" in err and "score the night again" in err
    assert not (out / "_SUCCESS").exists() and _summary(out)["status"] == "gated"
    assert not (out / "_RUN.json").exists()  # the marker taken for the check is let go

    # A person looks, then publishes it without scoring again.
    pq.write_table(table, label_file)
    assert cli.main(["publish", str(out), "--accept"]) == 0
    published = _summary(out)
    assert published["status"] == "published" and (out / "_SUCCESS").exists()
    assert published["accepted"]["gates"][0]["gate"] == "max_duplicate_rate_change"
    assert pq.read_table(out / "labels").num_rows == published["scored"]
    assert pq.read_table(out / "review").num_rows == published["review"]["pairs"]
    assert not (out / "_staging").exists() and not (out / "_RUN.json").exists()
    assert "staged_files" not in published
    # Once only.
    assert cli.main(["publish", str(out), "--accept"]) == 2
    assert "already published" in capsys.readouterr().err


def test_a_shifted_score_distribution_trips_the_psi_gate(night, tmp_path, bilstm_model):
    src, base, _, _ = night
    # Yesterday's night put every score in the top bin (hand-written baseline summary).
    yesterday = tmp_path / "yesterday"
    yesterday.mkdir()
    counts = [0] * monitor.SCORE_BINS
    counts[-1] = 1000
    (yesterday / "summary.json").write_text(json.dumps({
        "status": "published", "run_id": "r0", "duplicate_rate": 1.0, "reject_rate": 0.0,
        "scores": monitor.histogram_dict(counts)}))
    out = tmp_path / "out"
    code = _score(src, out, bilstm_model, "--baseline", yesterday, "--max-score-psi", 0.25)
    summary = _assert_gated(out, code, "max_score_psi")
    assert summary["baseline"]["score_psi"] > 0.25
    assert summary["baseline"]["run_id"] == "r0"


def test_an_emptied_text_column_trips_the_reject_rate_gate(tmp_path, bilstm_model):
    src, out = tmp_path / "pairs.parquet", tmp_path / "out"
    write_pairs(src, [(i, a, "") for i, a, _ in ROWS[:20]] + ROWS[20:])
    code = _score(src, out, bilstm_model, "--max-reject-rate", 0.1)
    summary = _assert_gated(out, code, "max_reject_rate")
    assert summary["reject_rate"] == pytest.approx(20 / len(ROWS))
    assert summary["rejected_by_reason"] == {"empty_text": 20}


def _canaries(path, rows):
    pq.write_table(pa.table({
        "pair_id": [f"c{i}" for i in range(len(rows))],
        "text_a": [a for a, _, _ in rows], "text_b": [b for _, b, _ in rows],
        "label": pa.array([lab for _, _, lab in rows], pa.int8())}), path)


CANARIES = [("same words here", "same words here", 1),
            ("a cat on a mat", "a cat on a mat", 1),
            ("how do i cook rice", "the stock market fell today", 0),
            ("python lists", "jupiter is a gas giant", 0),
            ("x", "", 1)]  # rejected (empty text): counts as wrong


@pytest.mark.parametrize("mode", ["pairs", pytest.param("unique", marks=pytest.mark.slow)])
def test_canaries_are_scored_with_the_run_and_gate_it(tmp_path, bilstm_model, mode):
    src, canaries = tmp_path / "pairs.parquet", tmp_path / "canaries.parquet"
    write_pairs(src, ROWS)
    _canaries(canaries, CANARIES)
    out = tmp_path / "out"
    # Threshold 0: every scored canary is predicted a duplicate.
    code = _score(src, out, bilstm_model, "--mode", mode, "--threshold", 0.0,
                  "--canaries", canaries, "--min-canary-accuracy", 0.9)
    summary = _assert_gated(out, code, "min_canary_accuracy")
    c = summary["canaries"]
    assert (c["pairs"], c["scored"], c["accuracy"]) == (5, 4, 0.4)
    assert c["precision"] == 0.5 and c["recall"] == pytest.approx(2 / 3)
    assert c["file"] == str(canaries) and c["threshold"] == 0.0
    # The canaries are not the night's: its counts hold only the input's rows.
    assert summary["rows_in"] == len(ROWS) == summary["scored"] + summary["rejected"]


@pytest.mark.slow
def test_canaries_that_pass_do_not_hold_the_run(tmp_path, bilstm_model):
    src, canaries, out = tmp_path / "pairs.parquet", tmp_path / "c.parquet", tmp_path / "out"
    write_pairs(src, ROWS)
    _canaries(canaries, CANARIES)
    assert _score(src, out, bilstm_model, "--threshold", 0.0, "--canaries", canaries,
                  "--min-canary-accuracy", 0.4, "--review-pairs", 0) == 0
    summary = _summary(out)
    assert summary["canaries"]["accuracy"] == 0.4 and summary["status"] == "published"
    assert not summary["gates"][0]["tripped"]
    assert not (out / "review").exists() and summary["review"] is None


@pytest.mark.parametrize("flags, message", [
    (["--max-score-psi", "0.2"], "--max-score-psi compares with a baseline"),
    (["--max-duplicate-rate-change", "0.1"], "give --baseline PREVIOUS_OUT"),
    (["--min-canary-accuracy", "0.9"], "--min-canary-accuracy needs --canaries"),
    (["--max-reject-rate", "1.5"], "--max-reject-rate 1.5 is outside [0, 1]"),
    (["--review-pairs", "-1"], "--review-pairs -1"),
    (["--baseline", "{tmp}/nowhere"], "--baseline {tmp}/nowhere: no summary.json there"),
    (["--baseline", "{tmp}/tenbins"], "its score histogram has other bins"),
    (["--canaries", "{tmp}/pairs.parquet"], "column(s) label missing"),
    (["--canaries", "{tmp}/bad.parquet"], "row 1: label 2, expected 0 or 1"),
])
def test_bad_morning_check_flags_stop_the_run_before_any_work(tmp_path, bilstm_model, capsys,
                                                              flags, message):
    src, out = tmp_path / "pairs.parquet", tmp_path / "out"
    write_pairs(src, ROWS)
    _canaries(tmp_path / "bad.parquet", [("a", "b", 1), ("c", "d", 2)])
    (tmp_path / "tenbins").mkdir()
    (tmp_path / "tenbins" / "summary.json").write_text(json.dumps({
        "status": "published", "scores": {"edges": [i / 10 for i in range(11)],
                                          "counts": [1] * 10}}))
    flags = [f.format(tmp=tmp_path) for f in flags]
    capsys.readouterr()
    assert _score(src, out, bilstm_model, *flags) == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err
    assert not out.exists()


def test_progress_lines_name_done_of_rows_in_and_an_eta(night):
    lines = [line for line in night[3] if line.startswith("scored ")]
    assert len(lines) >= 2, night[3]
    assert all(f" of {len(ROWS)} pairs (" in line and "ETA" in line for line in lines)
    assert lines[-1].startswith(f"scored {len(ROWS)} of {len(ROWS)} pairs (100.0%)")


def test_the_nights_counters_leave_the_canaries_out(tmp_path, bilstm_model):
    """Beam's counters of a run with canaries: the night's names count the input's rows
    only (so rows_scored / rows_in never passes 100%); the canaries' rows count under
    canary_* names."""
    src, canaries, out = tmp_path / "pairs.parquet", tmp_path / "c.parquet", tmp_path / "out"
    write_pairs(src, ROWS)
    _canaries(canaries, CANARIES)
    result = job.run(["--input", str(src), "--output", str(out), "--model", bilstm_model,
                      "--threshold", "0.0", "--canaries", str(canaries), "--review-pairs", "0"])
    summary, counters = result.summary, result.summary["counters"]
    assert counters["rows_in"] == summary["rows_in"] == len(ROWS)
    assert counters["rows_read"] == len(ROWS)
    assert counters["rows_scored"] == summary["scored"]
    assert counters.get("rows_rejected", 0) == summary["rejected"]
    assert counters["canary_rows_read"] == len(CANARIES)
    assert counters["canary_rows_scored"] == summary["canaries"]["scored"] == 4
    assert counters["canary_rows_rejected"] == 1
    assert counters["model_calls"] >= 1 and counters["canary_model_calls"] >= 1
