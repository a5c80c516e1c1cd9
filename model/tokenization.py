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
import re
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
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


# Characters of text read per token of max_length before tokenizing. Truncation happens
# after the tokenizer has split the whole text (keeping the rest as "overflowing"
# encodings): a 1 MB text costs about 1 s and 30 MB, so long texts are clipped first.
CLIP_CHARS_PER_TOKEN = 16
# Characters after which the BERT normalizer and pre-tokenizer always end a word:
# whitespace, ASCII punctuation and the main CJK ideograph blocks (each its own word).
# Clipping right after one keeps the clipped text's tokens a prefix of the whole text's.
# A text with none in reach (one huge "word") is tokenized whole: about 1 s per MB, but
# it yields a single token, so memory stays small.
_BOUNDARY = (
    " \t\n\r\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000"
    "!-/:-@\\[-`{-~"
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df"
)
_LAST_WORD = re.compile(f"[{_BOUNDARY}][^{_BOUNDARY}]*\\Z")


def _clip(text: str, limit: int) -> str | None:
    """`text` cut to at most `limit` characters just after a word boundary, or None if
    there is none (cutting inside a word could change its word pieces)."""
    head = text[:limit]
    cut = _LAST_WORD.search(head)
    return head[: cut.start() + 1] if cut else None


def encode_texts(tokenizer: Tokenizer, column) -> list[np.ndarray]:
    """Token ids per text (no nulls), exactly as `tokenizer` (truncating at its
    max_length) gives for the whole text, reading only as much of it as the ids need."""
    max_length = (tokenizer.truncation or {}).get("max_length")
    if max_length is None:
        return _encode(tokenizer, column.to_pylist())
    limit = max_length * CLIP_CHARS_PER_TOKEN
    lengths = pc.fill_null(pc.utf8_length(column), 0).to_numpy(zero_copy_only=False)
    ids: list = [None] * len(lengths)
    rows = np.arange(len(lengths))
    # Slice in Arrow so that only the head of a long text becomes a Python string.
    heads = pc.utf8_slice_codeunits(column, 0, limit).to_pylist()
    while True:
        long = lengths[rows] > limit
        texts = [_clip(h, limit) if cut else h for h, cut in zip(heads, long, strict=True)]
        ready = [k for k, t in enumerate(texts) if t is not None]
        for k, row_ids in zip(ready, _encode(tokenizer, [texts[k] for k in ready]), strict=True):
            ids[rows[k]] = row_ids
        # Read more of a clipped text with no word boundary in reach, or one that gave
        # fewer than max_length ids (long runs of spaces or control characters), up to
        # all of it. A boundary once in reach stays in reach, so ids only get replaced.
        rows = rows[[cut and (ids[i] is None or len(ids[i]) < max_length)
                     for i, cut in zip(rows, long, strict=True)]]
        if not len(rows):
            return ids
        limit *= 16
        heads = pc.utf8_slice_codeunits(column.take(pa.array(rows)), 0, limit).to_pylist()


def _encode(tokenizer: Tokenizer, texts: list[str]) -> list[np.ndarray]:
    # encode_batch_fast gives the same ids as encode_batch without computing character
    # offsets, which the job never reads: about 20% less tokenizer time.
    return [np.asarray(e.ids, dtype=np.int32) for e in tokenizer.encode_batch_fast(texts)]


def token_lengths(ids: list[np.ndarray]) -> np.ndarray:
    return np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))


def pad_rows(ids: list[np.ndarray], lengths: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """int32[len(idx), longest] of rows `idx` of `ids`, padded with 0, in one scatter."""
    lens = lengths[idx]
    out = np.zeros((len(idx), max(int(lens.max(initial=0)), 1)), dtype=np.int32)
    if len(idx):
        flat = np.concatenate([ids[i] for i in idx])
        rows = np.repeat(np.arange(len(idx)), lens)
        cols = np.arange(len(flat)) - np.repeat(np.cumsum(lens) - lens, lens)
        out[rows, cols] = flat
    return out
