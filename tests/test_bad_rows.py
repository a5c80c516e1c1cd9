"""Bad rows: each goes to rejects with a reason and the rest is scored.

One real job run over a file holding every kind of awkward row; the tests read its
output. The memory test tokenizes megabyte texts in a fresh process to measure its peak.
"""

import json
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import job
from tests.conftest import REPO

WORDS = "how do i learn python quickly "
LONG = (WORDS * (1_000_000 // len(WORDS) + 1))[:1_000_000]  # 1 MB, 200k tokens

# (id, text_a, text_b, expected reason or None if scored). bytes are written as-is into
# the string column: invalid UTF-8 that a producer other than pyarrow can write.
ROWS = [
    ("ok1", "How do I learn Python quickly?", "What is the fastest way to learn Python?", None),
    (None, "no id", "no id either", "null_id"),
    ("", "empty id", "learn python", "empty_id"),
    ("  ", "blank id", "learn python", "empty_id"),
    (None, None, "id and text missing: the first reason wins", "null_id"),
    ("n1", None, "left is null", "null_text"),
    ("n2", "right is null", None, "null_text"),
    ("e1", "", "left is empty", "empty_text"),
    ("e2", "right is empty", "", "empty_text"),
    ("w1", "   ", "left is spaces", "empty_text"),
    ("w2", "right is tabs and newlines", "\t\n\r ", "empty_text"),
    ("w3", "\u3000\u00a0\u2003", "left is Unicode spaces", "empty_text"),
    ("c1", "\x00\x01\x07\x1b", "left is control characters only", "no_tokens"),
    ("c2", "\u200b\u200d\ufeff", "left is zero-width characters only", "no_tokens"),
    ("c3", "how do\x00 i learn\x1b[0m python\x07?", "learn python\r\nquickly\x0c", None),
    ("u1", b"\xed\xa0\x80 a lone surrogate (CESU-8)", "learn python", "invalid_text"),
    ("u2", "learn python", b"\xff\xfe not UTF-8", "invalid_text"),
    ("u3", b"cut in the middle \xe6\x97", "learn python", "invalid_text"),
    ("u4", None, b"\xed\xb0\x80", "null_text"),
    ("r1", "كيف أتعلم بايثون بسرعة؟", "איך ללמוד פייתון מהר?", None),
    ("r2", "\u202eevil override\u202c python", "learn python", None),
    ("k1", "东京 is in 日本", "如何快速学习Python？", None),
    ("k2", "パイソンを学ぶ", "파이썬 배우기", None),
    ("k3", "😀😀", "🙂", None),
    ("dup", "the first row with this id", "learn python", None),
    ("dup", "the second row with this id", "learn python quickly", None),
    ("big", LONG, "learn python", None),
    ("big-head", WORDS * 10, "learn python", None),  # the first 60 tokens of LONG
]


def _strings(values):
    raw = [v.encode() if isinstance(v, str) else v for v in values]
    return pa.array(raw, pa.binary()).view(pa.string())  # no UTF-8 check, on purpose


@pytest.fixture(scope="module")
def scored(tmp_path_factory, bilstm_model):
    base = tmp_path_factory.mktemp("bad_rows")
    src, out = base / "pairs.parquet", base / "out"
    ids, a, b, _ = zip(*ROWS, strict=True)
    pq.write_table(
        pa.table({"pair_id": pa.array(ids, pa.string()), "text_a": _strings(a),
                  "text_b": _strings(b)}),
        src, row_group_size=7,
    )
    result = job.run(["--input", str(src), "--output", str(out), "--model", bilstm_model,
                      "--batch-size", "4"])
    labels = pq.read_table(out / "labels")
    rejects = pq.read_table(out / "rejects")
    return result.summary, labels, rejects, out


def _reasons(rejects):
    return list(zip(rejects["pair_id"].to_pylist(), rejects["reason"].to_pylist(), strict=True))


def test_every_row_lands_once_with_the_expected_reason(scored):
    summary, labels, rejects, out = scored
    want_scored = sorted(r[0] for r in ROWS if r[3] is None)
    want_rejected = [(r[0], r[3]) for r in ROWS if r[3] is not None]
    assert sorted(labels["pair_id"].to_pylist()) == want_scored
    assert sorted(_reasons(rejects), key=str) == sorted(want_rejected, key=str)
    assert summary["rows_in"] == len(ROWS)
    assert summary["scored"] + summary["rejected"] == summary["rows_in"]
    assert summary["scored"] == len(want_scored)
    assert summary["invariant_holds"] and (out / "_SUCCESS").exists()


def test_summary_counts_reasons_and_duplicate_ids(scored):
    summary = scored[0]
    want = {}
    for r in ROWS:
        if r[3]:
            want[r[3]] = want.get(r[3], 0) + 1
    assert summary["rejected_by_reason"] == want
    assert summary == json.loads((scored[3] / "summary.json").read_text()) | {
        "counters": summary["counters"]
    }


def test_duplicate_ids_are_both_scored_and_counted(scored):
    summary, labels, _, _ = scored
    dup = labels.filter(pa.compute.equal(labels["pair_id"], "dup"))
    assert dup.num_rows == 2
    assert summary["duplicate_ids_scored"] == 1


def test_rejects_keep_the_row_as_given(scored):
    rejects = scored[2]
    assert rejects.column_names == ["pair_id", "text_a", "text_b", "reason", "error"]
    given = {r[0]: r for r in ROWS if r[3] and r[0] is not None}
    a = rejects["text_a"].cast(pa.binary()).to_pylist()
    b = rejects["text_b"].cast(pa.binary()).to_pylist()
    for i, pid in enumerate(rejects["pair_id"].to_pylist()):
        if pid in given:
            want = [v.encode() if isinstance(v, str) else v for v in given[pid][1:3]]
            assert [a[i], b[i]] == want, pid  # invalid bytes, spaces and all


def test_odd_but_valid_text_is_scored(scored):
    labels = scored[1]
    scores = dict(zip(labels["pair_id"].to_pylist(), labels["score"].to_pylist(), strict=True))
    for pid in ("c3", "r1", "r2", "k1", "k2", "k3"):
        assert 0.0 <= scores[pid] <= 1.0, pid


def test_a_megabyte_text_is_truncated_not_rejected(scored):
    labels = scored[1]
    scores = dict(zip(labels["pair_id"].to_pylist(), labels["score"].to_pylist(), strict=True))
    # The model reads max_length (32) tokens: the 1 MB text and its first 60 tokens are
    # the same input to it, in batches of different widths.
    assert scores["big"] == pytest.approx(scores["big-head"], abs=1e-6)


def test_tokenizing_megabyte_texts_keeps_memory_bounded(bilstm_model):
    """64 rows of 1 MB. Tokenized whole (then truncated) they cost 1.7 GB more and over a
    minute; read only as far as max_length needs, a few MB and well under a second."""
    code = textwrap.dedent(f"""
        import resource, time
        import pyarrow as pa
        from tokenizers import Tokenizer
        from model import tokenization
        from pipeline.packing import pack_table

        tok = tokenization.configure(
            Tokenizer.from_file({bilstm_model!r} + "/assets/tokenizer.json"), 32)
        long = {LONG[:2000]!r} * 500
        table = pa.table({{"pair_id": [str(i) for i in range(64)],
                          "text_a": [long] * 64, "text_b": ["learn python"] * 64}})
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        started = time.time()
        batches, no_tokens = pack_table(tok, table, ("text_a", "text_b"), 256, 8192, 0)
        print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              time.time() - started, sum(len(b) for b in batches), batches[0].left.shape[1])
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    before_mb, peak_mb, seconds, rows, width = done.stdout.split()
    assert int(rows) == 64 and int(width) == 32
    assert float(peak_mb) - float(before_mb) < 300, done.stdout
    assert float(seconds) < 20, done.stdout
