"""The night's sample (OUT/sample/): strata, keyed hash, allocation, bottom-k, the design,
a real run, and a Monte Carlo of the Horvitz-Thompson estimate the design supports."""

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import write_pairs
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import cli, sampling
from pipeline.sampling import DUPLICATE, NEAR, NON_DUPLICATE, STRATA

# --- plain functions --------------------------------------------------------------------


def test_strata_edges_follow_the_threshold_and_the_band():
    got = sampling.stratum_of([0.0, 0.39, 0.4, 0.41, 0.5, 0.59, 0.6, 0.61, 1.0], 0.5, 0.1)
    # Scores are float32: float32(0.4) = 0.40000001 is inside the open band,
    # float32(0.6) = 0.60000002 outside it.
    assert list(got) == [NON_DUPLICATE, NON_DUPLICATE, NEAR, NEAR, NEAR, NEAR, DUPLICATE,
                         DUPLICATE, DUPLICATE]
    # No band: exactly is_duplicate's rule (float64 comparison: float32(0.7) < 0.7).
    got = sampling.stratum_of(np.float32([0.7, 0.70001, 0.69]), 0.7, 0.0)
    assert list(got) == [NON_DUPLICATE, DUPLICATE, NON_DUPLICATE]
    assert sampling.counts(got) == {NEAR: 0, DUPLICATE: 1, NON_DUPLICATE: 2}
    b = sampling.bounds(0.95, 0.1)
    assert b[NEAR] == {"low": pytest.approx(0.85), "high": 1.0}  # clipped to [0, 1]
    assert b[DUPLICATE]["low"] == 1.0 and b[NON_DUPLICATE]["high"] == pytest.approx(0.85)


def test_allocation_follows_the_shares_and_moves_what_a_stratum_cannot_use():
    big = {NEAR: 10_000, DUPLICATE: 10_000, NON_DUPLICATE: 10_000}
    assert sampling.allocate(big, 300) == {NEAR: 120, DUPLICATE: 120, NON_DUPLICATE: 60}
    # A small duplicate stratum: what it cannot use goes to the others by their shares.
    small = {NEAR: 10_000, DUPLICATE: 30, NON_DUPLICATE: 10_000}
    assert sampling.allocate(small, 300) == {NEAR: 180, DUPLICATE: 30, NON_DUPLICATE: 90}
    assert sampling.allocate({NEAR: 5}, 300) == {NEAR: 5, DUPLICATE: 0, NON_DUPLICATE: 0}
    assert sampling.allocate(big, 0) == dict.fromkeys(STRATA, 0)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(STRATA), st.integers(0, 500)),
       st.integers(0, 1000))
def test_allocation_sums_to_n_or_everything_and_never_exceeds_a_stratum(sizes, n):
    alloc = sampling.allocate(sizes, n)
    assert sum(alloc.values()) == min(n, sum(sizes.values()))
    assert all(0 <= alloc[h] <= sizes.get(h, 0) for h in STRATA)
    assert alloc == sampling.allocate(dict(reversed(list(sizes.items()))), n)
    # More labels never take any from a stratum.
    more = sampling.allocate(sizes, n + 1)
    assert all(more[h] >= alloc[h] for h in STRATA)


def _batch(n, seed, start=0):
    rng = np.random.default_rng(seed)
    ids = pa.array([f"id{i}" for i in range(start, start + n)])
    texts = pa.array([f"text {i}" for i in range(start, start + n)])
    return ids, texts, texts, rng.random(n).astype(np.float32)


def test_bottom_k_over_batches_equals_bottom_k_over_all():
    k, run = 25, "run-1"
    whole = sampling.candidates(*_batch(900, 0), 0.5, 0.1, run, k=10_000)
    assert whole.num_rows == 900  # k above every stratum: all rows are candidates
    ids, a, b, scores = _batch(900, 0)
    pieces = [sampling.candidates(ids[i:i + 100], a[i:i + 100], b[i:i + 100],
                                  scores[i:i + 100], 0.5, 0.1, run, k=k)
              for i in range(0, 900, 100)]
    assert all(p.num_rows <= 3 * k for p in pieces)
    # Merged in any grouping, the same rows.
    two_steps = sampling.merge([*sampling.merge(pieces[:4], k).values(),
                                *sampling.merge(pieces[4:], k).values()], k)
    direct = sampling.merge([whole], k)
    for h in STRATA:
        assert two_steps[h]["pair_id"].to_pylist() == direct[h]["pair_id"].to_pylist()
        assert direct[h].num_rows == min(k, int(np.sum(whole["stratum"].to_numpy(
            zero_copy_only=False) == h)))


