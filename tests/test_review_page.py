"""The review page in a real browser (Playwright driving Debian's Chromium, no download):
a person labels by keyboard, goes back, reloads, and a second labeller works at the same
time; every label shown as saved is on disk; --blind keeps the score out of the browser."""

import json
import os
import threading

import pytest

from model import labels
from pipeline import review
from tests.review_sample import RUN_ID, score_strings, write_sample

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"no {CHROMIUM} here: `make browser` installs it")
SCREENSHOT = "/tmp/review.png"


@pytest.fixture
def serve():
    """serve(app) -> its URL: the app on a free localhost port, in a thread."""
    from werkzeug.serving import make_server

    servers = []

    def start(app):
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/"

    yield start
    for server in servers:
        server.shutdown()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


def _on_disk(uri) -> dict:
    """{(labeller, pair_id): label} of the latest labels on disk."""
    return {(r["labeller"], r["pair_id"]): r["label"]
            for r in labels.latest(labels.read_labels(uri)).to_pylist()}


def _press(page, key, pair_id):
    """Press `key` on the pair on screen, then wait until the page says it is saved."""
    assert page.text_content("#pair-id") == pair_id
    page.keyboard.press(key)
    page.wait_for_function(
        "id => document.getElementById('status').textContent.startsWith('saved: ' + id + ' ')",
        arg=pair_id, timeout=10_000)


def _showing(page, pair_id):
    page.wait_for_function("id => document.getElementById('pair-id').textContent === id",
                           arg=pair_id, timeout=10_000)


def test_label_by_keyboard_go_back_reload_resume_and_two_labellers(tmp_path, serve, browser):
    out, uri = tmp_path / "out", str(tmp_path / "labels")
    write_sample(out)
    order = review.read_sample(str(out))[0]["pair_id"].to_pylist()
    url = serve(review.create_app(str(out), uri, "alice"))

    alice = browser.new_context(viewport={"width": 1200, "height": 720}).new_page()
    alice.goto(url)
    _showing(alice, order[0])
    assert alice.text_content("#labeller") == "alice"
    assert "model score" in alice.text_content("#model")
    assert alice.locator("#text-a span.replace, #text-a span.delete").count() + \
        alice.locator("#text-b span.replace, #text-b span.insert").count() > 0

    # y, n, u: each on disk once the page says saved.
    expected = {}
    for pair_id, key, value in zip(order, "ynu", (1, 0, None)):
        _press(alice, key, pair_id)
        expected[("alice", pair_id)] = value
        assert _on_disk(uri) == expected
    _showing(alice, order[3])
    assert alice.text_content("#progress-line") == \
        "3 of 7 labelled: 1 duplicates, 1 not, 1 unsure"

    # b: back to the last one (labelled unsure), change it to a duplicate.
    alice.keyboard.press("b")
    _showing(alice, order[2])
    assert "unsure" in alice.text_content("#current-label")
    alice.screenshot(path=SCREENSHOT, full_page=True)
    _press(alice, "y", order[2])
    expected[("alice", order[2])] = 1
    assert _on_disk(uri) == expected
    assert labels.read_labels(uri).num_rows == 4  # a new row; nothing deleted
    _showing(alice, order[3])

    # Reload: it resumes at the next unlabelled pair.
    alice.reload()
    _showing(alice, order[3])
    assert alice.text_content("#progress-line").startswith("3 of 7 labelled: 2 duplicates")

    # Bob, in a second browser, at the same time on the same server: both save.
    bob = browser.new_context().new_page()
    bob.goto(url + "?labeller=bob")
    _showing(bob, order[0])
    assert bob.text_content("#labeller") == "bob"
    for i in range(3):
        alice_pair, bob_pair = order[3 + i], order[i]
        assert alice.text_content("#pair-id") == alice_pair
        assert bob.text_content("#pair-id") == bob_pair
        alice.keyboard.press("n")
        bob.keyboard.press("y")  # before alice's save is answered
        for page, pair_id in ((alice, alice_pair), (bob, bob_pair)):
            page.wait_for_function(
                "id => document.getElementById('status').textContent"
                ".startsWith('saved: ' + id + ' ')", arg=pair_id, timeout=10_000)
        expected[("alice", alice_pair)] = 0
        expected[("bob", bob_pair)] = 1
        assert _on_disk(uri) == expected
    assert labels.read_labels(uri).num_rows == 10
    rows = labels.read_labels(uri).to_pylist()
    assert {r["run_id"] for r in rows} == {RUN_ID}
    assert all(r["score"] is not None and r["stratum"] for r in rows)
    # The estimate counts both labellers' labels, with its stop rule.
    _showing(alice, order[6])
    assert "labels of every labeller" in alice.text_content("#estimate-line")
    assert alice.text_content("#stop-line").startswith(
        "Stop when the precision interval is narrower than 0.1")


def test_blind_the_score_never_reaches_the_browser(tmp_path, serve, browser):
    out, uri = tmp_path / "out", str(tmp_path / "labels")
    write_sample(out)
    order = review.read_sample(str(out))[0]["pair_id"].to_pylist()
    url = serve(review.create_app(str(out), uri, "carol", blind=True))
    page = browser.new_context().new_page()
    bodies = []
    page.on("response", lambda r: bodies.append(r))
    page.goto(url)
    _showing(page, order[0])
    assert "blind" in page.text_content("header")
    assert page.text_content("#model") == ""
    _press(page, "y", order[0])
    _press(page, "n", order[1])
    page.keyboard.press("Backspace")
    _showing(page, order[1])
    texts = [page.content()] + [r.text() for r in bodies]
    assert len(bodies) >= 6  # the page and its API calls
    for text in texts:
        for s in score_strings():
            assert s not in text, s
    for r in bodies:
        if r.url.startswith(url + "api/"):
            pair = json.loads(r.text()).get("pair") or {}
            assert not {"score", "is_duplicate", "stratum", "threshold"} & set(pair), r.url
    assert _on_disk(uri) == {("carol", order[0]): 1, ("carol", order[1]): 0}
