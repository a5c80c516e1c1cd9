"""The nightly run report, OUT/report.html (`pipeline.report`): one self-contained page
from summary.json. The tests build summaries with varied values, parse the page and
check each section shows the summary's figures."""

import base64
import html.parser
import random
import re
import shlex
import subprocess

import pytest

from pipeline import report
from tests.test_report import CHROMIUM, PNG_MAGIC
from tests.test_storage import _fresh_filesystems, gcs, s3  # noqa: F401  (fixtures)

STUB_PNG = PNG_MAGIC + b"stub"
EDGES = [round(i * 0.05, 2) for i in range(21)]
GATES = {
    "max_score_psi": "--max-score-psi",
    "max_duplicate_rate_change": "--max-duplicate-rate-change",
    "max_reject_rate": "--max-reject-rate",
    "min_canary_accuracy": "--min-canary-accuracy",
}


@pytest.fixture
def drawn(monkeypatch):
    """Skip matplotlib (about 0.4 s a figure) in the tests of the page's text: record what
    each figure would draw, embed a stub PNG. test_page_is_self_contained and the browser
    test draw the real figures."""
    calls = []

    def record(edges, histograms, threshold, ylabel, title):
        calls.append({"edges": edges, "histograms": histograms, "threshold": threshold,
                      "ylabel": ylabel})
        return STUB_PNG, False

    monkeypatch.setattr(report, "_histogram_png", record)
    return calls


class _Page(html.parser.HTMLParser):
    """Figures (id -> PNG bytes), tables (id -> rows of cell texts), the text of every
    element with an id, the title, and any reference to a resource outside the page."""

    def __init__(self):
        super().__init__()
        self.figures, self.tables, self.texts = {}, {}, {}
        self.external, self.scripts, self.title = [], 0, ""
        self._figure = self._table = self._cell = None
        self._row: list[str] = []
        self._open: list[tuple[str, str | None]] = []  # (tag, id) of open elements
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("src", "href"):
            if re.match(r"\s*(https?:)?//", attrs.get(name) or ""):
                self.external.append(attrs[name])
        if tag == "script":
            self.scripts += 1
        elif tag in ("link", "iframe", "object", "embed"):
            self.external.append(f"<{tag}>")
        elif tag == "title":
            self._in_title = True
        elif tag == "figure":
            self._figure = attrs.get("id")
        elif tag == "img":
            src = attrs.get("src", "")
            prefix = "data:image/png;base64,"
            if src.startswith(prefix):
                self.figures[self._figure] = base64.b64decode(src[len(prefix):])
            else:
                self.external.append(src)
        elif tag == "table":
            self._table = attrs.get("id")
            self.tables[self._table] = []
        elif tag == "tr":
            self._row = []
        elif tag in ("th", "td"):
            self._cell = ""
        if tag not in ("img", "meta", "br"):
            self._open.append((tag, attrs.get("id")))
            if attrs.get("id"):
                self.texts[attrs["id"]] = ""

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        if self._cell is not None:
            self._cell += data
        for _, element in self._open:
            if element:
                self.texts[element] += data

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        elif tag in ("th", "td") and self._cell is not None:
            self._row.append(" ".join(self._cell.split()))
            self._cell = None
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append(self._row)
        elif tag == "table":
            self._table = None
        elif tag == "figure":
            self._figure = None
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def rows(self, table: str) -> dict[str, list[str]]:
        """A table as {first cell: the other cells}."""
        return {row[0]: row[1:] for row in self.tables[table]}

    def text(self, element: str) -> str:
        return " ".join(self.texts[element].split())


def _parse(page: str) -> _Page:
    parsed = _Page()
    parsed.feed(page)
    parsed.close()
    return parsed


def _number(text: str) -> float:
    """'86,123' -> 86123; '0.49%' -> 0.0049; '+0.09 pp' -> 0.0009."""
    text = text.replace(",", "").strip()
    if text.endswith("%"):
        return float(text[:-1]) / 100
    if text.endswith(" pp"):
        return float(text[:-3]) / 100
    return float(text)


def _histogram(rng: random.Random, total: int) -> list[int]:
    """`total` pairs over 20 bins, most near 0 as in a real night."""
    weights = [rng.uniform(0.5, 1.5) * 0.6 ** i for i in range(20)]
    counts = [int(total * w / sum(weights)) for w in weights]
    counts[0] += total - sum(counts)
    return counts


