"""The cascade: a cross-encoder (--architecture cross) re-scores the pairs whose Siamese
score falls in a band. Real tiny SavedModels in temp dirs, real Beam pipelines on the
local runner, real Parquet."""

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from model.predict import Scorer
from model.rerank import cascade_decisions, choose_band, in_band
from pipeline import cli, handler, job, rerank
from pipeline.io import JobError
from tests.conftest import PAIRS, write_pairs


@pytest.fixture(scope="module")
def cross_model(tmp_path_factory, tiny_bert_preset):
    from tests.tiny import export_tiny_cross

    out = str(tmp_path_factory.mktemp("models") / "cross")
    export_tiny_cross(out, tiny_bert_preset, threshold=0.5)
    return out


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    rows = [(f"{pid}-{i}", a, b) for i in range(6) for pid, a, b in PAIRS]
    path = tmp_path_factory.mktemp("data") / "pairs.parquet"
    write_pairs(path, rows, row_group_size=10)
    return path


# --- plain functions ----------------------------------------------------------------------


def test_choose_band_holds_the_errors_asked_for_with_the_fewest_pairs():
    s = np.array([0.1, 0.3, 0.45, 0.48, 0.52, 0.55, 0.7, 0.9])
    y = np.array([0, 0, 1, 0, 0, 1, 1, 1])  # errors: 0.45 (missed), 0.52 (false alarm)
    assert choose_band(s, y, 0.5, 1.0) == (0.45, 0.52)
    assert choose_band(s, y, 0.5, 0.5) == (0.5, 0.52)  # one pair inside, not two
    assert choose_band(s, (s >= 0.5).astype(int), 0.5) == (0.5, 0.5)  # no errors
    with pytest.raises(ValueError, match="coverage"):
        choose_band(s, y, 0.5, 0.0)


def test_cascade_decisions_take_the_second_model_inside_the_band_only():
    first = np.array([0.1, 0.49, 0.51, 0.9])
    second = np.array([0.9, 0.9, 0.1, 0.1])
    decided, band = cascade_decisions(first, second, 0.4, 0.6, 0.5, 0.5)
    assert band.tolist() == [False, True, True, False]
    assert decided.tolist() == [False, True, False, True]
    assert in_band(np.float32([0.4]), 0.4, 0.6).tolist() == [True]  # inclusive


def test_parse_and_stored_band_refuse_what_they_cannot_use():
    assert rerank.parse_band("0.2,0.8") == (0.2, 0.8)
    for bad in ("0.8,0.2", "x", "0.1", "-1,0.5"):
        with pytest.raises(rerank.BandError, match="--rerank-band"):
            rerank.parse_band(bad)
    with pytest.raises(rerank.BandError, match="no stored band"):
        rerank.stored_band(None, "abc", "cross", "siamese")
    with pytest.raises(rerank.BandError, match="fingerprint 'other'.*has 'abc'"):
        rerank.stored_band({"first_model_fingerprint": "other", "lo": 0, "hi": 1}, "abc",
                           "cross", "siamese")
    assert rerank.stored_band({"first_model_fingerprint": "abc", "lo": 0.2, "hi": 0.7},
                              "abc", "cross", "siamese") == (0.2, 0.7)


def test_split_band_and_rescored_keep_every_row_once():
    rows = pa.table({"pair_id": ["a", "b", "c"], "text_a": ["x", "y", "z"]})
    kept, band = rerank.split_band(rows, np.float32([0.1, 0.5, 0.9]), (0.4, 0.6), 0.5)
    assert kept.rows["pair_id"].to_pylist() == ["a", "c"] and kept.decided_by == "first"
    assert band["pair_id"].to_pylist() == ["b"]
    back = rerank.rescored(band, np.float32([0.7]), 0.3)
    assert back.rows.column_names == rows.column_names
    assert back.first_scores.tolist() == [0.5] and back.scores.tolist() == [pytest.approx(0.7)]
    assert back.decided_by == "rerank" and back.threshold == 0.3


# --- the cross-encoder model directory ----------------------------------------------------


def test_a_cross_model_dir_scores_a_pair_from_ids_and_from_text_alike(cross_model):
    import tensorflow as tf

    scorer = Scorer(cross_model)
    assert scorer.metadata.architecture == "cross" and scorer.metadata.is_cross
    a = ["How do I learn Python quickly?", "The cat sat on the mat."]
    b = ["What is the fastest way to learn Python?", "A dog barked."]
    from_ids = scorer.score(a, b)
    from_text = scorer.model.signatures["score_text"](left=tf.constant(a), right=tf.constant(b))
    assert np.allclose(from_ids, from_text["score"].numpy(), atol=1e-5)
    # One sequence: padding either text further changes nothing.
    left, right = (scorer.tokenizer.encode(t).ids for t in (a[0], b[0]))
    pad = np.zeros((1, 5), np.int32)
    l1, r1 = np.int32([left]), np.int32([right])
    wide = scorer.score_ids(np.hstack([l1, pad]), np.hstack([r1, pad]))
    assert np.allclose(scorer.score_ids(l1, r1), wide, atol=1e-5)
    # Both texts matter and order is the model's: the score is not a function of one text.
    assert not np.allclose(scorer.score([a[0]], [b[0]]), scorer.score([a[0]], [b[1]]))


