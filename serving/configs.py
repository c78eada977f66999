"""The three TF Serving config files in a model base directory, as text protos.

One file per concern, as TF Serving's serving_config.md does it:
`models.config` (ModelServerConfig: which models, where, which versions),
`batching.config` (BatchingParameters) and `monitoring.config`
(MonitoringConfig: the Prometheus endpoint). The bundled server and
`tensorflow_model_server` read the same files.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shlex

from google.protobuf import message, text_format
from tensorflow_serving.config import model_server_config_pb2

from pipeline.atomic import write_text_atomic
from pipeline.errors import UsageError
from serving.protos import BatchingParameters, MonitoringConfig

MODELS_CONFIG = "models.config"
BATCHING_CONFIG = "batching.config"
MONITORING_CONFIG = "monitoring.config"
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
# A model name is a folder under BASE, a URL path segment of the REST API and a
# Prometheus label value: letters, digits, `_.-`, starting with a letter or digit
# (so never `.`/`..`), at most 128 characters.
MODEL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class ConfigFileError(UsageError):
    """A TF Serving config file is missing or does not parse."""


def check_model_name(name: str, where: str) -> str:
    """Returns `name`, or raises ConfigFileError saying why it cannot name a model."""
    if not MODEL_NAME_RE.fullmatch(name):
        raise ConfigFileError(
            f"{where}: model name {name!r} is not allowed; use 1-128 letters, digits, '_', '.' "
            "or '-', starting with a letter or digit (it becomes a folder and a URL segment)"
        )
    return name


def check_models_config(config: model_server_config_pb2.ModelServerConfig, where: str) -> None:
    """Every model has a valid, unique name and a base_path (what the server needs)."""
    if config.WhichOneof("config") != "model_config_list" or not config.model_config_list.config:
        raise ConfigFileError(f"{where} lists no model (model_config_list {{ config {{ ... }} }})")
    seen: set[str] = set()
    for model in config.model_config_list.config:
        if not model.name or not model.base_path:
            raise ConfigFileError(f"{where}: every model needs a name and a base_path")
        check_model_name(model.name, where)
        if model.name in seen:
            raise ConfigFileError(f"{where}: model {model.name!r} is listed twice")
        seen.add(model.name)


@dataclasses.dataclass(frozen=True)
class BatchingSettings:
    """Server-side batching: why a request may wait up to `timeout_micros`."""

    max_batch_size: int = 512
    batch_timeout_micros: int = 1000
    num_batch_threads: int = 2
    max_enqueued_batches: int = 100

    def to_proto(self) -> message.Message:
        proto = BatchingParameters()
        proto.max_batch_size.value = self.max_batch_size
        proto.batch_timeout_micros.value = self.batch_timeout_micros
        proto.num_batch_threads.value = self.num_batch_threads
        proto.max_enqueued_batches.value = self.max_enqueued_batches
        return proto

    @classmethod
    def from_proto(cls, proto: message.Message) -> BatchingSettings:
        """Unset fields keep the defaults above (as TF Serving does with its own)."""
        values = {}
        for field in dataclasses.fields(cls):
            if proto.HasField(field.name):
                values[field.name] = int(getattr(proto, field.name).value)
        settings = cls(**values)
        if settings.max_batch_size < 1 or settings.batch_timeout_micros < 0:
            raise ConfigFileError(
                "batching config: max_batch_size must be >= 1 and batch_timeout_micros >= 0. "
                f"Received: {settings}"
            )
        return settings


def _write_text(path: pathlib.Path, proto: message.Message) -> None:
    """Writes a text proto atomically: a polling server never reads half a config."""
    write_text_atomic(path, text_format.MessageToString(proto))


def read_text_proto(path: str | os.PathLike, proto: message.Message) -> message.Message:
    """Parses a text-format proto file into `proto`, with a one-line error."""
    path = pathlib.Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigFileError(f"cannot read {path}: {err.strerror}") from err
    try:
        return text_format.Parse(text, proto)
    except text_format.ParseError as err:
        raise ConfigFileError(
            f"{path} is not a valid {proto.DESCRIPTOR.name} text proto: {err}"
        ) from err


def read_models_config(path: str | os.PathLike) -> model_server_config_pb2.ModelServerConfig:
    """Reads models.config; relative base paths resolve against the config's folder."""
    config = read_text_proto(path, model_server_config_pb2.ModelServerConfig())
    check_models_config(config, str(path))
    folder = pathlib.Path(path).resolve().parent
    for model in config.model_config_list.config:
        model.base_path = str(folder / model.base_path)
    return config


