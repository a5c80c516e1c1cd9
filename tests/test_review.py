"""The review page's plain functions and its JSON API (Flask's test client over a real
OUT/sample/ and a real labels dataset on disk); the browser test is test_review_page.py."""

import json

import pytest

from model import labels
from pipeline import cli, review
from tests.review_sample import PAIRS, RUN_ID, score_strings, write_sample


def _text(parts):
    return "".join(p["text"] for p in parts)


def test_word_diff_marks_deleted_inserted_and_changed_words():
    a, b = review.word_diff("How do I learn Python fast?", "How can I learn Python?")
    assert _text(a) == "How do I learn Python fast?" and _text(b) == "How can I learn Python?"
    marked_a = {(p["text"].strip(), p["op"]) for p in a if p["op"] != "equal"}
    marked_b = {(p["text"].strip(), p["op"]) for p in b if p["op"] != "equal"}
    assert marked_a == {("do", "replace"), ("fast", "delete")}
    assert marked_b == {("can", "replace")}
    a, b = review.word_diff("How to cook rice", "How to cook rice in a microwave")
    assert [p["op"] for p in a] == ["equal"]
    assert [(p["text"], p["op"]) for p in b] == [("How to cook rice ", "equal"),
                                                 ("in a microwave", "insert")]
    # Case is not a difference; an empty side is all inserted on the other.
    assert {p["op"] for half in review.word_diff("Hello World", "hello world")
            for p in half} == {"equal"}
    a, b = review.word_diff("", "new words")
    assert a == [] and {p["op"] for p in b} == {"insert"}


def test_next_previous_and_progress_follow_one_labellers_labels():
    ids = ["a", "b", "c", "d"]
    done = {}
    assert review.next_index(ids, done) == 0 and review.previous_pair(done, "a") is None
    done = {"a": (1, 1), "c": (None, 2), "b": (0, 3)}  # labelled a, c, b (times 1, 2, 3)
    assert review.next_index(ids, done) == 3
    assert review.previous_pair(done, "d") == "b"  # back from the pair on screen
    assert review.previous_pair(done, "b") == "c"  # and again
    assert review.previous_pair(done, "c") == "a"
    assert review.previous_pair(done, "a") is None
    assert review.progress(ids, done) == {"sampled": 4, "labelled": 3, "duplicates": 1,
                                          "not_duplicates": 1, "unsure": 1, "remaining": 1}
    assert review.next_index(ids, {**done, "d": (1, 4)}) is None


def test_sample_is_shown_in_sampling_key_order(tmp_path):
    write_sample(tmp_path / "out")
    table, design = review.read_sample(str(tmp_path / "out"))
    ids = table["pair_id"].to_pylist()
    assert sorted(ids) == sorted(p[0] for p in PAIRS)
    assert ids == sorted(ids, key=lambda p: review.sample_key(RUN_ID, p))
    assert ids != sorted(ids)  # the key's order, not the ids'
    assert design["run_id"] == RUN_ID