def _summary(seed: int, **changes) -> dict:
    """A full summary with every optional section, values drawn from `seed`."""
    rng = random.Random(seed)
    rows = [rng.randint(1_000, 90_000) for _ in range(rng.randint(1, 4))]
    rows_in = sum(rows)
    reasons = {r: rng.randint(1, 50) for r in rng.sample(
        ["null_text", "empty_text", "no_tokens", "model_error", "null_id"], 3)}
    rejected = sum(reasons.values())
    scored = rows_in - rejected
    duplicates = rng.randint(0, scored // 10)
    threshold = round(rng.uniform(0.3, 0.9), 3)
    then_rate, then_reject = rng.uniform(0.001, 0.1), rng.uniform(0, 0.01)
    gates = []
    for name in rng.sample(sorted(GATES), 2):
        limit = round(rng.uniform(0.01, 0.9), 3)
        value = round(rng.uniform(0, 1), 4)
        tripped = value < limit if name.startswith("min_") else value > limit
        gates.append({"gate": name, "flag": GATES[name], "limit": limit, "value": value,
                      "tripped": tripped})
    summary = {
        "run_id": f"20240{seed}01T020000Z-{seed:04x}",
        "rows_in": rows_in,
        "scored": scored,
        "rejected": rejected,
        "rejected_by_reason": reasons,
        "duplicates": duplicates,
        "threshold": threshold,
        "model": f"gs://models-{seed}/siamese",
        "model_fingerprint": f"sha256:{seed:064x}",
        "runner": rng.choice(["DirectRunner", "DataflowRunner"]),
        "mode": "unique",
        "unique_join": rng.choice(["side_input", "cogroup"]),
        "elapsed_s": round(rng.uniform(10, 9000), 1),
        "pairs_per_s": round(rng.uniform(10, 5000), 1),
        "input_files": [{"path": f"gs://in-{seed}/part-{i}.parquet", "rows": n}
                        for i, n in enumerate(rows)],
        "status": "gated" if any(g["tripped"] for g in gates) else "published",
        "error": None,
        "groups": {"groups": rng.randint(1, 99), "records": rng.randint(100, 999),
                   "largest": {"group_id": f"g{seed}", "size": rng.randint(3, 50)},
                   "size_histogram": {"2": rng.randint(1, 9), "3-4": rng.randint(1, 9)},
                   "over_max_group_size": rng.randint(0, 3),
                   "new_groups": rng.randint(0, 50), "merges": rng.randint(0, 9),
                   "groups_from": rng.choice([None, f"gs://out-{seed}/yesterday"]),
                   "path": rng.choice(["one-worker", "distributed"]),
                   "rounds": rng.randint(0, 12), "last_group_id": rng.randint(100, 999)},
        "model_errors": reasons.get("model_error", 0),
        "scores": {"edges": EDGES, "counts": _histogram(rng, scored)},
        "duplicate_rate": duplicates / scored,
        "reject_rate": rejected / rows_in,
        "baseline": {
            "output": f"gs://out-{seed}/night-before",
            "run_id": f"prev-{seed}",
            "scores": {"edges": EDGES, "counts": _histogram(rng, rng.randint(1000, 9999))},
            "duplicate_rate": then_rate,
            "reject_rate": then_reject,
            "score_psi": round(rng.uniform(0, 0.5), 4),
            "duplicate_rate_change": duplicates / scored - then_rate,
            "reject_rate_change": rejected / rows_in - then_reject,
        },
        "gates": gates,
        "canaries": {"file": f"gs://canaries-{seed}/known.parquet", "pairs": 200,
                     "scored": rng.randint(150, 200), "accuracy": rng.uniform(0.5, 1),
                     "f1": rng.uniform(0.5, 1), "precision": rng.uniform(0.5, 1),
                     "recall": rng.uniform(0.5, 1), "threshold": threshold},
        "review": {"pairs": rng.randint(1, 500), "path": f"gs://out-{seed}/review/"},
        "store": {"uri": f"gs://store-{seed}", "fingerprint": "f",
                  "texts_found": rng.randint(0, 5000), "texts_encoded": rng.randint(1, 5000),
                  "generation_written": 2, "entries_read": 10},
    }
    summary.update(changes)
    return summary


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_section_shows_the_summary(seed, drawn):
    s = _summary(seed)
    page = _parse(report.render(s))
    assert page.title == f"pairscore run {s['run_id']}: {s['status']}"

    figures = page.rows("figures")
    assert _number(figures["rows in"][0]) == s["rows_in"]
    assert _number(figures["scored"][0]) == s["scored"]
    rejected, share = re.fullmatch(r"([\d,]+) \((\S+) of rows in\)",
                                   figures["rejected"][0]).groups()
    assert _number(rejected) == s["rejected"]
    assert _number(share) == pytest.approx(s["reject_rate"], abs=5e-5)
    duplicates, rate = re.fullmatch(r"([\d,]+) \((\S+) of scored\)",
                                    figures["duplicates"][0]).groups()
    assert _number(duplicates) == s["duplicates"]
    assert _number(rate) == pytest.approx(s["duplicate_rate"], abs=5e-5)
    assert _number(figures["threshold"][0]) == pytest.approx(s["threshold"], abs=5e-5)
    assert figures["mode"] == [f"unique (join: {s['unique_join']})"]
    found, encoded = s["store"]["texts_found"], s["store"]["texts_encoded"]
    hits = re.fullmatch(r"([\d,]+) of ([\d,]+) texts \((\S+)\)", figures["store hits"][0])
    assert [_number(hits[1]), _number(hits[2])] == [found, found + encoded]
    assert _number(hits[3]) == pytest.approx(found / (found + encoded), abs=5e-5)
    assert _number(figures["throughput"][0].removesuffix(" pairs/s")) == pytest.approx(
        s["pairs_per_s"], abs=0.05)
    assert _number(figures["elapsed"][0].split(" s ")[0]) == pytest.approx(s["elapsed_s"])
    assert figures["model"] == [s["model"]]
    assert figures["model fingerprint"] == [s["model_fingerprint"]]
    assert figures["run id"] == [s["run_id"]]
    assert figures["runner"] == [s["runner"]]

    # The histogram of counts, and the overlay of proportions (nights differ in size),
    # both over the fixed bins with the threshold marked; the pairs per bin beside them.
    assert set(page.figures) == {"score_histogram", "score_vs_baseline"}
    counts, then = s["scores"]["counts"], s["baseline"]["scores"]["counts"]
    histogram, overlay = drawn
    assert histogram["edges"] == overlay["edges"] == EDGES
    assert histogram["threshold"] == overlay["threshold"] == s["threshold"]
    assert [values for values, _, _ in histogram["histograms"]] == [counts]
    (now_shares, _, _), (then_shares, label, _) = overlay["histograms"]
    assert now_shares == pytest.approx([c / sum(counts) for c in counts])
    assert then_shares == pytest.approx([c / sum(then) for c in then])
    assert s["baseline"]["run_id"] in label
    bins = page.tables["score_bins"]
    assert bins[0] == ["score bin", "pairs", "share", "baseline share"]
    assert [_number(row[1]) for row in bins[1:]] == counts
    for row, n in zip(bins[1:], then):
        assert _number(row[3]) == pytest.approx(n / sum(then), abs=5e-5)
    assert bins[1][0] == "0.00–0.05" and bins[-1][0] == "0.95–1.00"

    baseline = page.rows("baseline")
    b = s["baseline"]
    assert _number(baseline["score PSI"][2]) == pytest.approx(b["score_psi"], abs=5e-5)
    for name, key in (("duplicate rate", "duplicate"), ("reject rate", "reject")):
        then_cell, now_cell, change_cell = baseline[name]
        assert _number(then_cell) == pytest.approx(b[f"{key}_rate"], abs=5e-5)
        assert _number(now_cell) == pytest.approx(s[f"{key}_rate"], abs=5e-5)
        assert _number(change_cell) == pytest.approx(b[f"{key}_rate_change"], abs=5e-5)
    assert b["run_id"] in page.text("baseline-section")
    assert b["output"] in page.text("baseline-section")

    gates = page.rows("gates")
    assert len(gates) == 1 + len(s["gates"])
    for gate in s["gates"]:
        flag, limit, value, result = gates[gate["gate"]]
        assert flag == gate["flag"]
        assert _number(limit) == pytest.approx(gate["limit"], abs=5e-5)
        assert _number(value) == pytest.approx(gate["value"], abs=5e-5)
        assert result == ("tripped" if gate["tripped"] else "passed")

    rejects = page.rows("rejects")
    assert {r: _number(v[0]) for r, v in rejects.items() if r != "reason"} == \
        s["rejected_by_reason"]
    for reason, n in s["rejected_by_reason"].items():
        assert _number(rejects[reason][1]) == pytest.approx(n / s["rows_in"], abs=5e-5)

    canaries = page.rows("canaries")
    assert canaries["file"] == [s["canaries"]["file"]]
    for key, name in (("pairs", "pairs"), ("scored", "scored"), ("accuracy", "accuracy"),
                      ("f1", "F1"), ("precision", "precision"), ("recall", "recall"),
                      ("threshold", "threshold")):
        assert _number(canaries[name][0]) == pytest.approx(s["canaries"][key], abs=5e-5)

    inputs = page.tables["inputs"]
    assert inputs[1:-1] == [[f["path"], f"{f['rows']:,}"] for f in s["input_files"]]
    assert inputs[-1] == [f"{len(s['input_files'])} files", f"{s['rows_in']:,}"]

    assert _number(page.text("review-pairs")) == s["review"]["pairs"]
    assert page.tables["review"] == [[s["review"]["path"]]]

    groups = page.rows("groups")
    g = s["groups"]
    assert _number(groups["groups"][0]) == g["groups"]
    assert _number(groups["records in groups"][0]) == g["records"]
    assert groups["largest group"] == [f"{g['largest']['group_id']} "
                                       f"({g['largest']['size']} records)"]
    assert _number(groups["over --max-group-size"][0]) == g["over_max_group_size"]
    assert _number(groups["new groups tonight"][0]) == g["new_groups"]
    assert _number(groups["merges tonight"][0]) == g["merges"]
    assert groups["carried from"] == [g["groups_from"] or "none (groups start over)"]
    assert groups["path"] == [f"{g['path']}, {g['rounds']} rounds"]
    assert {k: _number(v[0]) for k, v in page.rows("group_sizes").items()
            if k != "group size"} == g["size_histogram"]


def test_sections_come_in_order(drawn):
    page = report.render(_summary(4))
    order = ["status", "figures-section", "scores-section", "baseline-section",
             "gates-section", "rejects-section", "canaries-section", "inputs-section",
             "review-section", "groups-section"]
    positions = [page.index(f'id="{name}"') for name in order]
    assert positions == sorted(positions)


def _gated(seed=5, **changes):
    gates = [
        {"gate": "max_score_psi", "flag": "--max-score-psi", "limit": 0.2, "value": 0.3125,
         "tripped": True},
        {"gate": "min_canary_accuracy", "flag": "--min-canary-accuracy", "limit": 0.9,
         "value": 0.8125, "tripped": True},
        {"gate": "max_reject_rate", "flag": "--max-reject-rate", "limit": 0.05,
         "value": 0.0125, "tripped": False},
    ]
    return _summary(seed, status="gated", gates=gates, **changes)


def test_gated_banner_names_the_tripped_gates_and_the_accept_command(drawn):
    output = "gs://bucket/nightly/2024-05-01 run"
    page = _parse(report.render(_gated(), output))
    banner = page.text("status")
    assert banner.startswith("Gated")
    tripped = page.text("tripped")
    assert "max_score_psi (--max-score-psi): 0.3125 > limit 0.2000" in tripped
    assert "min_canary_accuracy (--min-canary-accuracy): 0.8125 < limit 0.9000" in tripped
    assert "max_reject_rate" not in tripped
    command = page.text("accept")
    assert shlex.split(command) == ["pairscore", "publish", output, "--accept"]
    # Without the output, the command names OUT for the reader to fill in.
    assert page.texts["accept"] != _parse(report.render(_gated())).texts["accept"]
    assert _parse(report.render(_gated())).text("accept") == "pairscore publish OUT --accept"


def test_published_and_withheld_banners(drawn):
    published = _parse(report.render(_summary(6, status="published", gates=[]),
                                     "gs://b/out"))
    banner = published.text("status")
    assert banner.startswith("Published")
    assert f"{_summary(6)['scored']:,} labels published in gs://b/out/labels/" in banner
    assert "accept" not in published.texts
    assert published.text("gates-section").endswith("No gate set.")

    error = "rows lost: rows_in 10 != scored 7 + rejected 2; <_SUCCESS> not written"
    withheld = _parse(report.render(_summary(6, status="withheld", error=error)))
    assert withheld.text("status").startswith("Withheld")
    assert withheld.text("error") == error
    assert "accept" not in withheld.texts


def test_page_is_self_contained():
    page_html = report.render(_gated())
    page = _parse(page_html)
    assert page.external == []
    assert page.scripts == 0
    assert set(page.figures) == {"score_histogram", "score_vs_baseline"}
    for png in page.figures.values():
        assert png.startswith(PNG_MAGIC)
        width, height = int.from_bytes(png[16:20]), int.from_bytes(png[20:24])
        assert width > 100 and height > 100
    assert "http://" not in page_html and "https://" not in page_html
    assert "<link" not in page_html and "@import" not in page_html
    # Most pairs score near 0: a linear axis would hide the tail past the threshold.
    assert "per score bin, the threshold dashed (log scale)" in page.text("scores-section")


def test_baseline_overlay_only_with_a_baseline(drawn):
    page = _parse(report.render(_summary(7, baseline=None)))
    assert set(page.figures) == {"score_histogram"}
    assert len(drawn) == 1
    assert "baseline" not in page.tables
    assert page.tables["score_bins"][0] == ["score bin", "pairs", "share"]
    assert page.text("baseline-section") == "Against the baseline No baseline: nothing to " \
                                            "compare with."
    with_baseline = _parse(report.render(_summary(7)))
    assert set(with_baseline.figures) == {"score_histogram", "score_vs_baseline"}
    assert len(drawn) == 3
    # A baseline that scored nothing has no proportions to draw.
    empty_then = _summary(7)
    empty_then["baseline"]["scores"]["counts"] = [0] * 20
    page = _parse(report.render(empty_then))
    assert set(page.figures) == {"score_histogram"}
    assert "The baseline has no scored pairs" in page.text("scores-section")
    # A baseline with its own bins is a bug upstream, not something to draw.
    broken = _summary(7)
    broken["baseline"]["scores"]["edges"] = [i / 10 for i in range(11)]
    with pytest.raises(ValueError, match="bins"):
        report.render(broken)


def test_every_string_is_escaped(drawn):
    evil = "gs://in/<script>alert(1)</script>&x.parquet"
    s = _summary(8, status="withheld", error="bad <b>row</b> & more",
                 input_files=[{"path": evil, "rows": 3}], model="m<i>",
                 rejected_by_reason={"<reason>": 1}, run_id="<run>")
    s["canaries"]["file"] = evil
    s["review"]["path"] = [evil, "gs://out/review/b.parquet"]
    s["gates"][0]["flag"] = "--x<y>"
    page_html = report.render(s, output="gs://out/<o>")
    page = _parse(page_html)
    assert "<script>" not in page_html and "<b>row" not in page_html
    assert "<i>" not in page_html and "<reason>" not in page_html and "<o>" not in page_html
    assert page.scripts == 0
    assert page.tables["inputs"][1] == [evil, "3"]
    assert page.rows("canaries")["file"] == [evil]
    assert page.tables["review"] == [[evil], ["gs://out/review/b.parquet"]]
    assert page.text("error") == "bad <b>row</b> & more"
    assert page.rows("figures")["model"] == ["m<i>"]
    assert page.title == "pairscore run <run>: withheld"
    assert "<reason>" in page.rows("rejects")


@pytest.mark.parametrize("scores", [{"edges": EDGES, "counts": [0] * 20}, None])
def test_zero_row_run_renders(scores, drawn):
    s = {"run_id": "empty", "rows_in": 0, "scored": 0, "rejected": 0, "rejected_by_reason": {},
         "duplicates": 0, "threshold": 0.5, "status": "published", "error": None,
         "scores": scores, "duplicate_rate": None, "reject_rate": None, "gates": [],
         "baseline": _summary(9)["baseline"], "canaries": None, "review": None,
         "groups": None, "input_files": [], "elapsed_s": 0.0, "pairs_per_s": 0.0}
    page = _parse(report.render(s))
    assert page.figures == {} and drawn == []
    assert "No scored pairs" in page.text("scores-section")
    figures = page.rows("figures")
    assert figures["rows in"] == ["0"]
    assert figures["duplicates"] == ["0 (n/a of scored)"]
    assert page.rows("baseline")["duplicate rate"][1] == "n/a"
    assert page.text("inputs-section").endswith("No input files listed.")


def test_old_or_empty_summary_renders(drawn):
    """A summary.json from before the new fields, and an empty one: every optional
    section says it is absent; the rates come from the counts."""
    old = {k: v for k, v in _summary(10).items()
           if k not in ("scores", "duplicate_rate", "reject_rate", "baseline", "gates",
                        "canaries", "review", "store", "groups")}
    page = _parse(report.render(old))
    assert page.figures == {} and drawn == []
    rate = re.search(r"\((\S+) of scored\)", page.rows("figures")["duplicates"][0])[1]
    assert _number(rate) == pytest.approx(old["duplicates"] / old["scored"], abs=5e-5)
    assert "store hits" not in page.rows("figures")
    assert "groups-section" not in page.texts
    for section in ("baseline", "gates", "canaries", "review"):
        assert section not in page.tables
    empty = _parse(report.render({}))
    assert empty.title == "pairscore run None: None"
    assert empty.rows("figures")["rows in"] == ["n/a"]
    assert empty.rows("figures")["model"] == ["n/a"]


def test_long_lists_are_cut(drawn):
    files = [{"path": f"in/part-{i:05d}.parquet", "rows": i} for i in range(250)]
    page = _parse(report.render(_summary(11, input_files=files)))
    inputs = page.tables["inputs"]
    assert len(inputs) == 1 + report.MAX_LISTED + 1
    assert inputs[-1] == ["250 files", f"{sum(range(250)):,}"]
    assert "and 150 more" in page.text("inputs-section")


def test_write_report_writes_the_page(tmp_path, drawn):
    s = _gated()
    out = tmp_path / "night"
    out.mkdir()
    path = report.write_report(str(out), s)
    assert path == str(out / report.REPORT)
    written = (out / "report.html").read_text(encoding="utf-8")
    strip = lambda page: re.sub(r"written [^<]*", "", page)  # noqa: E731
    assert strip(written) == strip(report.render(s, str(out)))
    assert _parse(written).text("accept") == f"pairscore publish {out} --accept"


def _write_to_bucket(bucket, monkeypatch):
    """Through Beam's FileSystems configured as in the job's final step (its options)."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    _fresh_filesystems(bucket, monkeypatch)
    FileSystems.set_options(PipelineOptions(bucket.flags()))
    s = _gated(12)
    output = f"{bucket.scheme}://pairscore-test/report-test"
    assert report.write_report(output, s) == f"{output}/report.html"
    page = _parse(bucket.get("report-test/report.html").decode("utf-8"))
    assert page.rows("figures")["run id"] == [s["run_id"]]
    assert page.text("accept") == f"pairscore publish {output} --accept"


def test_write_report_to_gcs(gcs, monkeypatch, drawn):  # noqa: F811
    _write_to_bucket(gcs, monkeypatch)


@pytest.mark.slow  # moto's server takes some seconds to start
def test_write_report_to_s3(s3, monkeypatch, drawn):  # noqa: F811
    _write_to_bucket(s3, monkeypatch)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium here: `make browser` installs it")
def test_report_renders_in_headless_chromium(tmp_path):
    """The page loads offline in a real browser, and both figures decode at full size."""
    page = report.render(_gated())
    probe = tmp_path / "probe.html"
    probe.write_text(
        page + "<script>window.addEventListener('load', () => { document.title = "
        "'decoded ' + [...document.images].map(i => i.closest('figure').id + '=' + "
        "i.naturalWidth + 'x' + i.naturalHeight).join(' ') + ' | ' + "
        "document.querySelector('h1').textContent; });</script>",
        encoding="utf-8",
    )
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
         probe.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    title = re.search(r"<title>decoded ([^<|]*) \| ([^<]*)</title>", dom)
    assert title, f"the page did not finish loading in chromium:\n{dom[:500]}"
    assert title.group(2) == f"pairscore run {_gated()['run_id']}: gated"
    decoded = dict(item.split("=") for item in title.group(1).split())
    pngs = _parse(page).figures
    assert set(decoded) == set(pngs) == {"score_histogram", "score_vs_baseline"}
    for name, size in decoded.items():
        width, height = (int(v) for v in size.split("x"))
        png = pngs[name]
        assert (width, height) == (int.from_bytes(png[16:20]), int.from_bytes(png[20:24]))
        assert width > 100 and height > 100