def test_pair_sequence_builds_cls_a_sep_b_sep():
    from model.layers import PairSequence

    left = np.int32([[101, 5, 6, 102, 0], [101, 7, 102, 0, 0]])
    right = np.int32([[101, 8, 102, 0], [101, 9, 10, 102]])
    ids, segments, mask = (np.asarray(t) for t in PairSequence()(left, right))
    assert ids.tolist() == [[101, 5, 6, 102, 8, 102, 0, 0], [101, 7, 102, 9, 10, 102, 0, 0]]
    assert segments.tolist() == [[0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1, 0, 0]]
    assert mask.tolist() == (ids != 0).tolist()


# --- the cascade in the job ---------------------------------------------------------------


def _labels(out):
    return pq.read_table(out / "labels")


def _score(argv):
    return job.run(argv)


@pytest.mark.parametrize("mode", ["pairs", pytest.param("unique", marks=pytest.mark.slow)])
def test_the_cascade_rescores_the_band_only_and_rows_add_up(
    tmp_path, bert_model, cross_model, pairs_file, mode
):
    base = ["--input", str(pairs_file), "--model", bert_model, "--mode", mode]
    alone = tmp_path / "alone"
    _score([*base, "--output", str(alone)])
    first = {r["pair_id"]: r["score"] for r in _labels(alone).to_pylist()}
    ordered = np.sort(np.float64(list(first.values())))
    lo, hi = float(ordered[len(ordered) // 4]), float(ordered[len(ordered) // 2])
    out = tmp_path / "cascade"
    result = _score([*base, "--output", str(out), "--rerank-model", cross_model,
                     "--rerank-band", f"{lo!r},{hi!r}", "--rerank-batch-size", "8"])
    labels = _labels(out)
    assert labels.schema.field("decided_by").type == pa.string()
    rows = labels.to_pylist()
    cross = Scorer(cross_model)
    band = [r for r in rows if r["decided_by"] == "rerank"]
    assert {r["decided_by"] for r in rows} == {"first", "rerank"}
    for r in rows:
        assert r["first_score"] == pytest.approx(first[r["pair_id"]], abs=1e-6)
        inside = lo <= first[r["pair_id"]] <= hi
        assert (r["decided_by"] == "rerank") == inside
        if not inside:
            assert r["score"] == r["first_score"]
            assert r["is_duplicate"] == (r["score"] >= 0.5)
    texts = {pid: (a, b) for pid, a, b in
             zip(*(pq.read_table(pairs_file)[c].to_pylist() for c in ("pair_id", "text_a",
                                                                     "text_b")), strict=True)}
    want = cross.score([texts[r["pair_id"]][0] for r in band],
                       [texts[r["pair_id"]][1] for r in band])
    assert np.allclose([r["score"] for r in band], want, atol=1e-5)
    assert all(r["is_duplicate"] == (r["score"] >= cross.metadata.threshold) for r in band)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rerank"]["pairs"] == len(band) > 0
    assert summary["rerank"]["share"] == pytest.approx(len(band) / summary["scored"])
    assert summary["rerank"]["band"] == [lo, hi]
    assert summary["rows_in"] == summary["scored"] + summary["rejected"]
    assert summary["rejected"] == json.loads((alone / "summary.json").read_text())["rejected"]
    assert "rerank" in (out / "report.html").read_text() and result.summary["counters"][
        "rerank_model_calls"] > 0


@pytest.mark.slow
def test_model_errors_in_the_second_pass_are_rejects_and_rows_add_up(
    tmp_path, bert_model, cross_model, pairs_file, monkeypatch
):
    original = handler.LoadedPairModel.score
    calls = {"cross": 0}

    def flaky(self, left, right):
        if self._model_dir == cross_model:
            calls["cross"] += 1
            if calls["cross"] == 1:
                raise ValueError("cross-encoder batch broke")
        return original(self, left, right)

    monkeypatch.setattr(handler.LoadedPairModel, "score", flaky)
    out = tmp_path / "out"
    job.run(["--input", str(pairs_file), "--model", bert_model, "--output", str(out),
             "--mode", "pairs", "--rerank-model", cross_model, "--rerank-band", "0,1",
             "--rerank-batch-size", "4", "--max-model-error-ratio", "0.5"])
    summary = json.loads((out / "summary.json").read_text())
    rejects = pq.read_table(out / "rejects")
    failed = rejects.filter(pc.equal(rejects["reason"], "model_error"))
    assert calls["cross"] > 1 and 0 < failed.num_rows == summary["model_errors"]
    assert set(failed["error"].to_pylist()) == {"ValueError: cross-encoder batch broke"}
    assert rerank.FIRST_SCORE not in rejects.column_names  # rows as read
    assert summary["rows_in"] == summary["scored"] + summary["rejected"]
    assert summary["invariant_holds"] and (out / "_SUCCESS").exists()
    assert summary["rerank"]["pairs"] == summary["scored"]  # the band 0,1 holds all


def _tampered(model_dir, dest):
    shutil.copytree(model_dir, dest)
    tok = dest / "assets" / "tokenizer.json"
    tok.write_text(tok.read_text().replace('"[UNK]"', '"[UNKNOWN]"', 1))
    return dest


def test_a_bad_or_mismatched_cross_model_is_refused_with_exit_2(
    tmp_path, bert_model, cross_model, pairs_file, capsys
):
    base = ["score", "--input", str(pairs_file), "--model", bert_model, "--mode", "pairs"]
    bad = _tampered(cross_model, tmp_path / "bad-cross")
    cases = [
        ([ "--rerank-model", str(bad), "--rerank-band", "0,1"],
         f"--rerank-model {bad}: .*tokenizer.json"),
        (["--rerank-model", str(tmp_path / "nowhere"), "--rerank-band", "0,1"],
         "--rerank-model .*nowhere.*does not exist"),
        (["--rerank-model", bert_model, "--rerank-band", "0,1"],
         f"--rerank-model {bert_model} is a siamese model"),
        (["--rerank-model", cross_model], f"--rerank-model {cross_model} has no stored band"),
        (["--rerank-model", cross_model, "--rerank-band", "0.9,0.1"], "--rerank-band"),
        (["--rerank-band", "0,1"], "--rerank-band need --rerank-model"),
    ]
    for i, (extra, message) in enumerate(cases):
        code = cli.main([*base, "--output", str(tmp_path / f"out{i}"), *extra])
        err = capsys.readouterr().err
        assert code == 2, (extra, err)
        assert __import__("re").search(message, err), (message, err)
        assert not (tmp_path / f"out{i}").exists()
    # A cross model as the first model cannot run unique-text mode.
    with pytest.raises(JobError, match="is a cross-encoder"):
        job.run(["--input", str(pairs_file), "--model", cross_model, "--mode", "unique",
                 "--output", str(tmp_path / "u")])


@pytest.mark.slow
def test_a_stored_band_is_used_only_for_its_first_model(
    tmp_path, bert_model, bilstm_model, cross_model, pairs_file
):
    from model.rerank import band_model

    labelled = tmp_path / "labelled.parquet"
    table = pq.read_table(pairs_file).slice(0, 20)
    pq.write_table(table.append_column("label", pa.array([i % 2 for i in range(20)],
                                                         pa.int8())), labelled)
    banded = str(tmp_path / "cross-banded")
    choice = band_model(cross_model, bert_model, str(labelled), banded, coverage=1.0)
    assert choice.errors_held == choice.errors and choice.lo <= choice.hi
    assert set(choice.cascade) == {"first", "rerank", "cascade"}
    out = tmp_path / "out"
    result = job.run(["--input", str(pairs_file), "--model", bert_model, "--mode", "pairs",
                      "--output", str(out), "--rerank-model", banded])
    assert result.summary["rerank"]["band"] == [choice.lo, choice.hi]
    assert result.summary["rerank"]["band_source"].startswith("stored")
    with pytest.raises(JobError, match="its band was chosen for the model with fingerprint"):
        job.run(["--input", str(pairs_file), "--model", bilstm_model, "--mode", "pairs",
                 "--output", str(tmp_path / "o2"), "--rerank-model", banded])


def test_the_cascade_builds_on_dataflow_with_its_own_handler_and_batch_sizes():
    from tests.test_dataflow import CLOUD, IMAGE, IO, dry_run

    cross = "gs://pairscore-test/models/cross"
    built = dry_run(["--profile", "dataflow-gpu", *CLOUD, f"--sdk_container_image={IMAGE}",
                     *IO, "--rerank-model", cross, "--rerank-band", "0.3,0.7",
                     "--rerank-batch-size", "256"])
    inference = built.dofn_under("ScorePairs/Rerank/Score",
                                 "_ExceptionHandlingWrapperDoFn")._fn
    assert inference._model_handler._base.model_dir == cross
    first = built.dofn_under("ScorePairs/Score", "_ExceptionHandlingWrapperDoFn")._fn
    assert first._model_handler._base.model_dir == IO[2].split("=")[1]
    tokenize = built.dofn_under("ScorePairs/Rerank/Tokenize", "_TokenizePairsFn")
    assert tokenize.cfg.model == cross and tokenize.cfg.batch_size == 256
    assert tokenize.cfg.max_batch_tokens == 256 * 64  # the GPU's per-row allowance
    split = built.dofn_under("ScorePairs/Rerank/Split", "_SplitFn")
    assert split.band == (0.3, 0.7)
    assert {"ScorePairs/Rerank/MergeDecided", "Finalize/Reranked"} <= set(built.transforms)
