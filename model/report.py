"""An evaluation report people can look at: figures as PNGs and one self-contained HTML page.

    pairscore evaluate --model models/m --data dev.parquet --report out/report

writes ``out/report/report.html`` (every image embedded as base64, so the file can be
mailed or attached to a ticket) beside the PNGs and ``metrics.json``. Binary data gets the
precision-recall and ROC curves, score histograms by true label with the threshold marked
and the confusion matrix at the threshold; graded data a scatter of score against
similarity with Spearman's rho. Both get the metrics table.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import os

import numpy as np

REPORT_FILE = "report.html"
METRICS_FILE = "metrics.json"
# File stem -> caption. The stems are the report's public names (tests and users rely on
# them), so keep them stable.
BINARY_FIGURES = {
    "pr_curve": "Precision-recall curve",
    "roc_curve": "ROC curve",
    "score_histogram": "Scores by true label",
    "confusion_matrix": "Confusion matrix at the threshold",
}
GRADED_FIGURES = {"score_vs_similarity": "Score against graded similarity"}
TABLE_KEYS = (
    "n",
    "threshold",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "roc_auc",
    "average_precision",
    "majority_accuracy",
    "best_f1",
    "best_f1_threshold",
    "spearman",
    "pearson",
)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    """Write `fig` as a PNG to `path` (a file name or a binary file object) and close it."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


def _pr_curve(curves, labels, path):
    """Precision-recall of each (name, scores, threshold) on the same labels, each with its
    threshold marked. Returns the average precision of each."""
    from sklearn import metrics

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.2))
    aps = []
    for i, (name, scores, threshold) in enumerate(curves):
        precision, recall, _ = metrics.precision_recall_curve(labels, scores)
        ap = float(metrics.average_precision_score(labels, scores))
        aps.append(ap)
        predicted = scores >= threshold
        p_at = metrics.precision_score(labels, predicted, zero_division=0)
        r_at = metrics.recall_score(labels, predicted, zero_division=0)
        prefix = f"{name}: " if name else ""
        ax.plot(recall, precision, lw=2, color=f"C{i}", label=f"{prefix}AP = {ap:.3f}")
        ax.plot([r_at], [p_at], "o", color="C3" if len(curves) == 1 else f"C{i}",
                mec="black", label=f"threshold {threshold:.3f}" if len(curves) == 1 else None)
    ax.axhline(labels.mean(), color="grey", ls=":", label=f"base rate {labels.mean():.2f}")
    ax.set(
        xlabel="Recall",
        ylabel="Precision",
        xlim=(0, 1.01),
        ylim=(0, 1.02),
        title="Precision-recall" + (" (dots: thresholds)" if len(curves) > 1 else ""),
    )
    ax.legend(loc="lower left", fontsize="small")
    ax.grid(alpha=0.3)
    _save(fig, path)
    return aps


def _roc_curve(curves, labels, path):
    """ROC of each (name, scores, threshold) on the same labels, thresholds marked."""
    from sklearn import metrics

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.2))
    for i, (name, scores, threshold) in enumerate(curves):
        fpr, tpr, _ = metrics.roc_curve(labels, scores)
        auc = metrics.roc_auc_score(labels, scores)
        predicted = scores >= threshold
        prefix = f"{name}: " if name else ""
        ax.plot(fpr, tpr, lw=2, color=f"C{i}", label=f"{prefix}ROC-AUC = {auc:.3f}")
        ax.plot([predicted[labels == 0].mean()], [predicted[labels == 1].mean()], "o",
                color="C3" if len(curves) == 1 else f"C{i}", mec="black",
                label=f"threshold {threshold:.3f}" if len(curves) == 1 else None)
    ax.plot([0, 1], [0, 1], color="grey", ls=":", label="chance")
    ax.set(
        xlabel="False positive rate",
        ylabel="True positive rate",
        xlim=(0, 1),
        ylim=(0, 1.02),
        title="ROC" + (" (dots: thresholds)" if len(curves) > 1 else ""),
    )
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)
    _save(fig, path)


