"""The Dataflow Flex Template: its entry point and its parameters, both from ScoreOptions.

    python -m pipeline.flex metadata > flex/metadata.json    # after any ScoreOptions change

The template's image is the worker image (Dockerfile). At launch Dataflow runs the image's
FLEX_TEMPLATE_PYTHON_PY_FILE, flex/main.py, with every template parameter as `--name=value`
next to the options it supplies itself (project, region, temp and staging locations, job
name); `main()` runs `pairscore score` with them. The parameters are ScoreOptions' flags,
under the underscore spelling Beam accepts, so the template cannot offer a flag the command
lacks or miss one it has (tests/test_flex_template.py). docs/dataflow.md shows the build and
launch commands.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

TEMPLATE_NAME = "pairscore: score candidate text pairs"
TEMPLATE_DESCRIPTION = (
    "Scores Parquet candidate pairs for duplicates with a Siamese model (pairscore score) and "
    "writes labels, rejects, summary.json and _SUCCESS to the output directory."
)
# Always needed by `pairscore score`. --model is needed too, unless profile=dataflow-gpu
# supplies the model baked into the image.
REQUIRED = ("input", "output")

# Flags every template launch sets itself, and why; they are not template parameters.
FIXED = {
    "detach": "the launcher must exit once the job is submitted (Google's guide: no "
    "wait_until_finish), so the job publishes its own output",
}

LABELS = {
    "input": "Input Parquet files",
    "output": "Output directory",
    "model": "Model directory",
    "id_column": "ID column",
    "text_a_column": "Text A column",
    "text_b_column": "Text B column",
    "keep_columns": "Columns to keep",
    "overwrite": "Overwrite a finished run",
    "batch_size": "Batch size",
    "max_batch_tokens": "Tokens per batch",
    "rebatch_rows": "Rows per length sort",
    "large_model": "One model per worker",
    "model_copies": "Model copies per worker",
    "profile": "Flag preset",
    "unique_join": "Unique-mode join",
    "embedding_store": "Embedding store",
    "max_model_error_ratio": "Allowed model-error share",
    "stale_run_after": "Stale run marker after (seconds)",
}
# Used only where ScoreOptions gives a flag no help of its own.
FALLBACK_HELP = {
    "id_column": "the pair's id column (any type; copied to the labels)",
    "text_a_column": "the first text column (string, large_string or dictionary-encoded)",
    "text_b_column": "the second text column (string, large_string or dictionary-encoded)",
}
NOTES = {
    "input": "on Dataflow a gs:// or s3:// pattern, e.g. gs://my-bucket/pairs/*.parquet",
    "output": "on Dataflow gs:// or s3://, e.g. gs://my-bucket/scored/2025-01-31",
    "model": "gs://, s3:// or a path in the image; profile=dataflow-gpu uses the image's "
    "default model",
    "profile": "dataflow-gpu also needs the parameter sdk_container_image=IMAGE",
    "embedding_store": "gs:// or s3://, e.g. gs://my-bucket/embeddings; the same URI every "
    "night",
}
_REMOTE = r"(gs|s3)://[^\n\r]+"
PATH_REGEXES = {
    "input": f"^{_REMOTE}$",
    "output": f"^{_REMOTE}$",
    # The image holds the default model at an absolute path.
    "model": rf"^({_REMOTE}|/[^\n\r]+)$",
    "embedding_store": f"^{_REMOTE}$",
}
BOOLEAN_REGEX = "^(true|false)$"
INT_REGEX = "^[0-9]+$"
FLOAT_REGEX = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?$"


def score_actions() -> list[argparse.Action]:
    """ScoreOptions' flags, as argparse actions."""
    from pipeline.options import ScoreOptions

    parser = argparse.ArgumentParser(add_help=False)
    ScoreOptions._add_argparse_args(parser)
    return list(parser._actions)


def _is_boolean(action: argparse.Action) -> bool:
    return isinstance(action, argparse._StoreTrueAction)


def parameter_name(action: argparse.Action) -> str:
    """The spelling Dataflow passes back as `--name=value`: Beam's underscore one."""
    if f"--{action.dest}" not in action.option_strings:
        raise ValueError(
            f"ScoreOptions flag {'/'.join(action.option_strings)} has no --{action.dest} "
            "spelling: add it, so that the template can pass the flag as a parameter"
        )
    return action.dest


def _default_text(action: argparse.Action) -> str:
    default = action.default
    if default is None or default is False or default == "":
        return ""
    if isinstance(default, float):
        default = f"{default:g}"
    return f" Default: {default}."


