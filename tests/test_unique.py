"""Unique-text mode (`stages.ScoreUniqueTexts`): same scores as pair mode, every id once,
rejects intact; and the plain functions under it (textindex.py, joins.py, planning.py:
hash, dedup, index lookup, mode choice, batch planning) against independent oracles."""

import glob

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that

from model import tokenization
from model.tokenization import pad_rows
from pipeline import job, planning, stages, textindex
from pipeline.handler import LoadedPairModel
from pipeline.packing import plan_batches
from tests import tiny

TEXTS = [
    *tiny.TEXTS,  # the texts the tiny models are built from, then harder ones
    "Café crème brûlée, s'il vous plaît!",
    "东京 is in 日本",
    "word " * 300,
    "Is 2+2=4? 😀",
    "learn python",
]


def _repeated_pairs(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """`n` pairs over TEXTS: each text in about 2n / len(TEXTS) pairs."""
    rng = np.random.default_rng(seed)
    i = rng.integers(len(TEXTS), size=n)
    j = (i + 1 + rng.integers(len(TEXTS) - 1, size=n)) % len(TEXTS)
    return [(f"q{k:04d}", TEXTS[a], TEXTS[b]) for k, (a, b) in enumerate(zip(i, j))]


BAD = [
    (None, "no id", "learn python"),
    ("x1", None, "learn python"),
    ("x2", "learn python", "  "),
    ("x3", "\x00\x01\x07", "left has no tokens"),  # valid text, nothing to encode
    ("x4", "learn python", "\u200b\u200d"),
]


def _write(path, rows):
    ids, a, b = zip(*rows)
    pq.write_table(
        pa.table({"pair_id": list(ids), "text_a": list(a), "text_b": list(b)}),
        str(path), row_group_size=16,
    )


def _read(pattern):
    files = sorted(glob.glob(pattern))
    return pa.concat_tables([pq.read_table(f) for f in files]).sort_by("pair_id") if files else None


def _run(src, out, model, *extra):
    result = job.run(["--input", str(src), "--output", str(out), "--model", model, *extra])
    return result.summary, _read(f"{out}/labels/*.parquet"), _read(f"{out}/rejects/*.parquet")


# --- the job, both modes, a real tiny model -------------------------------------------


def test_unique_mode_scores_like_pair_mode_with_every_id_once(tmp_path, bilstm_model,
                                                              monkeypatch):
    # Small buckets, so that the dedup and the shuffle join each use several keys.
    monkeypatch.setattr(planning, "TEXTS_PER_BUCKET", 8)
    monkeypatch.setattr(planning, "PAIRS_PER_JOIN_BUCKET", 30)
    rows = _repeated_pairs(120) + BAD
    src = tmp_path / "pairs.parquet"
    _write(src, rows)
    s_pairs, lab_pairs, rej_pairs = _run(src, tmp_path / "p", bilstm_model, "--mode", "pairs",
                                         "--batch-size", "7")
    assert s_pairs["mode"] == "pairs"

    def reasons(t):
        return sorted(zip(t["pair_id"].to_pylist(), t["reason"].to_pylist()), key=str)

    for join in ("side-input", "shuffle"):
        s_uniq, lab_uniq, rej_uniq = _run(src, tmp_path / join, bilstm_model, "--mode",
                                          "unique", "--batch-size", "7", "--unique-join", join)
        assert s_uniq["mode"] == "unique" and s_uniq["unique_join"] == join

        # Same ids scored, each once, same scores.
        assert lab_uniq["pair_id"].to_pylist() == lab_pairs["pair_id"].to_pylist()
        assert len(set(lab_uniq["pair_id"].to_pylist())) == lab_uniq.num_rows == 120
        np.testing.assert_allclose(lab_uniq["score"].to_numpy(), lab_pairs["score"].to_numpy(),
                                   atol=1e-5, rtol=0)
        assert lab_uniq["is_duplicate"].equals(lab_pairs["is_duplicate"])

        # Rejects: the same rows with the same reasons, as given.
        assert reasons(rej_uniq) == reasons(rej_pairs)
        assert sorted(rej_uniq["reason"].to_pylist()) == sorted(
            ["null_id", "null_text", "empty_text", "no_tokens", "no_tokens"]
        )
        assert rej_uniq.column_names == rej_pairs.column_names
        assert s_uniq["scored"] + s_uniq["rejected"] == len(rows)

        # Each distinct valid text encoded once: the valid texts, minus the no-token ones.
        good = {t for _, a, b in rows[:120] for t in (a, b)}
        good |= {"learn python", "left has no tokens"}
        assert s_uniq["counters"]["texts_encoded"] == len(good)
        assert s_uniq["counters"]["real_tokens"] < s_pairs["counters"]["real_tokens"]


def test_auto_mode_picks_unique_for_repeats_and_pairs_for_distinct(tmp_path, bilstm_model):
    src = tmp_path / "rep.parquet"
    _write(src, _repeated_pairs(40))
    summary, labels, _ = _run(src, tmp_path / "a", bilstm_model)
    assert summary["mode"] == "unique"
    assert summary["repeat_estimate"] == pytest.approx(80 / len(TEXTS))
    assert labels.num_rows == 40

    distinct = tmp_path / "distinct.parquet"
    _write(distinct, [(f"d{i}", f"first text {i}", f"second text {i}") for i in range(30)])
    summary, labels, _ = _run(distinct, tmp_path / "b", bilstm_model)
    assert summary["mode"] == "pairs"
    assert summary["repeat_estimate"] == pytest.approx(1.0)


def test_score_unique_on_one_input_matches_serving_default(bilstm_model):
    """ScoreUniqueTexts in a TestPipeline with no second read: the texts come from the same
    PCollection. Scores equal `serving_default` called directly on the same pairs."""
    rows = _repeated_pairs(50, seed=3)
    table = pa.table({k: list(v) for k, v in zip(("pair_id", "text_a", "text_b"), zip(*rows))})
    cfg = job.resolve(
        job.PipelineOptions(["--input", "x", "--output", "y", "--model", bilstm_model,
                             "--mode", "unique"]).view_as(job.ScoreOptions),
        dry_run=True,
    )
    assert cfg.plan.mode == "unique"  # explicit: a dry run reads nothing, so auto would be pairs

    tok = tokenization.configure(
        __import__("tokenizers").Tokenizer.from_file(f"{bilstm_model}/assets/tokenizer.json"),
        cfg.max_length,
    )
    model = LoadedPairModel(bilstm_model)
    want = dict(zip(table["pair_id"].to_pylist(), model.score(
        tokenization.pad(tokenization.encode_batch(tok, table["text_a"].to_pylist())),
        tokenization.pad(tokenization.encode_batch(tok, table["text_b"].to_pylist())),
    )))

    def check(tables):
        got = pa.concat_tables(tables)
        assert sorted(got["pair_id"].to_pylist()) == sorted(want)
        for pid, score in zip(got["pair_id"].to_pylist(), got["score"].to_pylist()):
            assert abs(score - want[pid]) <= 1e-5, pid

    with BeamTestPipeline() as p:
        out = (p | beam.Create([table.slice(0, 20), table.slice(20)])
               | stages.ScoreUniqueTexts(cfg))
        assert_that(out["labels"], check)


@pytest.mark.slow
def test_unique_mode_matches_pair_mode_on_bert(tmp_path, bert_model):
    rows = _repeated_pairs(60, seed=1)
    src = tmp_path / "pairs.parquet"
    _write(src, rows)
    _, lab_pairs, _ = _run(src, tmp_path / "p", bert_model, "--mode", "pairs")
    _, lab_uniq, _ = _run(src, tmp_path / "u", bert_model, "--mode", "unique")
    assert lab_uniq["pair_id"].equals(lab_pairs["pair_id"])
    np.testing.assert_allclose(lab_uniq["score"].to_numpy(), lab_pairs["score"].to_numpy(),
                               atol=1e-5, rtol=0)


# --- plain functions -------------------------------------------------------------------


def _reference_hash(text: str | None) -> int:
    """The hash, one byte at a time in Python: an independent oracle."""
    if text is None:
        return 0
    mask = (1 << 64) - 1
    data = text.encode("utf-8")
    h = 0
    for i, byte in enumerate(data):
        h = (h + (byte + 1) * pow(0x100000001B3, i, 1 << 64)) & mask
    z = h ^ ((len(data) * 0x9E3779B97F4A7C15) & mask)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def test_text_hash_matches_a_bytewise_oracle():
    texts = TEXTS + ["", None, "a", "ab", "ba", "x" * 5_000_000, "\u0000"]
    arr = pa.array(texts, pa.string())
    want = [_reference_hash(t) if t != "x" * 5_000_000 else None for t in texts]
    got = textindex.text_hash(arr)
    for w, g, t in zip(want, got.tolist(), texts):
        if w is not None:
            assert g == w, t
    # Offsets, chunking and string width do not change a value.
    np.testing.assert_array_equal(textindex.text_hash(arr.slice(3)), got[3:])
    np.testing.assert_array_equal(textindex.text_hash(arr.cast(pa.large_string())), got)
    np.testing.assert_array_equal(
        textindex.text_hash(pa.chunked_array([arr.slice(0, 4), arr.slice(4)])), got
    )
    assert len(set(textindex.text_hash(pa.array(TEXTS)).tolist())) == len(TEXTS)


def test_index_lookup_is_exact_even_when_hashes_collide():
    batches = [
        textindex.TextBatch(pa.array(TEXTS[:6]), None, embeddings=np.arange(12.0).reshape(6, 2)),
        textindex.TextBatch(pa.array(TEXTS[6:8]), None),  # texts without tokens
    ]
    index = textindex.EmbeddingIndex.build(batches)
    query = pa.array([TEXTS[7], TEXTS[2], TEXTS[0], TEXTS[2]])
    pos = index.lookup(query)
    assert index.texts.take(pa.array(pos)).to_pylist() == query.to_pylist()
    assert index.ok[pos].tolist() == [False, True, True, True]
    np.testing.assert_array_equal(index.embeddings[pos[1]], [4.0, 5.0])

    # Force every key equal: the hash says nothing, the texts still decide.
    index.keys[:] = index.keys[0]
    pos = index.lookup(query)
    assert index.texts.take(pa.array(pos)).to_pylist() == query.to_pylist()
    with pytest.raises(KeyError, match="not in the embedding index"):
        index.lookup(pa.array(["never seen"]))


def test_distinct_texts_combine_keeps_each_text_once():
    fn = textindex.DistinctFn()
    rng = np.random.default_rng(0)
    pool = [f"text {i}" for i in range(5000)]
    accs = []
    for _ in range(3):
        acc = fn.create_accumulator()
        for _ in range(40):
            acc = fn.add_input(acc, pa.array([pool[i] for i in rng.integers(5000, size=4000)],
                                             pa.large_string()))
        accs.append(acc)
    out = fn.extract_output(fn.merge_accumulators(accs))
    assert len(out) == len(set(out.to_pylist()))
    assert set(out.to_pylist()) <= set(pool) and len(out) > 4900
    assert len(fn.extract_output(fn.create_accumulator())) == 0


def test_split_buckets_partitions_the_texts():
    texts = pa.array([f"t{i}" for i in range(1000)], pa.large_string())
    parts = textindex.split_buckets(texts, 7)
    assert sorted(t for _, a in parts for t in a.to_pylist()) == sorted(texts.to_pylist())
    assert len({b for b, _ in parts}) == len(parts) > 1
    # The same text lands in the same bucket from any table.
    again = dict(textindex.split_buckets(texts.slice(500), 7))
    first = dict(parts)
    for b, arr in again.items():
        assert set(arr.to_pylist()) <= set(first[b].to_pylist())


def test_plan(tmp_path):
    _write(tmp_path / "rep.parquet", _repeated_pairs(200))
    _write(tmp_path / "one.parquet", [(f"i{i}", f"a {i}", f"b {i}") for i in range(200)])
    files = lambda name: [str(tmp_path / name)]  # noqa: E731
    cols = ("text_a", "text_b")
    assert planning.plan("auto", files("rep.parquet"), cols, 200).mode == "unique"
    assert planning.plan("auto", files("one.parquet"), cols, 200).mode == "pairs"
    assert planning.plan("pairs", files("rep.parquet"), cols, 200).mode == "pairs"
    assert planning.plan("unique", files("one.parquet"), cols, 200).mode == "unique"
    assert planning.plan("auto", files("rep.parquet"), cols, 10**7).text_buckets == 20
    # The join: a side input while the embeddings are small, else the shuffle.
    small = planning.plan("unique", files("rep.parquet"), cols, 200, embedding_dim=384)
    assert (small.join, small.join_buckets) == ("side-input", 1)
    # A sample with no repeats bounds the whole by 2 x rows: 20M texts, the shuffle.
    big = planning.plan("unique", files("one.parquet"), cols, 10**7, embedding_dim=384)
    assert (big.join, big.join_buckets) == ("shuffle", 100)
    # A sample where each text repeats: GEE says few distinct texts, the side input.
    many = planning.plan("unique", files("rep.parquet"), cols, 10**7, embedding_dim=384)
    assert many.join == "side-input"
    forced = planning.plan("unique", [], cols, 10, join="shuffle")
    assert forced.join == "shuffle"
    with pytest.raises(ValueError, match="allowed: auto, side-input, shuffle"):
        planning.plan("unique", [], cols, 1, join="broadcast")
    sample = planning.estimate_repeat(files("rep.parquet"), cols, 200, max_rows=50)
    assert sample.rows == 50 and sample.repeat > 1
    assert sample.distinct == len(TEXTS)  # every text seen more than once: GEE is exact
    whole = planning.estimate_repeat(files("rep.parquet"), cols, 200)
    assert (whole.rows, whole.repeat, whole.distinct) == (200, 400 / len(TEXTS), len(TEXTS))
    with pytest.raises(ValueError, match="allowed: auto, pairs, unique"):
        planning.plan("fast", [], cols, 1)


def _oracle_plan(lengths, max_rows, max_tokens):
    order = np.argsort(lengths, kind="stable")
    out, start = [], 0
    while start < len(order):
        end = start + 1
        while (end < len(order) and end - start < max_rows
               and (end - start + 1) * lengths[order[end]] <= max_tokens):
            end += 1
        out.append(order[start:end])
        start = end
    return out


def test_plan_batches_and_pad_rows_match_simple_oracles():
    rng = np.random.default_rng(0)
    for _ in range(200):
        lengths = rng.integers(1, rng.integers(2, 200), size=rng.integers(0, 600))
        rows, tokens = int(rng.integers(1, 300)), int(rng.integers(1, 9000))
        got = plan_batches(lengths, rows, tokens)
        want = _oracle_plan(lengths, rows, tokens)
        assert [b.tolist() for b in got] == [b.tolist() for b in want]
    ids = [np.arange(1, n + 1, dtype=np.int32) for n in (3, 0, 5, 1)]
    lengths = np.array([3, 0, 5, 1])
    for idx in ([0, 1, 2, 3], [2], [1], [3, 0]):
        np.testing.assert_array_equal(
            pad_rows(ids, lengths, np.array(idx)), tokenization.pad([ids[i] for i in idx])
        )


def test_pair_batches_respect_the_limits_and_pad_no_more_than_either_order():
    from pipeline.packing import padded_tokens, pair_order, plan_pair_batches

    rng = np.random.default_rng(1)
    for alike in (True, False):
        a = rng.integers(3, 60, size=3000)
        b = np.clip(a + rng.integers(-2, 3, size=3000), 3, None) if alike else rng.integers(
            3, 60, size=3000)
        got = plan_pair_batches(a, b, 128, 128 * 32)
        assert sorted(np.concatenate(got).tolist()) == list(range(3000))
        for idx in got:
            assert len(idx) <= 128 and len(idx) * max(a[idx].max(), b[idx].max()) <= 128 * 32
        longer = np.maximum(a, b)
        by_longer = padded_tokens(plan_batches(longer, 128, 128 * 32), a, b)
        snake = padded_tokens(plan_batches(longer, 128, 128 * 32, pair_order(a, b)), a, b)
        assert padded_tokens(got, a, b) == min(by_longer, snake)
        if not alike:  # lengths unrelated within a pair: the 2-D order wins clearly
            assert snake < 0.95 * by_longer
