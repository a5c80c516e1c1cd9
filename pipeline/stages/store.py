"""The embedding store's stages, over `pipeline.store`: `LookupStore` finds distinct texts
in the generations pinned at launch, `WriteStore` writes the run's new embeddings as its
uncommitted generation (committed by the final step)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from model.storage import join
from pipeline import store, textindex
from pipeline.stages.common import counter

if TYPE_CHECKING:
    from pipeline.config import JobConfig


class _ReadStoreFileFn(beam.DoFn):
    """A store file record -> (key bucket, (keys, embeddings)) per bucket; a file that
    cannot be read whole is skipped with a warning naming it ('skipped': its path)."""

    def __init__(self, spec: store.StoreSpec):
        self.dim = spec.dim
        self.buckets = spec.buckets
        self.read = counter("store_entries_read")
        self.skipped = counter("store_files_skipped")

    def process(self, record):
        got = store.read_file(record, self.dim)
        if got is None:
            self.skipped.inc()
            yield beam.pvalue.TaggedOutput("skipped", record["path"])
            return
        keys, embs = got
        self.read.inc(len(keys))
        for b, idx in store.split_by_bucket(keys, self.buckets):
            yield b, (keys[idx], embs[idx])


class _StoreIndexFn(beam.CombineFn):
    """(keys, embeddings) chunks -> one `store.StoreIndex`."""

    def __init__(self, dim: int):
        self.dim = dim

    def create_accumulator(self):
        return []

    def add_input(self, acc, chunk):
        acc.append(chunk)
        return acc

    def merge_accumulators(self, accs):
        return [c for acc in accs for c in acc]

    def extract_output(self, acc):
        return store.StoreIndex.build(acc, self.dim)


def _split_found(index: store.StoreIndex, texts: pa.Array, keys: np.ndarray):
    """(a `TextBatch` of the texts found, with their stored embeddings, or None; the
    texts missing, or None)."""
    pos = index.lookup(keys)
    hit = pos >= 0
    found = missing = None
    if hit.any():
        found = textindex.TextBatch(texts.filter(pa.array(hit)), None,
                                    embeddings=index.embeddings[pos[hit]])
    if not hit.all():
        missing = texts.filter(pa.array(~hit))
    return found, missing


class _LookupFn(beam.DoFn):
    def __init__(self):
        self.hits = counter("store_hits")

    def _emit(self, index, texts, keys):
        found, missing = _split_found(index, texts, keys)
        if found is not None:
            self.hits.inc(len(found))
            yield found
        if missing is not None:
            yield beam.pvalue.TaggedOutput("misses", missing)

    def process(self, texts, index):
        yield from self._emit(index, texts, store.text_keys(texts))


class _KeyByStoreBucketFn(beam.DoFn):
    def __init__(self, buckets: int):
        self.buckets = buckets

    def process(self, texts):
        keys = store.text_keys(texts)
        for b, idx in store.split_by_bucket(keys, self.buckets):
            yield b, (texts.take(pa.array(idx)), keys[idx])


class _JoinStoreFn(_LookupFn):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def process(self, grouped):
        _, joined = grouped
        index = store.StoreIndex.build(list(joined["store"]), self.dim)
        for texts, keys in joined["texts"]:
            yield from self._emit(index, texts, keys)


class LookupStore(beam.PTransform):
    """Arrays of distinct texts -> {'hits': `TextBatch`es with the stored embeddings,
    'misses': arrays of the texts the store lacks, 'skipped': store files not read}.

    Reads exactly the files of the generations pinned at launch (`cfg.store`), spread
    over workers. While those are small (`planning.SIDE_INPUT_MAX_BYTES`) they form one
    `StoreIndex`, a side input of the lookup; past that, texts and store entries are
    keyed by the same key bucket and joined by a CoGroupByKey, so a worker holds one
    bucket of the store, never all of it."""

    def __init__(self, cfg: JobConfig):
        super().__init__()
        self.spec = cfg.store

    def expand(self, texts):
        spec = self.spec
        read = (
            texts.pipeline
            | "StoreFiles" >> beam.Create(spec.files)
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadStore" >> beam.ParDo(_ReadStoreFileFn(spec)).with_outputs(
                "skipped", main="chunks")
        )
        if spec.lookup == "side-input":
            index = (read.chunks | "Chunks" >> beam.Values()
                     | "StoreIndex" >> beam.CombineGlobally(_StoreIndexFn(spec.dim)))
            out = texts | "Lookup" >> beam.ParDo(
                _LookupFn(), beam.pvalue.AsSingleton(index)).with_outputs(
                    "misses", main="hits")
        else:
            keyed = texts | "KeyByStoreBucket" >> beam.ParDo(_KeyByStoreBucketFn(spec.buckets))
            out = (
                {"texts": keyed, "store": read.chunks}
                | "GroupByBucket" >> beam.CoGroupByKey()
                | "Lookup" >> beam.ParDo(_JoinStoreFn(spec.dim)).with_outputs(
                    "misses", main="hits")
            )
        return {"hits": out.hits, "misses": out.misses, "skipped": read.skipped}


class _WriteStoreFn(beam.DoFn):
    def __init__(self, spec: store.StoreSpec):
        self.spec = spec
        self.written = counter("store_entries_written")

    def start_bundle(self):
        self.keys, self.embs, self.rows = [], [], 0

    def process(self, batch):
        self.keys.append(store.text_keys(batch.texts))
        self.embs.append(np.asarray(batch.embeddings, np.float32))
        self.rows += len(batch)
        if self.rows >= store.ROWS_PER_FILE:
            yield self._flush()

    def _flush(self):
        import uuid

        keys, embs = np.concatenate(self.keys), np.concatenate(self.embs)
        self.keys, self.embs, self.rows = [], [], 0
        # A name of its own per attempt: a retried bundle's file is simply not listed.
        path = join(self.spec.write_dir, f"part-{uuid.uuid4().hex}.parquet")
        record = store.write_file(path, keys, embs, self.spec.fingerprint)
        self.written.inc(record["rows"])
        return record

    def finish_bundle(self):
        if self.rows:
            yield WindowedValue(self._flush(), GlobalWindow().max_timestamp(),
                                [GlobalWindow()])


class WriteStore(beam.PTransform):
    """Encoded `TextBatch`es -> records {"path", "rows", "bytes"} of the Parquet files
    written under the store's URI/<fingerprint>/gen-RUN_ID/, uncommitted: the final step
    (`publish.finalize_run`) commits them once the run's checks pass."""

    def __init__(self, cfg: JobConfig):
        super().__init__()
        self.spec = cfg.store

    def expand(self, batches):
        return batches | "WriteFiles" >> beam.ParDo(_WriteStoreFn(self.spec))
