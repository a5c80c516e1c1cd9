"""JobConfig: everything the scoring job's stages need, resolved and checked at launch by
`pipeline.job.resolve`. The stages and the final step read it; nothing here reads storage."""

from __future__ import annotations

import dataclasses

import pyarrow as pa

from pipeline import planning, store
from pipeline.rerank import RerankSpec
from pipeline.validate import ERROR, REASON


@dataclasses.dataclass
class JobConfig:
    """Everything the transforms need, resolved and checked before the pipeline runs."""

    input: str
    output: str
    model: str
    id_column: str
    text_columns: tuple[str, str]
    keep_columns: list[str]
    threshold: float
    fingerprint: str
    max_length: int
    min_tokens: int
    batch_size: int
    max_batch_tokens: int
    rebatch_rows: int
    input_schema: pa.Schema
    rows_in: int | None
    # The files matched at launch, and their rows: exactly what the job reads.
    input_files: list[str] = dataclasses.field(default_factory=list)
    input_file_rows: list[int] = dataclasses.field(default_factory=list)
    large_model: bool = False
    model_copies: int | None = None
    plan: planning.Plan = dataclasses.field(default_factory=planning.Plan)
    precision: str = "float32"
    max_model_error_ratio: float = 0.001
    run_id: str = ""
    runner: str = ""
    launched_at: float = 0.0  # epoch seconds
    id_buckets: int = 1  # distinct-id count: CombinePerKey keys
    group_by: tuple[str, str] | None = None  # --group-by: each side's record id column
    max_group_size: int = 1000
    groups_one_worker_max_edges: int = 20_000_000
    group_buckets: int = 1  # the distributed rounds' shuffle keys
    # --groups-from: the earlier run's output, its groups/ files, the last id it used.
    groups_from: str | None = None
    groups_from_files: list[str] = dataclasses.field(default_factory=list)
    groups_last_id: int = 0
    # The morning check (pipeline/monitor.py): baseline figures, gate limits by name,
    # canary pairs (in the input schema, ids 0..n-1) and their labels, review size.
    baseline: dict | None = None
    gates: dict = dataclasses.field(default_factory=dict)
    canaries: pa.Table | None = None
    canary_labels: list = dataclasses.field(default_factory=list)
    canary_file: str | None = None
    review_pairs: int = 1000
    review_sample: int = 300  # --review-sample: pairs in OUT/sample/ (0: none)
    review_sample_band: float = 0.1  # the near_threshold stratum's half-width
    canary_branch: bool = False  # this config scores the canaries, not the night's pairs
    # --embedding-store: the generations pinned at launch, where this run writes its own.
    store: store.StoreSpec | None = None
    # --rerank-model: the cascade's cross-encoder (None: the first model decides alone).
    rerank: RerankSpec | None = None
    rerank_branch: bool = False  # this config scores the cascade's second pass

    def rerank_config(self) -> JobConfig:
        """The config the cross-encoder's branch runs with: its model, tokenizer length,
        threshold and batch sizes; counters under rerank_ (the night's count the night)."""
        spec = self.rerank
        return dataclasses.replace(
            self, model=spec.model, fingerprint=spec.fingerprint, threshold=spec.threshold,
            max_length=spec.max_length, min_tokens=spec.min_tokens,
            batch_size=spec.batch_size, max_batch_tokens=spec.max_batch_tokens,
            rerank=None, rerank_branch=True, store=None)

    @property
    def counter_prefix(self) -> str:
        """Before each Beam counter's name: the canaries count under their own names
        (canary_rows_scored, ...), so the night's counters hold the night's rows only."""
        if self.canary_branch:
            return "canary_"
        return "rerank_" if self.rerank_branch else ""

    @property
    def fail_fast(self) -> bool:
        """No dead-letter output for model errors: the first failed batch fails the job."""
        return self.max_model_error_ratio == 0

    @property
    def label_schema(self) -> pa.Schema:
        fields = [self.input_schema.field(self.id_column)]
        fields += [pa.field("score", pa.float32()), pa.field("is_duplicate", pa.bool_())]
        meta = {
            "pairscore.model_fingerprint": self.fingerprint,
            "pairscore.threshold": repr(self.threshold),
            "pairscore.model": self.model,
            "pairscore.run_id": self.run_id,
        }
        if self.rerank is not None:
            # score is the deciding model's; first_score the first model's, always.
            fields += [pa.field("first_score", pa.float32()),
                       pa.field("decided_by", pa.string())]
            meta.update({
                "pairscore.rerank_model": self.rerank.model,
                "pairscore.rerank_model_fingerprint": self.rerank.fingerprint,
                "pairscore.rerank_threshold": repr(self.rerank.threshold),
                "pairscore.rerank_band": ",".join(repr(b) for b in self.rerank.band),
            })
        fields += [self.input_schema.field(c) for c in self.keep_columns]
        return pa.schema(fields, metadata=meta)

    @property
    def reject_schema(self) -> pa.Schema:
        return self.input_schema.append(pa.field(REASON, pa.string())).append(
            pa.field(ERROR, pa.string()))
