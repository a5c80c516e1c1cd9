"""Labels feed back: `pairscore threshold --labelled` and `pairscore train --train` take a
labels dataset (model/labels.py), threshold weighs labels of nights' samples by their
design (model/threshold.py, choose_threshold_stratified), and `--canaries` takes one too.

    .venv/bin/python -m pytest -q -s -p no:xdist tests/test_threshold_labels.py  # prints rates
"""

import datetime
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_pairs
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from model import data, labels, stratified
from model import threshold as T
from pipeline import review
from pipeline.cli import main

# A synthetic night in three strata of score ranges, as the job draws them (duplicate,
# near_threshold, non_duplicate), and P(duplicate | score) rising with the score. The
# near stratum is big and sampled like the small duplicate one: a labelled pair there
# stands for 167 pairs, one in the duplicate stratum for 25. Labels taken as a simple
# random sample overweigh the duplicate stratum, so their precision below its range is
# too high.
RANGES = [(0.7, 1.0), (0.5, 0.7), (0.0, 0.5)]
SIZES = (3000, 20000, 60000)
ALLOCATION = (120, 120, 60)


def make_night(seed: int = 7):
    rng = np.random.default_rng(seed)
    scores = [rng.uniform(lo, hi, n) for (lo, hi), n in zip(RANGES, SIZES)]
    truth = [rng.random(len(s)) < np.clip(0.2 + 0.8 * s, 0, 1) ** 3 for s in scores]
    return scores, truth


def true_precision(scores, truth):
    s, y = np.concatenate(scores), np.concatenate(truth)
    order = np.argsort(-s)
    cum = np.cumsum(y[order])

    def at(t):
        k = int((s >= t).sum())
        return cum[k - 1] / k
    return at


def draw_sample(rng, scores, truth):
    idx = [rng.choice(len(s), n, replace=False) for s, n in zip(scores, ALLOCATION)]
    sc = np.concatenate([scores[h][i] for h, i in enumerate(idx)])
    y = np.concatenate([truth[h][i] for h, i in enumerate(idx)])
    strata = np.concatenate([np.full(n, h) for h, n in enumerate(ALLOCATION)])
    return sc, y, T.Design(strata, ["duplicate", "near", "non"], np.array(SIZES), RANGES)


def false_claims(target: float, trials: int, draws: int, seed: int = 1) -> dict:
    """How often a precision claim at `target` is false on the night (the threshold's
    true precision below the target), weighed by the design and taken as a simple random
    sample."""
    scores, truth = make_night()
    at = true_precision(scores, truth)
    rng = np.random.default_rng(seed)
    out = {"stratified": [0, 0], "simple": [0, 0]}
    for _ in range(trials):
        sc, y, design = draw_sample(rng, scores, truth)
        for name in ("stratified", "simple"):
            try:
                c = (T.choose_threshold_stratified(sc, y, design, "precision", target,
                                                   draws=draws) if name == "stratified"
                     else T.choose_threshold(sc, y, "precision", target))
            except T.ThresholdError:
                continue
            out[name][0] += 1
            out[name][1] += bool(at(c.threshold) < target)
    rates = {k: {"claims": c, "false": f, "false_rate": f / trials} for k, (c, f) in out.items()}
    print(f"\nMonte Carlo target {target}, {trials} samples: {rates}")
    return rates


def test_a_weighed_precision_claim_is_false_at_most_1_minus_confidence_of_the_time():
    trials = 150
    got = false_claims(0.6, trials, draws=2000)
    se = np.sqrt(0.05 * 0.95 / trials)
    assert got["stratified"]["false_rate"] <= 0.05 + 3 * se, got
    assert got["stratified"]["claims"] >= 0.8 * trials, got  # it still finds thresholds
    # The same labels as a simple random sample: wrong most of the time.
    assert got["simple"]["false_rate"] > 0.2, got


@pytest.mark.slow
@pytest.mark.parametrize("target", [0.6, 0.7, 0.8])
def test_a_weighed_precision_claim_is_false_rarely_full_draws(target):
    trials = 300
    got = false_claims(target, trials, draws=stratified.DRAWS, seed=2)
    assert got["stratified"]["false_rate"] <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / trials), got


def test_a_weighed_recall_claim_holds():
    scores, truth = make_night()
    s, y = np.concatenate(scores), np.concatenate(truth)
    rng = np.random.default_rng(3)
    false = claims = 0
    for _ in range(60):
        sc, yy, design = draw_sample(rng, scores, truth)
        try:
            c = T.choose_threshold_stratified(sc, yy, design, "recall", 0.3, draws=2000)
        except T.ThresholdError:
            continue
        claims += 1
        false += ((s >= c.threshold) & y).sum() / y.sum() < 0.3
    assert claims >= 50 and false <= 6, (claims, false)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans(), st.integers(0, 2)),
                min_size=1, max_size=30))
