"""The night's sample for people to label (OUT/sample/): a stratified random sample of the
scored pairs, with its design, so that labels estimate precision and recall.

    strata      near_threshold |score - threshold| < band; duplicate score >= threshold;
                non_duplicate score < threshold (both: not near)
    key         the first 8 bytes of sha256(run_id + "|" + pair_id), as an unsigned int
    allocate    n labels over the strata by fixed shares (SHARES), capped at each size
    bottom-k    within a stratum the n_h pairs of smallest key: a simple random sample
                without replacement, reproducible for a run id, chosen in any order over
                any split of the rows (the stage's combiner holds k rows a stratum)

`pipeline.stages.sampling.SampleForReview` wires these into the job; people.md documents
the files.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

DUPLICATE = "duplicate"
NEAR = "near_threshold"
NON_DUPLICATE = "non_duplicate"
STRATA = (NEAR, DUPLICATE, NON_DUPLICATE)  # also the order a remainder goes in
# Where labels tell most: the band around the threshold (where a threshold's precision
# and recall move) and the predicted duplicates (precision) take most; the predicted
# non-duplicates (the duplicates the threshold missed: recall) the rest.
SHARES = {NEAR: 0.4, DUPLICATE: 0.4, NON_DUPLICATE: 0.2}
KEY = "sample_key"
SEED_KEY = "sha256(run_id|pair_id)"
DESIGN_FILE = "_design.json"

# The candidates each scored batch sends to the combiner.
CANDIDATE_SCHEMA = pa.schema([
    pa.field("pair_id", pa.string()), pa.field("text_a", pa.string()),
    pa.field("text_b", pa.string()), pa.field("score", pa.float32()),
    pa.field("stratum", pa.string()), pa.field(KEY, pa.uint64()),
])

# OUT/sample/'s columns (the contract's, exactly).
SAMPLE_SCHEMA = pa.schema([
    pa.field("pair_id", pa.string()), pa.field("text_a", pa.string()),
    pa.field("text_b", pa.string()), pa.field("score", pa.float32()),
    pa.field("is_duplicate", pa.bool_()), pa.field("stratum", pa.string()),
    pa.field("inclusion_probability", pa.float64()), pa.field("stratum_size", pa.int64()),
    pa.field("run_id", pa.string()), pa.field("model_fingerprint", pa.string()),
    pa.field("threshold", pa.float64()),
])


def stratum_of(scores, threshold: float, band: float) -> np.ndarray:
    """Each score's stratum name (an object array). Compared in float64, as
    `packing.label_table` sets is_duplicate, so duplicate and non_duplicate agree with it."""
    s = np.asarray(scores, dtype=np.float32).reshape(-1).astype(np.float64)
    near = np.abs(s - threshold) < band
    out = np.where(s >= threshold, DUPLICATE, NON_DUPLICATE).astype(object)
    out[near] = NEAR
    return out


def bounds(threshold: float, band: float) -> dict:
    """Each stratum's score range {"low", "high"}, the band clipped to [0, 1]: near is the
    open interval (low, high), duplicate [low, 1], non_duplicate [0, high]."""
    low, high = max(0.0, threshold - band), min(1.0, threshold + band)
    if band <= 0:
        low = high = threshold
    return {NEAR: {"low": low, "high": high}, DUPLICATE: {"low": high, "high": 1.0},
            NON_DUPLICATE: {"low": 0.0, "high": low}}


def counts(strata: np.ndarray) -> dict:
    """{stratum: rows} over every stratum (0 for an empty one)."""
    names, n = np.unique(np.asarray(strata, dtype=object).astype(str), return_counts=True)
    found = dict(zip(names.tolist(), n.tolist()))
    return {h: int(found.get(h, 0)) for h in STRATA}


def keys(run_id: str, pair_ids) -> np.ndarray:
    """uint64 keys: the first 8 bytes (big-endian) of sha256(run_id + "|" + pair_id)."""
    base = hashlib.sha256(f"{run_id}|".encode())
    out = np.empty(len(pair_ids), dtype=np.uint64)
    for i, pid in enumerate(pair_ids):
        h = base.copy()
        h.update(str(pid).encode())
        out[i] = int.from_bytes(h.digest()[:8], "big")
    return out


def allocate(sizes: dict, n: int) -> dict:
    """n labels over the strata: by SHARES, each capped at its stratum's size, what a
    stratum cannot use shared again among the others by their SHARES, until n (or every
    pair) is allocated. Whole numbers by largest remainder, ties in STRATA order. Sums to
    min(n, total); never above a size; a function of (sizes, n) alone."""
    sizes = {h: int(sizes.get(h, 0)) for h in STRATA}
    alloc = dict.fromkeys(STRATA, 0)
    left = min(int(n), sum(sizes.values()))
    while left > 0:
        open_ = [h for h in STRATA if alloc[h] < sizes[h]]
        weight = sum(SHARES[h] for h in open_)
        quota = {h: left * SHARES[h] / weight for h in open_}
        whole = {h: int(np.floor(quota[h])) for h in open_}
        rest = left - sum(whole.values())
        by_fraction = sorted(open_, key=lambda h: (-(quota[h] - whole[h]), STRATA.index(h)))
        for h in by_fraction[:rest]:
            whole[h] += 1
        for h in open_:
            give = min(whole[h], sizes[h] - alloc[h])
            alloc[h] += give
            left -= give
    return alloc


def bottom_k(table: pa.Table, k: int) -> pa.Table:
    """The `k` rows of smallest key (ties by pair_id), in that order."""
    if table.num_rows > k:
        key = table[KEY].to_numpy()
        cut = np.partition(key, k - 1)[k - 1]
        table = table.filter(pa.array(key <= cut))
    idx = pc.sort_indices(table, [(KEY, "ascending"), ("pair_id", "ascending")])
    return table.take(idx[:k])


def candidates(pair_ids, text_a, text_b, scores, threshold: float, band: float,
               run_id: str, k: int) -> pa.Table:
    """One scored batch's candidates (CANDIDATE_SCHEMA): its bottom-k a stratum. A stratum
    with at most k rows in the batch sends them all."""
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    strata = stratum_of(scores, threshold, band)
    ids = pc.cast(pa.array(pair_ids) if not isinstance(pair_ids, (pa.Array, pa.ChunkedArray))
                  else pair_ids, pa.string())
    table = pa.Table.from_arrays(
        [ids, pc.cast(text_a, pa.string()), pc.cast(text_b, pa.string()),
         pa.array(scores, pa.float32()), pa.array(strata, pa.string()),
         pa.array(keys(run_id, ids.to_pylist()), pa.uint64())],
        schema=CANDIDATE_SCHEMA)
    return pa.concat_tables([bottom_k(table.filter(pa.array(strata == h)), k)
                             for h in STRATA])


def merge(tables, k: int) -> dict:
    """{stratum: its bottom-k} over candidate tables."""
    if not tables:
        return {h: CANDIDATE_SCHEMA.empty_table() for h in STRATA}
    whole = pa.concat_tables(tables)
    strata = whole["stratum"].to_numpy(zero_copy_only=False)
    return {h: bottom_k(whole.filter(pa.array(strata == h)), k) for h in STRATA}


def select(bottoms: dict, sizes: dict, n: int, threshold: float, band: float,
           run_id: str, fingerprint: str) -> tuple[pa.Table, dict]:
    """The sample (SAMPLE_SCHEMA) and its design, from each stratum's bottom-n
    (`bottoms`, at least n_h rows unless the stratum is smaller) and the exact stratum
    sizes: the n_h rows of smallest key a stratum, n_h from `allocate(sizes, n)`."""
    alloc = allocate(sizes, n)
    parts = []
    for h in STRATA:
        take = bottom_k(bottoms.get(h, CANDIDATE_SCHEMA.empty_table()), alloc[h])
        if take.num_rows != alloc[h]:
            raise ValueError(f"stratum {h}: {take.num_rows} candidates for {alloc[h]} "
                             "sampled; the combiner must keep n a stratum")
        m = take.num_rows
        size = sizes.get(h, 0)
        scores = take["score"].to_numpy().astype(np.float64)
        parts.append(pa.Table.from_arrays([
            take["pair_id"], take["text_a"], take["text_b"], take["score"],
            pa.array(scores >= threshold, pa.bool_()), take["stratum"],
            pa.array(np.full(m, alloc[h] / size if size else 0.0), pa.float64()),
            pa.array(np.full(m, size), pa.int64()),
            pa.array([run_id] * m, pa.string()), pa.array([fingerprint] * m, pa.string()),
            pa.array(np.full(m, threshold), pa.float64())], schema=SAMPLE_SCHEMA))
    edges = bounds(threshold, band)
    design = {
        "run_id": run_id, "threshold": threshold, "band": band, "seed_key": SEED_KEY,
        "strata": {h: {**edges[h], "size": int(sizes.get(h, 0)), "sampled": alloc[h]}
                   for h in STRATA},
    }
    return pa.concat_tables(parts), design


def horvitz_thompson(sample: pa.Table, values) -> float:
    """The Horvitz-Thompson estimate of the population total of `values` (one per sample
    row): sum of value / inclusion_probability."""
    p = sample["inclusion_probability"].to_numpy()
    return float(np.sum(np.asarray(values, dtype=np.float64) / p))
