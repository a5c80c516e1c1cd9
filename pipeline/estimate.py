"""Tonight's precision and recall, measured from people's labels of the night's sample.

    from model import labels
    from pipeline import estimate
    resolved, disagreements = labels.resolve(labels.read_labels(uri))
    result = estimate.estimate(resolved, design, threshold, disagreements=disagreements)
    result["precision"]  # {"estimate": 0.91, "low": 0.87, "high": 0.94}

The sample (OUT/sample/, pipeline/sampling.py) is a stratified simple random sample
without replacement: stratum h has N_h pairs, n_h were sampled, m_h of them carry a 0/1
label. Each labelled pair of stratum h stands for N_h / m_h pairs (the unsure and the
unlabelled are taken to be missing at random within their stratum). Within a stratum a
pair falls into one of four cells, (predicted duplicate?, labelled duplicate?); the
night's totals are expansion (Horvitz-Thompson) estimates of the cells' sizes, and

    precision = TP / (TP + FP)        recall = TP / (TP + FN)

are ratios of those totals. A Wald interval on such a ratio undercovers when precision is
near 1 or labels are few (a stratum whose labels are all 1 has an estimated variance of
0), so the interval brackets the ratio the way Clopper-Pearson brackets one proportion
(Beta(x, n-x+1) below, Beta(x+1, n-x) above), stratum by stratum: per stratum a
Dirichlet posterior over its four cells, for the lower bound with prior 1 on the cell
that lowers the ratio (FP for precision, FN for recall) and 0 on TP, for the upper bound
the other way round, 1/2 on the cells outside the ratio; Monte Carlo draws of the cells,
each turned into the ratio, the bound their alpha/2 (1 - alpha/2) quantile. With one
stratum this is Clopper-Pearson's interval; its frequentist coverage on stratified nights
is checked by the suite (tests/test_estimate.py). A stratum labelled in full has no
sampling error and is not drawn; an interval always holds its point estimate.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from model.stratified import DRAWS, FN, FP, TN, TP, intervals_from_counts

ESTIMATOR = ("stratified ratio of expansion (Horvitz-Thompson) totals: each labelled pair "
             "of stratum h weighs N_h / m_h (m_h: its labelled pairs)")
INTERVAL = ("stratified Clopper-Pearson-type Bayesian interval: per stratum Dirichlet "
            "posteriors over the (predicted, labelled) cells, prior 1 on the cell that "
            "lowers the ratio for the lower bound and on TP for the upper, {draws} Monte "
            "Carlo draws of the ratio; coverage checked by Monte Carlo "
            "(tests/test_estimate.py)")
STOP_WIDTH = 0.1  # the review page's "stop when": the precision interval this narrow

REQUIRED = ("pair_id", "label", "score", "stratum")


class EstimateError(ValueError):
    """Labels or a design that cannot give an estimate; the message says what is wrong."""


def possible_cells(design: dict, threshold: float) -> dict[str, np.ndarray]:
    """Per stratum, which cells can occur at `threshold`: a stratum whose scores all lie
    below it holds no predicted duplicate, one whose scores all lie at or above it none
    predicted not (the design's low and high); either label can occur anywhere."""
    out = {}
    for name, s in design["strata"].items():
        low, high = float(s.get("low", 0.0)), float(s.get("high", 1.0))
        # high may be exclusive (a stratum's scores in [low, high)): allowing a cell
        # that cannot occur only adds its prior half.
        predicted, not_predicted = high >= threshold, low < threshold
        out[name] = np.array([predicted, predicted, not_predicted, not_predicted])
    return out


def _rows(resolved: pa.Table, design: dict, disagreements: pa.Table | None):
    """Tonight's sampled rows: (labelled rows as (stratum, score, label), by-stratum
    tallies, counts of what was left out)."""
    missing = [c for c in REQUIRED if c not in resolved.column_names]
    if missing:
        raise EstimateError(f"the labels lack column(s) {', '.join(missing)} (they have: "
                            f"{', '.join(resolved.column_names)})")
    disputed = set()
    if disagreements is not None and disagreements.num_rows:
        disputed = set(disagreements.column("pair_id").to_pylist())
    run_id = design.get("run_id")
    cols = {c: resolved.column(c).to_pylist() for c in REQUIRED}
    runs = (resolved.column("run_id").to_pylist() if "run_id" in resolved.column_names
            else [None] * resolved.num_rows)
    strata = design["strata"]
    tally = {name: {"size": int(s["size"]), "sampled": int(s.get("sampled", 0)),
                    "labelled": 0, "duplicates": 0, "not_duplicates": 0, "unsure": 0,
                    "disagreements": 0} for name, s in strata.items()}
    left_out = {"other_run": 0, "not_from_sample": 0, "unknown_stratum": 0}
    rows = []
    for pid, label, score, stratum, run in zip(cols["pair_id"], cols["label"],
                                               cols["score"], cols["stratum"], runs):
        if run_id is not None and run != run_id:
            left_out["other_run"] += 1
        elif stratum is None:
            left_out["not_from_sample"] += 1
        elif stratum not in tally:
            left_out["unknown_stratum"] += 1
        elif pid in disputed:
            tally[stratum]["disagreements"] += 1
        elif label is None:
            tally[stratum]["unsure"] += 1
        else:
            if score is None:
                raise EstimateError(f"labelled pair {pid!r} has no score")
            t = tally[stratum]
            t["labelled"] += 1
            t["duplicates" if label == 1 else "not_duplicates"] += 1
            rows.append((stratum, float(score), int(label)))
    return rows, tally, left_out


def _figures(rows, tally, design, threshold, confidence, draws) -> dict:
    names = list(design["strata"])
    possible = possible_cells(design, threshold)
    counts = np.zeros((len(names), 4))
    index = {n: i for i, n in enumerate(names)}
    for stratum, score, label in rows:
        predicted = score >= threshold
        cell = (TP if label else FP) if predicted else (FN if label else TN)
        counts[index[stratum], cell] += 1
    sizes = np.array([tally[n]["size"] for n in names], dtype=float)
    res = intervals_from_counts(counts, np.array([possible[n] for n in names]), sizes,
                                confidence, draws)
    out = {"threshold": float(threshold), "labels": int(counts.sum())}
    for name, why in (("precision", "no labelled pair scores >= the threshold (no "
                                    "predicted duplicate was labelled 0 or 1)"),
                      ("recall", "no labelled pair is a duplicate (label 1)")):
        r = res[name]
        if np.isnan(r["estimate"]):
            out[name] = {"estimate": None, "low": None, "high": None, "why": why}
            continue
        out[name] = {k: round(float(r[k]), 4) for k in ("estimate", "low", "high")}
        if r["posterior"]:
            blind = [n for n in names if tally[n]["labelled"] == 0 and tally[n]["size"]]
            out[name]["why"] = (f"stratum {', '.join(blind)} has no labels: the estimate "
                                "is the posterior median, its interval mostly the prior")
    out["cells"] = {n: dict(zip(("tp", "fp", "fn", "tn"), map(int, counts[i])))
                    for i, n in enumerate(names)}
    return out


def estimate(resolved: pa.Table, design: dict, threshold: float, confidence: float = 0.95,
             disagreements: pa.Table | None = None, draws: int = DRAWS) -> dict:
    """Tonight's precision and recall at `threshold` from the resolved labels (labels.
    resolve()'s first table, or any table with pair_id, label, score, stratum and
    run_id), the night's design (OUT/sample/_design.json) and, optionally, the pairs the
    labellers disagree on (resolve()'s second table: left out and counted). Only rows of
    the design's run_id with a stratum of the design count; null labels are unsure, left
    out and counted."""
    if not 0 < confidence < 1:
        raise EstimateError(f"--confidence {confidence}: must lie between 0 and 1")
    if not design.get("strata"):
        raise EstimateError("the design (_design.json) has no strata")
    rows, tally, left_out = _rows(resolved, design, disagreements)
    for t in tally.values():
        t["weight"] = round(t["size"] / t["labelled"], 4) if t["labelled"] else None
    out = _figures(rows, tally, design, threshold, confidence, draws)
    out.update({
        "run_id": design.get("run_id"),
        "unsure": sum(t["unsure"] for t in tally.values()),
        "disagreements": sum(t["disagreements"] for t in tally.values()),
        "left_out": left_out,
        "by_stratum": tally,
        "estimator": ESTIMATOR,
        "interval": INTERVAL.format(draws=f"{draws:,}"),
        "confidence": confidence,
    })
    return out


def curve(resolved: pa.Table, design: dict, thresholds, confidence: float = 0.95,
          disagreements: pa.Table | None = None, draws: int = DRAWS) -> list[dict]:
    """Precision and recall at other thresholds, from the same labels: a pair is a
    predicted duplicate at t when its score >= t. The strata stay those the night drew
    with its own threshold, so far from it the labels are few where they matter and the
    intervals wide."""
    rows, tally, _ = _rows(resolved, design, disagreements)
    return [{k: v for k, v in _figures(rows, tally, design, t, confidence, draws).items()
             if k != "cells"} for t in thresholds]


def curve_thresholds(threshold: float) -> list[float]:
    """The curve's thresholds: 0.1 to 0.9 by 0.1, and the night's."""
    grid = {round(t, 2) for t in np.arange(0.1, 0.95, 0.1)} | {round(float(threshold), 4)}
    return sorted(grid)


def stop_rule(result: dict, width: float = STOP_WIDTH) -> dict:
    """The review page's "stop when": labelling can stop once the precision interval is
    narrower than `width`."""
    p = result["precision"]
    if p.get("low") is None:
        return {"stop": False, "why": f"no precision yet: {p.get('why')}"}
    w = p["high"] - p["low"]
    if w < width:
        return {"stop": True, "why": f"precision interval narrower than {width:g} "
                                     f"({w:.3f} wide)"}
    return {"stop": False, "why": f"precision interval {w:.3f} wide: label on until it is "
                                  f"narrower than {width:g}"}


# --- a run's estimate: `pairscore estimate OUT --labels URI` ---------------------------------


def read_design(output: str) -> dict:
    """OUT/sample/_design.json, or an EstimateError saying why there is none."""
    import json

    from apache_beam.io.filesystems import FileSystems

    from model.storage import join

    path = join(output, "sample", "_design.json")
    if not FileSystems.exists(path):
        raise EstimateError(f"{path} not found: {output} has no sample to estimate from "
                            "(scored with --review-sample 0, or by a pairscore before "
                            "samples); score again with --review-sample N (default 300)")
    with FileSystems.open(path) as f:
        design = json.loads(f.read())
    for key in ("run_id", "strata"):
        if not design.get(key):
            raise EstimateError(f"{path} has no {key!r}")
    return design


def for_run(output: str, labels_uri: str, confidence: float = 0.95,
            threshold: float | None = None, write: bool = True) -> dict:
    """The estimate of run OUT from the labels at `labels_uri`: estimate() at the
    night's threshold (or `threshold`), its curve, the stop rule. With `write`, stored in
    OUT/estimate.json and shown in OUT/report.html's "Measured by people" section."""
    from model import labels
    from model.storage import join
    from pipeline import report
    from pipeline.io import read_summary, write_json

    if not 0 < confidence < 1:
        raise EstimateError(f"--confidence {confidence}: must lie between 0 and 1")
    design = read_design(output)
    summary = read_summary(output)
    if summary is None:
        raise EstimateError(f"{join(output, 'summary.json')} not found: {output} is not "
                            "a finished run")
    if summary.get("run_id") != design["run_id"]:
        raise EstimateError(f"{join(output, 'sample', '_design.json')} is of run "
                            f"{design['run_id']}, {join(output, 'summary.json')} of run "
                            f"{summary.get('run_id')}: the sample is not this run's")
    if threshold is None:
        threshold = summary.get("threshold", design.get("threshold"))
    table = labels.read_labels(labels_uri)
    if table.num_rows == 0:
        raise EstimateError(f"{labels_uri} holds no labels ({labels.PATTERN})")
    resolved, disagreements = labels.resolve(table)
    runs = resolved.column("run_id").to_pylist()
    if design["run_id"] not in runs:
        others = sorted({str(r) for r in runs})
        raise EstimateError(f"none of the {len(runs)} labelled pairs in {labels_uri} is "
                            f"of run {design['run_id']} (they are of run "
                            f"{', '.join(others[:5])}{' ...' if len(others) > 5 else ''}): "
                            f"label {join(output, 'sample')} first (pairscore review)")
    result = estimate(resolved, design, threshold, confidence, disagreements)
    result["curve"] = curve(resolved, design, curve_thresholds(threshold), confidence,
                            disagreements)
    result["stop"] = stop_rule(result)
    result["labels_uri"] = labels_uri
    if write:
        write_json(join(output, "estimate.json"), result)
        report.write_report(output, {**summary, "people": result})
    return result


def _figure(name: str, f: dict, confidence: float) -> str:
    if f.get("estimate") is None:
        return f"{name} n/a: {f['why']}"
    line = (f"{name} {f['estimate']:.2f} [{f['low']:.2f}, {f['high']:.2f}] "
            f"({confidence:.0%} interval)")
    return line + (f"; {f['why']}" if f.get("why") else "")


def lines(result: dict) -> list[str]:
    """A run's estimate in a few plain lines."""
    c = result["confidence"]
    out = [f"run {result['run_id']} at threshold {result['threshold']:g}: "
           f"{result['labels']} labels of the night's sample used, {result['unsure']} "
           f"unsure and {result['disagreements']} disagreements left out",
           "  " + _figure("precision", result["precision"], c),
           "  " + _figure("recall", result["recall"], c)]
    strata = ", ".join(f"{name} {s['labelled']} of {s['size']:,}"
                       for name, s in result["by_stratum"].items())
    out.append(f"  labelled by stratum: {strata}")
    other = {k: v for k, v in result.get("left_out", {}).items() if v}
    if other:
        out.append("  not counted: " + ", ".join(f"{v} {k.replace('_', ' ')}"
                                                  for k, v in other.items()))
    out.append(f"  estimator: {result['estimator']}")
    out.append(f"  interval: {result['interval']}")
    if "stop" in result:
        out.append(f"  stop labelling: {'yes' if result['stop']['stop'] else 'no'}, "
                   f"{result['stop']['why']}")
    return out