def test_the_keyed_hash_is_reproducible_for_a_run_and_differs_for_another():
    ids = [f"p{i}" for i in range(200)]
    one, again, other = (sampling.keys(r, ids) for r in ("r1", "r1", "r2"))
    assert one.dtype == np.uint64 and np.array_equal(one, again)
    assert np.mean(one == other) < 0.01
    # sha256("r1|p0"), its first 8 bytes big-endian: the documented key.
    import hashlib

    assert int(one[0]) == int.from_bytes(hashlib.sha256(b"r1|p0").digest()[:8], "big")
    sizes = {NEAR: 80, DUPLICATE: 60, NON_DUPLICATE: 60}
    scores = np.r_[np.full(80, 0.5), np.full(60, 0.9), np.full(60, 0.1)]
    a = pa.array(ids)

    def sample(run):
        cands = sampling.candidates(a, a, a, scores, 0.5, 0.1, run, k=30)
        return sampling.select(sampling.merge([cands], 30), sizes, 30, 0.5, 0.1, run, "fp")

    (t1, d1), (t2, _), (t3, _) = sample("r1"), sample("r1"), sample("r2")
    assert t1.equals(t2) and set(t1["pair_id"].to_pylist()) != set(t3["pair_id"].to_pylist())
    assert t1.schema == sampling.SAMPLE_SCHEMA
    assert {h: s["sampled"] for h, s in d1["strata"].items()} == sampling.allocate(sizes, 30)
    assert d1["seed_key"] == "sha256(run_id|pair_id)"


def test_horvitz_thompson_total_from_the_design_is_unbiased():
    """Seeded Monte Carlo over 400 draws (400 run ids) of one synthetic night of 3000
    pairs whose true duplicates are known: the mean HT estimate of the number of true
    duplicates is within 3 standard errors of the truth."""
    rng = np.random.default_rng(20)
    n_pairs, threshold, band, n = 3000, 0.5, 0.1, 60
    scores = rng.beta(0.7, 0.7, n_pairs).astype(np.float32)
    truth = rng.random(n_pairs) < scores  # a duplicate with probability = its score
    ids = pa.array([f"pair-{i}" for i in range(n_pairs)])
    strata = sampling.stratum_of(scores, threshold, band)
    sizes = sampling.counts(strata)
    index = {f"pair-{i}": i for i in range(n_pairs)}
    estimates = []
    for draw in range(400):
        run = f"run-{draw}"
        cands = sampling.candidates(ids, ids, ids, scores, threshold, band, run, k=n)
        table, design = sampling.select(sampling.merge([cands], n), sizes, n, threshold,
                                        band, run, "fp")
        rows = [index[p] for p in table["pair_id"].to_pylist()]
        estimates.append(sampling.horvitz_thompson(table, truth[rows]))
    estimates = np.asarray(estimates)
    se = estimates.std(ddof=1) / np.sqrt(len(estimates))
    assert abs(estimates.mean() - truth.sum()) < 3 * se, (estimates.mean(), truth.sum(), se)
    assert se > 0  # the draws differ: each run id is its own sample


# --- a real run -------------------------------------------------------------------------

ROWS = [(f"q{i}", f"question {i} about python {'fast ' * (i % 5)}",
         f"python {'learn ' * (i % 7)} question {i % 13}") for i in range(240)]


@pytest.fixture(scope="module")
def night(tmp_path_factory, bilstm_model):
    root = tmp_path_factory.mktemp("sample")
    src, out = root / "pairs.parquet", root / "out"
    write_pairs(src, ROWS)
    assert cli.main(["score", "--input", str(src), "--output", str(out), "--model",
                     bilstm_model, "--review-sample", "30", "--review-sample-band", "0.03",
                     "--threshold", "0.5", "--mode", "pairs"]) == 0
    return src, out


