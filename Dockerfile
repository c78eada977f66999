# One image for every stage, built from this repository and its lock file
# (BUILD.md, "Running on a cluster"):
# - the `pipeline`, `trainer` and `serving` console scripts (docker run --entrypoint ...);
# - the Beam SDK harness (/opt/apache/beam/boot, the default entry point), so
#   Dataflow, Flink and Spark workers run it as a custom container
#   (--sdk_container_image / --environment_config);
# - the Dataflow flex-template launcher, which starts `python -m pipeline`
#   with the template's parameters (FLEX_TEMPLATE_PYTHON_PY_FILE).
# Python and Beam versions must match requirements.lock (python 3.11, apache-beam 2.77.0):
# the SDK harness refuses a pipeline submitted from another Beam version.
ARG PYTHON_VERSION=3.11
ARG BEAM_VERSION=2.77.0

FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS beam
# `latest` moves: pin its digest (@sha256:...) once you have pulled it.
FROM gcr.io/dataflow-templates-base/python311-template-launcher-base:latest AS launcher

FROM python:${PYTHON_VERSION}-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=1
WORKDIR /opt/optfusion

# Dependencies first, exactly as pinned: a code change does not reinstall TensorFlow.
COPY requirements.lock ./
RUN pip install -r requirements.lock

COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY trainer ./trainer
COPY serving ./serving
COPY schemas ./schemas
# Editable, so the code keeps the repository layout it reads at run time (schemas/, trainer/configs/).
RUN pip install --no-deps -e . && python -c "import pipeline.cli, trainer.cli, serving.cli" \
    && printf 'from pipeline.cli import main\n\nmain()\n' > /opt/optfusion/flex_main.py

COPY --from=beam /opt/apache/beam /opt/apache/beam
COPY --from=launcher /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher
# Not pipeline/__main__.py: a script's own folder goes first on sys.path, and pipeline/'s
# modules (parse, transform, ...) would shadow top-level ones.
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/opt/optfusion/flex_main.py

# Dataflow starts workers and the flex-template launcher through this entry point;
# run the stages with e.g. `docker run --entrypoint trainer IMG --stage=search ...`.
ENTRYPOINT ["/opt/apache/beam/boot"]
