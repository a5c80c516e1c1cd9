"""The Flex Template against `pairscore score`: its parameters, the documented launches,
and its entry point.

flex/metadata.json must declare exactly ScoreOptions' flags (read here from ScoreOptions
itself), under the spelling Dataflow passes back, and be what `python -m pipeline.flex
metadata` writes. The gcloud and Airflow launches in docs/dataflow.md are read from the doc
(the Airflow DAG is executed against stand-ins for Airflow's classes). Every launch is then
built as Dataflow would start it, by the template's entry point in a dry run (no network),
and compared with the job `pairscore score` builds from the same flags.
"""

import argparse
import json
import re
import shlex
import sys
import types

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import cli, flex, job, profiles
from pipeline.options import ScoreOptions, known_flags
from tests.conftest import REPO
from tests.test_dataflow import IMAGE, Job, no_network  # noqa: F401  (a fixture, used below)

DOC = REPO / "docs" / "dataflow.md"
METADATA = REPO / "flex" / "metadata.json"
REGENERATE = "regenerate it: .venv/bin/python -m pipeline.flex metadata > flex/metadata.json"
SHELL_VALUES = {
    "PROJECT": "pairscore-test",
    "REGION": "us-central1",
    "BUCKET": "pairscore-test",
    "IMAGE": IMAGE,
    "RUN_DATE": "2025-01-31",
}
DS = "2025-01-31"


def score_flags() -> dict[str, argparse.Action]:
    """dest -> argparse action, from ScoreOptions directly (not through pipeline.flex)."""
    parser = argparse.ArgumentParser(add_help=False)
    ScoreOptions._add_argparse_args(parser)
    return {a.dest: a for a in parser._actions}


def template_flags() -> dict[str, argparse.Action]:
    """The flags a template launch takes as parameters: all but those it always sets."""
    return {d: a for d, a in score_flags().items() if d not in flex.FIXED}


def forced_flags() -> list[str]:
    """The flags every template launch turns on (--detach): `pairscore score` needs them
    too, to build the same job."""
    return [f"--{d}" for d in score_flags() if d in flex.FIXED]


def beam_options() -> set[str]:
    """Every option name Beam itself parses (not pairscore's), without the dashes."""
    ours = {s for a in score_flags().values() for s in a.option_strings}
    return {f[2:] for f in known_flags() if f.startswith("--") and f not in ours}


@pytest.fixture
def network_refused(request):
    """test_dataflow's `no_network`: every socket connection fails and is recorded."""
    return request.getfixturevalue("no_network")


@pytest.fixture(scope="module")
def parameters() -> dict[str, dict]:
    return {p["name"]: p for p in json.loads(METADATA.read_text())["parameters"]}


# --- the parameters are the command's flags ------------------------------------------------


def test_every_flag_is_a_parameter(parameters):
    missing = sorted(set(template_flags()) - set(parameters))
    assert not missing, f"ScoreOptions flags not in flex/metadata.json: {missing}; {REGENERATE}"


def test_the_flags_a_template_sets_itself_are_on_and_not_parameters(parameters):
    assert not set(parameters) & set(flex.FIXED)
    flags = score_flags()
    opts = PipelineOptions(flex.score_args(["--detach=false"] if "detach" in flags else []))
    for dest in set(flex.FIXED) & set(flags):
        assert isinstance(flags[dest], argparse._StoreTrueAction), dest
        assert getattr(opts.view_as(ScoreOptions), dest) is True, dest


def test_every_parameter_is_a_flag_under_the_spelling_beam_parses(parameters):
    flags = score_flags()
    for name in parameters:
        assert name in flags, f"parameter {name} is no ScoreOptions flag; {REGENERATE}"
        # Dataflow passes `--name=value`: that spelling must be the flag's own.
        assert f"--{name}" in flags[name].option_strings, (name, flags[name].option_strings)
    assert not set(parameters) & beam_options(), "Beam's own options are Dataflow's to supply"


def test_committed_metadata_is_what_the_generator_writes(capsys):
    assert flex.cli(["metadata"]) == 0
    written = capsys.readouterr().out
    assert written == METADATA.read_text(), f"flex/metadata.json is stale; {REGENERATE}"


def _sample(action: argparse.Action) -> tuple[str, object]:
    """A template value for the flag, and the value ScoreOptions should parse it to."""
    if isinstance(action, argparse._StoreTrueAction):
        return "true", True
    if action.choices:
        value = list(action.choices)[-1]
        return value, value
    if action.type is int:
        return "7", 7
    if action.type is float:
        return "0.25", 0.25
    return {"input": "gs://b/p/*.parquet", "output": "gs://b/out", "model": "gs://b/m",
            "embedding_store": "gs://b/store"}.get(
        action.dest, "col_x"
    ), None


