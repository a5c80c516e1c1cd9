"""Flag presets: `--profile dataflow-gpu` expands to every flag a Dataflow GPU run needs.

    pairscore score --profile dataflow-gpu \\
        --project my-project --region us-central1 --temp_location gs://my-bucket/tmp \\
        --sdk_container_image us-central1-docker.pkg.dev/my-project/pairscore/gpu:0.1.0 \\
        --input 'gs://my-bucket/pairs/*.parquet' --output gs://my-bucket/scored/2025-01-31

A flag given on the command line wins over the profile's. The list flags
(`--experiments`, `--dataflow_service_options`) are merged: the profile adds each of its
entries unless the command line already sets that key. docs/dataflow.md says why each
flag is there.
"""

from __future__ import annotations

import dataclasses

from pipeline.io import JobError

# Where the Dockerfile bakes the default model; the profile's default --model.
IMAGE_MODEL_DIR = "/opt/pairscore/models/default"
L4_ACCELERATOR = "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"

# Flags that accumulate (argparse action="append") instead of replacing each other.
LIST_FLAGS = ("experiments", "dataflow_service_options")
# Other spellings of the same options, so that a user's value is recognised. Only
# these: Beam does not accept dashes for its own flags, so `--max-num-workers` is not
# `--max_num_workers` and must not stop the profile from setting the real one.
ALIASES = {
    "model-copies": "model_copies",
    "experiment": "experiments",
    "dataflow_service_option": "dataflow_service_options",
    "worker_machine_type": "machine_type",
    "worker_harness_container_image": "sdk_container_image",
}


@dataclasses.dataclass(frozen=True)
class Preset:
    """One flag of a profile, with the reason it is there."""

    name: str
    value: str
    why: str


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    presets: tuple[Preset, ...]
    required: tuple[str, ...] = ()


DATAFLOW_GPU = Profile(
    name="dataflow-gpu",
    presets=(
        Preset("runner", "DataflowRunner", "run on Google Cloud Dataflow"),
        Preset("experiments", "use_runner_v2",
               "Runner v2, the only runner that takes a custom SDK container"),
        Preset("experiments", "no_use_multiple_sdk_containers",
               "one SDK process per worker VM (not one per vCPU), so one process owns the "
               "GPU and its memory"),
        Preset("dataflow_service_options", L4_ACCELERATOR,
               "one NVIDIA L4 per worker; Dataflow installs the driver"),
        Preset("machine_type", "g2-standard-4",
               "L4 GPUs attach only to G2 machines; 4 vCPUs and 16 GB feed tokenization"),
        Preset("disk_size_gb", "50",
               "the image is several GB compressed and is pulled and unpacked on every worker"),
        Preset("max_num_workers", "8", "caps autoscaling, and so the cost of a run"),
        Preset("device", "gpu", "GPU batch defaults: 1024 pairs and 64 tokens per row a call"),
        Preset("model_copies", "1",
               "one model per worker, shared by every thread through Beam's model server"),
        Preset("model", IMAGE_MODEL_DIR, "the default model baked into the image"),
    ),
    required=("project", "region", "temp_location", "sdk_container_image"),
)

PROFILES = {p.name: p for p in (DATAFLOW_GPU,)}


def _flag_name(token: str) -> str | None:
    if not token.startswith("--") or token == "--":
        return None
    name = token[2:].split("=", 1)[0]
    return ALIASES.get(name, name)


def _given(argv: list[str]) -> dict[str, list[str]]:
    """Flag name -> values given in argv (both `--flag=value` and `--flag value`)."""
    given: dict[str, list[str]] = {}
    for i, token in enumerate(argv):
        name = _flag_name(token)
        if name is None:
            continue
        if "=" in token:
            value = token.split("=", 1)[1]
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value = argv[i + 1]
        else:
            value = ""
        given.setdefault(name, []).append(value)
    return given


def _key(entry: str) -> str:
    return entry.split("=", 1)[0]


def expand(argv: list[str]) -> list[str]:
    """`argv` plus the flags of the profile it names that argv does not set itself.

    Raises JobError for an unknown profile or when a flag the profile cannot guess
    (project, bucket, image) is missing.
    """
    given = _given(argv)
    names = given.get("profile")
    if not names:
        return list(argv)
    profile = PROFILES.get(names[-1])
    if profile is None:
        raise JobError(
            f"unknown profile {names[-1]!r}; allowed: {', '.join(sorted(PROFILES))}"
        )
    added: list[str] = []
    for preset in profile.presets:
        if preset.name in LIST_FLAGS:
            keys = {_key(v) for v in given.get(preset.name, [])}
            if _key(preset.value) in keys:
                continue
        elif preset.name in given:
            continue
        added.append(f"--{preset.name}={preset.value}")
    missing = [f"--{name}" for name in profile.required if name not in given]
    if missing:
        raise JobError(f"--profile {profile.name} needs {', '.join(missing)}")
    return list(argv) + added
