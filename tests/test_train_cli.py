"""`pairscore train`, `evaluate` and `default-model` through the CLI on small real files."""

import csv
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model.cli import train_parser
from model.config import Distance, Encoder, Pooling, check_model_dir
from model.predict import Scorer
from model.train import DEFAULT_LEARNING_RATE, SELECT_METRICS, TARGETS, TrainConfig
from pipeline.cli import main
from tests.conftest import REPO

TOPICS = ["python", "laptops", "bikes", "gardens", "printers", "routers", "soup", "cats"]
WORDS = (
    "the cat dog house car tree river city music book water green red blue small big old "
    "new fast slow happy sad night day road school friend family market garden window door "
    "table chair light dark cold warm rain snow sun moon star ship train plane"
).split()


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


def perturbed_pairs(n, seed):
    """Half duplicates: a six-word sentence and the same one lightly perturbed (a word
    dropped, two neighbours swapped or one word replaced); half unrelated: two random
    sentences."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        words = [str(w) for w in rng.choice(WORDS, size=6, replace=False)]
        if i % 2:
            other, j = list(words), int(rng.integers(5))
            edit = int(rng.integers(3))
            if edit == 0:
                del other[j]
            elif edit == 1:
                other[j], other[j + 1] = other[j + 1], other[j]
            else:
                other[j] = str(rng.choice([w for w in WORDS if w not in words]))
        else:
            other = [str(w) for w in rng.choice(WORDS, size=6, replace=False)]
        rows.append((f"q{i}", " ".join(words), " ".join(other), i % 2))
    return rows


def write_parquet(path, rows, similarity=None):
    ids, a, b, y = zip(*rows)
    cols = {"pair_id": list(ids), "text_a": list(a), "text_b": list(b),
            "label": pa.array(y, pa.int8())}
    if similarity is not None:
        cols["label"] = pa.array([-1] * len(rows), pa.int8())
        cols["similarity"] = pa.array(similarity, pa.float32())
    pq.write_table(pa.table(cols), path)


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "question1", "question2", "is_duplicate"])
        w.writerows(rows)


def _evaluate(model, data, capsys):
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model), "--data", str(data)]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow  # two real trainings (about 35 s)
def test_training_learns_what_shuffled_labels_cannot_teach(tmp_path, capsys):
    """A short run must learn: on held-out pairs it beats the majority class and the same
    training on the same pairs with their labels shuffled (which holds out its own 10% for
    the epoch and threshold, as the real run does, so it never sees a true label)."""
    rows = perturbed_pairs(320, seed=0)
    labels = np.random.default_rng(1).permutation([y for *_, y in rows])
    shuffled = [(i, a, b, int(y)) for (i, a, b, _), y in zip(rows, labels)]
    test = tmp_path / "test.tsv"
    with open(test, "w") as f:
        f.write("text_a\ttext_b\tlabel\n")
        for _, a, b, y in perturbed_pairs(128, seed=2):
            f.write(f"{a}\t{b}\t{y}\n")

    results = {}
    for name, data in (("real", rows), ("shuffled", shuffled)):
        _write_csv(tmp_path / f"{name}.csv", data)
        out = tmp_path / name
        rc = main([
            "train", "--train", str(tmp_path / f"{name}.csv"), "--encoder", "bilstm",
            "--distance", "l1", "--output", str(out), "--epochs", "3", "--batch-size", "16",
            "--lstm-units", "8", "--learning-rate", "1e-2", "--glove-extra-words", "100",
            "--seed", "3", "--text-a-column", "question1", "--text-b-column", "question2",
            "--label-column", "is_duplicate",
        ])
        assert rc == 0
        meta = check_model_dir(str(out))
        assert (meta.encoder, meta.distance) == ("bilstm", "l1")
        assert meta.metrics["validation"]["n"] == len(rows) // 10
        assert meta.training["data_fingerprint"]
        results[name] = _evaluate(out, test, capsys)
        assert results[name]["threshold"] == pytest.approx(meta.threshold)

    real, control = results["real"], results["shuffled"]
    for key in ("n", "accuracy", "precision", "recall", "f1", "roc_auc", "best_f1_threshold"):
        assert key in real
    assert real["n"] == 128 and real["majority_accuracy"] == 0.5
    # Measured: real 0.97, shuffled 0.51 (accuracy at each model's own threshold).
    assert real["accuracy"] > real["majority_accuracy"] + 0.25, (real, control)
    assert real["accuracy"] > control["accuracy"] + 0.25, (real, control)


@pytest.mark.slow  # real training runs: `make test-slow`
def test_train_bert_from_a_preset_directory(tmp_path, tiny_bert_preset, capsys):
    rows = labelled_pairs(48)
    train, val = tmp_path / "train.parquet", tmp_path / "val.parquet"
    write_parquet(train, rows[:32])
    write_parquet(val, rows[32:])
    out = tmp_path / "bert"
    rc = main([
        "train", "--train", str(train), "--validation", str(val), "--encoder", "bert",
        "--pooling", "cls", "--distance", "concat", "--output", str(out), "--epochs", "1",
        "--batch-size", "8", "--max-length", "16", "--bert-preset", tiny_bert_preset,
    ])
    assert rc == 0
    meta = check_model_dir(str(out))
    assert (meta.encoder, meta.pooling, meta.max_length) == ("bert", "cls", 16)
    assert meta.metrics["validation"]["n"] == 16
    assert meta.training["config"]["learning_rate"] == pytest.approx(2e-5)
    assert meta.training["config"]["bert_preset"] == tiny_bert_preset
    assert meta.embedding_dim == 16  # the preset's BERT, not MiniLM's 384
    scores = Scorer(str(out)).score(["a b c"], ["a b c"])
    assert scores.shape == (1,)


def test_train_rejects_unlabelled_data(tmp_path):
    train = tmp_path / "graded.parquet"
    write_parquet(train, labelled_pairs(8), similarity=[1.0] * 8)
    with pytest.raises(ValueError, match="binary labels"):
        main(["train", "--train", str(train), "--output", str(tmp_path / "m")])


def _usage_error(capsys, argv):
    """(exit status, stderr lines) of `pairscore ARGV` run in-process."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    return exit_.value.code, capsys.readouterr().err.splitlines()