def _help(action: argparse.Action) -> str:
    text = action.help or FALLBACK_HELP.get(action.dest)
    if not text:
        raise ValueError(
            f"ScoreOptions flag --{action.dest} has no help: give it help= (or add it to "
            "pipeline.flex.FALLBACK_HELP) so that the template can describe it"
        )
    if action.dest in NOTES:
        text += f"; {NOTES[action.dest]}"
    if action.choices:
        text += f". One of: {', '.join(action.choices)}"
    return text.rstrip(".") + "." + _default_text(action)


def _escape(text: str) -> str:
    """Regex metacharacters escaped, nothing else (`re.escape` also escapes `-`): the
    pattern is read by Dataflow's Java regex engine and by people."""
    return re.sub(r"([.^$*+?{}\[\]\\|()])", r"\\\1", text)


def _regexes(action: argparse.Action) -> list[str]:
    if action.dest in PATH_REGEXES:
        return [PATH_REGEXES[action.dest]]
    if _is_boolean(action):
        return [BOOLEAN_REGEX]
    if action.choices:
        return ["^(" + "|".join(_escape(c) for c in action.choices) + ")$"]
    if action.type is int:
        return [INT_REGEX]
    if action.type is float:
        return [FLOAT_REGEX]
    return []


def parameter(action: argparse.Action) -> dict:
    """One Flex Template parameter (Dataflow's ParameterMetadata) for a ScoreOptions flag."""
    name = parameter_name(action)
    out = {
        "name": name,
        "label": LABELS.get(name, name.replace("_", " ").capitalize()),
        "helpText": _help(action),
        "isOptional": name not in REQUIRED,
    }
    if _is_boolean(action):
        out["paramType"] = "BOOLEAN"
    elif action.choices:
        out["paramType"] = "ENUM"
        out["enumOptions"] = [{"value": c} for c in action.choices]
    else:
        out["paramType"] = "TEXT"
    regexes = _regexes(action)
    if regexes:
        out["regexes"] = regexes
    return out


def metadata() -> dict:
    """The template's metadata.json: name, description and one parameter per ScoreOptions
    flag but the FIXED ones. No Beam option is listed: Dataflow supplies project, region
    and the temp and staging locations itself, and takes others (sdk_container_image, ...)
    undeclared."""
    return {
        "name": TEMPLATE_NAME,
        "description": TEMPLATE_DESCRIPTION,
        "parameters": [parameter(a) for a in score_actions() if a.dest not in FIXED],
    }


def render_metadata() -> str:
    return json.dumps(metadata(), indent=2, ensure_ascii=False) + "\n"




def score_args(argv: list[str]) -> list[str]:
    """`pairscore score`'s arguments for what the template launcher passes.

    Dataflow passes a boolean parameter as `--overwrite=true` (or `=false`), which
    argparse refuses for an on/off flag: `true` becomes the bare flag, `false` drops it.
    A template always runs on Dataflow, so the runner defaults to DataflowRunner:
    `pairscore score`'s own default, the local runner, would score the whole input on the
    launcher VM. The FIXED flags are turned on.
    """
    actions = score_actions()
    booleans = {s for a in actions if _is_boolean(a) for s in a.option_strings}
    out = []
    for token in argv:
        flag, eq, value = token.partition("=")
        if eq and flag in booleans and value.lower() in ("true", "false"):
            if value.lower() == "true":
                out.append(flag)
            continue
        out.append(token)
    if not any(t == "--runner" or t.startswith("--runner=") for t in out):
        out.append("--runner=DataflowRunner")
    for action in actions:
        if action.dest in FIXED and _is_boolean(action) and f"--{action.dest}" not in out:
            out.append(f"--{action.dest}")
    return out


def main(argv: list[str] | None = None) -> int:
    """The template's entry point: `pairscore score` with the template's parameters."""
    from pipeline import cli

    argv = sys.argv[1:] if argv is None else list(argv)
    return cli.main(["score", *score_args(argv)])


def console() -> None:
    """What flex/main.py runs on the launcher VM (as the `pairscore` console script does:
    TensorFlow's native start-up noise dropped from stderr)."""
    from pipeline import logs

    logs.quiet_startup(native=True)
    sys.exit(main())


def cli(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["metadata"]:
        print("usage: python -m pipeline.flex metadata > flex/metadata.json", file=sys.stderr)
        return 2
    sys.stdout.write(render_metadata())
    return 0


if __name__ == "__main__":
    sys.exit(cli())
