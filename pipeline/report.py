"""The nightly run report: OUT/report.html, one self-contained page from summary.json.

The page answers "did last night look like the nights before?": a status banner
(published, gated with the gate that tripped and the command that publishes after review,
or withheld with the error), the key figures, the score histogram (threshold marked) and,
with a baseline, its histogram overlaid as proportions, the baseline comparison, the
gates, rejects by reason, canaries, input files, review pairs, groups and, once
`pairscore estimate` ran, the precision and recall people measured. Every image is
an inline PNG (data: URI) and there is no external CSS or JS, so the file can be mailed.

`render` builds the page and raises on a summary it cannot read: the caller (the job's
final step) decides whether a report failure matters. Every section copes with its part
of the summary being absent (None or a missing key), and a zero-row run renders.
"""

from __future__ import annotations

import datetime
import html
import io
import shlex

from model.report import STYLE, _figure_block, _fmt, _pyplot, _save
from model.storage import join
from pipeline.io import REPORT, write_text

# A page must stay small enough to open: longer lists are cut, summary.json has them all.
MAX_LISTED = 100

_PAGE_STYLE = STYLE + """\
.banner { padding: 0.8em 1.2em; margin-bottom: 1.5em; border-radius: 4px;
  border: 2px solid; }
.banner.published { background: #e8f5e9; border-color: #2e7d32; }
.banner.gated { background: #fff8e1; border-color: #f9a825; }
.banner.withheld, .banner.unknown { background: #ffebee; border-color: #c62828; }
.banner h2 { margin: 0 0 0.3em 0; }
td.tripped { color: #c62828; font-weight: bold; }
td.passed { color: #2e7d32; }
td.num, th.num { text-align: right; }
pre { background: #f5f5f5; padding: 0.5em; white-space: pre-wrap; }
"""

# A gate named min_* trips below its limit, the others (max_*) above.
_MIN_GATE_PREFIX = "min_"


def _e(value) -> str:
    return html.escape(str(value))


def _code(value) -> str:
    return "n/a" if value is None else f"<code>{_e(value)}</code>"


def _count(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}"
    return _fmt(value)


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _pp(value) -> str:
    """A change of rates, in percentage points."""
    return "n/a" if value is None else f"{100 * value:+.2f} pp"


def _rate(summary: dict, key: str, numerator: str, denominator: str):
    """`key` from the summary; from the counts for a summary written before it existed."""
    if key in summary:
        return summary[key]
    n, d = summary.get(numerator), summary.get(denominator)
    return n / d if n is not None and d else None


def _duration(seconds) -> str:
    if seconds is None:
        return "n/a"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    clock = f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"
    return f"{seconds:,.1f} s ({clock})"


def _table(table_id: str, head: list[str] | None, rows: list[list[str]]) -> str:
    """A table; the cells are HTML already (escape them before), a cell may be
    (html, css class)."""

    def cell(tag, value):
        if isinstance(value, tuple):
            return f"<{tag} class={value[1]}>{value[0]}</{tag}>"
        return f"<{tag}>{value}</{tag}>"

    lines = []
    if head:
        lines.append("<tr>" + "".join(cell("th", h) for h in head) + "</tr>")
    for row in rows:
        lines.append("<tr>" + cell("th", row[0]) + "".join(cell("td", v) for v in row[1:])
                     + "</tr>")
    return f'<table id="{table_id}">\n' + "\n".join(lines) + "\n</table>"


def _section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{section_id}-section">\n<h2>{_e(title)}</h2>\n{body}\n</section>'


def _note(text: str) -> str:
    return f"<p class=note>{_e(text)}</p>"


def _trip_sentence(gate: dict) -> str:
    """A tripped gate: 'max_score_psi (--max-score-psi): 0.3100 > limit 0.2000', as HTML."""
    name = gate.get("gate")
    value, limit = gate.get("value"), gate.get("limit")
    low = str(name).startswith(_MIN_GATE_PREFIX)
    if value is None:
        compared = f"no value (limit {_fmt(limit)})"
    else:
        compared = f"{_fmt(value)} {'<' if low else '>'} limit {_fmt(limit)}"
    flag = f" (<code>{_e(gate['flag'])}</code>)" if gate.get("flag") else ""
    return f"<code>{_e(name)}</code>{flag}: {compared}"


