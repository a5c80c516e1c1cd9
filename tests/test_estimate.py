"""Tonight's precision and recall from people's labels (pipeline/estimate.py): the
intervals cover the truth on synthetic nights (a seeded Monte Carlo), the edge cases,
`pairscore estimate` and the report's "Measured by people" section.

    .venv/bin/python -m pytest -q -s -p no:xdist tests/test_estimate.py   # prints coverage
"""

import datetime
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_pairs
from scipy import stats

from model import labels
from pipeline import estimate, sampling
from pipeline.cli import main

THRESHOLD, BAND = 0.5, 0.1
RUN_ID = "20261203T000000Z-night"

# Synthetic nights with known truth: each pair's label first (prevalence), then its score
# from its class's Beta distribution, so P(duplicate | score) is calibrated by
# construction. qqp_like has QQP's share of duplicates (38%, ../shared/data/qqp_sample)
# and a fair model; rare has few duplicates and a sharp model (precision near 0.9, recall
# near 1: the cases a Wald interval gets wrong); weak a poor model.
NIGHTS = {
    "qqp_like": dict(prevalence=0.38, a=(1.5, 6.0), b=(6.0, 1.5)),
    "rare": dict(prevalence=0.05, a=(1.2, 8.0), b=(8.0, 1.2)),
    "weak": dict(prevalence=0.2, a=(2.0, 4.0), b=(4.0, 2.0)),
}


def make_night(name: str, pairs: int = 100_000, seed: int = 0):
    """(scores float32, truth bool) of a synthetic night."""
    p = NIGHTS[name]
    rng = np.random.default_rng(seed)
    truth = rng.random(pairs) < p["prevalence"]
    scores = np.where(truth, rng.beta(*p["b"], pairs), rng.beta(*p["a"], pairs))
    return scores.astype(np.float32), truth


def truth_of(scores, truth, threshold=THRESHOLD):
    predicted = scores.astype(np.float64) >= threshold
    tp = np.sum(predicted & truth)
    return tp / predicted.sum(), tp / truth.sum()


def design_of(sizes: dict, threshold=THRESHOLD, band=BAND, sampled=None) -> dict:
    edges = sampling.bounds(threshold, band)
    sampled = sampled or sampling.allocate(sizes, 300)
    return {"run_id": RUN_ID, "threshold": threshold, "band": band,
            "strata": {h: {**edges[h], "size": sizes.get(h, 0), "sampled": sampled.get(h, 0)}
                       for h in sampling.STRATA}}


def cells_of(scores, truth):
    """The night's (stratum, cell) sizes: (3, 4) in sampling.STRATA order, cells TP, FP,
    FN, TN."""
    strata = sampling.stratum_of(scores, THRESHOLD, BAND)
    predicted = scores.astype(np.float64) >= THRESHOLD
    masks = [predicted & truth, predicted & ~truth, ~predicted & truth, ~predicted & ~truth]
    return np.array([[np.sum((strata == h) & m) for m in masks] for h in sampling.STRATA])


