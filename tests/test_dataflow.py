"""The job Dataflow would receive, built by a dry run: no credentials, no network.

`DataflowRunner` with `--dry_run=True` translates the pipeline and returns a result whose
`job` holds the pipeline proto and the options; the worker-pool description (machine,
disk, image, accelerator) is what `apiclient.Environment` builds from those at
submission, so the tests build it the same way. The command documented in
docs/dataflow.md is run too, so the docs cannot drift from a job that builds.
"""

import re
import shlex
import socket
import threading

import pytest
from apache_beam.internal import pickler
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.dataflow.internal import apiclient

from pipeline import profiles
from pipeline.io import JobError
from pipeline.job import run
from tests.conftest import REPO

IMAGE = "us-central1-docker.pkg.dev/pairscore-test/pairscore/gpu:0.1.0"
# Beam validates these: a project id needs 6+ characters, a bucket name 3+.
CLOUD = [
    "--project=pairscore-test",
    "--region=us-central1",
    "--temp_location=gs://pairscore-test/tmp",
]
IO = [
    "--input=gs://pairscore-test/pairs/*.parquet",
    "--output=gs://pairscore-test/scored/run-1",
    "--model=gs://pairscore-test/models/default",
]
STAGES = {
    "ReadPairs",
    "ScorePairs/Validate",
    "ScorePairs/Rebatch",
    "ScorePairs/Tokenize",
    "ScorePairs/Score",
    "ScorePairs/Threshold",
    "ScorePairs/MergeRejects",
    "WriteResults/WriteLabels",
    "WriteResults/WriteRejects",
}


@pytest.fixture
def no_network(monkeypatch):
    """Every socket connection fails and is recorded: a dry run must make none. Recorded
    with the thread that tried. A thread left running by an earlier test in this process
    (a storage emulator's, a client's pool) is refused too but not recorded: it is not the
    dry run's (with pytest-xdist, which tests ran before in a worker varies)."""
    attempts = []
    main = threading.main_thread()
    earlier = {t.ident for t in threading.enumerate() if t is not main}

    def refuse(sock, address):
        if threading.get_ident() not in earlier:
            attempts.append((address, threading.current_thread().name))
        raise OSError(f"test: no network ({address})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


class Job:
    """A dry-run Dataflow job: its worker environment, transforms and DoFns."""

    def __init__(self, result):
        self.job = result.job
        self.environment = apiclient.Environment(
            packages=[],
            options=self.job.options,
            environment_version="8",
            proto_pipeline_staged_url="gs://pairscore-test/tmp/pipeline.pb",
            proto_pipeline=self.job.proto_pipeline,
        ).proto
        self.pool = self.environment.worker_pools[0]
        self.transforms = {
            t.unique_name: t for t in self.job.proto_pipeline.components.transforms.values()
        }

    def dofn(self, name: str):
        """The unpickled DoFn a worker would run for the ParDo named `name`."""
        spec = self.transforms[name].spec
        assert spec.urn == "beam:transform:pardo:v1", spec.urn
        payload = beam_runner_api_pb2.ParDoPayload.FromString(spec.payload)
        return pickler.loads(payload.do_fn.payload)[0]

    def dofn_under(self, stage: str, cls_name: str):
        names = [n for n in self.transforms if n.startswith(stage + "/")]
        for name in names:
            if self.transforms[name].spec.urn != "beam:transform:pardo:v1":
                continue
            fn = self.dofn(name)
            if type(fn).__name__ == cls_name:
                return fn
        raise AssertionError(f"no {cls_name} under {stage}: {names}")


def dry_run(argv) -> Job:
    result = run([*argv, "--dry_run=True"])
    assert hasattr(result, "job"), "not a Dataflow dry run"
    return Job(result)


def assert_gpu_job(job: Job, model: str):
    env, pool = job.environment, job.pool
    assert list(env.service_options) == [profiles.L4_ACCELERATOR]
    assert "use_runner_v2" in env.experiments
    assert "no_use_multiple_sdk_containers" in env.experiments
    # Beam adds this one unless told otherwise: it would start an SDK process per vCPU.
    assert "use_multiple_sdk_containers" not in env.experiments
    assert pool.machine_type == "g2-standard-4"
    assert pool.disk_size_gb == 50
    assert pool.autoscaling_settings.max_num_workers == 8
    assert [i.container_image for i in pool.sdk_harness_container_images] == [IMAGE]
    assert pool.worker_harness_container_image == IMAGE
    for env_proto in job.job.proto_pipeline.components.environments.values():
        docker = beam_runner_api_pb2.DockerPayload.FromString(env_proto.payload)
        assert docker.container_image == IMAGE
    assert STAGES <= set(job.transforms), sorted(STAGES - set(job.transforms))

    # RunInference with its dead-letter output: the DoFn runs inside Beam's wrapper.
    inference = job.dofn_under("ScorePairs/Score", "_ExceptionHandlingWrapperDoFn")._fn
    handler = inference._model_handler
    assert handler.share_model_across_processes() and handler.model_copies() == 1
    assert handler.should_skip_batching()  # each element is already one model batch
    assert handler._base.model_dir == model
    tokenize = job.dofn_under("ScorePairs/Tokenize", "_TokenizePairsFn")
    assert tokenize.cfg.batch_size == 1024  # the GPU default, not the CPU's 256
    assert tokenize.cfg.max_batch_tokens == 1024 * 64
    options = job.job.options.get_all_options()
    assert options["input"] == "gs://pairscore-test/pairs/*.parquet"
    assert options["output"] == "gs://pairscore-test/scored/run-1"


def test_profile_builds_the_gpu_job_without_network(no_network):
    job = dry_run(["--profile", "dataflow-gpu", *CLOUD, f"--sdk_container_image={IMAGE}", *IO])
    assert_gpu_job(job, "gs://pairscore-test/models/default")
    assert no_network == []


def documented_command() -> list[str]:
    """The command in docs/dataflow.md, with its shell variables filled in."""
    text = (REPO / "docs" / "dataflow.md").read_text()
    block = re.search(r"<!-- dataflow-command -->\s*```bash\n(.*?)```", text, re.S)
    assert block, "docs/dataflow.md lost its marked command block"
    values = {
        "PROJECT": "pairscore-test",
        "REGION": "us-central1",
        "BUCKET": "pairscore-test",
        "IMAGE": IMAGE,
        "RUN_DATE": "run-1",
    }
    command = re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], block.group(1))
    argv = shlex.split(command.replace("\\\n", " "))
    assert argv[:2] == ["pairscore", "score"], argv[:2]
    return argv[2:]