def test_a_run_writes_the_sample_and_its_design(night):
    _, out = night
    sample = pq.read_table(out / "sample")
    assert sample.schema.remove_metadata() == sampling.SAMPLE_SCHEMA
    assert sorted(p.name for p in (out / "sample").iterdir()) == [
        "_design.json", "sample-00000-of-00001.parquet"]
    design = json.loads((out / "sample" / "_design.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sample"] == {"pairs": 30, "path": str(out / "sample"),
                                 "strata": design["strata"]}
    assert design["threshold"] == 0.5 and design["band"] == 0.03
    assert any(f"{out / 'sample'}/" in line and "random sample of 30 pairs" in line
               for line in cli.summary_lines(summary, str(out)))
    assert design["run_id"] == summary["run_id"] == sample["run_id"][0].as_py()

    labels = pq.read_table(out / "labels")
    strata = sampling.stratum_of(labels["score"].to_numpy(), 0.5, 0.03)
    sizes = sampling.counts(strata)
    assert sum(sizes.values()) == labels.num_rows == len(ROWS)
    assert sum(1 for s in sizes.values() if s) >= 2  # the test spans more than one stratum
    got = sample["stratum"].to_pylist()
    for h in STRATA:
        rows = sample.filter(pc.equal(sample["stratum"], h))
        assert got.count(h) == design["strata"][h]["sampled"]
        assert design["strata"][h]["size"] == sizes[h]
        assert set(rows["stratum_size"].to_pylist()) <= {sizes[h]}
        n_h = design["strata"][h]["sampled"]
        assert all(p == pytest.approx(n_h / sizes[h])
                   for p in rows["inclusion_probability"].to_pylist())
    assert design["strata"] == {h: {**sampling.bounds(0.5, 0.03)[h], "size": sizes[h],
                                     "sampled": sampling.allocate(sizes, 30)[h]}
                                for h in STRATA}
    score_of = dict(zip(labels["pair_id"].to_pylist(), labels["score"].to_pylist()))
    texts = {r[0]: r[1:] for r in ROWS}
    assert len(set(sample["pair_id"].to_pylist())) == 30
    for row in sample.to_pylist():
        assert row["score"] == score_of[row["pair_id"]]
        assert row["is_duplicate"] == (row["score"] >= 0.5)
        assert (row["text_a"], row["text_b"]) == texts[row["pair_id"]]
        assert row["stratum"] == sampling.stratum_of([row["score"]], 0.5, 0.03)[0]
    # Within each stratum, the pairs of smallest sha256(run_id|pair_id).
    run = design["run_id"]
    for h in STRATA:
        ids = [p for p, s in zip(labels["pair_id"].to_pylist(), strata) if s == h]
        keys = sampling.keys(run, ids)
        want = {ids[i] for i in np.argsort(keys, kind="stable")[:design["strata"][h]["sampled"]]}
        assert set(sample.filter(pc.equal(sample["stratum"], h))["pair_id"].to_pylist()) == want


def test_review_sample_zero_writes_no_sample(night, bilstm_model, tmp_path):
    src, _ = night
    out = tmp_path / "out"
    assert cli.main(["score", "--input", str(src), "--output", str(out), "--model",
                     bilstm_model, "--review-sample", "0", "--review-pairs", "0",
                     "--mode", "pairs"]) == 0
    assert not (out / "sample").exists()
    assert json.loads((out / "summary.json").read_text())["sample"] is None


@pytest.mark.parametrize("flags, named", [(["--review-sample", "-1"], "--review-sample -1"),
                                          (["--review-sample-band", "2"],
                                           "--review-sample-band 2")])
def test_bad_sample_flags_are_named(night, bilstm_model, tmp_path, capsys, flags, named):
    src, _ = night
    rc = cli.main(["score", "--input", str(src), "--output", str(tmp_path / "o"), "--model",
                   bilstm_model, *flags])
    assert rc != 0 and named in capsys.readouterr().err


def test_shuffled_ids_sample_the_same_pairs():
    # The sample depends on the pairs, not on the order they arrive in.
    ids = [f"x{i}" for i in range(500)]
    scores = np.random.default_rng(3).random(500).astype(np.float32)
    order = list(range(500))
    random.Random(4).shuffle(order)
    sizes = sampling.counts(sampling.stratum_of(scores, 0.5, 0.1))

    def pick(idx):
        a = pa.array([ids[i] for i in idx])
        pieces = [sampling.candidates(a[j:j + 64], a[j:j + 64], a[j:j + 64],
                                      scores[idx][j:j + 64], 0.5, 0.1, "r", k=40)
                  for j in range(0, 500, 64)]
        table, _ = sampling.select(sampling.merge(pieces, 40), sizes, 40, 0.5, 0.1, "r", "f")
        return sorted(table["pair_id"].to_pylist())

    assert pick(list(range(500))) == pick(order)
