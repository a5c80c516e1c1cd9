"""Property-based tests of the row-level stages: validation, tokenization, packing and
thresholding. For any mix of rows: rows_in == scored + rejected, every id kept, and the
result the same whatever the batch boundaries and row order. One real job run pair at
the end checks the same at the level of the whole pipeline.
"""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from model import tokenization
from model.tokenization import encode_texts
from pipeline import job
from pipeline.packing import PackedBatch, label_table, pack_table
from pipeline.validate import REASON, REASONS, validate_table
from tests.conftest import PAIRS

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# --- strategies -------------------------------------------------------------------------

BLANKS = " \t\n\r\u3000\u00a0\u2003"
# Letters, digits, blanks, punctuation, CJK, RTL, combining marks, control and format
# characters, emoji: everything the normalizer and pre-tokenizer treat specially.
ALPHABET = st.sampled_from(
    list("abcdefghij XYZ 0129 .,!?-'\"()") + list(BLANKS)
    + list("东京日本語学") + list("كيفאיך") + ["e\u0301", "\u0301", "ß", "Σ", "ﬁ"]
    + ["\x00", "\x07", "\x1b", "\x1c", "\x85", "\u2028", "\u200b", "\u202e", "\ufeff"]
    + ["😀", "\u3002", "\U00020000", "\U0002ceb0"]
)
any_text = st.lists(ALPHABET, max_size=60).map("".join)
word_text = st.tuples(any_text, st.sampled_from("abcdefghij"), any_text).map("".join)
blank_text = st.lists(st.sampled_from(BLANKS), max_size=5).map("".join)
invalid_text = st.tuples(any_text, st.sampled_from([b"\xed\xa0\x80", b"\xff", b"\xe6\x97"]),
                         any_text).map(lambda t: t[0].encode() + t[1] + t[2].encode())

# (category, value): the category decides the expected reason, not a re-implementation.
id_cell = st.one_of(
    st.tuples(st.just("null"), st.none()),
    st.tuples(st.just("blank"), blank_text),
    st.tuples(st.just("ok"), st.tuples(st.text(max_size=8), st.sampled_from("aZ0"),
                                       st.text(max_size=8)).map("".join)),
)
text_cell = st.one_of(
    st.tuples(st.just("null"), st.none()),
    st.tuples(st.just("blank"), blank_text),
    st.tuples(st.just("invalid"), invalid_text),
    st.tuples(st.just("ok"), word_text),
)
rows = st.lists(st.tuples(id_cell, text_cell, text_cell), max_size=40)


def expected_reason(id_cat, a_cat, b_cat):
    if id_cat == "null":
        return "null_id"
    if id_cat == "blank":
        return "empty_id"
    if "null" in (a_cat, b_cat):
        return "null_text"
    if "blank" in (a_cat, b_cat):
        return "empty_text"
    if "invalid" in (a_cat, b_cat):
        return "invalid_text"
    return None


def _strings(values):
    raw = [v.encode() if isinstance(v, str) else v for v in values]
    return pa.array(raw, pa.binary()).view(pa.string())  # keeps invalid UTF-8 as given


def make_table(cells):
    return pa.table({
        "row": pa.array(range(len(cells)), pa.int64()),
        "pair_id": pa.array([c[0][1] for c in cells], pa.string()),
        "text_a": _strings([c[1][1] for c in cells]),
        "text_b": _strings([c[2][1] for c in cells]),
    })


def outcome(valid, rejects):
    """{row: reason or None} from one validation."""
    got = {r: None for r in valid["row"].to_pylist()}
    for r, reason in zip(rejects["row"].to_pylist(), rejects[REASON].to_pylist(), strict=True):
        assert r not in got, f"row {r} both valid and rejected"
        got[r] = reason
    return got


def split(table, cuts):
    """The table cut into consecutive slices at the (sorted, deduplicated) offsets."""
    bounds = [0, *sorted({c % (table.num_rows + 1) for c in cuts}), table.num_rows]
    return [table.slice(a, b - a) for a, b in zip(bounds, bounds[1:], strict=False)]


