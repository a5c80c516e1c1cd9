"""`pairscore evaluate --report OUT`: a self-contained HTML page and the PNG figures."""

import base64
import html.parser
import json
import re
import shutil
import subprocess

import numpy as np
import pyarrow as pa
import pytest
from conftest import PAIRS, write_pairs

from pipeline.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BINARY = {"pr_curve", "roc_curve", "score_histogram", "confusion_matrix"}
GRADED = {"score_vs_similarity"}


class _Page(html.parser.HTMLParser):
    """Collects figures (id -> embedded image bytes), the metrics table and any external
    reference a self-contained page must not have."""

    def __init__(self):
        super().__init__()
        self.figures, self.external, self.rows = {}, [], {}
        self.table: list[list[str]] = []  # every row, for tables with a column per model
        self.bold: set[tuple[str, int]] = set()  # (row name, column) of class=best cells
        self.links: list[str] = []
        self._figure = self._cell = None
        self._row: list[str] = []
        self._best: list[int] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "figure":
            self._figure = attrs.get("id")
        elif tag == "img":
            src = attrs.get("src", "")
            prefix = "data:image/png;base64,"
            if src.startswith(prefix):
                self.figures[self._figure] = base64.b64decode(src[len(prefix) :])
            else:
                self.external.append(src)
        elif tag in ("link", "script") and (attrs.get("href") or attrs.get("src")):
            self.external.append(attrs.get("href") or attrs.get("src"))
        elif tag in ("th", "td"):
            self._cell = ""
            if attrs.get("class") == "best":
                self._best.append(len(self._row))
        elif tag == "tr":
            self._row, self._best = [], []
        elif tag == "a":
            self.links.append(attrs.get("href"))

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("th", "td") and self._cell is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        elif tag == "tr":
            self.table.append(self._row)
            self.bold.update((self._row[0], i) for i in self._best)
            if len(self._row) == 2:
                self.rows[self._row[0]] = self._row[1]
        elif tag == "figure":
            self._figure = None


def _parse(path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _rows(n=40):
    base = [(a, b) for _, a, b in PAIRS]
    return [(f"r{i}", *base[i % len(base)]) for i in range(n)]


def _evaluate(model, data, out, capsys):
    assert main(["evaluate", "--model", model, "--data", str(data), "--report", str(out)]) == 0
    return json.loads(capsys.readouterr().out)


def test_binary_report(bilstm_model, tmp_path, capsys):
    rows = _rows()
    labels = np.array([i % 2 for i in range(len(rows))], dtype=np.int8)
    data = tmp_path / "pairs.parquet"
    write_pairs(data, rows, label=pa.array(labels, pa.int8()))
    out = tmp_path / "report"
    printed = _evaluate(bilstm_model, data, out, capsys)

    assert printed["report"] == str(out / "report.html")
    page = _parse(out / "report.html")
    assert set(page.figures) == BINARY
    assert page.external == []
    for name, embedded in page.figures.items():
        on_disk = (out / f"{name}.png").read_bytes()
        assert on_disk.startswith(PNG_MAGIC)
        assert embedded == on_disk
    assert not (out / "score_vs_similarity.png").exists()
    # The table shows the numbers `evaluate` printed.
    assert float(page.rows["accuracy"]) == pytest.approx(printed["accuracy"], abs=1e-4)
    assert int(page.rows["n"]) == len(rows)
    saved = json.loads((out / "metrics.json").read_text())
    matrix = np.array(saved["confusion_matrix"])
    assert matrix.sum() == len(rows)
    assert matrix[1].sum() == labels.sum()
    assert (matrix[0, 0] + matrix[1, 1]) / len(rows) == pytest.approx(printed["accuracy"])


def test_comparison_report(bilstm_model, bert_model, tmp_path, capsys):
    """Two models on the same data: one column each, the best value bold, overlaid curves,
    and a full report per model linked from the page."""
    rows = _rows()
    labels = np.array([i % 2 for i in range(len(rows))], dtype=np.int8)
    data = tmp_path / "pairs.parquet"
    write_pairs(data, rows, label=pa.array(labels, pa.int8()))
    out = tmp_path / "compare"
    argv = ["evaluate", "--model", bilstm_model, "--model", bert_model, "--data", str(data),
            "--report", str(out)]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert list(printed["models"]) == ["bilstm", "bert"]
    single = {}
    for name, model in (("bilstm", bilstm_model), ("bert", bert_model)):
        assert main(["evaluate", "--model", model, "--data", str(data)]) == 0
        single[name] = json.loads(capsys.readouterr().out)
        assert printed["models"][name]["accuracy"] == single[name]["accuracy"]

    page = _parse(out / "report.html")
    assert set(page.figures) == {"pr_curve", "roc_curve"}
    assert page.external == []
    header = page.table[0]
    assert header == ["metric", "bilstm", "bert"]
    table = {row[0]: row[1:] for row in page.table[1:]}
    for col, name in enumerate(("bilstm", "bert"), 1):
        assert float(table["roc_auc"][col - 1]) == pytest.approx(single[name]["roc_auc"],
                                                                  abs=1e-4)
    aucs = [single["bilstm"]["roc_auc"], single["bert"]["roc_auc"]]
    if aucs[0] != aucs[1]:
        assert ("roc_auc", 1 + int(np.argmax(aucs))) in page.bold
        assert ("roc_auc", 2 - int(np.argmax(aucs))) not in page.bold
    # Each model's own full report, linked from the comparison.
    assert page.links == ["bilstm/report.html", "bert/report.html"]
    for name in ("bilstm", "bert"):
        assert set(_parse(out / name / "report.html").figures) == BINARY
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved["models"]) == {"bilstm", "bert"}


