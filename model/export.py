"""Export a trained Siamese model or cross-encoder to the model-directory contract (see
model/config.py). A cross-encoder has `serving_default` and `score_text` only
(`CROSS_SIGNATURES`): it scores a pair from both texts' ids, with no per-text embedding."""

from __future__ import annotations

import os
import shutil
import tempfile

from tokenizers import Tokenizer

from model import tokenization
from model.config import (
    CROSS_SIGNATURES,
    METADATA_FILE,
    SIGNATURES,
    TOKENIZER_FILE,
    VOCAB_FILE,
    ModelMetadata,
)
from model.modeldir import build_manifest


def _serving_module(encoder, head, vocab_path: str, info: dict, max_length: int):
    import tensorflow as tf

    ids_spec = tf.TensorSpec([None, None], tf.int32)
    emb_spec = tf.TensorSpec([None, encoder.output.shape[-1]], tf.float32)
    text_spec = tf.TensorSpec([None], tf.string)

    class Serving(tf.Module):
        def __init__(self):
            super().__init__(name="pairscore")
            self.encoder = encoder
            self.head = head
            self.vocab = tf.saved_model.Asset(vocab_path)
            self._tokenize, self.table = tokenization.make_tf_tokenizer(
                self.vocab, info, max_length
            )

        def _embed(self, ids):
            return tf.cast(self.encoder(ids, training=False), tf.float32)

        def _score(self, u, v):
            return tf.cast(self.head(u, v, training=False), tf.float32)

        @tf.function(input_signature=[ids_spec, ids_spec])
        def serving_default(self, left_ids, right_ids):
            return {"score": self._score(self._embed(left_ids), self._embed(right_ids))}

        @tf.function(input_signature=[ids_spec])
        def encode(self, ids):
            return {"embedding": self._embed(ids)}

        @tf.function(input_signature=[emb_spec, emb_spec])
        def score_embeddings(self, left, right):
            return {"score": self._score(left, right)}

        @tf.function(input_signature=[text_spec, text_spec])
        def score_text(self, left, right):
            u = self._embed(self._tokenize(left))
            v = self._embed(self._tokenize(right))
            return {"score": self._score(u, v)}

    return Serving()


def _cross_serving_module(model, vocab_path: str, info: dict, max_length: int):
    import tensorflow as tf

    ids_spec = tf.TensorSpec([None, None], tf.int32)
    text_spec = tf.TensorSpec([None], tf.string)

    class CrossServing(tf.Module):
        def __init__(self):
            super().__init__(name="pairscore_cross")
            self.model = model
            self.vocab = tf.saved_model.Asset(vocab_path)
            self._tokenize, self.table = tokenization.make_tf_tokenizer(
                self.vocab, info, max_length
            )

        def _score(self, left_ids, right_ids):
            out = self.model({"left_ids": left_ids, "right_ids": right_ids}, training=False)
            return tf.cast(out, tf.float32)

        @tf.function(input_signature=[ids_spec, ids_spec])
        def serving_default(self, left_ids, right_ids):
            return {"score": self._score(left_ids, right_ids)}

        @tf.function(input_signature=[text_spec, text_spec])
        def score_text(self, left, right):
            return {"score": self._score(self._tokenize(left), self._tokenize(right))}

    return CrossServing()


def fingerprint(model_dir: str) -> str:
    """sha256 over the SavedModel graph, variables and assets: names a model exactly."""
    return build_manifest(model_dir)[1]


def export(
    encoder, head, tokenizer: Tokenizer, metadata: ModelMetadata, output_dir: str
) -> ModelMetadata:
    """Write SavedModel + assets/tokenizer.json + assets/vocab.txt + pairscore.json
    (with the manifest of the other files, see model/modeldir.py).

    An existing model directory at `output_dir` is replaced; any other non-empty
    directory is refused rather than deleted.
    """
    metadata.embedding_dim = int(encoder.output.shape[-1])
    return _write(
        lambda vocab, info: _serving_module(encoder, head, vocab, info, metadata.max_length),
        SIGNATURES, tokenizer, metadata, output_dir,
    )


def export_cross(model, tokenizer: Tokenizer, metadata: ModelMetadata,
                 output_dir: str) -> ModelMetadata:
    """`export` for a cross-encoder (`model.layers.cross_encoder`): serving_default and
    score_text, `architecture` cross, no embedding_dim."""
    metadata.architecture = "cross"
    metadata.embedding_dim = 0
    return _write(
        lambda vocab, info: _cross_serving_module(model, vocab, info, metadata.max_length),
        CROSS_SIGNATURES, tokenizer, metadata, output_dir,
    )


def _write(make_module, signature_names, tokenizer: Tokenizer, metadata: ModelMetadata,
           output_dir: str) -> ModelMetadata:
    import tensorflow as tf

    if os.path.isdir(output_dir) and os.listdir(output_dir):
        if not os.path.exists(os.path.join(output_dir, METADATA_FILE)):
            raise FileExistsError(
                f"{output_dir} is not empty and is not a pairscore model directory; "
                "choose another --output"
            )
        shutil.rmtree(output_dir)
    tokenization.configure(tokenizer, metadata.max_length)
    info = tokenization.tokenizer_info(tokenizer)
    metadata.tokenizer = info
    with tempfile.TemporaryDirectory() as tmp:
        vocab_path = os.path.join(tmp, os.path.basename(VOCAB_FILE))
        with open(vocab_path, "w", encoding="utf-8") as f:
            f.write("\n".join(tokenization.vocab_list(tokenizer)) + "\n")
        module = make_module(vocab_path, info)
        signatures = {
            name: getattr(module, name).get_concrete_function() for name in signature_names
        }
        tf.saved_model.save(module, output_dir, signatures=signatures)
    tokenizer.save(os.path.join(output_dir, TOKENIZER_FILE))
    # One read of the files gives both: the manifest ModelDir.open checks them against,
    # and the fingerprint that names the model (embedding stores, summaries).
    metadata.manifest, metadata.fingerprint = build_manifest(output_dir)
    with open(os.path.join(output_dir, METADATA_FILE), "w") as f:
        f.write(metadata.to_json() + "\n")
    return metadata