# --- validation ---------------------------------------------------------------------------


@SETTINGS
@given(rows)
def test_validation_keeps_every_row_once_with_the_first_reason_that_applies(cells):
    table = make_table(cells)
    valid, rejects = validate_table(table, "pair_id", ("text_a", "text_b"))
    assert valid.num_rows + rejects.num_rows == table.num_rows
    assert valid.schema == table.schema
    assert rejects.schema.names == [*table.schema.names, REASON]
    got = outcome(valid, rejects)
    assert set(got) == set(range(len(cells)))
    assert set(r for r in got.values() if r) <= set(REASONS)
    for i, (id_cell_, a, b) in enumerate(cells):
        assert got[i] == expected_reason(id_cell_[0], a[0], b[0]), cells[i]
    # Ids (and every other column) come through unchanged.
    both = pa.concat_tables([valid, rejects.drop_columns([REASON])]).sort_by("row")
    assert both["pair_id"].to_pylist() == table["pair_id"].to_pylist()
    assert both["text_a"].cast(pa.binary()).equals(table["text_a"].cast(pa.binary()))


@SETTINGS
@given(rows, st.lists(st.integers(0, 50), max_size=6), st.randoms(use_true_random=False))
def test_validation_is_independent_of_batch_boundaries_and_order(cells, cuts, rnd):
    table = make_table(cells)
    whole = outcome(*validate_table(table, "pair_id", ("text_a", "text_b")))
    pieces = {}
    for part in split(table, cuts):
        pieces.update(outcome(*validate_table(part, "pair_id", ("text_a", "text_b"))))
    assert pieces == whole
    order = list(range(table.num_rows))
    rnd.shuffle(order)
    shuffled = table.take(pa.array(order, pa.int64()))
    shuffled = outcome(*validate_table(shuffled, "pair_id", ("text_a", "text_b")))
    assert shuffled == whole


def test_validation_of_no_rows():
    valid, rejects = validate_table(make_table([]), "pair_id", ("text_a", "text_b"))
    assert valid.num_rows == rejects.num_rows == 0


def test_validation_of_a_column_of_nulls():
    table = pa.table({"pair_id": ["a", None], "text_a": pa.nulls(2), "text_b": ["x", "y"]})
    valid, rejects = validate_table(table, "pair_id", ("text_a", "text_b"))
    assert valid.num_rows == 0
    assert rejects[REASON].to_pylist() == ["null_text", "null_id"]


# --- tokenization ---------------------------------------------------------------------------

VOCAB = [tokenization.PAD, tokenization.UNK, tokenization.CLS, tokenization.SEP]
VOCAB += list("abcdefghijxyz0129.,!?-'\"()东京日本語学")
VOCAB += ["##" + c for c in "abcdefghij"] + ["abc", "##abc", "ab", "##ab", "cab", "bad"]


def wordlevel(max_length):
    """The bilstm encoder's kind: WordLevel, no special tokens."""
    words = [w for w in VOCAB if not w.startswith("##") and w not in (tokenization.CLS,
                                                                      tokenization.SEP)]
    return tokenization.configure(tokenization.build_wordlevel(words), max_length), 0


def wordpiece(max_length):
    """The bert encoder's kind: WordPiece with ## pieces and [CLS] ... [SEP]."""
    vocab = {w: i for i, w in enumerate(VOCAB)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token=tokenization.UNK,
                                     max_input_chars_per_word=tokenization.MAX_WORD_CHARS))
    tok.normalizer = tokenization.bert_normalizer()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{tokenization.CLS} $A {tokenization.SEP}",
        special_tokens=[(tokenization.CLS, vocab[tokenization.CLS]),
                        (tokenization.SEP, vocab[tokenization.SEP])],
    )
    return tokenization.configure(tok, max_length), 2


TOKENIZERS = {"wordlevel": wordlevel, "wordpiece": wordpiece}

# Long texts: runs of one piece (spaces, control characters, a 300-letter word, CJK)
# between ordinary text, so that clipping lands everywhere.
runs = st.tuples(st.sampled_from([" ", "\x00", "a", "ab", "东", "é", ".", "\u200b", "abc ",
                                  "\U0002ceb0", "\u3002", "\u2028"]),
                 st.integers(0, 400))
