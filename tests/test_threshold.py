"""`pairscore threshold`: a threshold for a target precision or recall with an exact
binomial lower bound, checked against an independent oracle (scipy's binomtest, a
brute-force sweep), and the model directory it writes."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

from model.threshold import ThresholdError, choose_threshold, lower_bound
from pipeline import cli, job
from tests.conftest import shared_data


def _oracle_bound(k: int, n: int, confidence: float) -> float:
    if k == 0 or n == 0:
        return 0.0
    return binomtest(k, n, alternative="greater").proportion_ci(confidence, "exact").low


def _oracle(scores, labels, metric, target, confidence):
    """Every distinct score as a cut, one at a time: (tp, predicted) of the best cut
    meeting the target, or None."""
    positives = int(sum(labels))
    best = None
    for t in sorted(set(scores), reverse=True):
        pred = [s >= t for s in scores]
        tp = sum(p and y for p, y in zip(pred, labels))
        n_pred = sum(pred)
        trials = n_pred if metric == "precision" else positives
        if _oracle_bound(tp, trials, confidence) < target:
            continue
        if metric == "recall":
            return tp, n_pred  # the highest cut that meets it
        if best is None or (tp, -n_pred) > (best[0], -best[1]):
            best = (tp, n_pred)
    return best


def test_lower_bound_matches_scipy_binomtest():
    for k, n in [(1, 1), (5, 10), (95, 100), (0, 7), (400, 408), (3, 3)]:
        for c in (0.8, 0.95, 0.99):
            assert lower_bound(k, n, c) == pytest.approx(_oracle_bound(k, n, c), abs=1e-9)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 30).map(lambda x: x / 30), st.booleans()),
             min_size=1, max_size=80),
    st.sampled_from(["precision", "recall"]),
    st.sampled_from([0.5, 0.7, 0.9]),
    st.sampled_from([0.8, 0.95]),
)
def test_choice_matches_a_brute_force_oracle(rows, metric, target, confidence):
    scores = np.array([s for s, _ in rows])
    labels = np.array([y for _, y in rows])
    assume(labels.any())
    want = _oracle(list(scores), list(labels), metric, target, confidence)
    if want is None:
        with pytest.raises(ThresholdError, match="no threshold reaches"):
            choose_threshold(scores, labels, metric, target, confidence)
        return
    got = choose_threshold(scores, labels, metric, target, confidence)
    predicted = scores >= got.threshold
    assert (int((predicted & labels).sum()), int(predicted.sum())) == want
    assert (got.predicted, round(got.precision * got.predicted)) == (want[1], want[0])
    assert got.lower_bound >= target


def test_too_few_labels_are_refused_with_the_best_achievable_figure():
    scores = np.linspace(0, 1, 20)
    labels = scores > 0.5  # a perfect model, 10 duplicates
    with pytest.raises(ThresholdError) as e:
        choose_threshold(scores, labels, "precision", 0.99, 0.95)
    message = str(e.value)
    assert "the best is 0.7411" in message  # 0.05 ** (1 / 10), every duplicate right
    assert "at least 299 predicted duplicates" in message
    # The same labels support a lower target.
    ok = choose_threshold(scores, labels, "precision", 0.7, 0.95)
    # Midway between the lowest duplicate's score and the highest other one.
    assert ok.precision == 1.0 and ok.recall == 1.0
    assert ok.threshold == pytest.approx((scores[9] + scores[10]) / 2)


@pytest.fixture(scope="module")
def mrpc_subset(tmp_path_factory):
    """200 real MRPC dev pairs (pair_id, text_a, text_b, label)."""
    table = pq.read_table(shared_data("mrpc_dev.parquet")).slice(0, 200)
    path = tmp_path_factory.mktemp("labelled") / "mrpc200.parquet"
    pq.write_table(table, path)
    return path, table


def test_threshold_command_on_real_pairs_writes_the_model_with_its_record(
    tmp_path, bilstm_model, mrpc_subset, capsys
):
    labelled, table = mrpc_subset
    out = tmp_path / "m2"
    capsys.readouterr()
    code = cli.main(["threshold", "--model", bilstm_model, "--labelled", str(labelled),
                     "--target-recall", "0.8", "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    printed = json.loads(capsys.readouterr().out)
    meta = json.loads((out / "pairscore.json").read_text())
    with open(f"{bilstm_model}/pairscore.json") as f:
        old = json.load(f)
    assert meta["threshold"] == printed["threshold"]
    record = meta["threshold_choice"]
    assert (record["metric"], record["target"], record["n"]) == ("recall", 0.8, 200)
    assert record["data_fingerprint"] and record["bound"].startswith("clopper-pearson")
    # Everything else is the original model's, byte for byte.
    assert {k: v for k, v in meta.items() if k not in ("threshold", "threshold_choice")} == {
        k: v for k, v in old.items() if k not in ("threshold", "threshold_choice")}

    # The oracle on the same scores the job gives: recall's lower bound really holds.
    result = job.run(["--input", str(labelled), "--output", str(tmp_path / "run"),
                      "--model", str(out), "--mode", "pairs"])
    assert result.summary["threshold"] == record["threshold"]
    labels = pq.read_table(tmp_path / "run" / "labels")
    dup = dict(zip(labels["pair_id"].to_pylist(), labels["is_duplicate"].to_pylist()))
    truth = dict(zip(table["pair_id"].to_pylist(), table["label"].to_pylist()))
    tp = sum(1 for a, d in dup.items() if d and truth[a] == 1)
    positives = sum(1 for a in dup if truth[a] == 1)
    assert tp == round(record["recall"] * record["positives"])
    assert _oracle_bound(tp, positives, 0.95) >= 0.8


def test_an_unreachable_target_is_refused_in_one_line(tmp_path, bilstm_model, mrpc_subset,
                                                     capsys):
    labelled, _ = mrpc_subset
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main(["threshold", "--model", bilstm_model, "--labelled", str(labelled),
                  "--target-precision", "0.999", "--output", str(tmp_path / "m2")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pairscore threshold: error: no threshold")
    assert "the best is" in err[0]
    assert not (tmp_path / "m2").exists()


def test_labels_are_required(tmp_path, bilstm_model, capsys):
    path = tmp_path / "unlabelled.parquet"
    pq.write_table(pa.table({"text_a": ["a b"], "text_b": ["c d"]}), path)
    with pytest.raises(SystemExit) as e:
        cli.main(["threshold", "--model", bilstm_model, "--labelled", str(path),
                  "--target-recall", "0.9", "--output", str(tmp_path / "m2")])
    assert e.value.code == 2
    assert "needs 0/1 labels in 'label'" in capsys.readouterr().err