def _banner(summary: dict, output: str | None) -> str:
    status = summary.get("status")
    error = summary.get("error")
    kind = status if status in ("published", "gated", "withheld") else "unknown"
    parts = []
    if status == "published":
        parts.append("<h2>Published</h2>")
        where = f" in <code>{_e(join(output, 'labels'))}/</code>" if output else ""
        parts.append(f"<p>{_count(summary.get('scored'))} labels published{where}.</p>")
    elif status == "gated":
        parts.append("<h2>Gated: scored but not published</h2>")
        tripped = [g for g in summary.get("gates") or [] if g.get("tripped")]
        if tripped:
            items = "".join(f"<li>{_trip_sentence(g)}</li>" for g in tripped)
            parts.append(f"<p>Tripped:</p><ul id=tripped>{items}</ul>")
        else:
            parts.append("<p>No tripped gate is recorded in the summary.</p>")
        command = f"pairscore publish {shlex.quote(output) if output else 'OUT'} --accept"
        parts.append(
            "<p>After review (the histogram, the baseline comparison and the review pairs "
            f"below), publish with:</p><pre id=accept>{_e(command)}</pre>"
        )
    elif status == "withheld":
        parts.append("<h2>Withheld: nothing published</h2>")
    else:
        parts.append(f"<h2>Status: {_e(status)}</h2>")
    if error is not None:
        parts.append(f"<p>Error:</p><pre id=error>{_e(error)}</pre>")
    return f'<div id="status" class="banner {kind}">\n' + "\n".join(parts) + "\n</div>"


def _key_figures(summary: dict) -> str:
    rows = [
        ["rows in", _count(summary.get("rows_in"))],
        ["scored", _count(summary.get("scored"))],
        ["rejected", f"{_count(summary.get('rejected'))} "
                     f"({_pct(_rate(summary, 'reject_rate', 'rejected', 'rows_in'))} of rows in)"],
        ["duplicates", f"{_count(summary.get('duplicates'))} "
                       f"({_pct(_rate(summary, 'duplicate_rate', 'duplicates', 'scored'))} "
                       "of scored)"],
        ["threshold", _fmt(summary.get("threshold"))],
    ]
    mode = summary.get("mode")
    if mode == "unique" and summary.get("unique_join"):
        rows.append(["mode", f"{_e(mode)} (join: {_e(summary['unique_join'])})"])
    else:
        rows.append(["mode", _fmt(mode)])
    store = summary.get("store")
    if store:
        found, encoded = store.get("texts_found") or 0, store.get("texts_encoded") or 0
        share = _pct(found / (found + encoded)) if found + encoded else "n/a"
        rows.append(["store hits",
                     f"{_count(found)} of {_count(found + encoded)} texts ({share})"])
        rows.append(["store", _code(store.get("uri"))])
    if summary.get("model_errors") is not None:
        rows.append(["model errors", _count(summary["model_errors"])])
    pairs_per_s = summary.get("pairs_per_s")
    rows += [
        ["throughput", "n/a" if pairs_per_s is None else f"{pairs_per_s:,.1f} pairs/s"],
        ["elapsed", _duration(summary.get("elapsed_s"))],
        ["model", _code(summary.get("model"))],
        ["model fingerprint", _code(summary.get("model_fingerprint"))],
        ["run id", _code(summary.get("run_id"))],
        ["runner", _fmt(summary.get("runner"))],
    ]
    return _section("figures", "Key figures", _table("figures", None, rows))


def _has_counts(histogram) -> bool:
    return bool(histogram) and sum(histogram.get("counts") or []) > 0


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    _save(fig, buffer)
    return buffer.getvalue()


def _log_scale(*histograms) -> bool:
    """A log y axis when the nonzero bins span more than 100x: most candidate pairs score
    near 0, and on a linear axis the tail past the threshold would not show."""
    nonzero = [v for values in histograms for v in values if v > 0]
    return max(nonzero) > 100 * min(nonzero)