def coverage(name: str, labels_n: int, nights: int, draws: int, seed: int = 1) -> dict:
    """Draw `nights` stratified samples of `labels_n` labels from one synthetic night (each
    stratum's sample cells are multivariate hypergeometric: a simple random sample without
    replacement), estimate each, count how often the 95% intervals hold the truth."""
    scores, truth = make_night(name)
    precision, recall = truth_of(scores, truth)
    cells = cells_of(scores, truth)
    sizes = cells.sum(1)
    alloc = sampling.allocate(dict(zip(sampling.STRATA, sizes.tolist())), labels_n)
    rng = np.random.default_rng(seed)
    counts = np.stack([rng.multivariate_hypergeometric(cells[i], alloc[h], size=nights)
                       for i, h in enumerate(sampling.STRATA)], axis=1)
    possible = estimate.possible_cells(design_of({}), THRESHOLD)
    possible = np.array([possible[h] for h in sampling.STRATA])
    held_p, held_r, widths = [], [], []
    for chunk in np.array_split(np.arange(nights), max(1, nights // 100)):
        c = counts[chunk]
        r = estimate.intervals_from_counts(c, np.broadcast_to(possible, c.shape),
                                           np.broadcast_to(sizes, c.shape[:2]), 0.95, draws)
        p, q = r["precision"], r["recall"]
        held_p += list((p["low"] <= precision) & (precision <= p["high"]))
        held_r += list((q["low"] <= recall) & (recall <= q["high"]))
        widths += list(p["high"] - p["low"])
    out = {"night": name, "labels": labels_n, "draws": nights,
           "true_precision": round(float(precision), 4), "true_recall": round(float(recall), 4),
           "precision_coverage": float(np.mean(held_p)),
           "recall_coverage": float(np.mean(held_r)),
           "precision_width_mean": round(float(np.mean(widths)), 4),
           "precision_width_p95": round(float(np.quantile(widths, 0.95)), 4)}
    print(f"\nMonte Carlo {out}")
    return out


@pytest.mark.parametrize("labels_n", [100, 300])
@pytest.mark.parametrize("name", ["qqp_like", "rare"])
def test_intervals_cover_the_truth(name, labels_n):
    got = coverage(name, labels_n, nights=400, draws=1000)
    assert got["precision_coverage"] >= 0.93, got
    assert got["recall_coverage"] >= 0.93, got
    if name == "qqp_like" and labels_n == 300:
        assert got["precision_width_p95"] < 0.2, got


@pytest.mark.slow
@pytest.mark.parametrize("labels_n", [100, 300])
@pytest.mark.parametrize("name", sorted(NIGHTS))
def test_intervals_cover_the_truth_more_draws(name, labels_n):
    got = coverage(name, labels_n, nights=1000, draws=4000, seed=2)
    assert got["precision_coverage"] >= 0.93, got
    assert got["recall_coverage"] >= 0.93, got


def test_a_wald_interval_would_not_cover():
    """Why not Wald: on the rare night, with 100 labels, the non_duplicate stratum's
    sample almost never holds one of its few missed duplicates, so the estimated variance
    of recall is about 0 and a normal interval around it misses the truth most nights."""
    scores, truth = make_night("rare")
    _, recall = truth_of(scores, truth)
    cells = cells_of(scores, truth)
    sizes = cells.sum(1)
    alloc = sampling.allocate(dict(zip(sampling.STRATA, sizes.tolist())), 100)
    rng = np.random.default_rng(3)
    held = []
    for _ in range(300):
        c = np.stack([rng.multivariate_hypergeometric(cells[i], alloc[h])
                      for i, h in enumerate(sampling.STRATA)]).astype(float)
        m = c.sum(1)
        # Linearised (Taylor) variance of the ratio TP / (TP + FN), stratum by stratum.
        tp = (sizes * c[:, 0] / m).sum()
        pos = (sizes * (c[:, 0] + c[:, 2]) / m).sum()
        r = tp / pos
        zi = [np.r_[np.full(int(c[h, 0]), 1 - r), np.full(int(c[h, 2]), -r),
                    np.zeros(int(c[h, 1] + c[h, 3]))] for h in range(3)]
        var = sum(sizes[h] ** 2 * (1 - m[h] / sizes[h]) * np.var(zi[h], ddof=1) / m[h]
                  for h in range(3)) / pos ** 2
        held.append(abs(r - recall) <= 1.96 * np.sqrt(var))
    assert np.mean(held) < 0.8


# --- the real sample, the real labels dataset ------------------------------------------------


def night_sample(name: str, n: int, run_id: str = RUN_ID):
    """A synthetic night sampled as the job samples (pipeline.sampling): (sample table,
    design, truth by pair_id, true precision, true recall)."""
    scores, truth = make_night(name, pairs=20_000, seed=5)
    ids = [f"p{i}" for i in range(len(scores))]
    texts = pa.array(["t"] * len(scores))
    cand = sampling.candidates(ids, texts, texts, scores, THRESHOLD, BAND, run_id, n)
    strata = sampling.stratum_of(scores, THRESHOLD, BAND)
    sample, design = sampling.select(sampling.merge([cand], n), sampling.counts(strata), n,
                                     THRESHOLD, BAND, run_id, "fp")
    precision, recall = truth_of(scores, truth)
    return sample, design, dict(zip(ids, truth.tolist())), precision, recall


def labelled(sample: pa.Table, truth: dict, labeller="ann", unsure=(), flip=()) -> pa.Table:
    """The sample labelled with the truth (ids in `unsure`: null, in `flip`: wrong)."""
    ids = sample["pair_id"].to_pylist()
    label = [None if p in unsure else int(truth[p] != (p in flip)) for p in ids]
    cols = {c: sample[c] for c in ("pair_id", "text_a", "text_b", "run_id",
                                   "model_fingerprint", "score", "stratum",
                                   "inclusion_probability", "stratum_size")}
    now = pa.array([datetime.datetime(2026, 12, 3, 8, tzinfo=datetime.UTC)] * len(ids),
                   pa.timestamp("us", tz="UTC"))
    return pa.table({**cols, "label": pa.array(label, pa.int8()),
                     "labeller": [labeller] * len(ids), "labelled_at": now})


def test_estimate_from_the_labels_dataset_matches_the_counts_and_the_truth(tmp_path):
    sample, design, truth, precision, recall = night_sample("qqp_like", 300)
    ids = sample["pair_id"].to_pylist()
    uri = str(tmp_path / "labels")
    labels.save_labels(uri, labelled(sample, truth, unsure=ids[:5]))
    labels.save_labels(uri, labelled(sample, truth, "bob", flip=ids[5:8]).slice(0, 20))
    resolved, disagreements = labels.resolve(labels.read_labels(uri))
    got = estimate.estimate(resolved, design, THRESHOLD, disagreements=disagreements)
    # ids[:5]: ann unsure, bob sure (bob labelled ids[:20]): bob's label counts;
    # ids[5:8]: they disagree, left out and counted.
    assert got["disagreements"] == 3 and got["unsure"] == 0
    assert got["labels"] == 300 - 3
    assert sum(s["labelled"] for s in got["by_stratum"].values()) == got["labels"]
    for h, s in got["by_stratum"].items():
        assert s["size"] == design["strata"][h]["size"]
        assert s["weight"] == pytest.approx(s["size"] / s["labelled"], abs=1e-4)
    for fig, true in (("precision", precision), ("recall", recall)):
        f = got[fig]
        assert f["low"] <= true <= f["high"], (fig, true, f)
        assert f["low"] <= f["estimate"] <= f["high"]
    assert got["precision"]["high"] - got["precision"]["low"] < 0.2
    # The vectorised core gives the same figures from the cells.
    names = list(design["strata"])
    counts = np.array([[got["cells"][h][k] for k in ("tp", "fp", "fn", "tn")] for h in names])
    possible = estimate.possible_cells(design, THRESHOLD)
    core = estimate.intervals_from_counts(counts, np.array([possible[h] for h in names]),
                                          [design["strata"][h]["size"] for h in names])
    assert got["precision"]["low"] == pytest.approx(float(core["precision"]["low"]), abs=1e-4)
    # The point estimate is the expansion estimator, by hand.
    w = {h: s["size"] / s["labelled"] for h, s in got["by_stratum"].items()}
    tp = sum(w[h] * got["cells"][h]["tp"] for h in names)
    fp = sum(w[h] * got["cells"][h]["fp"] for h in names)
    assert got["precision"]["estimate"] == pytest.approx(tp / (tp + fp), abs=1e-4)
    for key in ("threshold", "estimator", "interval", "confidence"):
        assert got[key] is not None
    assert "Horvitz-Thompson" in got["estimator"] and "Clopper-Pearson" in got["interval"]


def _table(rows, run_id=RUN_ID):
    """A resolved-labels table from (pair_id, label, score, stratum) rows."""
    pid, label, score, stratum = zip(*rows) if rows else ((), (), (), ())
    return pa.table({"pair_id": pa.array(pid, pa.string()),
                     "label": pa.array(label, pa.int8()),
                     "score": pa.array(score, pa.float32()),
                     "stratum": pa.array(stratum, pa.string()),
                     "run_id": pa.array([run_id] * len(pid), pa.string())})


def test_one_stratum_is_clopper_pearson():
    """Only predicted duplicates: precision's interval is Clopper-Pearson's (scipy as the
    oracle), and recall is 1 with nothing missed."""
    design = design_of({"duplicate": 1000})
    rows = [(f"d{i}", int(i >= 3), 0.9, "duplicate") for i in range(40)]
    got = estimate.estimate(_table(rows), design, THRESHOLD)
    p = got["precision"]
    assert p["estimate"] == pytest.approx(37 / 40, abs=1e-4)
    assert p["low"] == pytest.approx(stats.beta.ppf(0.025, 37, 4), abs=0.006)
    assert p["high"] == pytest.approx(stats.beta.ppf(0.975, 38, 3), abs=0.006)
    assert got["recall"] == {"estimate": 1.0, "low": 1.0, "high": 1.0}


def test_all_labels_one():
    design = design_of({"duplicate": 5000, "near_threshold": 2000, "non_duplicate": 50000})
    rows = [(f"d{i}", 1, 0.9, "duplicate") for i in range(60)]
    rows += [(f"n{i}", 1, 0.55, "near_threshold") for i in range(30)]
    rows += [(f"m{i}", 1, 0.45, "near_threshold") for i in range(30)]
    rows += [(f"x{i}", 1, 0.1, "non_duplicate") for i in range(30)]
    got = estimate.estimate(_table(rows), design, THRESHOLD)
    assert got["precision"]["estimate"] == 1.0 and got["precision"]["high"] == 1.0
    assert 0.9 < got["precision"]["low"] < 1.0
    assert got["recall"]["low"] < got["recall"]["estimate"] < got["recall"]["high"] < 1.0


def test_no_labelled_predicted_duplicate_gives_no_precision():
    design = design_of({"duplicate": 5000, "non_duplicate": 50000})
    got = estimate.estimate(_table([("x1", 0, 0.1, "non_duplicate"),
                                    ("x2", 1, 0.2, "non_duplicate")]), design, THRESHOLD)
    assert got["precision"]["estimate"] is None and got["precision"]["low"] is None
    assert "no labelled pair scores >= the threshold" in got["precision"]["why"]
    assert estimate.stop_rule(got) == {"stop": False, "why": "no precision yet: "
                                       + got["precision"]["why"]}
    none = estimate.estimate(_table([("x1", 0, 0.1, "non_duplicate")]), design, THRESHOLD)
    assert none["recall"]["estimate"] is None and "no labelled pair is a duplicate" in \
        none["recall"]["why"]


def test_a_stratum_without_labels_widens_and_says_so():
    sizes = {"duplicate": 5000, "near_threshold": 2000, "non_duplicate": 50000}
    rows = [(f"d{i}", int(i % 10 != 0), 0.9, "duplicate") for i in range(60)]
    rows += [(f"x{i}", 0, 0.1, "non_duplicate") for i in range(30)]
    with_near = rows + [(f"n{i}", i % 2, 0.45 + (i % 4) * 0.03, "near_threshold")
                        for i in range(60)]
    full = estimate.estimate(_table(with_near), design_of(sizes), THRESHOLD)
    blind = estimate.estimate(_table(rows), design_of(sizes), THRESHOLD)
    assert blind["by_stratum"]["near_threshold"]["labelled"] == 0
    assert blind["by_stratum"]["near_threshold"]["weight"] is None
    for fig in ("precision", "recall"):
        assert "near_threshold has no labels" in blind[fig]["why"]
        assert (blind[fig]["high"] - blind[fig]["low"]) > (full[fig]["high"] - full[fig]["low"])
        assert "why" not in full[fig]


def test_only_tonights_sampled_labels_count():
    design = design_of({"duplicate": 5000, "non_duplicate": 50000})
    rows = [("d1", 1, 0.9, "duplicate"), ("d2", None, 0.9, "duplicate"),
            ("d3", 1, 0.9, None), ("d4", 1, 0.9, "other_stratum")]
    table = pa.concat_tables([_table(rows), _table([("o1", 0, 0.9, "duplicate")], "old")])
    got = estimate.estimate(table, design, THRESHOLD)
    assert got["labels"] == 1 and got["unsure"] == 1
    assert got["left_out"] == {"other_run": 1, "not_from_sample": 1, "unknown_stratum": 1}
    with pytest.raises(estimate.EstimateError, match="lack column.*stratum"):
        estimate.estimate(table.drop_columns(["stratum"]), design, THRESHOLD)
    with pytest.raises(estimate.EstimateError, match="--confidence 1.5"):
        estimate.estimate(table, design, THRESHOLD, confidence=1.5)


def test_curve_at_other_thresholds():
    sample, design, truth, precision, recall = night_sample("qqp_like", 300)
    resolved = labelled(sample, truth)
    at = estimate.estimate(resolved, design, THRESHOLD)
    points = estimate.curve(resolved, design, [0.0, 0.3, THRESHOLD, 0.7], draws=5000)
    assert [p["threshold"] for p in points] == [0.0, 0.3, THRESHOLD, 0.7]
    assert points[2]["labels"] == at["labels"]
    assert points[2]["precision"]["estimate"] == at["precision"]["estimate"]
    # At 0 every pair is a predicted duplicate: nothing missed.
    assert points[0]["recall"] == {"estimate": 1.0, "low": 1.0, "high": 1.0}
    # A higher threshold: higher precision, lower recall (qqp_like's classes separate).
    assert points[3]["precision"]["estimate"] > points[1]["precision"]["estimate"]
    assert points[3]["recall"]["estimate"] < points[1]["recall"]["estimate"]
    assert estimate.curve_thresholds(0.55) == [0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.7,
                                               0.8, 0.9]


def test_stop_rule():
    wide = {"precision": {"estimate": 0.9, "low": 0.8, "high": 0.95}}
    narrow = {"precision": {"estimate": 0.9, "low": 0.86, "high": 0.94}}
    assert estimate.stop_rule(wide)["stop"] is False
    assert "0.150 wide" in estimate.stop_rule(wide)["why"]
    assert estimate.stop_rule(narrow) == {
        "stop": True, "why": "precision interval narrower than 0.1 (0.080 wide)"}


# --- pairscore estimate OUT --labels URI -----------------------------------------------------


def write_run(out, sample: pa.Table, design: dict) -> None:
    """A finished run's files as the job leaves them: summary.json, sample/."""
    (out / "sample").mkdir(parents=True)
    pq.write_table(sample, out / "sample" / "sample-00000-of-00001.parquet")
    (out / "sample" / "_design.json").write_text(json.dumps(design))
    (out / "summary.json").write_text(json.dumps({
        "status": "published", "run_id": design["run_id"], "threshold": THRESHOLD,
        "rows_in": 20000, "scored": 20000, "rejected": 0, "duplicates": 9000,
        "rejected_by_reason": {}}))


def test_cli_prints_writes_the_estimate_and_the_report(tmp_path, capsys):
    sample, design, truth, precision, recall = night_sample("qqp_like", 300)
    out, uri = tmp_path / "out", str(tmp_path / "labels")
    write_run(out, sample, design)
    ids = sample["pair_id"].to_pylist()
    labels.save_labels(uri, labelled(sample, truth, unsure=ids[:4]))
    labels.save_labels(uri, labelled(sample, truth, "bob", flip=ids[10:12]).slice(10, 2))

    assert main(["estimate", str(out), "--labels", uri]) == 0
    text = capsys.readouterr().out
    stored = json.loads((out / "estimate.json").read_text())
    p, r = stored["precision"], stored["recall"]
    assert stored["labels"] == 300 - 4 - 2 and stored["unsure"] == 4
    assert stored["disagreements"] == 2
    assert (f"precision {p['estimate']:.2f} [{p['low']:.2f}, {p['high']:.2f}] (95% "
            "interval)") in text
    assert f"recall {r['estimate']:.2f} [{r['low']:.2f}, {r['high']:.2f}]" in text
    assert f"{stored['labels']} labels of the night's sample used, 4 unsure and 2 " \
           "disagreements left out" in text
    assert "stop labelling: " in text and "estimator: stratified ratio" in text
    assert p["low"] <= precision <= p["high"] and r["low"] <= recall <= r["high"]
    assert [c["threshold"] for c in stored["curve"]] == estimate.curve_thresholds(THRESHOLD)
    assert stored["stop"] == estimate.stop_rule(stored)

    page = (out / "report.html").read_text()
    section = page[page.index('<section id="people-section">'):]
    section = section[:section.index("</section>")]
    assert "<h2>Measured by people</h2>" in section
    assert (f"<span id=people-precision>{p['estimate']:.3f} [{p['low']:.3f}, "
            f"{p['high']:.3f}]</span>") in section
    assert f"<span id=people-labels>{stored['labels']}</span>" in section
    assert "<span id=people-disagreements>2</span>" in section
    assert section.count("<tr>") >= 8 + 4 + 1 + len(stored["curve"])  # figures, strata, curve

    assert main(["estimate", str(out), "--labels", uri, "--json", "--confidence", "0.8",
                 "--threshold", "0.6"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["confidence"] == 0.8 and printed["threshold"] == 0.6
    assert {"threshold", "labels", "unsure", "by_stratum", "precision", "recall",
            "estimator", "interval", "confidence", "curve", "stop"} <= set(printed)
    assert (printed["precision"]["high"] - printed["precision"]["low"]
            < p["high"] - p["low"])  # 80% is narrower than 95%


def test_cli_errors_name_what_is_missing(tmp_path, capsys):
    sample, design, truth, *_ = night_sample("qqp_like", 50)
    out, uri = tmp_path / "out", str(tmp_path / "labels")

    def error(*argv):
        assert main(["estimate", *map(str, argv)]) == 2
        return capsys.readouterr().err

    (tmp_path / "nosample").mkdir()
    err = error(tmp_path / "nosample", "--labels", uri)
    assert "nosample/sample/_design.json not found" in err and "--review-sample" in err
    write_run(out, sample, design)
    assert "holds no labels" in error(out, "--labels", uri)
    labels.save_labels(uri, labelled(sample.set_column(
        sample.schema.get_field_index("run_id"), "run_id",
        pa.array(["old-run"] * sample.num_rows)), truth))
    err = error(out, "--labels", uri)
    assert f"none of the 50 labelled pairs in {uri} is of run {RUN_ID}" in err
    assert "old-run" in err
    assert "--confidence 2.0" in error(out, "--labels", uri, "--confidence", "2")
    (out / "summary.json").unlink()
    assert "summary.json not found" in error(out, "--labels", uri)


# --- a real run: pairscore score, label its sample, pairscore estimate -------------------------

ROWS = [(f"q{i}", f"question {i} about python {'fast ' * (i % 5)}",
         f"python {'learn ' * (i % 7)} question {i % 13}") for i in range(240)]


def test_a_real_run_estimated_and_its_report_rewritten(tmp_path, bilstm_model, capsys):
    src, out, uri = tmp_path / "pairs.parquet", tmp_path / "out", str(tmp_path / "labels")
    write_pairs(src, ROWS)
    assert main(["score", "--input", str(src), "--output", str(out), "--model", bilstm_model,
                 "--review-sample", "40", "--review-sample-band", "0.03", "--threshold",
                 "0.5", "--mode", "pairs"]) == 0
    before = (out / "report.html").read_text()
    assert "Measured by people" not in before
    sample = pq.read_table(out / "sample")
    design = json.loads((out / "sample" / "_design.json").read_text())
    # "People" call a pair a duplicate when its id is even: a truth the model cannot know.
    truth = {p: int(p[1:]) % 2 == 0 for p in sample["pair_id"].to_pylist()}
    labels.save_labels(uri, labelled(sample, truth))
    capsys.readouterr()
    assert main(["estimate", str(out), "--labels", uri]) == 0
    assert "labels of the night's sample used" in capsys.readouterr().out
    stored = json.loads((out / "estimate.json").read_text())
    assert stored["run_id"] == design["run_id"] and stored["labels"] == 40
    assert {h: (s["size"], s["sampled"]) for h, s in stored["by_stratum"].items()} == {
        h: (s["size"], s["sampled"]) for h, s in design["strata"].items()}
    page = (out / "report.html").read_text()
    for section in ("figures", "scores", "review", "people"):  # the night's page, and more
        assert f'<section id="{section}-section">' in page, section
    assert "<span id=people-labels>40</span>" in page

    no_sample = tmp_path / "no-sample"
    assert main(["score", "--input", str(src), "--output", str(no_sample), "--model",
                 bilstm_model, "--review-sample", "0", "--mode", "pairs"]) == 0
    capsys.readouterr()
    assert main(["estimate", str(no_sample), "--labels", uri]) == 2
    assert "no-sample/sample/_design.json not found" in capsys.readouterr().err
