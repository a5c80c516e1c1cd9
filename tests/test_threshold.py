"""`pairscore threshold`: a threshold for a target precision or recall with an exact
binomial lower bound, checked against an independent oracle (scipy's binomtest, a
brute-force sweep), a Monte Carlo of how often a precision claim is false, and the model
directory it writes."""

import itertools
import json
import math

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
    """Every distinct score as a cut, one at a time: (tp, predicted) of the cut chosen, or
    None. Recall: the highest cut meeting the target. Precision: fixed-sequence testing
    from the first cut keeping max(k, 5% of the pairs) pairs, k the fewest all-correct
    pairs whose bound reaches the target, down to the first cut that fails; of those that
    passed, the most true positives, then the fewest predicted."""
    positives = int(sum(labels))
    need = next(k for k in itertools.count(1) if _oracle_bound(k, k, confidence) >= target)
    first = max(need, math.ceil(0.05 * len(scores)))
    best = None
    for t in sorted(set(scores), reverse=True):
        pred = [s >= t for s in scores]
        tp = sum(p and y for p, y in zip(pred, labels))
        n_pred = sum(pred)
        if metric == "recall":
            if _oracle_bound(tp, positives, confidence) >= target:
                return tp, n_pred  # the highest cut that meets it
            continue
        if n_pred < first:
            continue  # not in the sequence
        if _oracle_bound(tp, n_pred, confidence) < target:
            return best  # the sequence stops at its first failure
        if best is None or tp > best[0]:
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


def test_the_precision_sequence_stops_at_its_first_failure():
    """Top 59 right, the 60th wrong, then 400 right: 59 of 60 fails at 0.95, so the cuts
    below it, which pass one by one (459 of 460: 0.9883), are never claimed."""
    labels = np.array([True] * 59 + [False] + [True] * 400 + [False] * 540)
    scores = np.linspace(1, 0, len(labels))
    got = choose_threshold(scores, labels, "precision", 0.95, 0.95)
    assert (got.predicted, got.precision) == (59, 1.0)
    assert got.procedure.startswith("fixed-sequence testing: every cut from the first "
                                    "with 59 predicted duplicates down, each at level 0.05")
    assert got.tested == 2
    # With the top label wrong the first test fails, and the message says so.
    labels[0] = False
    with pytest.raises(ThresholdError) as e:
        choose_threshold(scores, labels, "precision", 0.95, 0.95)
    message = str(e.value)
    assert message.startswith("no threshold reaches a 0.95 lower bound of precision >= 0.95 "
                              "on 1000 labelled pairs (458 duplicates) by fixed-sequence")
    assert "the first cut tested, threshold 0.941942 (the top 59 scores), has 58 " in message
    assert "even a perfect model needs at least 59 predicted duplicates, all correct" in message


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
    assert record["procedure"].startswith("the highest cut whose bound meets the target")
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
    assert "the best is" in err[0] and "a perfect model needs at least 2995" in err[0]
    assert not (tmp_path / "m2").exists()


def test_labels_are_required(tmp_path, bilstm_model, capsys):
    path = tmp_path / "unlabelled.parquet"
    pq.write_table(pa.table({"text_a": ["a b"], "text_b": ["c d"]}), path)
    with pytest.raises(SystemExit) as e:
        cli.main(["threshold", "--model", bilstm_model, "--labelled", str(path),
                  "--target-recall", "0.9", "--output", str(tmp_path / "m2")])
    assert e.value.code == 2
    assert "needs 0/1 labels in 'label'" in capsys.readouterr().err


# A Monte Carlo of the precision claim's error rate: seeded synthetic scores, no model.
MC_PAIRS, MC_TARGET, MC_CONFIDENCE = 2000, 0.95, 0.95


def _claims(probability, draws: int, seed: int):
    """`draws` sets of MC_PAIRS uniform scores with labels drawn at P(duplicate | score) =
    probability(score); per draw, None if no threshold is claimed, else the true
    precision of the pairs the claimed threshold keeps (mean probability over them)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        scores = rng.random(MC_PAIRS)
        p = probability(scores)
        labels = rng.random(MC_PAIRS) < p
        try:
            got = choose_threshold(scores, labels, "precision", MC_TARGET, MC_CONFIDENCE)
        except ThresholdError:
            out.append(None)
            continue
        out.append(float(p[scores >= got.threshold].mean()))
    return out


NULLS = {
    # Labels independent of scores: every cut's precision is p, just under the target.
    "independent 0.94": lambda s: np.full(s.shape, 0.94),
    "independent 0.945": lambda s: np.full(s.shape, 0.945),
    # Precision not monotone in the threshold, below the target everywhere: the top
    # 5% worse than the next 45%.
    "non-monotone": lambda s: np.where(s > 0.95, 0.9, np.where(s > 0.5, 0.945, 0.5)),
}


@pytest.mark.parametrize("case", sorted(NULLS))
def test_a_precision_claim_is_false_at_most_1_minus_confidence_of_the_time(case):
    draws = 2000
    claims = _claims(NULLS[case], draws, seed=sorted(NULLS).index(case))
    false = sum(1 for c in claims if c is not None and c < MC_TARGET)
    print(f"{case}: a false claim in {false} of {draws} draws ({false / draws:.2%})")
    alpha = 1 - MC_CONFIDENCE
    assert false / draws <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / draws), (
        f"{case}: a threshold claimed in {false} of {draws} draws")


def test_an_easy_case_still_gets_a_threshold():
    """Power: P(duplicate | score) = 1 / (1 + exp(-15 (score - 0.6))), the top third of
    pairs at true precision 0.97 or more. The earlier search over every cut claimed a
    threshold in all 200 draws (mean recall 0.67); fixed-sequence testing claims in 194
    (mean recall 0.64), and a false claim stays rare."""
    draws = 200
    claims = _claims(lambda s: 1 / (1 + np.exp(-15 * (s - 0.6))), draws, seed=11)
    made = [c for c in claims if c is not None]
    print(f"easy case: a threshold claimed in {len(made)} of {draws} draws, "
          f"{sum(c < MC_TARGET for c in made)} false")
    assert len(made) / draws >= 0.9
    assert sum(c < MC_TARGET for c in made) / draws <= 0.05
