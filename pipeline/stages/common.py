"""What every stage module shares: the job's Beam counters, the model's tokenizer as a
worker loads it, and two small counting transforms."""

from __future__ import annotations

from typing import TYPE_CHECKING

import apache_beam as beam
from apache_beam.metrics import Metrics

from model.modeldir import ModelDir
from pipeline.handler import NAMESPACE

if TYPE_CHECKING:
    from pipeline.config import JobConfig


def counter(name: str, cfg: JobConfig | None = None):
    """The job's counter `name` (namespace "pairscore"), after `cfg.counter_prefix`."""
    return Metrics.counter(NAMESPACE, (cfg.counter_prefix if cfg else "") + name)


def load_tokenizer(cfg: JobConfig):
    # Checked at launch; what is read here is checked against the manifest as it is read.
    return ModelDir.open(cfg.model, verify=False).tokenizer()


class SumCountsFn(beam.CombineFn):
    """(name, n) pairs -> {name: sum}."""

    def create_accumulator(self):
        return {}

    def add_input(self, acc, item):
        acc[item[0]] = acc.get(item[0], 0) + item[1]
        return acc

    def merge_accumulators(self, accs):
        out = {}
        for acc in accs:
            for k, v in acc.items():
                out[k] = out.get(k, 0) + v
        return out

    def extract_output(self, acc):
        return acc


class CountFn(beam.DoFn):
    """Adds each element (an int) to counter `name`."""

    def __init__(self, name: str):
        self.counter = counter(name)

    def process(self, n):
        self.counter.inc(n)
