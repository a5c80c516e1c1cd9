"""Every `pairscore` command answers --help with its own prog name and every flag it
takes, each documented; `pairscore --help` lists the commands; and a finished `pairscore
score` ends with a short summary a person reads, not summary.json again."""

import argparse
import json
import logging
import re

import pytest

from pipeline import cli
from pipeline.options import known_flags
from tests.conftest import PAIRS, REPO, write_pairs


def _flat(text: str) -> str:
    """Text without whitespace: argparse wraps help wherever it likes."""
    return "".join(text.split())


def _help(capsys, argv) -> str:
    """`pairscore ARGV` (ending in --help): its stdout, after checking it exits 0."""
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own --help exits
        code = e.code
    out, err = capsys.readouterr()
    assert code in (0, None), (argv, code, err)
    return out


def _parsers(path, parser):
    """(command words, parser) for a command and each of its subcommands."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers((*path, name), sub)


def test_every_command_has_a_parser():
    assert set(cli.PARSERS) == set(cli.COMMANDS)
    assert set(cli.SUMMARIES) == set(cli.COMMANDS)


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_help_of_every_command_lists_every_flag(capsys, command):
    """The parser the command parses with is the one --help prints: every option string
    and positional it defines is there, with its help text."""
    for path, parser in _parsers((command,), cli.PARSERS[command]()):
        out = _help(capsys, [*path, "--help"])
        assert out.startswith(f"usage: {parser.prog}"), out[:200]
        assert parser.prog == "pairscore " + " ".join(path)
        formatter = parser._get_formatter()
        for action in parser._actions:
            assert action.help, f"{parser.prog}: {action.option_strings or action.dest} " \
                "has no help"
            for flag in action.option_strings:
                assert re.search(rf"(^|[\s,\[]){re.escape(flag)}\b", out), (parser.prog, flag)
            if not action.option_strings and not isinstance(action,
                                                            argparse._SubParsersAction):
                assert action.dest in out, (parser.prog, action.dest)
            assert _flat(formatter._expand_help(action)) in _flat(out), (parser.prog, action)


def test_score_help_is_pairscores_flags_and_points_to_beams(capsys):
    out = _help(capsys, ["score", "--help"])
    assert out.startswith("usage: pairscore score")
    for flag in ("--input", "--output", "--model", "--threshold", "--id-column",
                 "--text-a-column", "--max-model-error-ratio", "--embedding-store",
                 "--verbose"):
        assert flag in out, flag
    assert "duplicate if score >= threshold" in out
    # The Beam/Dataflow options the job also takes: the common ones, each a real flag.
    beam = out[out.index("Beam and Dataflow pipeline options"):]
    for flag in ("--runner", "--project", "--region", "--temp_location"):
        assert flag in beam, flag
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_]+", beam))
    assert named - set(known_flags()) == set(), "the help names flags Beam does not have"
    assert "docs/dataflow.md" in out
    # Help does not make a mistyped flag acceptable.
    capsys.readouterr()
    assert cli.main(["score", "--hlep"]) == 2
    assert "unknown flag --hlep; did you mean --help?" in capsys.readouterr().err
    assert cli.main(["score", "--input", "x", "--treshold", "0.5"]) == 2
    assert "did you mean --threshold?" in capsys.readouterr().err


def test_top_level_help_lists_the_commands(capsys):
    for argv in (["--help"], ["-h"], []):
        out = _help(capsys, argv)
        assert out.startswith("usage: pairscore COMMAND")
        for name, summary in cli.SUMMARIES.items():
            assert re.search(rf"^  {re.escape(name)} +{re.escape(summary)}$", out, re.M), name
        assert "pairscore COMMAND --help" in out
    assert cli.main(["scroe"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "pairscore: unknown command 'scroe'; did you mean score?" in err


def test_the_demo_does_not_print_summary_json():
    recipe = (REPO / "Makefile").read_text().split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    assert "summary.json" not in recipe


BAD_ROWS = [("bad1", "", "empty side"), (None, "no id", "no id")]


def _short_summary(out: str, summary: dict, outdir) -> None:
    lines = out.strip().splitlines()
    assert 5 <= len(lines) <= 12, out
    assert "{" not in out  # no JSON
    assert f"published run {summary['run_id']} in {outdir}" in lines[0]
    by_reason = ", ".join(f"{k} {v}" for k, v in summary["rejected_by_reason"].items())
    assert (f"{summary['rows_in']} rows in: {summary['scored']} scored, "
            f"{summary['rejected']} rejected ({by_reason})") in out
    assert (f"{summary['duplicates']} duplicates ({summary['duplicate_rate']:.1%} of scored) "
            f"at threshold {summary['threshold']:g}") in out
    for name in ("labels/", "rejects/", "review/", "report.html", "summary.json"):
        path = f"{outdir}/{name}"
        assert re.search(rf"^  {re.escape(path)} ", out, re.M), name
        assert (outdir / name.rstrip("/")).exists(), name
    assert f"file://{outdir}/report.html" in out
    assert "pairscore score --help" in out
    assert re.search(r"pairscore score --input \S+ --output \S+ --model " + re.escape(
        summary["model"]), out)


def test_score_ends_with_a_short_summary_not_json(tmp_path, bilstm_model, capsys, caplog):
    src, out = tmp_path / "pairs.parquet", tmp_path / "out"
    write_pairs(src, PAIRS + BAD_ROWS)
    argv = ["score", "--input", str(src), "--output", str(out), "--model", bilstm_model,
            "--mode", "pairs", "--review-pairs", "3"]
    capsys.readouterr()
    with caplog.at_level(logging.DEBUG, logger="pairscore"):
        assert cli.main(argv) == 0  # which sets pairscore's loggers to INFO
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rejected"] == len(BAD_ROWS) and summary["scored"] == len(PAIRS)
    _short_summary(printed, summary, out)
    # summary.json stays whole on disk, and is logged as JSON only with --verbose.
    assert {"scores", "input_files", "rejected_by_reason"} <= set(summary)
    jsons = [r for r in caplog.records if r.getMessage().startswith("summary: {")]
    assert [r for r in jsons if r.levelno >= logging.INFO] == []

    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="pairscore"):  # and restores the level
        assert cli.main([*argv, "--overwrite", "--verbose"]) == 0
    capsys.readouterr()
    jsons = [r for r in caplog.records if r.getMessage().startswith("summary: {")]
    assert len(jsons) == 1 and jsons[0].levelno == logging.DEBUG
    assert json.loads(jsons[0].getMessage()[len("summary: "):])["status"] == "published"