def test_each_parameter_as_dataflow_passes_it_sets_its_flag(parameters):
    for name, action in template_flags().items():
        value, parsed = _sample(action)
        for pattern in parameters.get(name, {}).get("regexes", []):
            assert re.fullmatch(pattern, value), (name, pattern, value)
        argv = flex.score_args([f"--{name}={value}"])
        opts = PipelineOptions(argv).view_as(ScoreOptions)
        assert getattr(opts, action.dest) == (value if parsed is None else parsed), name


def test_false_leaves_a_boolean_off_and_the_runner_defaults_to_dataflow():
    argv = flex.score_args(["--overwrite=false", "--large_model=True", "--input=gs://b/x"])
    fixed = forced_flags()
    assert argv == ["--large_model", "--input=gs://b/x", "--runner=DataflowRunner", *fixed]
    opts = PipelineOptions(argv).view_as(ScoreOptions)
    assert (opts.overwrite, opts.large_model) == (False, True)
    assert flex.score_args(["--runner=DirectRunner"]) == ["--runner=DirectRunner", *fixed]
    # Only on/off flags are translated: a column may well be called "true".
    assert flex.score_args(["--id_column=true", "--runner", "X"]) == [
        "--id_column=true", "--runner", "X", *fixed]


@pytest.mark.parametrize(
    "name, bad", [("input", "pairs/*.parquet"), ("output", "/tmp/out"), ("overwrite", "yes"),
                  ("batch_size", "1.5"), ("threshold", "abc"), ("device", "tpu"),
                  ("model", "models/default")],
)
def test_regexes_refuse_what_the_job_would(parameters, name, bad):
    assert not any(re.fullmatch(p, bad) for p in parameters[name]["regexes"])


def test_defaults_pass_their_own_regexes(parameters):
    for name, action in template_flags().items():
        default = action.default
        if default in (None, "", False):
            continue
        text = f"{default:g}" if isinstance(default, float) else str(default)
        for pattern in parameters.get(name, {}).get("regexes", []):
            assert re.fullmatch(pattern, text), (name, pattern, text)


def test_required_parameters(parameters):
    required = {n for n, p in parameters.items() if not p["isOptional"]}
    assert required == {"input", "output"}
    # --model is optional only because the profile supplies the image's model.
    assert any(p.name == "model" for p in profiles.DATAFLOW_GPU.presets)


# --- the documented launches ---------------------------------------------------------------


def doc_block(marker: str, lang: str) -> str:
    text = DOC.read_text()
    block = re.search(rf"<!-- {marker} -->\s*```{lang}\n(.*?)```", text, re.S)
    assert block, f"docs/dataflow.md lost its {marker} block"
    return block.group(1)


def shell_words(block: str, values: dict[str, str]) -> list[str]:
    command = re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], block)
    return shlex.split(command.replace("\\\n", " "))


def gcloud_flags(words: list[str]) -> list[tuple[str, str]]:
    out, i = [], 0
    while i < len(words):
        word = words[i]
        if word.startswith("--"):
            if "=" in word:
                out.append(tuple(word.split("=", 1)))
            else:
                out.append((word, words[i + 1]))
                i += 1
        i += 1
    return out


def template_path(values: dict[str, str]) -> tuple[str, list[str]]:
    """The TEMPLATE the build block assigns, and the build command's words."""
    block = doc_block("flex-template-build", "bash")
    assignment = re.search(r"^TEMPLATE=(\S+)$", block, re.M)
    assert assignment, "the build block no longer sets TEMPLATE"
    path = shell_words(assignment.group(1), values)[0]
    command = block[assignment.end():]
    return path, shell_words(command, {**values, "TEMPLATE": path})


def dataflow_supplied(project, region, temp, staging, job_name) -> list[str]:
    """What Dataflow passes the entry point beside the parameters: a template launch stages
    the job at --template_location for Dataflow to submit (apache/beam#21773)."""
    return [
        f"--project={project}", f"--region={region}", f"--temp_location={temp}",
        f"--staging_location={staging}", f"--job_name={job_name}",
        f"--template_location={staging}/template_launches/launch-1/job_object",
    ]


def check_names(given: dict[str, str], parameters: dict[str, dict]):
    unknown = set(given) - set(parameters) - beam_options()
    assert not unknown, f"not template parameters nor Beam options: {sorted(unknown)}"
    missing = {n for n, p in parameters.items() if not p["isOptional"]} - set(given)
    assert not missing, f"required parameters missing: {sorted(missing)}"
    assert "model" in given or "profile" in given, "no model: give model= or profile="
    for name, value in given.items():
        for pattern in parameters.get(name, {}).get("regexes", []):
            assert re.fullmatch(pattern, value), f"{name}={value} fails {pattern}"


