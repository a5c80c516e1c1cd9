"""The embedding store (`pipeline/store.py`, `--embedding-store`, `pairscore store`): keys,
files, generations, compaction and info as plain functions against independent oracles
(hashlib, pyarrow, dicts); then real jobs with a tiny SavedModel: warm runs score as cold
ones and encode only the misses, and every fault of the issue (a corrupt store file, two
writers at once, another format version, an unwritable store) on real files, and the
store on gs:// and s3:// through the emulators of tests/test_storage.py."""

import concurrent.futures
import glob
import hashlib
import json
import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import cli, job, planning, store
from pipeline.io import JobError
from tests.conftest import PAIRS, shared_data, write_pairs
from tests.test_storage import BUCKET, gcs, s3  # noqa: F401  (fixtures)
from tests.tiny import TEXTS as TINY_TEXTS

DIM = 8
TEXTS = [*TINY_TEXTS, "Café crème brûlée", "东京 is in 日本", "Is 2+2=4? 😀", "learn python",
         "cheap laptops for sale", "the mailman and the dog", "word " * 80]


def _keys(texts):
    return np.array([hashlib.sha256(t.encode("utf-8")).digest()[:16] for t in texts], "S16")


def _rng_emb(n, dim=DIM, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def _generation(uri, fp, name, texts, seed=0, dim=DIM, files=1):
    """Write and commit a generation of `texts` the way a run does; returns its records."""
    keys, embs = _keys(texts), _rng_emb(len(texts), dim, seed)
    gen_dir = f"{store.root(uri, fp)}/{name}"
    os.makedirs(gen_dir, exist_ok=True)
    records = [store.write_file(f"{gen_dir}/part-{i}.parquet", k, e, fp)
               for i, (k, e) in enumerate(zip(np.array_split(keys, files),
                                              np.array_split(embs, files), strict=True))]
    store.commit_generation(uri, fp, name, records, dim)
    return dict(zip(texts, embs, strict=True))


def _read_all(listing, dim=DIM):
    out = {}
    for g in listing.live:
        for rec in g.files:
            got = store.read_file(rec, dim)
            if got is not None:
                out.update(zip(got[0].tolist(), map(tuple, got[1])))
    return out


# --- plain functions ------------------------------------------------------------------


def test_key_is_the_sha256_prefix_of_the_exact_utf8_bytes():
    texts = ["learn python", "Café crème", "東京", "😀", "a\x00b", " trailing ", "e\u0301"]
    got = store.text_keys(pa.array(texts, pa.large_string()))
    assert got.tolist() == [hashlib.sha256(t.encode()).digest()[:16] for t in texts]
    # Unnormalised: composed and decomposed é are different texts, with different keys.
    assert store.text_keys(pa.array(["\u00e9", "e\u0301"])).tolist()[0] != got[-1]
    buckets = store.key_buckets(got, 5)
    assert buckets.tolist() == [int.from_bytes(k[:8], "big") % 5 for k in got.tolist()]


def test_file_round_trip_size_and_index_lookup(tmp_path):
    dim, n = 384, 3000
    texts = [f"text number {i}" for i in range(n)]
    keys, embs = _keys(texts), _rng_emb(n, dim)
    rec = store.write_file(str(tmp_path / "part.parquet"), keys, embs, "fp")
    table = pq.read_table(rec["path"])  # any Parquet reader: the documented schema
    assert table.schema.field("key").type == pa.binary(16)
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), dim)
    per_entry = rec["bytes"] / n
    assert abs(per_entry / (4 * dim + 16) - 1) < 0.10, per_entry
    got_keys, got_embs = store.read_file(rec, dim)
    assert got_keys.tolist() == keys.tolist()
    np.testing.assert_array_equal(got_embs, embs)
    index = store.StoreIndex.build([(got_keys[:2000], got_embs[:2000]),
                                    (got_keys[1000:], got_embs[1000:])], dim)
    assert len(index) == n  # the overlap counted once
    probe = _keys(texts[::7] + ["never stored", "another"])
    pos = index.lookup(probe)
    assert (pos[-2:] == -1).all()
    oracle = dict(zip(keys.tolist(), embs.tolist(), strict=True))
    np.testing.assert_array_equal(index.embeddings[pos[:-2]],
                                  np.array([oracle[k] for k in probe[:-2].tolist()], np.float32))


@pytest.mark.parametrize("fault", ["truncated", "flipped_byte", "garbage", "missing",
                                   "other_dim"])
