"""Which model versions are served: disk polling, loading with warmup, unloading.

Mirrors TF Serving's file-system source + manager: every `poll_seconds` each
model's base_path is scanned for numeric version dirs; the version policy
(latest N, all, specific) decides which are aspired; new ones are loaded,
warmed up from `assets.extra/tf_serving_warmup_requests`, and only then
become AVAILABLE; the others are unloaded. A version that fails to load or
warm up ends in state END with its error, visible in GetModelStatus.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import threading

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_pb2,
    prediction_log_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from serving import handlers
from serving.configs import BatchingSettings
from serving.export import WARMUP_FILE, versions
from serving.servable import Servable, ServingError

State = get_model_status_pb2.ModelVersionStatus.State
MAX_WARMUP_RECORDS = 1000
log = logging.getLogger("serving")


@dataclasses.dataclass
class _Version:
    state: int
    servable: Servable | None = None
    error: str = ""


def replay_warmup(servable: Servable) -> int:
    """Runs the export's warmup records through the live request path."""
    path = servable.path / "assets.extra" / WARMUP_FILE
    if not path.is_file():
        return 0
    count = 0
    for record in tf.data.TFRecordDataset(str(path)).take(MAX_WARMUP_RECORDS):
        entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        kind = entry.WhichOneof("log_type")
        if kind == "predict_log":
            handlers.predict(servable, entry.predict_log.request)
        elif kind == "classify_log":
            handlers.classify(servable, entry.classify_log.request)
        else:
            raise ValueError(f"unsupported warmup record type {kind!r} in {path}")
        count += 1
    return count


class ModelManager:
    """Thread-safe registry of model versions, kept in line with the disk by polling."""

    def __init__(
        self,
        config: model_server_config_pb2.ModelServerConfig,
        batching: BatchingSettings,
        poll_seconds: float = 1.0,
    ):
        self._config = {m.name: m for m in config.model_config_list.config}
        self._batching = batching
        self._poll_seconds = poll_seconds
        self._lock = threading.Lock()
        self._versions: dict[str, dict[int, _Version]] = {name: {} for name in self._config}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll_loop, name="version-poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        with self._lock:
            entries = [v for model in self._versions.values() for v in model.values()]
        for entry in entries:
            if entry.servable is not None:
                entry.servable.stop()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self._poll_seconds)

    def _aspired(self, model: model_server_config_pb2.ModelConfig) -> set[int]:
        on_disk = versions(pathlib.Path(model.base_path))
        policy = model.model_version_policy
        kind = policy.WhichOneof("policy_choice")
        if kind == "all":
            return set(on_disk)
        if kind == "specific":
            return set(on_disk) & set(policy.specific.versions)
        keep = policy.latest.num_versions if kind == "latest" and policy.latest.num_versions else 1
        return set(on_disk[-keep:])

    def poll_once(self) -> None:
        """Loads newly aspired versions (newest first) and unloads the others."""
        for name, model in self._config.items():
            if self._stop.is_set():
                return
            aspired = self._aspired(model)
            with self._lock:
                known = self._versions[name]
                to_load = sorted(
                    (v for v in aspired
                     if v not in known or (known[v].state == State.END and not known[v].error)),
                    reverse=True,
                )
                to_unload = [
                    v for v, e in known.items() if v not in aspired and e.state == State.AVAILABLE
                ]
                for version in to_load:
                    known[version] = _Version(State.START)
            for version in to_load:
                self._load(name, version, pathlib.Path(model.base_path) / str(version))
            for version in to_unload:
                self._unload(name, version)

    def _set(self, name: str, version: int, **changes: object) -> None:
        with self._lock:
            entry = self._versions[name][version]
            for key, value in changes.items():
                setattr(entry, key, value)

    def _load(self, name: str, version: int, path: pathlib.Path) -> None:
        self._set(name, version, state=State.LOADING)
        servable = None
        try:
            servable = Servable(name, version, path, self._batching)
            records = replay_warmup(servable)
        except Exception as err:  # noqa: BLE001 - a bad version must not stop the server
            if servable is not None:
                servable.stop()
            message = f"loading {path} failed: {' '.join(str(err).split())[:500]}"
            log.error(message)
            self._set(name, version, state=State.END, error=message)
            return
        self._set(name, version, state=State.AVAILABLE, servable=servable)
        log.info("model %s version %d AVAILABLE (%d warmup records replayed)", name, version, records)

    def _unload(self, name: str, version: int) -> None:
        with self._lock:
            entry = self._versions[name][version]
            servable, entry.state, entry.servable = entry.servable, State.UNLOADING, None
        if servable is not None:
            servable.stop()
        self._set(name, version, state=State.END)
        log.info("model %s version %d unloaded", name, version)

    def servable(self, spec: model_pb2.ModelSpec) -> Servable:
        """The AVAILABLE servable a request's ModelSpec names (latest when unset)."""
        if spec.name not in self._config:
            raise ServingError(
                grpc.StatusCode.NOT_FOUND,
                f"model {spec.name!r} is not served; served models: {sorted(self._config)}",
            )
        with self._lock:
            available = {
                v: e.servable for v, e in self._versions[spec.name].items()
                if e.state == State.AVAILABLE and e.servable is not None
            }
        choice = spec.WhichOneof("version_choice")
        if choice == "version_label":
            labels = dict(self._config[spec.name].version_labels)
            if spec.version_label not in labels:
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND,
                    f"model {spec.name!r} has no version label {spec.version_label!r}",
                )
            wanted: int | None = labels[spec.version_label]
        elif choice == "version":
            wanted = spec.version.value
        else:
            wanted = max(available) if available else None
        if wanted is None or wanted not in available:
            what = f"version {wanted}" if wanted is not None else "any version"
            raise ServingError(
                grpc.StatusCode.NOT_FOUND,
                f"model {spec.name!r} has no AVAILABLE {what}; available: {sorted(available)}",
            )
        return available[wanted]

    def status(
        self, request: get_model_status_pb2.GetModelStatusRequest
    ) -> get_model_status_pb2.GetModelStatusResponse:
        spec = request.model_spec
        if spec.name not in self._config:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"model {spec.name!r} is not served")
        with self._lock:
            entries = {v: dataclasses.replace(e) for v, e in self._versions[spec.name].items()}
        if spec.HasField("version"):
            if spec.version.value not in entries:
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND,
                    f"model {spec.name!r} has no version {spec.version.value}",
                )
            entries = {spec.version.value: entries[spec.version.value]}
        if not entries:
            raise ServingError(
                grpc.StatusCode.NOT_FOUND, f"model {spec.name!r} has no version loaded yet"
            )
        response = get_model_status_pb2.GetModelStatusResponse()
        for version in sorted(entries, reverse=True):
            entry = entries[version]
            status = response.model_version_status.add(version=version, state=entry.state)
            if entry.error:
                status.status.error_code = grpc.StatusCode.UNKNOWN.value[0]
                status.status.error_message = entry.error
        return response
