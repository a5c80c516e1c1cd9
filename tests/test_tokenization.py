"""The in-graph tf-text tokenizer must give the same ids as the tokenizers file."""

import numpy as np
import pytest
import tensorflow as tf
from tokenizers import Tokenizer

from model import tokenization
from model.train import minilm_dir

HARD_TEXTS = [
    "Héllo, Wörld! Ça va?",
    "CAFÉ naïve façade Straße İstanbul ǅ",
    "I have 3,141.59 dollars & 2 cats; e-mail: a@b.com",
    "😀 emoji 👍🏽 test 🇫🇷",
    "",
    "   ",
    "tab\tnew\nline\r\x00ctrl\x07bell\u200bzw \ufeffbom",
    "东京 is in 日本, 서울 ひらがな カタカナ",
    "مرحبا بالعالم שלום",
    "word " * 600,
    "a" * 150 + " ok",
    "don't won't I'm",
    "x²³ ½ ① ™ © ® ° µ",
    "Ǆemo ﬁ ligature ＡＢＣ fullwidth",
    "ΣΊΣΥΦΟΣ Ελληνικά кириллица ПРИВЕТ",
    "UPPER lower MiXeD 12345 00:11:22",
]


def _compare(tok, vocab_path, max_length):
    tokenization.configure(tok, max_length)
    info = tokenization.tokenizer_info(tok)
    fn, _ = tokenization.make_tf_tokenizer(vocab_path, info, max_length)
    got = fn(tf.constant(HARD_TEXTS)).numpy()
    for text, enc, row in zip(HARD_TEXTS, tok.encode_batch(HARD_TEXTS), got):
        expected = np.zeros(got.shape[1], np.int32)
        expected[: len(enc.ids)] = enc.ids
        assert row.tolist() == expected.tolist(), f"ids differ for {text[:40]!r}"


@pytest.mark.parametrize("max_length", [8, 128])
def test_wordpiece_in_graph_matches_tokenizers(max_length):
    tok = Tokenizer.from_file(f"{minilm_dir()}/tokenizer.json")
    _compare(tok, f"{minilm_dir()}/vocab.txt", max_length)


def test_wordlevel_in_graph_matches_tokenizers(tmp_path):
    counts = tokenization.words(HARD_TEXTS[:4] + HARD_TEXTS[7:9])
    vocab = [tokenization.PAD, tokenization.UNK] + sorted(w for w in counts if len(w) <= 100)
    tok = tokenization.build_wordlevel(vocab)
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(tokenization.vocab_list(tok)) + "\n", encoding="utf-8")
    _compare(tok, str(path), 64)


def test_truncation_counts_special_tokens():
    tok = tokenization.configure(Tokenizer.from_file(f"{minilm_dir()}/tokenizer.json"), 10)
    ids = tokenization.encode_batch(tok, ["word " * 50])[0]
    assert len(ids) == 10
    assert ids[0] == 101 and ids[-1] == 102


def test_pad_to_longest_row():
    out = tokenization.pad([np.array([1, 2, 3]), np.array([4])])
    assert out.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert out.dtype == np.int32