long_text = st.lists(st.one_of(any_text, runs.map(lambda r: r[0] * r[1])), max_size=8).map(
    "".join
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(TOKENIZERS)), st.integers(2, 8),
       st.lists(st.one_of(any_text, long_text), min_size=1, max_size=20))
def test_long_texts_tokenize_as_if_read_whole(kind, max_length, texts):
    """encode_texts reads a long text only as far as max_length needs; the ids must be
    exactly those of tokenizing the whole text and truncating."""
    tok, _ = TOKENIZERS[kind](max_length)
    got = encode_texts(tok, pa.chunked_array([pa.array(texts, pa.string())]))
    want = [e.ids for e in tok.encode_batch(texts)]
    assert [list(g) for g in got] == want


# --- packing --------------------------------------------------------------------------------

pair_rows = st.lists(st.tuples(st.one_of(any_text, long_text), any_text), max_size=40)


def _pairs_table(pairs):
    return pa.table({
        "pair_id": pa.array([f"id{i}" for i in range(len(pairs))], pa.string()),
        "text_a": pa.array([p[0] for p in pairs], pa.string()),
        "text_b": pa.array([p[1] for p in pairs], pa.string()),
    })


def _unpad(row):
    return [int(x) for x in np.trim_zeros(row, "b")]


def packed_ids(tok, table, min_tokens, batch_size, max_tokens):
    """{id: (left ids, right ids)} and the no_tokens ids, checking each batch's limits."""
    batches, no_tokens = pack_table(tok, table, ("text_a", "text_b"),
                                    batch_size, max_tokens, min_tokens)
    got = {}
    for b in batches:
        assert isinstance(b, PackedBatch)
        assert 1 <= len(b) <= batch_size
        assert b.left.shape[0] == b.right.shape[0] == len(b)
        assert b.left.dtype == b.right.dtype == np.int32
        if len(b) > 1:  # a single row is never split, however long
            assert len(b) * max(b.left.shape[1], b.right.shape[1]) <= max_tokens
        real = 0
        for pid, left, right in zip(b.rows["pair_id"].to_pylist(), b.left, b.right,
                                    strict=True):
            assert pid not in got, f"{pid} packed twice"
            got[pid] = (_unpad(left), _unpad(right))
            real += len(got[pid][0]) + len(got[pid][1])
        assert b.real_tokens == real
    rejected = set(no_tokens["pair_id"].to_pylist()) if no_tokens is not None else set()
    return got, rejected


@SETTINGS
@given(st.sampled_from(sorted(TOKENIZERS)), st.integers(2, 12), pair_rows,
       st.integers(1, 9), st.integers(1, 80), st.lists(st.integers(0, 50), max_size=4),
       st.randoms(use_true_random=False))
def test_packing_keeps_rows_aligned_whatever_the_batches(kind, max_length, pairs, batch_size,
                                                         max_tokens, cuts, rnd):
    tok, min_tokens = TOKENIZERS[kind](max_length)
    table = _pairs_table(pairs)
    got, rejected = packed_ids(tok, table, min_tokens, batch_size, max_tokens)
    # Every row once: packed or rejected for having no tokens, never both.
    assert set(got) | rejected == set(table["pair_id"].to_pylist())
    assert not set(got) & rejected
    # Each packed row carries its own texts' ids (pad id 0 never occurs in real ids).
    for i, (a, b) in enumerate(pairs):
        ids_a, ids_b = tok.encode(a).ids, tok.encode(b).ids
        if len(ids_a) <= min_tokens or len(ids_b) <= min_tokens:
            assert f"id{i}" in rejected
        else:
            assert got[f"id{i}"] == (ids_a, ids_b)
    # The same rows, cut into other tables and shuffled, pack to the same ids.
    order = list(range(table.num_rows))
    rnd.shuffle(order)
    again, again_rejected = {}, set()
    for part in split(table.take(pa.array(order, pa.int64())), cuts):
        g, r = packed_ids(tok, part, min_tokens, batch_size, max_tokens)
        again.update(g)
        again_rejected |= r
    assert again == got and again_rejected == rejected


