"""The review page: people label the night's sample (OUT/sample/) in a local page.

    pairscore review OUT --labels LABELS_URI [--labeller NAME] [--blind] [--port 8765]

Plain functions (the order pairs are shown in, what comes next for a labeller, back,
progress, the word diff of the two texts) and `create_app`, the Flask app serving the
page and its JSON API. Every label is saved when made, as its own file in the labels
dataset (`labels.save_labels`), before the page is told it is saved; what a labeller has
done is read back from the dataset on every request, so a restarted server, a reloaded
page and a second labeller all see what is on disk.
"""

from __future__ import annotations

import datetime
import difflib
import getpass
import hashlib
import io
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq

from model.storage import filesystems, join
from pipeline.io import JobError

SAMPLE = "sample"
DESIGN = "_design.json"
# Labels: 1 duplicate, 0 not a duplicate, None unsure (labels.LABEL_SCHEMA's int8).
LABEL_NAMES = {1: "duplicate", 0: "not a duplicate", None: "unsure"}
# The interval the page shows with tonight's precision estimate.
CONFIDENCE = 0.95
# A labeller's name is part of each label file's name.
LABELLER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# What the page may show of a pair; with --blind only what carries no hint of the model.
BLIND_FIELDS = ("pair_id", "text_a", "text_b")
SEEN_FIELDS = (*BLIND_FIELDS, "score", "is_duplicate", "stratum", "threshold")


def default_labeller() -> str:
    """The OS user, made a valid labeller name."""
    try:
        name = getpass.getuser()
    except Exception:  # noqa: BLE001  (no user name in this environment)
        name = "labeller"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip("._-")[:64]
    return name or "labeller"


def check_labeller(name: str) -> str:
    """`name` if it can be a labeller (letters, digits, . _ -; up to 64), else ValueError."""
    if not isinstance(name, str) or not LABELLER.match(name):
        raise ValueError(f"labeller {name!r} is not a valid name: use 1 to 64 letters, "
                         "digits, '.', '_' or '-', starting with a letter or digit")
    return name


def sample_key(run_id: str, pair_id: str) -> str:
    """The sample's keyed hash, sha256(run_id|pair_id): the order pairs are shown in."""
    return hashlib.sha256(f"{run_id}|{pair_id}".encode()).hexdigest()


def read_sample(out: str) -> tuple[pa.Table, dict]:
    """OUT/sample/*.parquet as one table in showing order, and OUT/sample/_design.json.

    The order is the sampling key's: within each stratum the sample is the pairs with
    the smallest keys, so the first k labelled of a stratum are themselves a simple
    random sample of it, and stopping early still leaves a stratified random sample."""
    fs = filesystems()
    where = join(out, SAMPLE)
    try:
        files = sorted(m.path for m in fs.match([join(where, "*.parquet")])[0].metadata_list)
    except Exception:  # noqa: BLE001  (no such directory)
        files = []
    if not files:
        raise JobError(f"{where} holds no sample (no *.parquet files): score with "
                       "--review-sample N (N > 0; the default is 300) to write one")
    design_path = join(where, DESIGN)
    if not fs.exists(design_path):
        raise JobError(f"{design_path} is missing: the sample's design comes with it")
    with fs.open(design_path) as f:
        design = json.loads(f.read())
    tables = []
    for path in files:
        with fs.open(path, compression_type="uncompressed") as f:
            tables.append(pq.read_table(io.BytesIO(f.read())))
    table = pa.concat_tables(tables, promote_options="default")
    missing = {"pair_id", "text_a", "text_b", "score", "run_id"} - set(table.column_names)
    if missing:
        raise JobError(f"{where}: the sample lacks column(s) {', '.join(sorted(missing))}")
    keys = [sample_key(r, p) for r, p in zip(table["run_id"].to_pylist(),
                                              table["pair_id"].to_pylist())]
    order = sorted(range(table.num_rows), key=keys.__getitem__)
    return table.take(pa.array(order, pa.int64())), design


def labelled_by(latest: pa.Table, labeller: str) -> dict[str, tuple]:
    """{pair_id: (label, labelled_at)} of one labeller, from `labels.latest(...)`."""
    if latest.num_rows == 0:
        return {}
    rows = latest.select(["pair_id", "label", "labeller", "labelled_at"]).to_pylist()
    return {r["pair_id"]: (r["label"], r["labelled_at"]) for r in rows
            if r["labeller"] == labeller}