def _one_of(values):
    return ", ".join(values)


TRAIN = ["train", "--train", "t.parquet", "--output", "m"]
BAD_TRAIN_OPTIONS = [
    (["--encoder", "gpt"], f"--encoder 'gpt' is not one of {_one_of(Encoder.values())}"),
    (["--pooling", "max"], f"--pooling 'max' is not one of {_one_of(Pooling.values())}"),
    (["--select-metric", "auc"],
     f"--select-metric 'auc' is not one of {_one_of(SELECT_METRICS)}"),
    (["--target", "sts"], f"--target 'sts' is not one of {_one_of(TARGETS)}"),
    (["--class-weight", "0:1"], "--class-weight must be 'balanced', 'none' or '0:W0,1:W1' "
     "with W > 0, got '0:1'"),
    (["--freeze-epochs", "5", "--epochs", "2"], "--freeze-epochs must be in [0, epochs), "
     "got 5 with 2 epochs"),
    (["--dropout", "1.5"], "--dropout must be in [0, 1), got 1.5"),
    (["--bert-preset", "no/such/dir", "--encoder", "bert"],
     "--bert-preset 'no/such/dir' is not a local preset directory"),
    (["--epochs", "many"], "argument --epochs: invalid int value: 'many'"),
]


def test_a_bad_choice_is_one_line_naming_flag_value_and_allowed_values(capsys):
    code, err = _usage_error(capsys, [*TRAIN, "--distance", "euclid"])
    assert code == 2
    assert err == [
        "pairscore train: error: --distance 'euclid' is not one of "
        "l1, concat, cosine, manhattan, sbert"
    ]
    assert Distance.values() == ["l1", "concat", "cosine", "manhattan", "sbert"]


@pytest.mark.parametrize("extra,message", BAD_TRAIN_OPTIONS, ids=lambda v: str(v)[:30])
def test_bad_train_options_are_one_line_usage_errors(capsys, extra, message):
    code, err = _usage_error(capsys, [*TRAIN, *extra])
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith(f"pairscore train: error: {message}"), err


def test_choices_are_case_insensitive():
    args = train_parser().parse_args(
        ["--train", "t", "--output", "m", "--encoder", "BERT", "--select-metric", "VAL_AUC"]
    )
    assert (args.encoder, args.select_metric) == ("bert", "val_auc")


@pytest.mark.parametrize("argv,prog", [
    (["evaluate", "--model", "m"], "pairscore evaluate"),
    (["default-model"], "pairscore default-model"),
])
def test_other_model_commands_report_usage_errors_in_one_line(capsys, argv, prog):
    code, err = _usage_error(capsys, argv)
    assert code == 2 and len(err) == 1 and err[0].startswith(f"{prog}: error: "), err


def test_bad_choice_from_a_shell_fails_before_tensorflow_loads():
    """The real command: exit 2, stderr exactly one line (TensorFlow's start-up lines would
    come first had it been imported), in well under TensorFlow's import time."""
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *TRAIN, "--distance", "euclid"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "pairscore train: error: --distance 'euclid' is not one of "
        "l1, concat, cosine, manhattan, sbert"
    ]
    assert done.stdout == ""


def test_train_defaults_are_train_config_defaults():
    """One flag per TrainConfig field, each defaulting to the field's default: the CLI
    cannot drift from the library."""
    args = vars(train_parser().parse_args(["--train", "t.parquet", "--output", "m"]))
    assert args.pop("cv_folds") == 0
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert set(args) == set(fields)
    for name, field in fields.items():
        if field.default is not dataclasses.MISSING:
            assert args[name] == field.default, name
            assert type(args[name]) is type(field.default), name
    assert TrainConfig(**args) == TrainConfig(train="t.parquet", output="m")


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
        # Defaults that depend on the encoder come from model.train's tables.
        lr = ", ".join(f"{v:g} {k}" for k, v in DEFAULT_LEARNING_RATE.items())
        assert f"--learning-rate LEARNING_RATE Adam's learning rate (default: {lr})" in text
        assert "--distance l1|concat|cosine|manhattan|sbert" in text
        assert "--bert-preset DIR a local keras-hub BERT preset directory" in text