def _histogram(scores, labels, threshold, path):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    bins = np.linspace(0, 1, 41)
    for value, name, color in ((0, "not duplicate", "C0"), (1, "duplicate", "C1")):
        part = scores[labels == value]
        ax.hist(part, bins=bins, alpha=0.55, color=color, label=f"{name} (n={len(part)})")
    ax.axvline(threshold, color="C3", ls="--", lw=2, label=f"threshold {threshold:.3f}")
    ax.set(xlabel="Score", ylabel="Pairs", xlim=(0, 1), title="Scores by true label")
    ax.legend(loc="upper left")
    _save(fig, path)


def _confusion(scores, labels, threshold, path):
    from sklearn import metrics

    plt = _pyplot()
    matrix = metrics.confusion_matrix(labels, (scores >= threshold).astype(int), labels=[0, 1])
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.imshow(matrix, cmap="Blues")
    names = ["not duplicate", "duplicate"]
    ax.set_xticks([0, 1], names)
    ax.set_yticks([0, 1], names, rotation=90, va="center")
    ax.set(xlabel="Predicted", ylabel="True", title=f"Confusion at threshold {threshold:.3f}")
    total = matrix.sum() or 1
    for (i, j), count in np.ndenumerate(matrix):
        dark = count > matrix.max() / 2
        ax.text(
            j,
            i,
            f"{count}\n{100 * count / total:.1f}%",
            ha="center",
            va="center",
            fontsize=12,
            color="white" if dark else "black",
        )
    _save(fig, path)
    return matrix.tolist()


def _scatter(scores, similarity, spearman, path, threshold=None):
    plt = _pyplot()
    rng = np.random.default_rng(0)
    # Graded sets hold many tied similarities: jitter so that the density shows.
    span = float(np.ptp(similarity)) or 1.0
    jitter = rng.uniform(-0.015, 0.015, len(similarity)) * span
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(similarity + jitter, scores, s=6, alpha=0.35, color="C0")
    # Mean score per similarity bucket shows whether the relation is monotone.
    edges = np.linspace(similarity.min(), similarity.max(), 11)
    which = np.clip(np.digitize(similarity, edges[1:-1]), 0, len(edges) - 2)
    centers, means = [], []
    for b in range(len(edges) - 1):
        if (which == b).any():
            centers.append((edges[b] + edges[b + 1]) / 2)
            means.append(scores[which == b].mean())
    ax.plot(centers, means, "-o", color="C3", lw=2, label="mean score per bucket")
    if threshold is not None:
        ax.axhline(threshold, color="C3", ls="--", lw=1.5, label=f"threshold {threshold:.3g}")
    ax.set(
        xlabel="Graded similarity",
        ylabel="Score",
        ylim=(-0.02, 1.02),
        title=f"Score vs similarity (Spearman rho = {spearman:.3f})",
    )
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    _save(fig, path)


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def _figure_block(name: str, caption: str, png: bytes, source: str | None = None) -> str:
    """One <figure id=name>, the PNG inline as a data: URI; `source` names its file."""
    data = base64.b64encode(png).decode("ascii")
    caption = html.escape(caption)
    shown = f"{caption} ({html.escape(source)})" if source else caption
    return (
        f'<figure id="{name}"><img alt="{caption}" src="data:image/png;base64,{data}">'
        f"<figcaption>{shown}</figcaption></figure>"
    )


def _figure_blocks(figures: dict[str, str], captions: dict[str, str]) -> str:
    blocks = []
    for name, png in figures.items():
        with open(png, "rb") as f:
            blocks.append(_figure_block(name, captions[name], f.read(), f"{name}.png"))
    return "".join(blocks)