def next_index(pair_ids: list[str], done: dict) -> int | None:
    """The first pair in showing order this labeller has not labelled, or None."""
    for i, pair_id in enumerate(pair_ids):
        if pair_id not in done:
            return i
    return None


def previous_pair(done: dict, current: str | None) -> str | None:
    """The pair to go back to: the one labelled last before `current` (this labeller's
    labels by time), or the last labelled when `current` is not labelled yet."""
    by_time = sorted(done, key=lambda p: (done[p][1], p))
    if current in done:
        by_time = by_time[:by_time.index(current)]
    return by_time[-1] if by_time else None


def progress(pair_ids: list[str], done: dict) -> dict:
    """A labeller's counts over the sample: labelled of sampled, and by label."""
    labels = [done[p][0] for p in pair_ids if p in done]
    return {
        "sampled": len(pair_ids),
        "labelled": len(labels),
        "duplicates": sum(1 for v in labels if v == 1),
        "not_duplicates": sum(1 for v in labels if v == 0),
        "unsure": sum(1 for v in labels if v is None),
        "remaining": len(pair_ids) - len(labels),
    }


_WORD = re.compile(r"\w+|[^\w\s]")


def _tokens(text: str) -> tuple[str, list[str]]:
    """(leading whitespace, words and punctuation each with the whitespace after it)."""
    starts = [m.start() for m in _WORD.finditer(text)]
    if not starts:
        return text, []
    ends = [*starts[1:], len(text)]
    return text[:starts[0]], [text[i:j] for i, j in zip(starts, ends)]