def test_documented_command_builds_the_same_job(no_network):
    argv = documented_command()
    assert not any(a.startswith("--profile") for a in argv), "the doc spells every flag out"
    # The documented output is gs://BUCKET/scored/RUN_DATE; the input and model are its own.
    job = dry_run(argv)
    assert_gpu_job(job, profiles.IMAGE_MODEL_DIR)
    assert no_network == []


def test_explicit_flags_win_over_the_profile():
    given = [
        "--profile=dataflow-gpu", *CLOUD, "--sdk_container_image", IMAGE,
        "--machine_type", "g2-standard-8", "--max_num_workers=2",
        "--experiments=shuffle_mode=service",
        "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:2;"
        "install-nvidia-driver",
    ]
    argv = profiles.expand(given)
    assert argv[: len(given)] == given
    added = argv[len(given):]
    assert not any(a.startswith(("--machine_type=", "--max_num_workers=")) for a in added)
    # The user's accelerator replaces the profile's, not joins it.
    assert not any(a.startswith("--dataflow_service_options=") for a in added)
    # Experiments merge: the profile's are added beside the user's.
    assert "--experiments=use_runner_v2" in added
    assert "--experiments=no_use_multiple_sdk_containers" in added
    assert "--device=gpu" in added


def test_a_misspelt_beam_flag_does_not_hide_the_profiles():
    # Beam takes --max_num_workers only; the dashed spelling would be ignored by Beam.
    argv = profiles.expand(
        ["--profile=dataflow-gpu", *CLOUD, f"--sdk_container_image={IMAGE}",
         "--max-num-workers=2"]
    )
    assert "--max_num_workers=8" in argv


