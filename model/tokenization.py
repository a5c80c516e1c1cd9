"""Tokenizers: the Hugging Face `tokenizers` file the pipeline uses, and its tf-text twin.

Both encoders share one text normalisation (BERT's: clean control characters, split CJK,
strip accents, lowercase; split on whitespace and punctuation). The BERT encoder uses the
MiniLM WordPiece vocabulary with [CLS] ... [SEP]; the BiLSTM encoder a WordLevel vocabulary
(no special tokens but [PAD] = 0 and [UNK]). A WordLevel vocabulary is a WordPiece one
without "##" continuation pieces, so the in-graph tokenizer is tf-text's `BertTokenizer`
for both.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterable

import numpy as np
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel

PAD = "[PAD]"
UNK = "[UNK]"
CLS = "[CLS]"
SEP = "[SEP]"
# WordPiece (and tf-text) map a word longer than this to [UNK]; WordLevel vocabularies
# leave such words out so that both tokenizers agree.
MAX_WORD_CHARS = 100


def bert_normalizer():
    return normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
    )


def words(texts: Iterable[str]) -> collections.Counter:
    """Count normalised words, split exactly as the tokenizers split them."""
    norm = bert_normalizer()
    pre = pre_tokenizers.BertPreTokenizer()
    counts: collections.Counter = collections.Counter()
    for text in texts:
        counts.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(text)))
    return counts


def build_wordlevel(vocab: list[str]) -> Tokenizer:
    """A WordLevel tokenizer over `vocab` (ids in list order; [PAD] and [UNK] first)."""
    if vocab[:2] != [PAD, UNK]:
        raise ValueError("a WordLevel vocabulary starts with [PAD], [UNK]")
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(vocab)}, unk_token=UNK))
    tok.normalizer = bert_normalizer()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok


def configure(tok: Tokenizer, max_length: int) -> Tokenizer:
    """Truncate at `max_length` (special tokens included) and never pad: callers pad."""
    tok.enable_truncation(max_length)
    tok.no_padding()
    return tok


def vocab_list(tok: Tokenizer) -> list[str]:
    vocab = tok.get_vocab(with_added_tokens=True)
    ordered = [""] * len(vocab)
    for word, i in vocab.items():
        ordered[i] = word
    if "" in ordered:
        raise ValueError("tokenizer vocabulary has gaps in its ids")
    return ordered


def tokenizer_info(tok: Tokenizer) -> dict:
    """The in-graph tokenizer's settings, stored in pairscore.json."""
    spec = json.loads(tok.to_str())
    kind = spec["model"]["type"].lower()
    vocab = tok.get_vocab()
    uses_cls = spec.get("post_processor") is not None
    return {
        "kind": kind,
        "vocab_size": len(vocab),
        "pad_id": vocab[PAD],
        "unk_token": UNK,
        "cls_token": CLS if uses_cls else None,
        "sep_token": SEP if uses_cls else None,
    }


def encode_batch(tok: Tokenizer, texts: list[str]) -> list[np.ndarray]:
    """Token ids per text (truncated as the tokenizer is configured), no padding."""
    return [np.asarray(e.ids, dtype=np.int32) for e in tok.encode_batch(texts)]


def pad(rows: list[np.ndarray], length: int | None = None) -> np.ndarray:
    """Stack id rows into int32[B, T], T = the longest row (or `length`), pad id 0."""
    width = max((len(r) for r in rows), default=0) if length is None else length
    out = np.zeros((len(rows), max(width, 1)), dtype=np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def normalize(texts):
    """In-graph copy of `bert_normalizer()`, in the order the Rust code applies it.

    tf-text's own `lower_case=True` applies NFKC case folding (so "ß" -> "ss",
    "²" -> "2"), which the Hugging Face normalizer does not; hence this.
    """
    import tensorflow as tf
    import tensorflow_text as tf_text

    texts = tf.strings.regex_replace(texts, r"[\t\n\r\p{Zs}]", " ")
    texts = tf.strings.regex_replace(texts, r"[\p{Cc}\p{Cf}\p{Co}\x{FFFD}]", "")
    texts = tf_text.normalize_utf8(texts, "NFD")
    texts = tf.strings.regex_replace(texts, r"\p{Mn}", "")
    # ICU lowercases a word-final capital sigma to "ς"; the Rust normalizer maps each
    # character on its own, always to "σ".
    texts = tf.strings.regex_replace(texts, "Σ", "σ")
    return tf.strings.lower(texts, encoding="utf-8")


def make_tf_tokenizer(vocab_path, info: dict, max_length: int):
    """Build the in-graph tokenizer: string[B] -> int32[B, T] padded with 0.

    `vocab_path` may be a `tf.saved_model.Asset` so that the table travels with an export.
    Returns (tokenize_fn, table) so the caller can track the table.
    """
    import tensorflow as tf
    import tensorflow_text as tf_text

    table = tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(
            vocab_path,
            key_dtype=tf.string,
            key_index=tf.lookup.TextFileIndex.WHOLE_LINE,
            value_dtype=tf.int64,
            value_index=tf.lookup.TextFileIndex.LINE_NUMBER,
        ),
        default_value=-1,
    )
    tokenizer = tf_text.BertTokenizer(
        table,
        lower_case=False,
        token_out_type=tf.int64,
        unknown_token=info["unk_token"],
        max_chars_per_token=MAX_WORD_CHARS,
    )
    cls_tok, sep_tok = info.get("cls_token"), info.get("sep_token")
    n_special = (cls_tok is not None) + (sep_tok is not None)
    body = max_length - n_special

    def tokenize(texts):
        ids = tokenizer.tokenize(normalize(texts)).merge_dims(-2, -1)[:, :body]
        batch = tf.shape(texts)[0]
        parts = []
        if cls_tok is not None:
            parts.append(tf.fill([batch, 1], table.lookup(tf.constant(cls_tok))))
        parts.append(ids)
        if sep_tok is not None:
            parts.append(tf.fill([batch, 1], table.lookup(tf.constant(sep_tok))))
        ragged = tf.concat(parts, axis=1) if len(parts) > 1 else ids
        return tf.cast(ragged.to_tensor(default_value=0), tf.int32)

    return tokenize, table