def word_diff(a: str, b: str) -> tuple[list[dict], list[dict]]:
    """The two texts as segments {"text", "op"}: op "equal", "delete" (in a only),
    "insert" (in b only) or "replace" (changed words, on both sides). Words and
    punctuation are compared, ignoring case; whitespace is kept as written."""
    (lead_a, ta), (lead_b, tb) = _tokens(a or ""), _tokens(b or "")
    left: list[dict] = []
    right: list[dict] = []

    def add(side, text, op):
        core = text.rstrip()
        for part, kind in ((core, op), (text[len(core):], "equal")):
            if not part:
                continue
            if side and side[-1]["op"] == kind:
                side[-1]["text"] += part
            else:
                side.append({"text": part, "op": kind})

    add(left, lead_a, "equal")
    add(right, lead_b, "equal")
    keys_a = [t.strip().lower() for t in ta]
    keys_b = [t.strip().lower() for t in tb]
    matcher = difflib.SequenceMatcher(None, keys_a, keys_b, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        add(left, "".join(ta[i1:i2]), op if op != "insert" else "equal")
        add(right, "".join(tb[j1:j2]), op if op != "delete" else "equal")
    return left, right


def label_row(pair: dict, label: int | None, labeller: str,
              now: datetime.datetime | None = None) -> pa.Table:
    """One label as a one-row table of the labels dataset (labels.LABEL_SCHEMA), with
    the pair's texts, score and design columns copied from the sample."""
    from model import labels

    if label not in LABEL_NAMES:
        raise ValueError(f"label {label!r}: use 1 (duplicate), 0 (not) or null (unsure)")
    now = now or datetime.datetime.now(datetime.UTC)
    row = {
        "pair_id": pair["pair_id"], "text_a": pair["text_a"], "text_b": pair["text_b"],
        "label": label, "labeller": labeller, "labelled_at": now,
        "run_id": pair.get("run_id"), "model_fingerprint": pair.get("model_fingerprint"),
        "score": pair.get("score"), "stratum": pair.get("stratum"),
        "inclusion_probability": pair.get("inclusion_probability"),
        "stratum_size": pair.get("stratum_size"),
        "stratum_low": pair.get("stratum_low"), "stratum_high": pair.get("stratum_high"),
    }
    schema = labels.LABEL_SCHEMA
    return pa.table({f.name: pa.array([row.get(f.name)], f.type) for f in schema},
                    schema=schema)


class Review:
    """The state behind the page: the sample (read once) and the labels dataset (read on
    every request, so what another server or labeller saved is seen)."""

    def __init__(self, out: str, labels_uri: str, blind: bool = False):
        self.out, self.labels_uri, self.blind = out, labels_uri, blind
        self.sample, self.design = read_sample(out)
        rows = self.sample.to_pylist()
        strata = self.design.get("strata", {})
        for r in rows:  # each label carries its stratum's score range (the design's)
            bounds = strata.get(r.get("stratum")) or {}
            r["stratum_low"], r["stratum_high"] = bounds.get("low"), bounds.get("high")
        self.pairs = {r["pair_id"]: r for r in rows}
        self.pair_ids = [r["pair_id"] for r in rows]
        self.run_id = rows[0]["run_id"] if rows else self.design.get("run_id")

    def _labels(self) -> pa.Table:
        """Every label of this run's sample, all labellers (a labels dataset may hold
        other nights' labels too)."""
        import pyarrow.compute as pc

        from model import labels

        table = labels.read_labels(self.labels_uri)
        return table.filter(pc.equal(table["run_id"], self.run_id))

    def done(self, labeller: str, table: pa.Table | None = None) -> dict:
        from model import labels

        table = self._labels() if table is None else table
        return labelled_by(labels.latest(table), labeller)

    def estimate(self, table: pa.Table) -> dict:
        """Tonight's precision so far, from every labeller's labels (estimate.estimate),
        and the stop rule's verdict, as the page shows them."""
        from model import labels
        from pipeline import estimate

        resolved, disagreements = labels.resolve(table)
        threshold = self.design.get("threshold", self.sample["threshold"][0].as_py())
        try:
            result = estimate.estimate(resolved, self.design, threshold, CONFIDENCE,
                                       disagreements)
        except estimate.EstimateError as e:
            return {"text": f"Tonight's precision: not yet ({e})", "stop": False}
        stop = estimate.stop_rule(result)
        p = result["precision"]
        if p.get("low") is None:
            text = f"Tonight's precision: not yet ({p.get('why')})"
        else:
            text = (f"Tonight's precision, from {result['labels']} labels of every labeller: "
                    f"{p['estimate']:.2f} [{p['low']:.2f}, {p['high']:.2f}] "
                    f"({CONFIDENCE:.0%} interval)")
        rule = f"Stop when the precision interval is narrower than {estimate.STOP_WIDTH:g}"
        verdict = "you can stop" if stop["stop"] else "not yet"
        return {"text": text, "stop_text": f"{rule}: {verdict} ({stop['why']})",
                "stop": stop["stop"], "labels": result["labels"],
                "precision": {k: p.get(k) for k in ("estimate", "low", "high")}}

    def state(self, labeller: str, pair_id: str | None, table: pa.Table) -> dict:
        done = self.done(labeller, table)
        pair = None if pair_id is None else self.show(pair_id, done)
        return {"pair": pair, "progress": progress(self.pair_ids, done),
                "estimate": self.estimate(table)}

    def show(self, pair_id: str, done: dict) -> dict:
        """What the page gets of a pair: texts, their diff, its current label (when
        labelled), and unless blind the model's score and stratum."""
        pair = self.pairs[pair_id]
        fields = BLIND_FIELDS if self.blind else SEEN_FIELDS
        shown = {k: pair.get(k) for k in fields if k in pair}
        shown["diff_a"], shown["diff_b"] = word_diff(pair["text_a"], pair["text_b"])
        shown["position"] = self.pair_ids.index(pair_id) + 1
        if pair_id in done:
            shown["label"] = done[pair_id][0]
        return shown

    def next(self, labeller: str) -> dict:
        table = self._labels()
        i = next_index(self.pair_ids, self.done(labeller, table))
        return self.state(labeller, None if i is None else self.pair_ids[i], table)

    def back(self, labeller: str, current: str | None) -> dict:
        table = self._labels()
        return self.state(labeller, previous_pair(self.done(labeller, table), current), table)

    def label(self, labeller: str, pair_id: str, label: int | None) -> dict:
        from model import labels

        if pair_id not in self.pairs:
            raise ValueError(f"pair_id {pair_id!r} is not in {join(self.out, SAMPLE)}")
        path = labels.save_labels(self.labels_uri, label_row(self.pairs[pair_id], label,
                                                             labeller))
        state = self.state(labeller, None, self._labels())
        return {"saved": path, "pair_id": pair_id, "label": label,
                "progress": state["progress"], "estimate": state["estimate"]}


def _labeller(request, default: str) -> str:
    name = request.args.get("labeller")
    if name is None and request.is_json:
        name = (request.get_json(silent=True) or {}).get("labeller")
    return check_labeller(name or default)


def create_app(out: str, labels_uri: str, labeller: str | None = None, blind: bool = False):
    """The Flask app serving the review page for OUT's sample, saving to `labels_uri`.

    `labeller` is the default name; a page opened at /?labeller=NAME labels as NAME (its
    API calls carry it), so one server serves several labellers at once."""
    from flask import Flask, jsonify, request

    default = check_labeller(labeller or default_labeller())
    review = Review(out, labels_uri, blind)
    app = Flask("pairscore.review")
    app.config["REVIEW"] = review

    @app.errorhandler(ValueError)
    def bad_request(e):
        return jsonify({"error": str(e)}), 400

    @app.get("/")
    def page():
        name = _labeller(request, default)
        return PAGE.replace("__CONFIG__", json.dumps({
            "labeller": name, "run_id": review.run_id, "blind": blind,
            "sampled": len(review.pair_ids)}).replace("<", "\\u003c"))

    @app.get("/api/next")
    def next_pair():
        return jsonify(review.next(_labeller(request, default)))

    @app.get("/api/progress")
    def progress_():
        name = _labeller(request, default)
        state = review.state(name, None, review._labels())
        return jsonify({"labeller": name, "progress": state["progress"],
                        "estimate": state["estimate"]})

    @app.post("/api/label")
    def label():
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or "pair_id" not in body or "label" not in body:
            raise ValueError('POST /api/label takes JSON {"pair_id": ..., "label": 1|0|null}')
        value = body["label"]
        if isinstance(value, bool) or value not in LABEL_NAMES:
            raise ValueError(f"label {value!r}: use 1 (duplicate), 0 (not) or null (unsure)")
        return jsonify(review.label(_labeller(request, default), str(body["pair_id"]), value))

    @app.post("/api/back")
    def back():
        body = request.get_json(silent=True) or {}
        return jsonify(review.back(_labeller(request, default), body.get("current")))

    return app


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>pairscore review</title>
<style>
  body { font: 16px/1.5 system-ui, sans-serif; margin: 0; color: #1d1d1f; background: #f6f6f4; }
  header { padding: 10px 24px; background: #27323f; color: #fff; display: flex; gap: 24px;
           align-items: baseline; flex-wrap: wrap; }
  header h1 { font-size: 18px; margin: 0; }
  main { padding: 16px 24px; max-width: 1200px; }
  #bar { height: 8px; background: #ddd; border-radius: 4px; overflow: hidden; margin: 6px 0; }
  #bar div { height: 100%; background: #3a7bd5; width: 0; }
  .texts { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; margin: 12px 0; }
  .text { background: #fff; border: 1px solid #ccc; border-radius: 6px; padding: 12px 16px;
          white-space: pre-wrap; min-height: 4em; }
  .text h2 { font-size: 13px; color: #666; margin: 0 0 6px; font-weight: normal; }
  .delete { background: #fbd3d3; text-decoration: line-through; }
  .insert { background: #cdeccd; }
  .replace { background: #fbeaa5; }
  .keys { display: flex; gap: 10px; margin: 12px 0; }
  button { font: inherit; padding: 6px 14px; border-radius: 6px; border: 1px solid #888;
           background: #fff; cursor: pointer; }
  button.current { outline: 3px solid #3a7bd5; }
  kbd { font-family: ui-monospace, monospace; background: #eee; border: 1px solid #bbb;
        border-radius: 3px; padding: 0 4px; }
  #status { min-height: 1.5em; font-weight: 600; }
  #status.saved { color: #1a7f37; } #status.error { color: #b42318; }
  .muted { color: #666; font-size: 14px; }
  #estimate { margin: 8px 0; } .stop { color: #1a7f37; font-weight: 600; }
</style>
</head>
<body>
<header>
  <h1>pairscore review</h1>
  <span>run <span id="run"></span></span>
  <span>labeller <strong id="labeller"></strong></span>
  <span id="mode"></span>
</header>
<main>
  <div id="progress-line"></div>
  <div id="bar"><div></div></div>
  <div id="estimate"><span id="estimate-line"></span><br>
    <span id="stop-line" class="muted"></span></div>
  <div id="pair">
    <p class="muted">pair <span id="position"></span> of <span id="sampled"></span>:
      <code id="pair-id"></code> <span id="current-label"></span></p>
    <div class="texts">
      <div class="text"><h2>text a</h2><div id="text-a"></div></div>
      <div class="text"><h2>text b</h2><div id="text-b"></div></div>
    </div>
    <p id="model" class="muted"></p>
  </div>
  <div id="finished" hidden><p><strong>Every pair of the sample is labelled.</strong>
    Press <kbd>b</kbd> to go back and change one.</p></div>
  <div class="keys">
    <button data-label="1"><kbd>y</kbd> duplicate</button>
    <button data-label="0"><kbd>n</kbd> not a duplicate</button>
    <button data-label="null"><kbd>u</kbd> unsure</button>
    <button id="back"><kbd>b</kbd> back</button>
  </div>
  <div id="status"></div>
  <p class="muted">Differences: <span class="delete">only in a</span>
    <span class="insert">only in b</span> <span class="replace">changed</span>.
    Each label is saved as it is made; "saved" means it is on disk.</p>
</main>
<script>
const CONFIG = __CONFIG__;
const NAMES = {"1": "duplicate", "0": "not a duplicate", "null": "unsure"};
let current = null, busy = false;
const $ = (id) => document.getElementById(id);
const q = "?labeller=" + encodeURIComponent(CONFIG.labeller);

function status(text, kind) { $("status").textContent = text; $("status").className = kind || ""; }

function segments(el, parts) {
  el.replaceChildren(...parts.map((p) => {
    const s = document.createElement("span");
    s.textContent = p.text;
    if (p.op !== "equal") s.className = p.op;
    return s;
  }));
}

function showProgress(p) {
  $("progress-line").textContent = `${p.labelled} of ${p.sampled} labelled: ` +
    `${p.duplicates} duplicates, ${p.not_duplicates} not, ${p.unsure} unsure`;
  $("bar").firstElementChild.style.width = (100 * p.labelled / Math.max(p.sampled, 1)) + "%";
}

function showEstimate(e) {
  $("estimate-line").textContent = e ? e.text : "";
  $("stop-line").textContent = e && e.stop_text ? e.stop_text : "";
  $("stop-line").className = e && e.stop ? "stop" : "muted";
}

function show(data) {
  showProgress(data.progress);
  showEstimate(data.estimate);
  const pair = data.pair;
  current = pair ? pair.pair_id : null;
  $("pair").hidden = !pair;
  $("finished").hidden = !!pair;
  document.querySelectorAll("button[data-label]").forEach((b) => b.classList.remove("current"));
  if (!pair) return;
  $("position").textContent = pair.position;
  $("pair-id").textContent = pair.pair_id;
  segments($("text-a"), pair.diff_a);
  segments($("text-b"), pair.diff_b);
  const was = "label" in pair ? String(pair.label) : null;
  $("current-label").textContent = was === null ? "" : `(labelled ${NAMES[was]}: change it?)`;
  if (was !== null) document.querySelector(`button[data-label="${was}"]`).classList.add("current");
  $("model").textContent = "score" in pair ?
    `model score ${pair.score.toFixed(3)} (threshold ${pair.threshold}): ` +
    (pair.is_duplicate ? "duplicate" : "not a duplicate") + `; stratum ${pair.stratum}` : "";
}

async function call(method, path, body) {
  const r = await fetch(path + q, {method, headers: {"Content-Type": "application/json"},
                                   body: body === undefined ? undefined : JSON.stringify(body)});
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}

async function step(work) {
  if (busy) return;
  busy = true;
  try { await work(); } catch (e) { status("not saved: " + e.message, "error"); }
  finally { busy = false; }
}

function label(value) {
  if (current === null) return;
  const pairId = current;
  step(async () => {
    status("saving…");
    const saved = await call("POST", "/api/label", {pair_id: pairId, label: value});
    show(await call("GET", "/api/next"));
    status(`saved: ${saved.pair_id} as ${NAMES[String(saved.label)]}`, "saved");
  });
}

function back() {
  step(async () => {
    const data = await call("POST", "/api/back", {current: current});
    if (data.pair) { show(data); status("back: change the label, or press it again to keep it"); }
    else status("nothing labelled yet to go back to");
  });
}

document.addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const key = e.key.toLowerCase();
  if (key === "y") label(1);
  else if (key === "n") label(0);
  else if (key === "u") label(null);
  else if (key === "b" || e.key === "Backspace") { e.preventDefault(); back(); }
});
document.querySelectorAll("button[data-label]").forEach((b) =>
  b.addEventListener("click", () => label(JSON.parse(b.dataset.label))));
$("back").addEventListener("click", back);

$("run").textContent = CONFIG.run_id;
$("labeller").textContent = CONFIG.labeller;
$("sampled").textContent = CONFIG.sampled;
$("mode").textContent = CONFIG.blind ? "blind: the model's score is hidden" : "";
step(async () => { show(await call("GET", "/api/next")); status("ready"); });
</script>
</body>
</html>
"""