def test_a_run_without_a_sample_is_refused_naming_it(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    assert cli.main(["review", str(tmp_path / "out"), "--labels", str(tmp_path / "l")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'out' / 'sample'} holds no sample" in err
    assert "--review-sample" in err
    write_sample(tmp_path / "out")
    assert cli.main(["review", str(tmp_path / "out"), "--labels", str(tmp_path / "l"),
                     "--labeller", "no spaces"]) == 2
    assert "labeller 'no spaces' is not a valid name" in capsys.readouterr().err


@pytest.fixture
def sample_out(tmp_path):
    write_sample(tmp_path / "out")
    return str(tmp_path / "out"), str(tmp_path / "labels")


def test_api_saves_each_label_resumes_goes_back_and_keeps_labellers_apart(sample_out):
    out, uri = sample_out
    client = review.create_app(out, uri, "alice").test_client()
    order = review.read_sample(out)[0]["pair_id"].to_pylist()
    first = client.get("/api/next").get_json()
    assert first["pair"]["pair_id"] == order[0]
    assert first["pair"]["score"] == pytest.approx(dict((p[0], p[3]) for p in PAIRS)[order[0]])
    assert first["progress"] == {"sampled": 7, "labelled": 0, "duplicates": 0,
                                 "not_duplicates": 0, "unsure": 0, "remaining": 7}
    for pair_id, value in zip(order, (1, 0, None)):
        r = client.post("/api/label", json={"pair_id": pair_id, "label": value})
        assert r.status_code == 200, r.get_json()
        assert r.get_json()["saved"].startswith(uri)
    saved = labels.read_labels(uri)
    assert saved.num_rows == 3 and set(saved["labeller"].to_pylist()) == {"alice"}
    row = saved.to_pylist()[0]
    assert (row["pair_id"], row["label"], row["run_id"]) == (order[0], 1, RUN_ID)
    assert row["stratum"] and row["inclusion_probability"] > 0 and row["stratum_size"] > 0
    design = review.read_sample(out)[1]["strata"][row["stratum"]]
    assert (row["stratum_low"], row["stratum_high"]) == (design["low"], design["high"])
    assert client.get("/api/progress").get_json()["progress"]["unsure"] == 1

    # A new server (a restart) resumes at the next unlabelled pair.
    client = review.create_app(out, uri, "alice").test_client()
    assert client.get("/api/next").get_json()["pair"]["pair_id"] == order[3]
    back = client.post("/api/back", json={"current": order[3]}).get_json()["pair"]
    assert back["pair_id"] == order[2] and back["label"] is None
    back = client.post("/api/back", json={"current": order[2]}).get_json()["pair"]
    assert back["pair_id"] == order[1] and back["label"] == 0
    client.post("/api/label", json={"pair_id": order[1], "label": 1})
    latest = {r["pair_id"]: r["label"] for r in labels.latest(labels.read_labels(uri))
              .to_pylist()}
    assert latest == {order[0]: 1, order[1]: 1, order[2]: None}
    assert labels.read_labels(uri).num_rows == 4  # appended: nothing deleted

    # Bob, on the same server, starts at the beginning; alice's labels stay hers.
    bob = client.get("/api/next?labeller=bob").get_json()
    assert bob["pair"]["pair_id"] == order[0] and bob["progress"]["labelled"] == 0
    client.post("/api/label?labeller=bob", json={"pair_id": order[0], "label": 0})
    assert client.get("/api/progress").get_json()["progress"]["labelled"] == 3
    assert client.get("/api/progress?labeller=bob").get_json()["progress"]["labelled"] == 1


def test_api_refuses_what_it_cannot_save(sample_out):
    out, uri = sample_out
    client = review.create_app(out, uri, "alice").test_client()
    for body, says in [({"pair_id": "nope", "label": 1}, "pair_id 'nope' is not in"),
                       ({"pair_id": "p1", "label": 2}, "label 2: use 1"),
                       ({"pair_id": "p1", "label": True}, "label True: use 1"),
                       ({"pair_id": "p1"}, "takes JSON")]:
        r = client.post("/api/label", json=body)
        assert r.status_code == 400 and says in r.get_json()["error"], (body, r.get_json())
    r = client.get("/api/next?labeller=../etc")
    assert r.status_code == 400 and "is not a valid name" in r.get_json()["error"]
    assert labels.read_labels(uri).num_rows == 0


def test_labels_of_another_night_do_not_count(sample_out, tmp_path):
    out, uri = sample_out
    other = tmp_path / "other"
    write_sample(other, run_id="another-night")
    review.create_app(str(other), uri, "alice").test_client().post(
        "/api/label", json={"pair_id": "p1", "label": 1})
    client = review.create_app(out, uri, "alice").test_client()
    assert client.get("/api/progress").get_json()["progress"]["labelled"] == 0


def test_blind_keeps_the_score_out_of_the_page_and_the_api(sample_out):
    out, uri = sample_out
    client = review.create_app(out, uri, "alice", blind=True).test_client()
    bodies = [client.get("/").get_data(as_text=True)]
    order = review.read_sample(out)[0]["pair_id"].to_pylist()
    for pair_id in order[:2]:
        bodies.append(client.get("/api/next").get_data(as_text=True))
        bodies.append(client.post("/api/label", json={"pair_id": pair_id, "label": 1})
                      .get_data(as_text=True))
    bodies.append(client.post("/api/back", json={}).get_data(as_text=True))
    bodies.append(client.get("/api/progress").get_data(as_text=True))
    for body in bodies[1:]:
        data = json.loads(body)
        for key in ("score", "is_duplicate", "stratum", "threshold"):
            assert key not in json.dumps(data.get("pair") or {}), (key, body)
    for body in bodies:
        for s in score_strings():
            assert s not in body, s
    # The labels saved still carry the score, for the estimate.
    assert labels.read_labels(uri)["score"].null_count == 0


def test_the_estimate_and_the_stop_rule_come_with_every_answer(sample_out):
    out, uri = sample_out
    client = review.create_app(out, uri, "alice").test_client()
    first = client.get("/api/next").get_json()["estimate"]
    assert first["stop"] is False and first["text"].startswith("Tonight's precision: not yet")
    for pair_id in ("p1", "p2", "p6"):  # the duplicate stratum's pairs, all duplicates
        client.post("/api/label", json={"pair_id": pair_id, "label": 1})
    client.post("/api/label?labeller=bob", json={"pair_id": "p3", "label": 0})
    e = client.get("/api/progress").get_json()["estimate"]
    assert e["labels"] == 4  # every labeller's
    p = e["precision"]
    assert 0 <= p["low"] <= p["estimate"] <= p["high"] <= 1
    assert f"{p['estimate']:.2f} [{p['low']:.2f}, {p['high']:.2f}] (95% interval)" in e["text"]
    assert e["stop_text"].startswith(
        "Stop when the precision interval is narrower than 0.1: not yet")