def test_documented_build_uses_the_image_and_the_metadata():
    path, words = template_path(SHELL_VALUES)
    assert words[:5] == ["gcloud", "dataflow", "flex-template", "build", path]
    flags = dict(gcloud_flags(words))
    assert flags["--image"] == IMAGE  # the worker image of section 1, not a second one
    assert flags["--sdk-language"] == "PYTHON"
    assert (REPO / flags["--metadata-file"]).resolve() == METADATA.resolve()


def documented_run() -> tuple[dict[str, str], list[str]]:
    """The gcloud run block: its parameters, and what Dataflow would pass besides."""
    path, _ = template_path(SHELL_VALUES)
    words = shell_words(doc_block("flex-template-run", "bash"),
                        {**SHELL_VALUES, "TEMPLATE": path})
    assert words[:4] == ["gcloud", "dataflow", "flex-template", "run"]
    flags = gcloud_flags(words[5:])
    given = {}
    for flag, value in flags:
        if flag == "--parameters":  # gcloud's dict flag: KEY=VALUE[,KEY=VALUE...]
            given.update(item.split("=", 1) for item in value.split(","))
    named = dict(flags)
    assert named["--template-file-gcs-location"] == path
    return given, dataflow_supplied(named["--project"], named["--region"],
                                    named["--temp-location"], named["--staging-location"],
                                    words[4])


def test_documented_run_passes_template_parameters(parameters):
    given, _ = documented_run()
    check_names(given, parameters)


class _Task:
    made: dict[str, dict] = {}

    def __init__(self, **kwargs):
        _Task.made[type(self).__name__] = kwargs

    def __rshift__(self, other):
        return other


class _Dag:
    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def airflow_tasks(monkeypatch) -> dict[str, dict]:
    """Run the doc's DAG file against stand-ins for Airflow's classes; their arguments."""
    names = {
        "airflow": {"DAG": _Dag},
        "airflow.providers": {},
        "airflow.providers.google": {},
        "airflow.providers.google.cloud": {},
        "airflow.providers.google.cloud.operators": {},
        "airflow.providers.google.cloud.operators.dataflow": {
            "DataflowStartFlexTemplateOperator": type("DataflowStartFlexTemplateOperator",
                                                      (_Task,), {})},
        "airflow.providers.google.cloud.sensors": {},
        "airflow.providers.google.cloud.sensors.gcs": {
            "GCSObjectExistenceSensor": type("GCSObjectExistenceSensor", (_Task,), {})},
    }
    for name, attrs in names.items():
        module = types.ModuleType(name)
        module.__path__ = []
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)
    _Task.made = {}
    code = doc_block("airflow-dag", "python")
    exec(compile(code, "docs/dataflow.md:airflow-dag", "exec"), {"__name__": "pairscore_dag"})
    return dict(_Task.made)


def render(text: str) -> str:
    """Airflow's rendering of the two macros the DAG uses, for one night."""
    return text.replace("{{ ds }}", DS).replace("{{ ds_nodash }}", DS.replace("-", ""))


def documented_dag(monkeypatch) -> tuple[dict, dict[str, str], list[str]]:
    tasks = airflow_tasks(monkeypatch)
    operator = tasks["DataflowStartFlexTemplateOperator"]
    launch = operator["body"]["launchParameter"]
    given = {k: render(v) for k, v in launch["parameters"].items()}
    env = launch.get("environment", {})
    supplied = dataflow_supplied(operator["project_id"], operator["location"],
                                 env["tempLocation"], env["stagingLocation"],
                                 render(launch["jobName"]))
    return tasks, given, supplied


def test_documented_dag_passes_template_parameters(monkeypatch, parameters):
    tasks, given, _ = documented_dag(monkeypatch)
    check_names(given, parameters)
    operator = tasks["DataflowStartFlexTemplateOperator"]
    launch = operator["body"]["launchParameter"]
    assert "{{ ds }}" in launch["parameters"]["output"], "each night needs its own output"
    # A scheduler submits and moves on.
    assert operator["wait_until_finished"] is False
    # The DAG launches the template the build block makes, and waits for this night's
    # _SUCCESS.
    bucket = re.match(r"gs://([^/]+)/", launch["containerSpecGcsPath"]).group(1)
    path, _ = template_path({**SHELL_VALUES, "BUCKET": bucket})
    assert launch["containerSpecGcsPath"] == path
    sensor = tasks["GCSObjectExistenceSensor"]
    assert f"gs://{sensor['bucket']}/{render(sensor['object'])}" == given["output"] + "/_SUCCESS"


# --- the entry point builds the command's job ------------------------------------------------


