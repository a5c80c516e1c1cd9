"""`pairscore evaluate --report OUT`: a self-contained HTML page and the PNG figures."""

import base64
import html.parser
import json

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
        self._figure = self._cell = None
        self._row: list[str] = []

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
        elif tag == "tr":
            self._row = []

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("th", "td") and self._cell is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        elif tag == "tr" and len(self._row) == 2:
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
    assert set(page.figures) == GRADED
    assert (out / "score_vs_similarity.png").read_bytes().startswith(PNG_MAGIC)
    assert float(page.rows["spearman"]) == pytest.approx(printed["spearman"], abs=1e-4)
    assert "accuracy" not in page.rows


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