def test_aliases_count_as_given():
    argv = profiles.expand([
        "--profile", "dataflow-gpu", *CLOUD, f"--worker_harness_container_image={IMAGE}",
        "--worker_machine_type=n1-standard-8", "--model-copies", "2",
    ])
    assert not any(a.startswith("--machine_type=") for a in argv)
    assert not any(a.startswith("--model_copies=") for a in argv)


def test_no_profile_changes_nothing():
    argv = ["--input", "x.parquet", "--output", "out", "--model", "m"]
    assert profiles.expand(argv) == argv


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--profile", "dataflow-tpu"], "unknown profile 'dataflow-tpu'; allowed: dataflow-gpu"),
        (["--profile=dataflow-gpu", *CLOUD], "--profile dataflow-gpu needs --sdk_container_image"),
        (["--profile=dataflow-gpu", f"--sdk_container_image={IMAGE}"],
         "needs --project, --region, --temp_location"),
    ],
)
def test_profile_errors_name_the_fix(argv, message):
    with pytest.raises(JobError, match=re.escape(message)):
        profiles.expand(argv)


def test_gpu_batches_are_larger_and_settable():
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.job import ScoreOptions, resolve

    def cfg(*flags):
        argv = ["--input=gs://b/p.parquet", "--output=gs://b/out", "--model=gs://b/m", *flags]
        return resolve(PipelineOptions(argv).view_as(ScoreOptions), dry_run=True)

    cpu, gpu, tuned = cfg(), cfg("--device=gpu"), cfg("--device=gpu", "--batch-size=4096")
    assert gpu.batch_size > cpu.batch_size and gpu.max_batch_tokens > cpu.max_batch_tokens
    assert (gpu.batch_size, gpu.max_batch_tokens) == (1024, 1024 * 64)
    assert (tuned.batch_size, tuned.max_batch_tokens) == (4096, 4096 * 64)


def test_one_shared_model_copy_scores_locally(bilstm_model, tmp_path):
    """The profile's --model_copies 1 puts the model behind Beam's multi-process proxy;
    the same path runs here on the local runner, on CPU."""
    from tests.conftest import PAIRS, write_pairs

    write_pairs(tmp_path / "pairs.parquet", PAIRS)
    result = run([
        f"--input={tmp_path / 'pairs.parquet'}", f"--output={tmp_path / 'out'}",
        f"--model={bilstm_model}", "--model_copies=1", "--device=gpu", "--mode=pairs",
    ])
    summary = result.summary
    assert summary["scored"] == len(PAIRS) and summary["invariant_holds"]
    assert summary["counters"]["rows_scored_on_cpu"] == len(PAIRS)


def test_the_final_step_runs_on_dataflow_after_both_writes(no_network):
    """The job publishes itself: the Dataflow graph ends in Finalize/Publish, whose side
    inputs are the files both writes finished (the ordering Beam guarantees on every
    runner), so nothing is left for a launcher that has gone away."""
    job = dry_run(["--profile", "dataflow-gpu", *CLOUD, f"--sdk_container_image={IMAGE}", *IO])
    producer = {}  # PCollection -> the innermost transform producing it
    for name, t in job.transforms.items():
        for pcoll in t.outputs.values():
            if len(name) > len(producer.get(pcoll, "")):
                producer[pcoll] = name
    publish = job.transforms["Finalize/Publish"]
    assert publish.spec.urn == "beam:transform:pardo:v1"
    payload = beam_runner_api_pb2.ParDoPayload.FromString(publish.spec.payload)
    side = [publish.inputs[tag] for tag in payload.side_inputs]
    sources = sorted(producer[p] for p in side)
    # labels, rejects, duplicates, distinct ids, the score histogram, the review file,
    # the groups' files and stats and the canaries' metrics (empty without
    # --group-by and --canaries), and the night's sample: its file and its design
    assert len(sources) == 11, sources
    for write in ("WriteResults/WriteLabels/", "WriteResults/WriteRejects/", "Review/Write/",
                  "Finalize/ScoreHistogram/"):
        assert any(s.startswith(write) for s in sources), (write, sources)
    assert job.dofn("Finalize/Publish").cfg.output == IO[1].split("=")[1]
    assert no_network == []
