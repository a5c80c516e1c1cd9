"""`pairscore train`, `evaluate` and `default-model` through the CLI on small real files."""

import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model.config import check_model_dir
from model.predict import Scorer
from pipeline.cli import main

TOPICS = ["python", "laptops", "bikes", "gardens", "printers", "routers", "soup", "cats"]


def labelled_pairs(n=64, seed=0):
    """Duplicates reuse the topic word, non-duplicates pair two topics: learnable."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        t = TOPICS[i % len(TOPICS)]
        if i % 2:
            rows.append((f"q{i}", f"how do i fix {t}", f"what is the way to repair {t}", 1))
        else:
            other = TOPICS[(i + 1 + rng.integers(len(TOPICS) - 1)) % len(TOPICS)]
            rows.append((f"q{i}", f"how do i fix {t}", f"what is the way to repair {other}", 0))
    return rows


def write_parquet(path, rows, similarity=None):
    ids, a, b, y = zip(*rows)
    cols = {"pair_id": list(ids), "text_a": list(a), "text_b": list(b),
            "label": pa.array(y, pa.int8())}
    if similarity is not None:
        cols["label"] = pa.array([-1] * len(rows), pa.int8())
        cols["similarity"] = pa.array(similarity, pa.float32())
    pq.write_table(pa.table(cols), path)


def test_train_bilstm_from_csv_then_evaluate(tmp_path, capsys):
    rows = labelled_pairs()
    train = tmp_path / "train.csv"
    with open(train, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "question1", "question2", "is_duplicate"])
        w.writerows(rows)
    out = tmp_path / "model"
    rc = main([
        "train", "--train", str(train), "--encoder", "bilstm", "--distance", "l1",
        "--output", str(out), "--epochs", "2", "--batch-size", "16", "--lstm-units", "8",
        "--glove-extra-words", "100", "--seed", "3", "--text-a-column", "question1",
        "--text-b-column", "question2", "--label-column", "is_duplicate",
    ])
    assert rc == 0
    meta = check_model_dir(str(out))
    assert meta.encoder == "bilstm" and meta.distance == "l1"
    assert 0.0 <= meta.threshold <= 1.0
    assert meta.metrics["validation"]["n"] == len(rows) // 10
    assert meta.training["epochs_run"] >= 1
    assert meta.training["data_fingerprint"]
    capsys.readouterr()

    dev = tmp_path / "dev.tsv"
    with open(dev, "w") as f:
        f.write("text_a\ttext_b\tlabel\n")
        for _, a, b, y in rows[:20]:
            f.write(f"{a}\t{b}\t{y}\n")
    assert main(["evaluate", "--model", str(out), "--data", str(dev)]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("n", "accuracy", "precision", "recall", "f1", "roc_auc", "best_f1_threshold"):
        assert key in result
    assert result["n"] == 20
    assert result["threshold"] == pytest.approx(meta.threshold)


def test_train_tiny_bert_with_validation_file(tmp_path, capsys):
    rows = labelled_pairs(48)
    train, val = tmp_path / "train.parquet", tmp_path / "val.parquet"
    write_parquet(train, rows[:32])
    write_parquet(val, rows[32:])
    out = tmp_path / "bert"
    rc = main([
        "train", "--train", str(train), "--validation", str(val), "--encoder", "bert",
        "--pooling", "cls", "--distance", "concat", "--output", str(out), "--epochs", "1",
        "--batch-size", "8", "--max-length", "16", "--bert-tiny",
    ])
    assert rc == 0
    meta = check_model_dir(str(out))
    assert (meta.encoder, meta.pooling, meta.max_length) == ("bert", "cls", 16)
    assert meta.metrics["validation"]["n"] == 16
    assert meta.training["config"]["learning_rate"] == pytest.approx(2e-5)
    scores = Scorer(str(out)).score(["a b c"], ["a b c"])
    assert scores.shape == (1,)


def test_train_rejects_unlabelled_data(tmp_path):
    train = tmp_path / "graded.parquet"
    write_parquet(train, labelled_pairs(8), similarity=[1.0] * 8)
    with pytest.raises(ValueError, match="binary labels"):
        main(["train", "--train", str(train), "--output", str(tmp_path / "m")])


def test_unknown_distance_is_rejected_with_allowed_values(tmp_path):
    train = tmp_path / "t.parquet"
    write_parquet(train, labelled_pairs(8))
    with pytest.raises(ValueError, match="allowed: 'l1', 'concat', 'cosine', 'manhattan', 'sbert'"):
        main(["train", "--train", str(train), "--distance", "euclid",
              "--output", str(tmp_path / "m")])


def test_evaluate_graded_data_reports_spearman(tmp_path, bilstm_model, capsys):
    rows = labelled_pairs(30)
    data = tmp_path / "graded.parquet"
    similarity = np.linspace(0, 5, len(rows))
    write_parquet(data, rows, similarity=list(similarity))
    assert main(["evaluate", "--model", bilstm_model, "--data", str(data)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert -1.0 <= result["spearman"] <= 1.0
    # Without labels, graded rows count as duplicates at similarity >= 4 (as in training).
    assert result["labels_from"] == "similarity >= 4"
    assert result["majority_accuracy"] == pytest.approx(1 - (similarity >= 4).mean())
    assert main(["evaluate", "--model", bilstm_model, "--data", str(data),
                 "--duplicate-similarity", "2.5"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["labels_from"] == "similarity >= 2.5"
    assert result["majority_accuracy"] == pytest.approx(max((similarity >= 2.5).mean(),
                                                            (similarity < 2.5).mean()))


def test_glove_text_file_initialises_the_embedding(tmp_path):
    from model import data as data_lib
    from model.train import TrainConfig, build_model, build_tokenizer

    glove_txt = tmp_path / "glove.txt"
    glove_txt.write_text("fix 0.5 -1.0 2.0\nlaptops 1.5 0.25 -3.0\nrare 9.0 9.0 9.0\n")
    cfg = TrainConfig(train="-", output="-", encoder="bilstm", glove=str(glove_txt),
                      glove_extra_words=1, lstm_units=2)
    pairs = data_lib.Pairs(["How do I fix laptops?"], ["unknownword"], None, None, "-")
    tok, matrix = build_tokenizer(cfg, pairs)
    vocab = tok.get_vocab()
    np.testing.assert_array_equal(matrix[vocab["fix"]], [0.5, -1.0, 2.0])
    np.testing.assert_array_equal(matrix[vocab["laptops"]], [1.5, 0.25, -3.0])
    np.testing.assert_array_equal(matrix[0], [0.0, 0.0, 0.0])  # [PAD]
    assert "rare" in vocab  # one extra GloVe word, as capped
    _, encoder, _ = build_model(cfg, matrix)
    weights = encoder.get_layer("embedding").get_weights()[0]
    np.testing.assert_array_equal(weights[vocab["fix"]], [0.5, -1.0, 2.0])
    ids = tok.encode("neverseenword fix").ids
    assert ids == [vocab["[UNK]"], vocab["fix"]]


def test_bad_glove_file_names_the_line(tmp_path):
    from model import glove

    bad = tmp_path / "g.txt"
    bad.write_text("ok 1 2\nbroken\n")
    with pytest.raises(ValueError, match=r"g\.txt:2"):
        glove.load(str(bad))


@pytest.mark.parametrize("command", ["train", "evaluate", "default-model", "sample"])
def test_help_documents_every_option_with_its_default(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    options = lines[lines.index("options:") + 1:]
    for i, line in enumerate(options):
        # argparse prints a bare "  --opt METAVAR" line for an option without help; a long
        # option with help continues on the next, indented, line.
        if line.startswith("  --") and len(line.split()) <= 2:
            nxt = options[i + 1] if i + 1 < len(options) else ""
            assert nxt.startswith(" " * 10), f"{command}: no help for {line.strip()}"
    text = " ".join(" ".join(options).split())
    assert "(default: None)" not in text and "(default: False)" not in text
    if command == "train":
        assert "most epochs (early stopping may end sooner) (default: 10)" in text
        assert "seed for weights, shuffling and splits (default: 0)" in text