def launched(monkeypatch, entry, argv) -> Job:
    """The dry-run job `entry(argv)` builds, through the `pairscore` command's code."""
    results, real = [], job.run

    def recording(argv=None, **kwargs):
        results.append(real(argv, **kwargs))
        return results[-1]

    monkeypatch.setattr(job, "run", recording)
    assert entry([*argv, "--dry_run=True"]) == 0
    monkeypatch.setattr(job, "run", real)
    (result,) = results
    assert hasattr(result, "job"), "not a Dataflow dry run"
    return Job(result)


def described(j: Job) -> dict:
    score = j.job.options.view_as(ScoreOptions)
    pool = j.pool
    return {
        "transforms": sorted(j.transforms),
        "score_options": {dest: getattr(score, dest) for dest in score_flags()},
        "machine_type": pool.machine_type,
        "disk_size_gb": pool.disk_size_gb,
        "max_num_workers": pool.autoscaling_settings.max_num_workers,
        "image": pool.worker_harness_container_image,
        "experiments": sorted(j.environment.experiments),
        "service_options": sorted(j.environment.service_options),
    }


def as_cli_flags(given: dict[str, str]) -> list[str]:
    """The same settings as `pairscore score` flags: an on/off flag bare or left out."""
    flags = score_flags()
    out = []
    for name, value in given.items():
        if name in flags and isinstance(flags[name], argparse._StoreTrueAction):
            out += [f"--{name}"] if value == "true" else []
        else:
            out.append(f"--{name}={value}")
    return out


def assert_same_job(monkeypatch, given: dict[str, str], supplied: list[str]) -> dict:
    template = launched(monkeypatch, flex.main, [*(f"--{k}={v}" for k, v in given.items()),
                                                 *supplied])
    command = launched(monkeypatch, lambda argv: cli.main(["score", *argv]),
                       [*as_cli_flags(given), *supplied, "--runner=DataflowRunner",
                        *forced_flags()])
    assert described(template) == described(command)
    return described(template)


GPU = {
    "profile": "dataflow-gpu",
    "sdk_container_image": IMAGE,
    "input": "gs://pairscore-test/pairs/*.parquet",
    "output": "gs://pairscore-test/scored/run-1",
}
CPU = {
    "input": "gs://pairscore-test/pairs/*.parquet",
    "output": "gs://pairscore-test/scored/run-1",
    "model": "gs://pairscore-test/models/default",
    "id_column": "id",
    "keep_columns": "lang,source",
    "threshold": "0.7",
    "overwrite": "true",
    "large_model": "false",
    "batch_size": "512",
    "mode": "unique",
    "unique_join": "shuffle",
    "max_model_error_ratio": "0",
}
SUPPLIED = dataflow_supplied("pairscore-test", "us-central1", "gs://pairscore-test/tmp",
                             "gs://pairscore-test/staging", "pairscore-run-1")


@pytest.mark.slow  # the CPU job is built in the default run
def test_entry_point_builds_the_gpu_job_of_the_command(monkeypatch, network_refused):
    job_ = assert_same_job(monkeypatch, GPU, SUPPLIED)
    assert job_["machine_type"] == "g2-standard-4" and job_["image"] == IMAGE
    assert job_["score_options"]["model"] == profiles.IMAGE_MODEL_DIR
    assert "ScorePairs/Score" in job_["transforms"] or "ScoreUniqueTexts" in str(
        job_["transforms"])
    assert network_refused == []


def test_entry_point_builds_the_cpu_job_of_the_command(monkeypatch, network_refused):
    job_ = assert_same_job(monkeypatch, CPU, SUPPLIED)
    score = job_["score_options"]
    assert (score["overwrite"], score["large_model"], score["batch_size"]) == (True, False, 512)
    assert any(t.startswith("ScoreUniqueTexts/") for t in job_["transforms"])
    assert network_refused == []


@pytest.mark.slow  # two dry-run graphs
def test_the_comparison_sees_a_different_flag(monkeypatch, network_refused):
    template = launched(monkeypatch, flex.main, [*(f"--{k}={v}" for k, v in CPU.items()),
                                                 *SUPPLIED])
    other = dict(CPU, batch_size="256")
    command = launched(monkeypatch, lambda argv: cli.main(["score", *argv]),
                       [*as_cli_flags(other), *SUPPLIED, "--runner=DataflowRunner",
                        *forced_flags()])
    assert described(template) != described(command)


def test_documented_run_builds_the_commands_job(monkeypatch, network_refused):
    given, supplied = documented_run()
    assert_same_job(monkeypatch, given, supplied)
    assert network_refused == []


def test_documented_dag_builds_the_commands_job(monkeypatch, network_refused):
    _, given, supplied = documented_dag(monkeypatch)
    job_ = assert_same_job(monkeypatch, given, supplied)
    assert job_["score_options"]["output"].endswith(f"/scored/{DS}")
    assert network_refused == []