def test_comparison_needs_the_same_data():
    from model.report import write_comparison

    a = {"model": "a", "data": "x.parquet", "n": 3, "scores": [0.1, 0.2, 0.3]}
    b = {"model": "b", "data": "y.parquet", "n": 3, "scores": [0.1, 0.2, 0.3]}
    with pytest.raises(ValueError, match="same data"):
        write_comparison([a, b], "unused")
    with pytest.raises(ValueError, match="at least two"):
        write_comparison([a], "unused")


def test_graded_report(bert_model, tmp_path, capsys):
    rows = _rows(30)
    similarity = np.linspace(0, 5, len(rows)).astype(np.float32)
    data = tmp_path / "graded.parquet"
    write_pairs(
        data,
        rows,
        label=pa.array([-1] * len(rows), pa.int8()),
        similarity=pa.array(similarity, pa.float32()),
    )
    out = tmp_path / "graded-report"
    printed = _evaluate(bert_model, data, out, capsys)

    page = _parse(out / "report.html")
    # Graded data: the scatter, and the binary figures against similarity >= 4.
    assert set(page.figures) == GRADED | BINARY
    assert (out / "score_vs_similarity.png").read_bytes().startswith(PNG_MAGIC)
    assert float(page.rows["spearman"]) == pytest.approx(printed["spearman"], abs=1e-4)
    assert printed["labels_from"] == "similarity >= 4"
    derived = similarity >= 4.0
    assert printed["n"] == len(rows)
    assert printed["majority_accuracy"] == pytest.approx(max(derived.mean(), 1 - derived.mean()))
    assert float(page.rows["accuracy"]) == pytest.approx(printed["accuracy"], abs=1e-3)


def test_one_class_report_says_why_curves_are_missing(bilstm_model, tmp_path):
    from model.report import write_report

    scores = np.linspace(0, 1, 10)
    result = {
        "model": bilstm_model,
        "data": "x",
        "n": 10,
        "threshold": 0.5,
        "accuracy": 0.5,
        "scores": scores,
        "labels": np.ones(10),
        "similarity": None,
    }
    figures = write_report(result, str(tmp_path))
    assert set(figures) == {"score_histogram", "confusion_matrix"}
    assert "Only one class" in (tmp_path / "report.html").read_text()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium here: `make browser` installs it")
def test_report_renders_in_headless_chromium(tmp_path):
    """Every embedded figure decodes in a real browser, offline, at its full size."""
    from model.report import write_report

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    similarity = labels * 3 + rng.uniform(0, 2, 200)
    result = {
        "model": "m", "data": "d.parquet", "n": 200, "threshold": 0.5, "accuracy": 0.8,
        "spearman": 0.7, "scores": np.clip(labels * 0.5 + rng.uniform(0, 0.5, 200), 0, 1),
        "labels": labels, "similarity": similarity,
    }
    out = tmp_path / "report"
    figures = write_report(result, str(out))
    # The page, plus a probe that writes what the browser decoded into the title.
    probe = tmp_path / "probe.html"
    probe.write_text(
        (out / "report.html").read_text(encoding="utf-8")
        + "<script>window.addEventListener('load', () => { document.title = 'decoded ' + "
        "[...document.images].map(i => i.closest('figure').id + '=' + i.naturalWidth + 'x'"
        " + i.naturalHeight).join(' '); });</script>",
        encoding="utf-8",
    )
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    title = re.search(r"<title>decoded ([^<]*)</title>", dom)
    assert title, f"the page did not finish loading in chromium:\n{dom[:500]}"
    decoded = dict(item.split("=") for item in title.group(1).split())
    assert set(decoded) == set(figures) == BINARY | GRADED
    for name, size in decoded.items():
        width, height = (int(v) for v in size.split("x"))
        png = (out / f"{name}.png").read_bytes()
        # The PNG header's own size: the browser decoded the whole image.
        assert (width, height) == (int.from_bytes(png[16:20]), int.from_bytes(png[20:24]))
        assert width > 100 and height > 100