def test_cell_counts_per_cut_match_a_brute_force_count(rows):
    scores = np.array([r[0] / 5 for r in rows])
    y = np.array([r[1] for r in rows])
    h = np.array([r[2] for r in rows])
    design = T.Design(h, ["a", "b", "c"], np.array([100, 100, 100]), [None, (0.0, 0.5), None])
    cut, threshold, counts, possible = T._stratified_cuts(scores, y, design)
    assert list(cut) == sorted(set(scores), reverse=True)
    for i, t in enumerate(cut):
        assert threshold[i] <= t and (i + 1 == len(cut) or threshold[i] > cut[i + 1])
        for j in range(3):
            m = h == j
            pred = m & (scores >= t)
            assert list(counts[i, j]) == [np.sum(pred & y), np.sum(pred & ~y),
                                          np.sum(m & ~pred & y), np.sum(m & ~pred & ~y)]
        # Stratum b's pairs all score at most 0.5: above that nothing of it is predicted.
        assert list(possible[i, 1]) == [0.5 >= threshold[i]] * 2 + [0.0 < threshold[i]] * 2
        assert possible[i, 0].all() and possible[i, 2].all()


def test_a_stratum_below_the_cut_does_not_count_and_one_left_is_clopper_pearson():
    """Above the near stratum's range only the duplicate stratum holds predicted pairs:
    the bound is its Clopper-Pearson bound (scipy the oracle). Not knowing the range
    (labels from another model) lets the big stratum's unseen pairs count against it."""
    k, n = 55, 60
    scores = np.r_[np.linspace(0.99, 0.8, n), np.linspace(0.69, 0.51, 40)]
    y = np.r_[np.arange(n) >= n - k, np.zeros(40, bool)]
    strata = np.r_[np.zeros(n, int), np.ones(40, int)]
    cut, threshold, counts, possible = T._stratified_cuts(
        scores, y, T.Design(strata, ["d", "n"], np.array([1000, 50000]), [(0.7, 1.0), (0.5, 0.7)]))
    i = n - 1  # the lowest cut of the duplicate stratum: all 60 predicted
    bound = stratified.lower_bound(counts[i], possible[i], [1000, 50000], "precision", 0.95)
    assert float(bound) == pytest.approx(stats.beta.ppf(0.05, k, n - k + 1), abs=0.006)
    _, _, counts2, possible2 = T._stratified_cuts(
        scores, y, T.Design(strata, ["d", "n"], np.array([1000, 50000]), [None, None]))
    blind = stratified.lower_bound(counts2[i], possible2[i], [1000, 50000], "precision", 0.95)
    assert float(blind) < float(bound) - 0.1


# --- the commands on a real run's labels ------------------------------------------------------

ROWS = [(f"p{i}", f"a question about topic {i % 7} number {i}",
         f"a question about topic {(i * 3) % 7} number {i + i % 2}") for i in range(120)]


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory, bilstm_model):
    """A real run of the tiny model with a sample of 60, every sampled pair labelled in
    the review page's own rows (review.label_row): 'people' say duplicate when the
    model's score is at least 0.5, and get every fifth pair scored under 0.545 wrong."""
    tmp = tmp_path_factory.mktemp("labelled-run")
    src, out, uri = tmp / "pairs.parquet", tmp / "out", str(tmp / "labels")
    write_pairs(src, ROWS)
    assert main(["score", "--input", str(src), "--output", str(out), "--model", bilstm_model,
                 "--review-sample", "60", "--review-sample-band", "0.02", "--threshold",
                 "0.5", "--mode", "pairs"]) == 0
    page = review.Review(str(out), uri)
    now = datetime.datetime(2026, 12, 3, 8, tzinfo=datetime.UTC)
    rows = []
    for i, pid in enumerate(page.pair_ids):
        pair = page.pairs[pid]
        wrong = i % 5 == 0 and pair["score"] < 0.545
        rows.append(review.label_row(pair, int((pair["score"] >= 0.5) != wrong), "ann", now))
    labels.save_labels(uri, pa.concat_tables(rows))
    return out, uri