def _histogram_png(edges, histograms, threshold, ylabel, title) -> tuple[bytes, bool]:
    """Stairs of each (values, label, filled) over the fixed bins, the threshold dashed.
    Returns (PNG, whether the y axis is log)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for i, (values, label, filled) in enumerate(histograms):
        if filled:
            ax.stairs(values, edges, fill=True, alpha=0.6, color=f"C{i}", label=label)
        else:
            ax.stairs(values, edges, lw=2, color=f"C{i}", label=label)
    if threshold is not None:
        ax.axvline(threshold, color="C3", ls="--", lw=2, label=f"threshold {threshold:.3f}")
    log = _log_scale(*(values for values, _, _ in histograms))
    if log:
        ax.set_yscale("log")
    ax.set(xlabel="Score", ylabel=ylabel + (" (log scale)" if log else ""),
           xlim=(edges[0], edges[-1]), title=title)
    ax.legend(loc="upper right")
    return _png(fig), log


def _shares(counts) -> list[float]:
    total = sum(counts)
    return [c / total for c in counts] if total else [0.0] * len(counts)


def _bins_table(edges, counts, then_hist) -> str:
    """The pairs per bin (and the baseline's share) as numbers, folded away."""
    with_then = bool(then_hist and then_hist.get("counts"))
    head = ["score bin", "pairs", "share"] + (["baseline share"] if with_then else [])
    shares = _shares(counts)
    then_shares = _shares(then_hist["counts"]) if with_then else []
    rows = []
    for i, count in enumerate(counts):
        row = [f"{edges[i]:.2f}–{edges[i + 1]:.2f}", (_count(count), "num"),
               (_pct(shares[i]), "num")]
        if with_then:
            row.append((_pct(then_shares[i]), "num"))
        rows.append(row)
    return ("<details><summary>Pairs per bin</summary>" + _table("score_bins", head, rows)
            + "</details>")


def _scores(summary: dict) -> str:
    histogram = summary.get("scores")
    baseline = summary.get("baseline") or {}
    then_hist = baseline.get("scores")
    threshold = summary.get("threshold")
    body = []
    if not _has_counts(histogram):
        body.append(_note("No scored pairs: no score histogram."))
    else:
        edges, counts = histogram["edges"], histogram["counts"]
        png, log = _histogram_png(edges, [(counts, f"pairs (n={sum(counts):,})", True)],
                                  threshold, "Pairs", "Scores of this run's pairs")
        caption = "Scored pairs per score bin, the threshold dashed" + (
            " (log scale)" if log else "")
        body.append(_figure_block("score_histogram", caption, png))
        if _has_counts(then_hist):
            if list(then_hist["edges"]) != list(edges):
                raise ValueError(f"baseline score bins {then_hist['edges']} differ from "
                                 f"this run's {edges}")
            # Proportions, not counts: nights differ in size.
            png, log = _histogram_png(
                edges,
                [(_shares(counts), "this run", True),
                 (_shares(then_hist["counts"]), f"baseline {baseline.get('run_id')}", False)],
                threshold, "Share of scored pairs", "Scores: this run against the baseline")
            body.append(_figure_block(
                "score_vs_baseline",
                "Share of scored pairs per bin: this run (filled) and the baseline (line)"
                + (" (log scale)" if log else ""),
                png))
        elif baseline:
            body.append(_note("The baseline has no scored pairs: no overlay."))
        body.append(_bins_table(edges, counts, then_hist))
    return _section("scores", "Score histogram", "\n".join(body))


def _baseline(summary: dict) -> str:
    baseline = summary.get("baseline")
    if not baseline:
        return _section("baseline", "Against the baseline",
                        "<p>No baseline: nothing to compare with.</p>")
    meta = (f"<p class=meta>baseline run <code>{_e(baseline.get('run_id'))}</code> in "
            f"<code>{_e(baseline.get('output'))}</code></p>")
    rows = [
        ["score PSI", "", "", (_fmt(baseline.get("score_psi")), "num")],
        ["duplicate rate", (_pct(baseline.get("duplicate_rate")), "num"),
         (_pct(_rate(summary, "duplicate_rate", "duplicates", "scored")), "num"),
         (_pp(baseline.get("duplicate_rate_change")), "num")],
        ["reject rate", (_pct(baseline.get("reject_rate")), "num"),
         (_pct(_rate(summary, "reject_rate", "rejected", "rows_in")), "num"),
         (_pp(baseline.get("reject_rate_change")), "num")],
    ]
    table = _table("baseline", ["", "baseline", "this run", "change"], rows)
    hint = ("<p class=meta>PSI (population stability index) of the score histograms: "
            "below 0.1 little change, 0.1 to 0.25 some, above 0.25 a large shift.</p>")
    return _section("baseline", "Against the baseline", meta + table + hint)


def _gates(summary: dict) -> str:
    gates = summary.get("gates") or []
    if not gates:
        return _section("gates", "Gates", "<p>No gate set.</p>")
    rows = [
        [_code(g.get("gate")), _code(g.get("flag")),
         (_fmt(g.get("limit")), "num"), (_fmt(g.get("value")), "num"),
         ("tripped", "tripped") if g.get("tripped") else ("passed", "passed")]
        for g in gates
    ]
    return _section("gates", "Gates",
                    _table("gates", ["gate", "flag", "limit", "value", "result"], rows))


def _rejects(summary: dict) -> str:
    reasons = summary.get("rejected_by_reason") or {}
    if not reasons:
        return _section("rejects", "Rejects by reason", "<p>No rejected rows.</p>")
    rows_in = summary.get("rows_in")
    rows = [
        [_code(reason), (_count(n), "num"),
         (_pct(n / rows_in) if rows_in else "n/a", "num")]
        for reason, n in sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
    ]
    return _section("rejects", "Rejects by reason",
                    _table("rejects", ["reason", "rows", "share of rows in"], rows))


def _canaries(summary: dict) -> str:
    canaries = summary.get("canaries")
    if not canaries:
        return _section("canaries", "Canaries", "<p>No canary pairs in this run.</p>")
    rows = [
        ["file", _code(canaries.get("file"))],
        ["pairs", _count(canaries.get("pairs"))],
        ["scored", _count(canaries.get("scored"))],
        ["threshold", _fmt(canaries.get("threshold"))],
        ["accuracy", _fmt(canaries.get("accuracy"))],
        ["F1", _fmt(canaries.get("f1"))],
        ["precision", _fmt(canaries.get("precision"))],
        ["recall", _fmt(canaries.get("recall"))],
    ]
    return _section("canaries", "Canaries (known pairs, at the run threshold)",
                    _table("canaries", None, rows))


def _listed(items: list, row) -> tuple[list[list[str]], str]:
    """Rows for at most MAX_LISTED items, and a note on the rest."""
    rows = [row(item) for item in items[:MAX_LISTED]]
    rest = len(items) - MAX_LISTED
    note = _note(f"… and {rest:,} more (summary.json lists them all).") if rest > 0 else ""
    return rows, note


def _inputs(summary: dict) -> str:
    files = summary.get("input_files") or []
    if not files:
        return _section("inputs", "Input files", "<p>No input files listed.</p>")
    rows, rest = _listed(files, lambda f: [_code(f.get("path")),
                                           (_count(f.get("rows")), "num")])
    total = sum(f.get("rows") or 0 for f in files)
    rows.append([f"{len(files):,} files", (_count(total), "num")])
    return _section("inputs", "Input files",
                    _table("inputs", ["file", "rows"], rows) + rest)


def _review(summary: dict) -> str:
    review = summary.get("review")
    if not review:
        return _section("review", "Review pairs", "<p>No review pairs written.</p>")
    where = review.get("path")
    paths = where if isinstance(where, list) else [where] if where else []
    rows, rest = _listed(paths, lambda p: [_code(p)])
    body = (f"<p><span id=review-pairs>{_count(review.get('pairs'))}</span> pairs to "
            "review in:</p>" + _table("review", None, rows) + rest)
    return _section("review", "Review pairs", body)


def _groups(summary: dict) -> str:
    groups = summary.get("groups")
    if not groups:
        return ""
    largest = groups.get("largest") or {}
    rows = [
        ["groups", _count(groups.get("groups"))],
        ["records in groups", _count(groups.get("records"))],
        ["largest group", f"<code>{_e(largest.get('group_id'))}</code> "
                          f"({_count(largest.get('size'))} records)" if largest else "n/a"],
    ]
    if "over_max_group_size" in groups:
        rows.append(["over --max-group-size", _count(groups["over_max_group_size"])])
    if "path" in groups:
        rows += [["new groups tonight", _count(groups.get("new_groups"))],
                 ["merges tonight", _count(groups.get("merges"))],
                 ["carried from", _code(groups["groups_from"]) if groups.get("groups_from")
                  else "none (groups start over)"],
                 ["path", f"{_e(groups['path'])}, {_count(groups.get('rounds'))} rounds"]]
    body = _table("groups", None, rows)
    sizes = groups.get("size_histogram") or {}
    if sizes:
        body += _table("group_sizes", ["group size", "groups"],
                       [[_e(size), (_count(n), "num")] for size, n in sizes.items()])
    return _section("groups", "Groups", body)


def _rerank(summary: dict) -> str:
    """The cascade (--rerank-model): its second model, band and the pairs it re-scored."""
    rr = summary.get("rerank")
    if not rr:
        return ""
    share = rr.get("share")
    lo, hi = rr.get("band") or (None, None)
    rows = [
        ["cross-encoder", _code(rr.get("model"))],
        ["fingerprint", _code(rr.get("model_fingerprint"))],
        ["band (first-model score)", f"[{lo:.4f}, {hi:.4f}] ({_e(rr.get('band_source'))})"],
        ["its threshold", f"{rr.get('threshold'):.4f}"],
        ["pairs re-scored", f"<span id=rerank-pairs>{_count(rr.get('pairs'))}</span>"],
        ["share re-scored", "n/a" if share is None else f"{100 * share:.1f}%"],
    ]
    return _section("rerank", "Cascade: re-scored by the cross-encoder",
                    _table("rerank", None, rows))


def _interval(f: dict) -> str:
    if not f or f.get("estimate") is None:
        return "n/a" + (f" ({_e(f['why'])})" if f and f.get("why") else "")
    return f"{f['estimate']:.3f} [{f['low']:.3f}, {f['high']:.3f}]"


def _people(summary: dict) -> str:
    """`pairscore estimate`'s figures (summary["people"], pipeline/estimate.py), when it
    was run: precision and recall measured from people's labels of the night's sample."""
    people = summary.get("people")
    if not people:
        return ""
    level = f"{people.get('confidence', 0.95):.0%}"
    rows = [
        ["precision", f"<span id=people-precision>{_interval(people.get('precision'))}"
                      f"</span> ({level} interval)"],
        ["recall", f"<span id=people-recall>{_interval(people.get('recall'))}</span> "
                   f"({level} interval)"],
        ["threshold", _fmt(people.get("threshold"))],
        ["labels used", f"<span id=people-labels>{_count(people.get('labels'))}</span>"],
        ["unsure (left out)", _count(people.get("unsure"))],
        ["disagreements (left out)",
         f"<span id=people-disagreements>{_count(people.get('disagreements'))}</span>"],
        ["estimator", _e(people.get("estimator"))],
        ["interval", _e(people.get("interval"))],
    ]
    stop = people.get("stop")
    if stop:
        rows.append(["stop labelling", f"{'yes' if stop['stop'] else 'no'}: "
                                       f"{_e(stop['why'])}"])
    body = _table("people", None, rows)
    strata = people.get("by_stratum") or {}
    if strata:
        body += _table("people_strata", ["stratum", "pairs", "sampled", "labelled",
                                         "duplicates", "not", "unsure"],
                       [[_e(name), (_count(s.get("size")), "num"),
                         (_count(s.get("sampled")), "num"),
                         (_count(s.get("labelled")), "num"),
                         (_count(s.get("duplicates")), "num"),
                         (_count(s.get("not_duplicates")), "num"),
                         (_count(s.get("unsure")), "num")] for name, s in strata.items()])
    points = people.get("curve") or []
    if points:
        body += ("<p>At other thresholds, from the same labels (the strata stay the "
                 "night's, so far from its threshold the intervals widen):</p>"
                 + _table("people_curve", ["threshold", "precision", "recall"],
                          [[_fmt(c.get("threshold")), _interval(c.get("precision")),
                            _interval(c.get("recall"))] for c in points]))
    return _section("people", "Measured by people", body)


def render(summary: dict, output: str | None = None) -> str:
    """The whole self-contained page for a run's summary (summary.json's dict). `output`
    is the run's output, for the publish command of a gated run (OUT when not given)."""
    status = summary.get("status")
    title = f"pairscore run {summary.get('run_id')}: {status}"
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    where = f" of <code>{_e(output)}</code>" if output else ""
    sections = [
        _banner(summary, output),
        _key_figures(summary),
        _scores(summary),
        _baseline(summary),
        _gates(summary),
        _rejects(summary),
        _canaries(summary),
        _inputs(summary),
        _review(summary),
        _groups(summary),
        _rerank(summary),
        _people(summary),
    ]
    body = "\n".join(s for s in sections if s)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>
<style>
{_PAGE_STYLE}</style></head>
<body>
<h1>{_e(title)}</h1>
<p class=meta>run report{where}, written {now}</p>
{body}
</body></html>
"""


def write_report(output: str, summary: dict) -> str:
    """Render the page and write it to ``<output>/report.html`` (local, gs://, s3://);
    returns the path."""
    path = join(output, REPORT)
    write_text(path, render(summary, output))
    return path