def single_model_config(model_name: str, base_path: str | os.PathLike
                        ) -> model_server_config_pb2.ModelServerConfig:
    """The one-model config `--model_name` + `--model_base_path` stand for, as
    BuildSingleModelConfig (tensorflow_serving/model_servers/server.cc) builds it: the
    default version policy (latest 1), the base path made absolute."""
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.config.add(name=check_model_name(model_name, "--model_name"),
                                        base_path=str(pathlib.Path(base_path).resolve()),
                                        model_platform="tensorflow")
    return config


def update_models_config(base: pathlib.Path, model_name: str) -> pathlib.Path:
    """Adds (or keeps) `model_name` in BASE/models.config, serving its latest version.

    Base paths are absolute, so the file works from any working directory and,
    with BASE mounted at the same path, inside the tensorflow/serving container.
    """
    check_model_name(model_name, "--model_name")
    path = base / MODELS_CONFIG
    if path.exists():
        config = read_text_proto(path, model_server_config_pb2.ModelServerConfig())
    else:
        config = model_server_config_pb2.ModelServerConfig()
    models = config.model_config_list.config
    entry = next((m for m in models if m.name == model_name), None)
    if entry is None:
        entry = models.add(name=model_name, model_platform="tensorflow")
        entry.model_version_policy.latest.num_versions = 1
    entry.base_path = str((base / model_name).resolve())
    _write_text(path, config)
    return path


def write_batching_config(base: pathlib.Path, settings: BatchingSettings) -> pathlib.Path:
    path = base / BATCHING_CONFIG
    _write_text(path, settings.to_proto())
    return path


def read_batching_config(path: str | os.PathLike) -> BatchingSettings:
    return BatchingSettings.from_proto(read_text_proto(path, BatchingParameters()))


def write_monitoring_config(base: pathlib.Path) -> pathlib.Path:
    path = base / MONITORING_CONFIG
    proto = MonitoringConfig()
    proto.prometheus_config.enable = True
    proto.prometheus_config.path = PROMETHEUS_PATH
    _write_text(path, proto)
    return path


def read_monitoring_config(path: str | os.PathLike) -> message.Message:
    return read_text_proto(path, MonitoringConfig())


def official_server_command(base: pathlib.Path, grpc_port: int = 8500, rest_port: int = 8501,
                            grpc_socket_path: str | None = None) -> str:
    """The `tensorflow_model_server` command line that serves BASE in production.

    TF Serving binds its ports on all interfaces and has no bind-address flag;
    `grpc_socket_path` serves gRPC on that UNIX socket instead of a TCP port
    (`--port=0`), off the network, e.g. for a test on a shared machine.
    """
    base = base.resolve()
    listen = ([f"--port={grpc_port}"] if grpc_socket_path is None
              else ["--port=0", f"--grpc_socket_path={grpc_socket_path}"])
    args = [
        "tensorflow_model_server",
        *listen,
        f"--rest_api_port={rest_port}",
        f"--model_config_file={base / MODELS_CONFIG}",
        "--model_config_file_poll_wait_seconds=60",
        "--file_system_poll_wait_seconds=1",
        "--enable_batching=true",
        f"--batching_parameters_file={base / BATCHING_CONFIG}",
        f"--monitoring_config_file={base / MONITORING_CONFIG}",
        "--enable_model_warmup=true",
    ]
    return " ".join(shlex.quote(a) for a in args)