def test_threshold_from_a_labels_dataset_uses_stored_scores_and_the_design(
        tmp_path, labelled_run, bilstm_model, capsys):
    out, uri = labelled_run
    capsys.readouterr()
    assert main(["threshold", "--model", bilstm_model, "--labelled", uri,
                 "--target-precision", "0.5", "--output", str(tmp_path / "m")]) == 0
    choice = json.loads(capsys.readouterr().out)
    assert choice["labels"]["rescored"] == 0 and choice["labels"]["stored_scores"] == 60
    assert choice["bound"] == T.STRATIFIED_BOUND and choice["n"] == 60
    sizes = {h: s["size"] for h, s in
             json.loads((out / "sample" / "_design.json").read_text())["strata"].items()}
    run_id = json.loads((out / "summary.json").read_text())["run_id"]
    got = {name: s["size"] for name, s in choice["labels"]["strata"].items()}
    assert got == {f"{run_id}/{h}": n for h, n in sizes.items() if f"{run_id}/{h}" in got}
    assert all(s["range"] is not None for s in choice["labels"]["strata"].values())
    meta = json.loads((tmp_path / "m" / "pairscore.json").read_text())
    assert meta["threshold"] == choice["threshold"]
    assert meta["threshold_choice"]["labels"]["rescored"] == 0


def test_labels_of_another_model_are_scored_again(tmp_path, labelled_run, bilstm_model,
                                                  capsys):
    """Labels that name another model's fingerprint: every pair is scored by this one
    (here the same weights, so the same scores), and the strata's ranges no longer
    count."""
    _, uri = labelled_run
    table = labels.read_labels(uri)
    other = str(tmp_path / "other")
    labels.save_labels(other, table.set_column(
        table.schema.get_field_index("model_fingerprint"), "model_fingerprint",
        pa.array(["not-this-model"] * table.num_rows)))
    pairs = data.read_pairs(other)
    from model.modeldir import ModelDir

    md = ModelDir.open(bilstm_model)
    rescored, n = T.labelled_scores(pairs, md)
    assert n == 60
    stored = pairs.provenance["score"].to_numpy(zero_copy_only=False)
    np.testing.assert_allclose(rescored, stored, atol=1e-5)
    design, rows = T.design_of(pairs.provenance, md.metadata.fingerprint)
    assert rows.all() and all(r is None for r in design.ranges)


def test_a_labels_dataset_reads_as_pairs_leaving_out_unsure_and_disputed(tmp_path):
    uri = str(tmp_path / "labels")
    now = datetime.datetime(2026, 12, 3, 8, tzinfo=datetime.UTC)

    def rows(labeller, values):
        n = len(values)
        return pa.table({"pair_id": [f"q{i}" for i in range(n)],
                         "text_a": [f"a{i}" for i in range(n)],
                         "text_b": [None if i == 3 else f"b{i}" for i in range(n)],
                         "label": pa.array(values, pa.int8()), "labeller": [labeller] * n,
                         "labelled_at": pa.array([now] * n, pa.timestamp("us", tz="UTC"))})
    labels.save_labels(uri, rows("ann", [1, 0, None, 1, 1, 0]))
    labels.save_labels(uri, rows("bob", [1, 1, None, 1]))
    assert data.is_labels_dataset(uri)
    pairs = data.read_pairs(uri)
    # q0 agreed, q1 disputed, q2 unsure, q3 has no text_b, q4 and q5 ann's alone.
    assert pairs.text_a == ["a0", "a4", "a5"] and list(pairs.labels) == [1, 1, 0]
    assert pairs.left_out == {"disagreements": 1, "unsure": 1, "no_text": 1}
    assert pairs.provenance["pair_id"].to_pylist() == ["q0", "q4", "q5"]
    assert not data.is_labels_dataset(str(tmp_path / "nothing-here"))


def test_canaries_from_a_labels_dataset(tmp_path, labelled_run, bilstm_model):
    _, uri = labelled_run
    src, out = tmp_path / "pairs.parquet", tmp_path / "out"
    write_pairs(src, ROWS[:20])
    assert main(["score", "--input", str(src), "--output", str(out), "--model", bilstm_model,
                 "--canaries", uri, "--mode", "pairs", "--review-sample", "0"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["canaries"]["pairs"] == 60, summary["canaries"]
    assert pq.read_table(out / "labels").num_rows == 20  # the canaries stay out of labels


def test_train_on_a_labels_dataset(tmp_path, labelled_run):
    _, uri = labelled_run
    out = tmp_path / "m"
    assert main(["train", "--train", uri, "--validation", uri, "--output", str(out),
                 "--encoder", "bilstm", "--distance", "l1", "--epochs", "1",
                 "--lstm-units", "4", "--glove-extra-words", "50"]) == 0
    training = json.loads((out / "pairscore.json").read_text())["training"]
    assert training["rows"] == 60 and training["data"] == uri