# --- thresholding ---------------------------------------------------------------------------

unit = st.floats(0.0, 1.0, allow_nan=False)


@SETTINGS
@given(unit, st.lists(st.one_of(unit, st.just("at")), max_size=30))
def test_threshold_labels_agree_with_the_stored_scores(threshold, draws):
    # "at": exactly the threshold as float32, where rounding could flip the label.
    scores = np.array([np.float32(threshold) if s == "at" else s for s in draws], np.float32)
    n = len(scores)
    schema = pa.schema([("pair_id", pa.string()), ("score", pa.float32()),
                        ("is_duplicate", pa.bool_())])
    batch = PackedBatch(rows=pa.table({"pair_id": [f"id{i}" for i in range(n)]}),
                        left=np.ones((n, 1), np.int32), right=np.ones((n, 1), np.int32),
                        real_tokens=2 * n, scores=scores)
    table = label_table(batch, threshold, schema)
    assert table.schema == schema
    assert table["pair_id"].to_pylist() == [f"id{i}" for i in range(n)]
    stored = table["score"].to_pylist()  # float32 widened to float, as any reader does
    assert stored == [float(s) for s in scores]
    assert table["is_duplicate"].to_pylist() == [s >= threshold for s in stored]


# --- the whole job --------------------------------------------------------------------------


def test_job_result_is_independent_of_batching_and_order(tmp_path, bilstm_model):
    """Same pairs, once as one file in defaults and once shuffled into tiny row groups,
    tiny rebatches and model calls: the same score for every id, the same rejects."""
    rng = np.random.default_rng(5)
    rows = [(f"s{i}", f"how do I fix thing {i} {'again ' * int(rng.integers(0, 40))}",
             f"what is the way to repair thing {i}") for i in range(300)]
    rows += PAIRS + [(None, "a", "b"), ("e", " ", "b"), ("n", "a", None), ("c", "\x00", "b")]
    ids, a, b = (list(col) for col in zip(*rows, strict=True))
    table = pa.table({"pair_id": ids, "text_a": a, "text_b": b})
    (tmp_path / "one").mkdir()
    (tmp_path / "many").mkdir()
    pq.write_table(table, tmp_path / "one" / "pairs.parquet")
    shuffled = table.take(rng.permutation(table.num_rows))
    for k, start in enumerate(range(0, shuffled.num_rows, 100)):
        pq.write_table(shuffled.slice(start, 100), tmp_path / "many" / f"part-{k}.parquet",
                       row_group_size=13)

    def score(name, *extra):
        out = tmp_path / f"out-{name}"
        summary = job.run(["--input", str(tmp_path / name / "*.parquet"), "--output", str(out),
                           "--model", bilstm_model, *extra]).summary
        labels, rejects = pq.read_table(out / "labels"), pq.read_table(out / "rejects")
        scores = dict(zip(labels["pair_id"].to_pylist(), labels["score"].to_pylist(),
                          strict=True))
        reasons = sorted(zip(rejects["pair_id"].to_pylist(), rejects[REASON].to_pylist(),
                             strict=True), key=str)
        assert len(scores) == labels.num_rows  # ids are unique here
        return summary, scores, reasons

    s1, scores1, reasons1 = score("one")
    s2, scores2, reasons2 = score("many", "--batch-size", "5", "--rebatch-rows", "40",
                                  "--max-batch-tokens", "64")
    assert len(s2["input_files"]) == 4 and len(s1["input_files"]) == 1
    for key in ("rows_in", "scored", "rejected", "rejected_by_reason"):
        assert s1[key] == s2[key], key
    assert s1["rows_in"] == s1["scored"] + s1["rejected"] == len(rows)
    assert reasons1 == reasons2
    assert scores1.keys() == scores2.keys()
    assert max(abs(scores1[k] - scores2[k]) for k in scores1) < 1e-5
    assert s2["counters"]["model_calls"] > 4 * s1["counters"]["model_calls"]