# The pages' shared look (also pipeline/report.py's run report).
STYLE = """\
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.8em; text-align: left; }
td { font-variant-numeric: tabular-nums; }
td.best { font-weight: bold; }
figure { display: inline-block; margin: 0 1em 1em 0; vertical-align: top; }
img { max-width: 100%; }
.note { color: #a40; }
.meta { color: #666; font-size: 0.9em; }
"""


def _page(title: str, meta: str, notes: list[str], table: str, figures: str) -> str:
    note_html = "".join(f"<p class=note>{html.escape(n)}</p>" for n in notes)
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
{STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class=meta>{meta}, written {now}</p>
{note_html}
<h2>Metrics</h2>
<table id="metrics">
{table}
</table>
<h2>Figures</h2>
{figures}
</body></html>
"""


def _html(title: str, result: dict, figures: dict[str, str], notes: list[str]) -> str:
    rows = "\n".join(
        f"<tr><th>{html.escape(k)}</th><td>{_fmt(result[k])}</td></tr>"
        for k in TABLE_KEYS
        if k in result
    )
    meta = (
        f'model <code>{html.escape(str(result.get("model")))}</code>, '
        f'data <code>{html.escape(str(result.get("data")))}</code>'
    )
    captions = {**BINARY_FIGURES, **GRADED_FIGURES}
    return _page(title, meta, notes, rows, _figure_blocks(figures, captions))


def write_report(result: dict, out_dir: str, title: str | None = None) -> dict[str, str]:
    """Write the figures, ``metrics.json`` and ``report.html`` for an `evaluate()` result
    (it must carry ``scores`` and ``labels`` and/or ``similarity``). Returns
    {figure name: PNG path}; ``report.html`` is at ``out_dir/report.html``."""
    os.makedirs(out_dir, exist_ok=True)
    scores = np.asarray(result["scores"], dtype=np.float64)
    labels = result.get("labels")
    similarity = result.get("similarity")
    figures: dict[str, str] = {}
    notes: list[str] = []
    summary = {k: v for k, v in result.items() if k not in ("scores", "labels", "similarity")}

    def path(name):
        figures[name] = os.path.join(out_dir, f"{name}.png")
        return figures[name]

    if result.get("labels_from"):
        notes.append(
            f"The data has graded similarity and no binary labels: accuracy, F1 and the "
            f"binary figures count {result['labels_from']} as a duplicate."
        )
    if labels is not None:
        labels = np.asarray(labels).astype(int)
        threshold = float(result["threshold"])
        if len(set(labels.tolist())) == 2:
            curve = [(None, scores, threshold)]
            summary["average_precision"] = _pr_curve(curve, labels, path("pr_curve"))[0]
            _roc_curve(curve, labels, path("roc_curve"))
        else:
            notes.append("Only one class in the labels: no precision-recall or ROC curve.")
        _histogram(scores, labels, threshold, path("score_histogram"))
        summary["confusion_matrix"] = _confusion(
            scores, labels, threshold, path("confusion_matrix")
        )
    if similarity is not None:
        similarity = np.asarray(similarity, dtype=np.float64)
        _scatter(scores, similarity, float(result["spearman"]), path("score_vs_similarity"),
                 result.get("threshold"))
    with open(os.path.join(out_dir, METRICS_FILE), "w") as f:
        json.dump(summary, f, indent=2, default=float)
        f.write("\n")
    title = title or f"pairscore evaluation: {os.path.basename(str(result.get('data')))}"
    page = _html(title, summary, figures, notes)
    with open(os.path.join(out_dir, REPORT_FILE), "w", encoding="utf-8") as f:
        f.write(page)
    return figures


COMPARISON_FIGURES = {
    "pr_curve": "Precision-recall curves, one per model",
    "roc_curve": "ROC curves, one per model",
}
# Metrics where more is better: the comparison table marks the best model's value.
_HIGHER_IS_BETTER = {
    "accuracy", "precision", "recall", "f1", "roc_auc", "average_precision", "best_f1",
    "spearman", "pearson",
}


def model_names(results: list[dict]) -> list[str]:
    """Short, distinct names for the models of `results` (their directory names)."""
    names = []
    for i, result in enumerate(results, 1):
        name = os.path.basename(str(result.get("model", "")).rstrip("/")) or f"model-{i}"
        names.append(name if name not in names else f"{name}-{i}")
    return names


def write_comparison(results: list[dict], out_dir: str, title: str | None = None) -> dict:
    """Compare several models' `evaluate()` results on the same data: ``report.html`` with
    one metrics column per model (the best value in bold), precision-recall and ROC curves
    overlaid, each model's threshold marked, and a full report per model in
    ``out_dir/<model name>/``. Returns {figure name: PNG path}."""
    if len(results) < 2:
        raise ValueError("a comparison needs at least two models")
    n = {r["n"] for r in results}
    data = {str(r.get("data")) for r in results}
    if len(n) != 1 or len(data) != 1:
        raise ValueError(f"a comparison needs the same data for every model, got {data}")
    os.makedirs(out_dir, exist_ok=True)
    names = model_names(results)
    summaries = {}
    for name, result in zip(names, results, strict=True):
        write_report(result, os.path.join(out_dir, name))
        summaries[name] = {
            k: v for k, v in result.items() if k not in ("scores", "labels", "similarity")
        }
    figures: dict[str, str] = {}
    notes: list[str] = []
    labels = results[0].get("labels")
    if labels is not None:
        labels = np.asarray(labels).astype(int)
        if len(set(labels.tolist())) == 2:
            curves = [
                (name, np.asarray(r["scores"], dtype=np.float64), float(r["threshold"]))
                for name, r in zip(names, results, strict=True)
            ]
            figures["pr_curve"] = os.path.join(out_dir, "pr_curve.png")
            aps = _pr_curve(curves, labels, figures["pr_curve"])
            figures["roc_curve"] = os.path.join(out_dir, "roc_curve.png")
            _roc_curve(curves, labels, figures["roc_curve"])
            for name, ap in zip(names, aps, strict=True):
                summaries[name]["average_precision"] = ap
        else:
            notes.append("Only one class in the labels: no precision-recall or ROC curve.")
    if results[0].get("labels_from"):
        notes.append(
            f"The data has graded similarity and no binary labels: accuracy, F1 and the "
            f"curves count {results[0]['labels_from']} as a duplicate."
        )
    with open(os.path.join(out_dir, METRICS_FILE), "w") as f:
        json.dump({"data": data.pop(), "models": summaries}, f, indent=2, default=float)
        f.write("\n")

    head = "<tr><th>metric</th>" + "".join(
        f'<th><a href="{html.escape(name)}/{REPORT_FILE}">{html.escape(name)}</a></th>'
        for name in names
    ) + "</tr>"
    rows = [head]
    for key in TABLE_KEYS:
        values = [summaries[name].get(key) for name in names]
        if all(v is None for v in values):
            continue
        numbers = [v for v in values if isinstance(v, float)]
        best = max(numbers) if key in _HIGHER_IS_BETTER and numbers else None
        cells = "".join(
            f'<td{" class=best" if best is not None and v == best else ""}>{_fmt(v)}</td>'
            for v in values
        )
        rows.append(f"<tr><th>{html.escape(key)}</th>{cells}</tr>")
    meta = (
        "models " + ", ".join(
            f"<code>{html.escape(str(r.get('model')))}</code>" for r in results
        ) + f"; data <code>{html.escape(str(results[0].get('data')))}</code>"
    )
    title = title or (
        f"pairscore comparison: {os.path.basename(str(results[0].get('data')))}"
    )
    page = _page(title, meta, notes, "\n".join(rows),
                 _figure_blocks(figures, COMPARISON_FIGURES))
    with open(os.path.join(out_dir, REPORT_FILE), "w", encoding="utf-8") as f:
        f.write(page)
    return figures