def test_a_bad_store_file_is_skipped_with_a_warning_naming_it(tmp_path, caplog, fault):
    texts = [f"t{i}" for i in range(500)]
    path = str(tmp_path / "part.parquet")
    rec = store.write_file(path, _keys(texts), _rng_emb(500, 16 if fault == "other_dim"
                                                         else DIM), "fp")
    data = open(path, "rb").read()
    if fault == "truncated":
        open(path, "wb").write(data[: len(data) // 2])
    elif fault == "flipped_byte":  # same size: found by the Parquet page checksum
        mid = bytearray(data)
        mid[len(data) // 3] ^= 0xFF
        open(path, "wb").write(bytes(mid))
    elif fault == "garbage":
        open(path, "wb").write(os.urandom(len(data)))
    elif fault == "missing":
        os.remove(path)
    with caplog.at_level(logging.WARNING, "pairscore.store"):
        assert store.read_file(rec, DIM) is None
    assert path in caplog.text and "skipping" in caplog.text


def test_readers_see_committed_generations_only_and_compaction_is_atomic(tmp_path,
                                                                         monkeypatch):
    uri, fp = str(tmp_path / "store"), "abcd"
    first = _generation(uri, fp, "gen-1", [f"a{i}" for i in range(40)], seed=1, files=2)
    second = _generation(uri, fp, "gen-2", [f"a{i}" for i in range(30, 70)], seed=2)
    # A run that died mid-write: files, no commit marker.
    dead = f"{store.root(uri, fp)}/gen-dead"
    os.makedirs(dead)
    store.write_file(f"{dead}/part-0.parquet", _keys(["dead"]), _rng_emb(1), fp)
    listing = store.list_generations(store.root(uri, fp))
    assert [g.name for g in listing.live] == ["gen-1", "gen-2"]
    assert list(listing.uncommitted) == [dead]
    before = _read_all(listing)
    assert len(before) == 70 and _keys(["dead"])[0] not in before

    seen_during = []
    real_delete = store._delete_generation

    def delete_and_look(gen_dir):
        # What a reader listing now sees: exactly the merged set, never both nor neither.
        now = store.list_generations(store.root(uri, fp))
        seen_during.append(([g.name for g in now.live], len(_read_all(now))))
        real_delete(gen_dir)

    monkeypatch.setattr(store, "_delete_generation", delete_and_look)
    report = store.compact(uri, fp)  # the dead run is young: kept
    assert report["generations_merged"] == 2 and report["entries"] == 70
    assert report["duplicates_dropped"] == 10
    merged = report["generation_written"]
    assert seen_during and all(s == ([merged], 70) for s in seen_during)
    after = store.list_generations(store.root(uri, fp))
    assert [g.name for g in after.live] == [merged] and not after.superseded
    assert list(after.uncommitted) == [dead]
    got = _read_all(after)
    assert set(got) == set(before)
    oracle = {**second, **first}  # overlapping texts: either copy (runs store one model's)
    for t, e in oracle.items():
        assert got[_keys([t])[0]] in (tuple(first.get(t, e)), tuple(second.get(t, e)))

    monkeypatch.setattr(store, "_delete_generation", real_delete)
    report = store.compact(uri, fp, stale_after_s=-1)  # now the dead run is removed
    assert report["generations_deleted"] == 1 and not os.path.exists(dead)
    [row] = store.info(uri)
    assert row == {"fingerprint": fp, "namespace": fp, "settings": None,
                   "format_version": store.FORMAT_VERSION, "dim": DIM, "entries": 70,
                   "generations": 1, "files": 1, "bytes": after.bytes,
                   "superseded_generations": 0, "uncommitted_generations": 0, "set_aside": []}


def test_another_format_version_is_refused(tmp_path, bilstm_model, capsys):
    uri, fp = str(tmp_path / "store"), "abcd"
    _generation(uri, fp, "gen-1", ["x", "y"])
    fmt = f"{store.root(uri, fp)}/_FORMAT.json"
    record = json.load(open(fmt))
    json.dump({**record, "format_version": 3}, open(fmt, "w"))
    with pytest.raises(store.StoreError, match="format version 3"):
        store.list_generations(store.root(uri, fp))
    assert cli.main(["store", "compact", uri]) == 2
    assert "format version 3; this pairscore reads format versions 1 and 2 only" in (
        capsys.readouterr().err)
    # The job refuses it at launch, before any work.
    src = tmp_path / "p.parquet"
    write_pairs(src, PAIRS[:3])
    fp_model = json.load(open(f"{bilstm_model}/pairscore.json"))["fingerprint"]
    mstore = str(tmp_path / "mstore")
    os.makedirs(store.root(mstore, fp_model))
    json.dump({"format_version": 3}, open(f"{store.root(mstore, fp_model)}/_FORMAT.json", "w"))
    out = tmp_path / "out"
    assert cli.main(["score", "--input", str(src), "--output", str(out), "--model",
                     bilstm_model, "--embedding-store", mstore]) == 2
    assert "format version 3" in capsys.readouterr().err
    assert not (out / "summary.json").exists()


def test_store_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    assert cli.main(["store", "info", str(tmp_path / "nothing")]) == 2
    assert "holds no embedding store" in capsys.readouterr().err
    _generation(str(tmp_path / "s"), "abcd", "gen-1", ["x"])
    assert cli.main(["store", "compact", str(tmp_path / "s"), "--model-fingerprint",
                     "ffff"]) == 2
    assert "no entries for model fingerprint ffff (it has: abcd)" in capsys.readouterr().err
    assert cli.main(["store", "info", str(tmp_path / "s"), "--bogus"]) == 2
    assert "unknown flag --bogus" in capsys.readouterr().err
    assert cli.main(["store", "info", str(tmp_path / "s")]) == 0
    assert "abcd: 1 entries, 1 generations, 1 files" in capsys.readouterr().out


# --- the job ------------------------------------------------------------------------------


def _labels(out):
    files = sorted(glob.glob(f"{out}/labels/*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]).sort_by("pair_id")


def _score(src, out, model, *extra):
    result = job.run(["--input", str(src), "--output", str(out), "--model", model, *extra])
    return result.summary, _labels(out)


def _pairs(texts, n, seed):
    rng = np.random.default_rng(seed)
    i = rng.integers(len(texts), size=n)
    j = (i + 1 + rng.integers(len(texts) - 1, size=n)) % len(texts)
    return [(f"q{seed}-{k:04d}", texts[a], texts[b]) for k, (a, b) in enumerate(zip(i, j))]


def _dim(model):
    return json.load(open(f"{model}/pairscore.json"))["embedding_dim"]


def _distinct(rows):
    return {t for _, a, b in rows for t in (a, b)}


def _direct_scores(model, rows):
    from model.predict import Scorer

    rows = sorted(rows)
    return Scorer(model).score([a for _, a, _ in rows], [b for _, _, b in rows])


def test_warm_run_encodes_only_the_misses_and_scores_as_the_model(tmp_path, bilstm_model,
                                                                   monkeypatch):
    # The warm run's store is "large": the keyed join, over several key buckets.
    monkeypatch.setattr(planning, "SIDE_INPUT_MAX_BYTES", 0)
    monkeypatch.setattr(store, "ENTRIES_PER_BUCKET", 2)
    night1, night2 = _pairs(TEXTS[:7], 30, 1), _pairs(TEXTS, 60, 2)
    uri = str(tmp_path / "store")
    for name, rows in (("n1", night1), ("n2", night2)):
        write_pairs(tmp_path / f"{name}.parquet", rows)
    s1, _ = _score(tmp_path / "n1.parquet", tmp_path / "o1", bilstm_model,
                   "--embedding-store", uri)
    assert s1["mode"] == "unique"
    st = s1["store"]
    assert (st["texts_found"], st["texts_encoded"]) == (0, len(_distinct(night1)))
    assert st["entries_written"] == st["texts_encoded"] and st["generation_written"]
    s2, warm = _score(tmp_path / "n2.parquet", tmp_path / "o2", bilstm_model,
                      "--embedding-store", uri)
    st = s2["store"]
    known = _distinct(night1) & _distinct(night2)
    assert st["lookup"] == "keyed-join" and st["generations_read"] == 1
    assert st["entries_read"] == len(_distinct(night1))
    assert (st["texts_found"], st["texts_encoded"]) == (len(known),
                                                        len(_distinct(night2) - known))
    c = s2["counters"]
    assert c["store_hits"] == len(known) and c["texts_encoded"] == st["texts_encoded"]
    assert c["store_entries_written"] == st["entries_written"]
    np.testing.assert_allclose(warm["score"].to_numpy(), _direct_scores(bilstm_model, night2),
                               atol=1e-5)
    assert [r["generations"] for r in store.info(uri)] == [2]


@pytest.mark.slow
@pytest.mark.parametrize("lookup", ["side-input", "keyed-join"])
def test_warm_runs_score_as_a_cold_run_and_known_texts_are_not_encoded(
        tmp_path, bilstm_model, monkeypatch, lookup):
    if lookup == "keyed-join":
        monkeypatch.setattr(planning, "SIDE_INPUT_MAX_BYTES", 0)
        monkeypatch.setattr(store, "ENTRIES_PER_BUCKET", 4)
    night1, night2 = _pairs(TEXTS[:7], 30, 1), _pairs(TEXTS, 60, 2)
    uri = str(tmp_path / "store")
    for name, rows in (("n1", night1), ("n2", night2)):
        write_pairs(tmp_path / f"{name}.parquet", rows)
    _score(tmp_path / "n1.parquet", tmp_path / "o1", bilstm_model, "--embedding-store", uri)
    s2, warm = _score(tmp_path / "n2.parquet", tmp_path / "o2", bilstm_model,
                      "--embedding-store", uri)
    assert s2["store"]["lookup"] == lookup and s2["store"]["texts_found"] > 0
    _, cold = _score(tmp_path / "n2.parquet", tmp_path / "cold", bilstm_model,
                     "--mode", "unique")
    assert warm["pair_id"].equals(cold["pair_id"])
    np.testing.assert_allclose(warm["score"].to_numpy(), cold["score"].to_numpy(), atol=1e-5)
    assert warm["is_duplicate"].equals(cold["is_duplicate"])
    # Every text known: nothing encoded, no generation written.
    s3_, again = _score(tmp_path / "n2.parquet", tmp_path / "o3", bilstm_model,
                        "--embedding-store", uri)
    st = s3_["store"]
    assert (st["texts_encoded"], st["generation_written"]) == (0, None)
    assert st["texts_found"] == len(_distinct(night2)) and st["generations_read"] == 2
    assert again["score"].equals(warm["score"])


def test_a_corrupt_store_file_is_encoded_again_never_a_wrong_score(tmp_path, bilstm_model):
    rows = _pairs(TEXTS, 40, 3)
    src = tmp_path / "p.parquet"
    write_pairs(src, rows)
    uri = str(tmp_path / "store")
    _, cold = _score(src, tmp_path / "o1", bilstm_model, "--embedding-store", uri)
    [part] = glob.glob(f"{uri}/*/gen-*/part-*.parquet")
    data = open(part, "rb").read()
    open(part, "wb").write(data[: len(data) - 100])  # truncated between runs
    s, warm = _score(src, tmp_path / "o2", bilstm_model, "--embedding-store", uri)
    st = s["store"]
    assert st["files_skipped"] == 1 and st["texts_found"] == 0
    assert st["texts_encoded"] == len(_distinct(rows)) == st["entries_written"]
    assert s["status"] == "published"
    np.testing.assert_allclose(warm["score"].to_numpy(), cold["score"].to_numpy(), atol=1e-5)
    # The re-encoded texts are in the new generation: the next run will find them.
    listing = store.list_generations(store.root(uri, s["store"]["namespace"]))
    assert len(_read_all(listing, _dim(bilstm_model))) == len(_distinct(rows))


def test_two_runs_writing_at_once_both_commit(tmp_path, bilstm_model):
    a, b = _pairs(TEXTS[:7], 20, 4), _pairs(TEXTS[5:], 20, 5)
    write_pairs(tmp_path / "a.parquet", a)
    write_pairs(tmp_path / "b.parquet", b)
    uri = str(tmp_path / "store")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(_score, tmp_path / f"{n}.parquet", tmp_path / f"o{n}",
                            bilstm_model, "--embedding-store", uri) for n in "ab"]
        summaries = [r.result()[0] for r in runs]
    written = {s["store"]["generation_written"] for s in summaries}
    assert len(written) == 2 and None not in written
    listing = store.list_generations(store.root(uri, summaries[0]["store"]["namespace"]))
    assert {g.name for g in listing.live} == written
    # Neither lost the other's: the store holds every text of both.
    entries = _read_all(listing, _dim(bilstm_model))
    assert set(entries) == set(_keys(sorted(_distinct(a + b))).tolist())


def test_unwritable_store_or_pair_mode_fails_at_launch(tmp_path, bilstm_model, capsys):
    src = tmp_path / "p.parquet"
    write_pairs(src, PAIRS[:3])
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    out = tmp_path / "out"
    argv = ["score", "--input", str(src), "--output", str(out), "--model", bilstm_model]
    assert cli.main([*argv, "--embedding-store", str(blocker / "store")]) == 2
    err = capsys.readouterr().err
    assert f"--embedding-store {blocker / 'store'} is not writable" in err
    assert not out.exists() or not any(out.iterdir())  # before any work
    assert cli.main([*argv, "--embedding-store", str(tmp_path / "s"), "--mode", "pairs"]) == 2
    assert "--mode pairs cannot use --embedding-store" in capsys.readouterr().err
    with pytest.raises(JobError, match="--precision bfloat16 cannot use --embedding-store"):
        job.run([*argv[1:], "--embedding-store", str(tmp_path / "s"),
                 "--precision", "bfloat16"])


@pytest.mark.slow
def test_warm_store_equals_cold_run_on_real_texts(tmp_path, bert_model):
    table = pq.read_table(shared_data("mrpc_dev.parquet"), columns=["text_a", "text_b"])
    texts = list(dict.fromkeys(table["text_a"].to_pylist() + table["text_b"].to_pylist()))
    texts = [t for t in texts if t and t.strip()][:160]
    night1, night2 = _pairs(texts[:120], 150, 6), _pairs(texts, 200, 7)
    write_pairs(tmp_path / "n1.parquet", night1)
    write_pairs(tmp_path / "n2.parquet", night2)
    uri = str(tmp_path / "store")
    _score(tmp_path / "n1.parquet", tmp_path / "o1", bert_model, "--embedding-store", uri)
    s, warm = _score(tmp_path / "n2.parquet", tmp_path / "o2", bert_model,
                     "--embedding-store", uri)
    assert s["store"]["texts_found"] == len(_distinct(night1) & _distinct(night2)) > 0
    _, cold = _score(tmp_path / "n2.parquet", tmp_path / "cold", bert_model, "--mode", "pairs")
    assert warm["pair_id"].equals(cold["pair_id"])
    np.testing.assert_allclose(warm["score"].to_numpy(), cold["score"].to_numpy(), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["gcs", "s3"])
def test_store_in_a_bucket(where, request, tmp_path, bilstm_model, monkeypatch, capsys):
    bucket = request.getfixturevalue(where)
    for name, value in bucket.env().items():
        monkeypatch.setenv(name, value)
    rows = _pairs(TEXTS, 20, 8)
    src = tmp_path / "p.parquet"
    write_pairs(src, rows)
    uri = f"{bucket.scheme}://{BUCKET}/store-{where}"
    flags = ["--embedding-store", uri, *bucket.flags()]
    s1, cold = _score(src, tmp_path / "o1", bilstm_model, *flags)
    s2, warm = _score(src, tmp_path / "o2", bilstm_model, *flags)
    assert s1["store"]["texts_encoded"] == len(_distinct(rows)) == s2["store"]["texts_found"]
    assert s2["store"]["texts_encoded"] == 0
    np.testing.assert_allclose(warm["score"].to_numpy(), cold["score"].to_numpy(), atol=1e-5)
    fp = s1["store"]["namespace"]
    keys = bucket.keys(f"store-{where}/{fp}/")
    assert f"store-{where}/{fp}/_FORMAT.json" in keys
    assert sum(k.endswith("/_COMMITTED.json") for k in keys) == 1
    assert cli.main(["store", "info", uri, "--json", *bucket.flags()]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["namespace"], row["entries"], row["generations"]) == (
        fp, len(_distinct(rows)), 1)


def test_a_gated_night_commits_its_generation_only_when_accepted(tmp_path, bilstm_model,
                                                                 capsys):
    rows = _pairs(TEXTS, 20, 3) + [("empty", "learn python", "")]
    write_pairs(tmp_path / "n.parquet", rows)
    uri, out = str(tmp_path / "store"), tmp_path / "out"
    args = ["score", "--input", str(tmp_path / "n.parquet"), "--output", str(out),
            "--model", bilstm_model, "--embedding-store", uri]
    assert cli.main([*args, "--max-reject-rate", "0"]) == 3  # one reject: gated
    summary = json.loads((out / "summary.json").read_text())
    generation = summary["store"]["generation_written"]
    root = store.root(uri, summary["store"]["namespace"])
    # Written, not committed: tonight's embeddings are not read by later nights yet.
    listing = store.list_generations(root)
    assert listing.live == [] and any(d.endswith(generation) for d in listing.uncommitted)
    capsys.readouterr()
    assert cli.main(["publish", str(out), "--accept"]) == 0
    listing = store.list_generations(root)
    assert [g.name for g in listing.live] == [generation]
    assert listing.live[0].entries == summary["store"]["entries_written"] > 0
    assert "staged_store" not in json.loads((out / "summary.json").read_text())


# --- compaction: never drops what it could not read (issue 19, item 4) --------------------


def _tree(path):
    return sorted(os.path.relpath(os.path.join(d, f), path)
                  for d, _, files in os.walk(path) for f in files)


def _store_with_a_dead_run(uri, fp):
    _generation(uri, fp, "gen-1", [f"a{i}" for i in range(40)], seed=1, files=2)
    _generation(uri, fp, "gen-2", [f"a{i}" for i in range(30, 70)], seed=2)
    dead = f"{store.root(uri, fp)}/gen-dead"
    os.makedirs(dead)
    store.write_file(f"{dead}/part-0.parquet", _keys(["dead"]), _rng_emb(1), fp)
    return sorted(glob.glob(f"{store.root(uri, fp)}/gen-1/part-*.parquet"))


@pytest.mark.parametrize("fault", ["missing", "oserror_on_open", "oserror_on_read"])
def test_compaction_aborts_deleting_nothing_when_a_committed_file_cannot_be_read(
        tmp_path, monkeypatch, capsys, fault):
    uri, fp = str(tmp_path / "store"), "abcd"
    bad = _store_with_a_dead_run(uri, fp)[1]
    if fault == "missing":
        os.remove(bad)
    else:  # a transient storage error, at the file system boundary
        from apache_beam.io.filesystems import FileSystems

        real_open = FileSystems.open

        class Broken:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            def read(self, *args):
                raise OSError("connection reset by peer")

        def flaky_open(path, *args, **kwargs):
            if path == bad and fault == "oserror_on_open":
                raise OSError("503 Service Unavailable")
            f = real_open(path, *args, **kwargs)
            return Broken(f) if path == bad else f

        monkeypatch.setattr(FileSystems, "open", staticmethod(flaky_open))
    before = _tree(tmp_path / "store")
    with pytest.raises(store.StoreError, match=f"cannot read {bad}"):
        store.compact(uri, fp, stale_after_s=-1)
    assert _tree(tmp_path / "store") == before  # nothing deleted, nothing left behind
    assert cli.main(["store", "compact", uri, "--stale-after", "-1"]) == 2
    err = capsys.readouterr().err
    assert bad in err and "nothing was deleted" in err
    assert _tree(tmp_path / "store") == before


@pytest.mark.parametrize("fault", ["flipped_byte", "rows"])
def test_compaction_sets_aside_a_file_proven_corrupt_and_info_lists_it(tmp_path, capsys,
                                                                       fault):
    uri, fp = str(tmp_path / "store"), "abcd"
    bad = _store_with_a_dead_run(uri, fp)[0]
    if fault == "flipped_byte":  # same size: the page checksum proves it
        data = bytearray(open(bad, "rb").read())
        data[len(data) // 3] ^= 0xFF
        open(bad, "wb").write(bytes(data))
    else:  # a file of other rows than its commit lists
        t = pq.read_table(bad)
        pq.write_table(t.slice(0, 5), bad)
        commit = f"{store.root(uri, fp)}/gen-1/_COMMITTED.json"
        record = json.load(open(commit))
        for f in record["files"]:
            if f["name"] == os.path.basename(bad):
                f["bytes"] = os.path.getsize(bad)
        json.dump(record, open(commit, "w"))
    corrupt = open(bad, "rb").read()
    report = store.compact(uri, fp)
    [aside] = report["files_set_aside"]
    assert aside["file"] == bad and aside["reason"]
    assert open(aside["copy"], "rb").read() == corrupt  # kept, byte for byte
    listing = store.list_generations(store.root(uri, fp))
    assert [g.name for g in listing.live] == [report["generation_written"]]
    assert len(_read_all(listing)) == 70 - 20  # the 20 texts only the bad file held
    [row] = store.info(uri)
    assert [(a["file"], a["copy"]) for a in row["set_aside"]] == [(bad, aside["copy"])]
    assert cli.main(["store", "info", uri]) == 0
    out = capsys.readouterr().out
    assert "1 files set aside" in out and aside["copy"] in out


def test_a_format_1_store_stays_readable_and_compactable(tmp_path):
    # Written as pairscore wrote format 1: URI/<fingerprint>/, version 1 markers.
    uri, fp = str(tmp_path / "store"), "abcd"
    root_ = store.root(uri, fp)
    expect = {}
    for g, texts in (("gen-1", ["a", "b", "c"]), ("gen-2", ["c", "d"])):
        os.makedirs(f"{root_}/{g}")
        rec = store.write_file(f"{root_}/{g}/part-0.parquet", _keys(texts),
                               _rng_emb(len(texts)), fp)
        expect.update(zip(_keys(texts).tolist(), range(len(texts))))
        json.dump({"format_version": 1, "generation": g, "entries": len(texts),
                   "files": [{"name": "part-0.parquet", "rows": rec["rows"],
                              "bytes": rec["bytes"]}], "supersedes": [],
                   "committed_at": "2025-01-01T00:00:00Z"},
                  open(f"{root_}/{g}/_COMMITTED.json", "w"))
    json.dump({"format": "pairscore-embedding-store", "format_version": 1,
               "key": "sha256-128", "dim": DIM, "model_fingerprint": fp},
              open(f"{root_}/_FORMAT.json", "w"))
    assert set(_read_all(store.list_generations(root_))) == set(expect)
    report = store.compact(uri, fp)
    assert report["entries"] == 4 and report["duplicates_dropped"] == 1
    listing = store.list_generations(root_)
    assert set(_read_all(listing)) == set(expect) and len(listing.live) == 1
    # Still format 1 throughout: the pairscore that wrote it reads it after compaction.
    assert json.load(open(f"{root_}/_FORMAT.json"))["format_version"] == 1
    [commit] = glob.glob(f"{root_}/gen-*/_COMMITTED.json")
    assert json.load(open(commit))["format_version"] == 1
    [row] = store.info(uri)
    assert (row["format_version"], row["entries"]) == (1, 4)


def test_accepting_a_gated_night_whose_store_files_compaction_removed(tmp_path,
                                                                       bilstm_model, capsys,
                                                                       caplog):
    # Issue 19, item 6: the night is published, its generation is not committed.
    rows = _pairs(TEXTS, 20, 3) + [("empty", "learn python", "")]
    write_pairs(tmp_path / "n.parquet", rows)
    uri, out = str(tmp_path / "store"), tmp_path / "out"
    assert cli.main(["score", "--input", str(tmp_path / "n.parquet"), "--output", str(out),
                     "--model", bilstm_model, "--embedding-store", uri,
                     "--max-reject-rate", "0"]) == 3  # gated
    summary = json.loads((out / "summary.json").read_text())
    generation = summary["store"]["generation_written"]
    staged = summary["staged_store"]["files"]
    # Days later: compaction takes the uncommitted generation for a dead run's.
    assert cli.main(["store", "compact", uri, "--stale-after", "-1"]) == 0
    assert not any(os.path.exists(f["path"]) for f in staged)
    capsys.readouterr()
    with caplog.at_level(logging.WARNING, "pairscore.publish"):
        assert cli.main(["publish", str(out), "--accept"]) == 0
    said = capsys.readouterr().out
    assert (out / "_SUCCESS").exists() and len(_labels(out)) == summary["scored"]
    root = store.root(uri, summary["store"]["namespace"] if "namespace" in summary["store"]
                      else summary["model_fingerprint"])
    listing = store.list_generations(root)
    assert listing.live == [] and listing.superseded == []  # nothing committed
    assert f"{generation} not committed" in caplog.text and staged[0]["path"] in caplog.text
    assert "store generation not committed" in said
    final = json.loads((out / "summary.json").read_text())
    assert final["status"] == "published" and "staged_store" not in final
    acc = final["accepted"]["store"]
    assert (acc["generation"], acc["committed"]) == (generation, False)
    assert "gone" in acc["why"] and staged[0]["path"] in acc["why"]
    assert final["store"]["generation_written"] is None
    # The next night reads the store without a warning about missing files.
    caplog.clear()
    with caplog.at_level(logging.WARNING, "pairscore.store"):
        s, _ = _score(tmp_path / "n.parquet", tmp_path / "o2", bilstm_model,
                      "--embedding-store", uri)
    assert s["store"]["files_skipped"] == 0 and "skipping" not in caplog.text


# --- the namespace: everything that shapes an embedding (issue 19, item 5) ---------------


def _with_settings(model, where, **changes):
    """A copy of `model` whose pairscore.json says otherwise (same files: same fingerprint)."""
    import shutil

    shutil.copytree(model, where)
    meta = json.load(open(f"{where}/pairscore.json"))
    meta.update(changes)
    json.dump(meta, open(f"{where}/pairscore.json", "w"))
    return str(where)


def test_a_model_whose_max_length_changed_does_not_reuse_its_embeddings(tmp_path,
                                                                        bilstm_model):
    rows = _pairs(TEXTS, 30, 9)
    src = tmp_path / "p.parquet"
    write_pairs(src, rows)
    uri = str(tmp_path / "store")
    s1, _ = _score(src, tmp_path / "o1", bilstm_model, "--embedding-store", uri)
    short = _with_settings(bilstm_model, tmp_path / "short", max_length=6)
    s2, got = _score(src, tmp_path / "o2", short, "--embedding-store", uri)
    assert s2["model_fingerprint"] == s1["model_fingerprint"]  # pairscore.json is not in it
    assert s2["store"]["namespace"] != s1["store"]["namespace"]
    assert s2["store"]["texts_found"] == 0  # made at the old length: not reused
    assert s2["store"]["texts_encoded"] == len(_distinct(rows))
    _, cold = _score(src, tmp_path / "cold", short, "--mode", "unique")
    np.testing.assert_allclose(got["score"].to_numpy(), cold["score"].to_numpy(), atol=1e-6)
    # The same settings again find their own namespace.
    s3_, _ = _score(src, tmp_path / "o3", short, "--embedding-store", uri)
    assert s3_["store"]["texts_found"] == len(_distinct(rows))
    fmt = json.load(open(f"{uri}/{s3_['store']['namespace']}/_FORMAT.json"))
    assert fmt["format_version"] == 2 and fmt["namespace"]["max_length"] == 6
    assert fmt["namespace"]["numerics"] == "float32"
    assert {r["namespace"] for r in store.info(uri)} == {s1["store"]["namespace"],
                                                         s2["store"]["namespace"]}


def test_with_a_store_the_encoding_worker_turns_tf32_off(tmp_path, bilstm_model):
    import tensorflow as tf
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.handler import EncodeHandler
    from pipeline.options import ScoreOptions
    from pipeline.stages.score import handler_for

    def config(argv):
        return job.resolve(PipelineOptions(argv).view_as(ScoreOptions), dry_run=False)

    src = tmp_path / "p.parquet"
    write_pairs(src, PAIRS[:3])
    argv = ["--input", str(src), "--output", str(tmp_path / "o"), "--model", bilstm_model]
    was = tf.config.experimental.tensor_float_32_execution_enabled()
    try:
        tf.config.experimental.enable_tensor_float_32_execution(True)
        ids = np.array([[2, 3, 4]], np.int32)
        handler_for(EncodeHandler, config(argv)).load_model().encode(ids)
        assert tf.config.experimental.tensor_float_32_execution_enabled()  # no store: TF's
        cfg = config([*argv, "--embedding-store", str(tmp_path / "s")])
        handler_for(EncodeHandler, cfg).load_model().encode(ids)
        assert not tf.config.experimental.tensor_float_32_execution_enabled()
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(was)


def test_a_format_1_namespace_is_read_by_the_same_model_with_the_same_settings(
        tmp_path, bilstm_model, caplog):
    rows = _pairs(TEXTS, 30, 10)
    src = tmp_path / "p.parquet"
    write_pairs(src, rows)
    # What pairscore wrote before namespaces, URI/<fingerprint>/ in format 1: made here
    # from a run's own namespace, moved there and its markers rewritten as version 1.
    import shutil

    first, _ = _score(src, tmp_path / "o0", bilstm_model, "--embedding-store",
                      str(tmp_path / "new"))
    fp, texts = first["model_fingerprint"], _distinct(rows)
    uri = str(tmp_path / "store")
    legacy = store.root(uri, fp)
    shutil.copytree(f"{tmp_path}/new/{first['store']['namespace']}", legacy)
    for marker in glob.glob(f"{legacy}/*.json") + glob.glob(f"{legacy}/gen-*/*.json"):
        record = json.load(open(marker))
        record["format_version"] = 1
        record.pop("namespace", None)
        json.dump(record, open(marker, "w"))
    with caplog.at_level(logging.INFO, "pairscore.store"):
        s, _ = _score(src, tmp_path / "o1", bilstm_model, "--embedding-store", uri)
    assert s["store"]["texts_found"] == len(texts) and s["store"]["format1_read"] == legacy
    assert f"format-1 namespace {legacy}" in caplog.text
    caplog.clear()
    edited = _with_settings(bilstm_model, tmp_path / "edited", max_length=6)
    with caplog.at_level(logging.WARNING, "pairscore.store"):
        s, _ = _score(src, tmp_path / "o2", edited, "--embedding-store", uri)
    assert s["store"]["texts_found"] == 0 and s["store"]["format1_read"] is None
    assert legacy in caplog.text and "not read" in caplog.text and "max_length" in caplog.text
