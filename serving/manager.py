"""Which model versions are served: disk polling, loading with warmup, retries, unloading.

Mirrors TF Serving's file-system source + manager: every `poll_seconds` each
model's base_path is scanned for numeric version dirs; the version policy
(latest N, all, specific) decides which are aspired; new ones are loaded,
warmed up from `assets.extra/tf_serving_warmup_requests` (unless
`--enable_model_warmup=false`), and only then become AVAILABLE. A version dir
without saved_model.pb (empty, or still being copied) is skipped with a
warning naming it, once. A failed load is retried `max_load_retries` times,
`retry_interval_s` apart (TF Serving's `--max_num_load_retries`,
`--load_retry_interval_micros`), then ends in END with its error, visible in
GetModelStatus. Unloading follows TF Serving's availability-preserving
policy: a version that is no longer aspired stays while no aspired version
is AVAILABLE, so a broken new version never takes the model down.

Version labels follow ServerCore::UpdateModelVersionLabelMap
(tensorflow_serving/model_servers/server_core.cc): a config is refused
(FAILED_PRECONDITION) when a label names a version that is not AVAILABLE,
unless `--allow_version_labels_for_unavailable_models`, which allows it for a
new label or one that keeps its version (moving a label still needs the
target AVAILABLE); a request naming an unknown label is INVALID_ARGUMENT.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import threading
import time

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
from serving.export import VERSION_RE, WARMUP_FILE, versions
from serving.limits import CALLER_THREAD_ROWS, DEFAULT_MAX_ROWS
from serving.servable import RuntimeObserver, Servable, ServingError
from serving.session_loader import session_config

State = get_model_status_pb2.ModelVersionStatus.State
MAX_WARMUP_RECORDS = 1000  # WarmupConsts::kMaxNumRecords (saved_model_warmup_util.h)
log = logging.getLogger("serving")


@dataclasses.dataclass(frozen=True)
class LoadPolicy:
    """How versions are loaded and labelled: TF Serving's retry, session-thread, warmup and
    label flags, and our per-request row limit."""

    max_load_retries: int = 5
    retry_interval_s: float = 60.0
    max_rows: int = DEFAULT_MAX_ROWS
    inter_op_threads: int = 0  # --tensorflow_inter_op_parallelism
    intra_op_threads: int = 0  # --tensorflow_intra_op_parallelism
    caller_thread_rows: int = CALLER_THREAD_ROWS  # --caller_thread_max_rows
    warmup: bool = True  # --enable_model_warmup
    labels_for_unavailable: bool = False  # --allow_version_labels_for_unavailable_models


class ModelLoadError(RuntimeError):
    """A model has no version that loads (after every retry)."""


@dataclasses.dataclass
class _Version:
    state: int
    servable: Servable | None = None
    error: str = ""
    failures: int = 0
    retry_at: float | None = None  # monotonic time of the next load attempt, while retrying

def replay_warmup(servable: Servable) -> int:
    """Runs the export's warmup records through the live request path; more than
    MAX_WARMUP_RECORDS fail the load, as in TF Serving (saved_model_warmup_util.cc)."""
    path = servable.path / "assets.extra" / WARMUP_FILE
    if not path.is_file():
        return 0
    count = 0
    for record in tf.data.TFRecordDataset(str(path)):
        if count == MAX_WARMUP_RECORDS:
            raise ValueError(f"Number of warmup records exceeds the maximum "
                             f"({MAX_WARMUP_RECORDS}) at {path}")
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
        policy: LoadPolicy = LoadPolicy(),
        on_runtime: RuntimeObserver | None = None,
    ):
        """ServingError FAILED_PRECONDITION when `config` labels a version not yet loaded
        (without `policy.labels_for_unavailable`)."""
        self._batching = batching
        self._poll_seconds = poll_seconds
        self._policy = policy
        self._on_runtime = on_runtime
        self._lock = threading.Lock()  # guards _config, _labels and _versions
        self._poll_lock = threading.Lock()  # one poll (load/unload pass) at a time
        self._config: dict[str, model_server_config_pb2.ModelConfig] = {}
        self._labels: dict[str, dict[str, int]] = {}  # model -> label -> version
        self._versions: dict[str, dict[int, _Version]] = {}
        self._warned: set[str] = set()  # disk warnings already logged (once each)
        self._set_config(config)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll_loop, name="version-poller", daemon=True)

    def serves(self, name: str) -> bool:
        """Whether `name` is a configured model (the only names metrics may carry)."""
        with self._lock:
            return name in self._config

    def _label_map(self, config: model_server_config_pb2.ModelServerConfig
                   ) -> dict[str, dict[str, int]]:
        """The labels `config` assigns, checked as UpdateModelVersionLabelMap does (caller holds
        the lock)."""
        labels: dict[str, dict[str, int]] = {}
        for model in config.model_config_list.config:
            known = self._versions.get(model.name, {})
            for label, version in model.version_labels.items():
                current = self._labels.get(model.name, {}).get(label)
                allowed = self._policy.labels_for_unavailable and current in (None, version)
                entry = known.get(version)
                if not allowed and (entry is None or entry.state != State.AVAILABLE):
                    raise ServingError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"Request to assign label to version {version} of model {model.name}, "
                        "which is not currently available for inference (to label a version "
                        "before it loads, pass --allow_version_labels_for_unavailable_models)")
                labels.setdefault(model.name, {})[label] = version
        return labels

    def _set_config(self, config: model_server_config_pb2.ModelServerConfig) -> list[str]:
        """Installs a model list and its labels; returns the names of models it drops."""
        with self._lock:
            self._labels = self._label_map(config)
            self._config = {m.name: m for m in config.model_config_list.config}
            dropped = [name for name in self._versions if name not in self._config]
            for name in self._config:
                self._versions.setdefault(name, {})
        return dropped

    def start(self) -> None:
        """Starts the background poller (after `wait_until_available`, as the server does)."""
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
            self._stop.wait(self._next_wait())

    def _next_wait(self) -> float:
        """Seconds until the next poll: the poll interval, or sooner when a retry is due."""
        with self._lock:
            due = [e.retry_at for model in self._versions.values() for e in model.values()
                   if e.retry_at is not None]
        wait = self._poll_seconds
        if due:
            wait = min(wait, max(0.0, min(due) - time.monotonic()))
        return wait

    def _warn_once(self, message: str) -> None:
        """Logs a disk problem once (polls repeat every second), not on every poll."""
        with self._lock:
            if message in self._warned:
                return
            self._warned.add(message)
        log.warning("%s", message)

    def _aspired(self, model: model_server_config_pb2.ModelConfig) -> set[int]:
        base = pathlib.Path(model.base_path)
        on_disk = versions(base)
        if base.is_dir():
            for child in sorted(base.iterdir()):
                if VERSION_RE.match(child.name) and int(child.name) not in on_disk:
                    self._warn_once(f"model {model.name}: version directory {child} has no "
                                    "saved_model.pb (empty, broken or still being copied); "
                                    "skipped until it has one")
        if not on_disk:
            self._warn_once(f"No versions of servable {model.name} found under base path "
                            f"{base}. Did you forget to name your leaf directory as a number "
                            "(eg. '/1/')?")
        policy = model.model_version_policy
        kind = policy.WhichOneof("policy_choice")
        if kind == "all":
            return set(on_disk)
        if kind == "specific":
            for version in sorted(set(policy.specific.versions) - set(on_disk)):
                self._warn_once(f"model {model.name}: version {version}, requested as a "
                                f"'specific' version, was not found under {base}")
            return set(on_disk) & set(policy.specific.versions)
        keep = policy.latest.num_versions if kind == "latest" and policy.latest.num_versions else 1
        return set(on_disk[-keep:])

    def poll_once(self) -> None:
        """Loads newly aspired versions (newest first), retries due ones, unloads the others."""
        with self._poll_lock:
            with self._lock:
                models = list(self._config.items())
            for name, model in models:
                if self._stop.is_set():
                    return
                self._poll_model(name, model)

    def _poll_model(self, name: str, model: model_server_config_pb2.ModelConfig) -> None:
        aspired = self._aspired(model)
        now = time.monotonic()
        with self._lock:
            known = self._versions[name]
            to_load = sorted(
                (v for v in aspired
                 if v not in known
                 or (known[v].state == State.END and not known[v].error)  # unloaded, back again
                 or (known[v].retry_at or now + 1) <= now),  # a retry is due
                reverse=True,
            )
            for version in to_load:
                entry = known.setdefault(version, _Version(State.START))
                entry.state, entry.retry_at = State.START, None
            for version, entry in known.items():  # a version gone while waiting for its retry
                if entry.retry_at is not None and version not in aspired:
                    entry.state, entry.retry_at = State.END, None
        for version in to_load:
            self._load(name, version, pathlib.Path(model.base_path) / str(version))
        for version in self._to_unload(name, aspired):
            self._unload(name, version)

    def _to_unload(self, name: str, aspired: set[int]) -> list[int]:
        """TF Serving's availability-preserving policy: never unload the last serving version
        while no aspired one is AVAILABLE."""
        with self._lock:
            known = self._versions[name]
            serving = sorted(v for v, e in known.items()
                             if v not in aspired and e.state == State.AVAILABLE)
            aspired_serving = any(known[v].state == State.AVAILABLE for v in aspired if v in known)
        if not aspired or aspired_serving:
            return serving
        return serving[:-1]  # keep the newest serving version until a new one is AVAILABLE

    def _set(self, name: str, version: int, **changes: object) -> None:
        with self._lock:
            entry = self._versions[name][version]
            for key, value in changes.items():
                setattr(entry, key, value)

    def _load(self, name: str, version: int, path: pathlib.Path) -> None:
        self._set(name, version, state=State.LOADING)
        servable = None
        try:
            servable = Servable(name, version, path, self._batching, self._policy.max_rows,
                                session_config(self._policy.inter_op_threads,
                                               self._policy.intra_op_threads),
                                self._policy.caller_thread_rows, self._on_runtime)
            records = replay_warmup(servable) if self._policy.warmup else 0
        except Exception as err:  # noqa: BLE001 - a bad version must not stop the server
            if servable is not None:
                servable.stop()
            self._failed(name, version, f"loading {path} failed: {' '.join(str(err).split())[:500]}")
            return
        self._set(name, version, state=State.AVAILABLE, servable=servable, error="", retry_at=None)
        log.info("model %s version %d AVAILABLE (%d warmup records replayed)", name, version, records)

    def _failed(self, name: str, version: int, message: str) -> None:
        """Schedules a retry while retries are left (state LOADING), else ends in END."""
        with self._lock:
            entry = self._versions[name][version]
            entry.failures += 1
            entry.error = message
            retries_left = self._policy.max_load_retries - (entry.failures - 1)
            if retries_left > 0:
                entry.state = State.LOADING
                entry.retry_at = time.monotonic() + max(0.0, self._policy.retry_interval_s)
            else:
                entry.state, entry.retry_at = State.END, None
        if retries_left > 0:
            log.error("%s; retry %d of %d in %gs", message, entry.failures,
                      self._policy.max_load_retries, max(0.0, self._policy.retry_interval_s))
        else:
            log.error("%s; giving up after %d attempts", message, entry.failures)

    def _unload(self, name: str, version: int) -> None:
        with self._lock:
            entry = self._versions[name][version]
            servable, entry.state, entry.servable = entry.servable, State.UNLOADING, None
        if servable is not None:
            servable.stop()
        self._set(name, version, state=State.END)
        log.info("model %s version %d unloaded", name, version)

    def _initial_state(self, name: str) -> str | None:
        """None while loading; "ok" once a version is AVAILABLE; else why it cannot be."""
        with self._lock:
            entries = self._versions[name]
            if any(e.state == State.AVAILABLE for e in entries.values()):
                return "ok"
            pending = [e for e in entries.values() if e.state != State.END]
            failed = [e.error for e in entries.values() if e.state == State.END and e.error]
        if failed and not pending:
            return failed[0]
        return None

    def wait_until_available(self, stop: threading.Event, names: list[str] | None = None) -> bool:
        """Polls until every model (or `names`) has an AVAILABLE version, as TF Serving does
        before it listens; False when `stop` was set first; ModelLoadError when a model's
        versions all failed every retry."""
        with self._lock:
            waiting = list(names if names is not None else self._config)
        reported: set[str] = set()
        while waiting:
            self.poll_once()
            still = []
            for name in waiting:
                state = self._initial_state(name)
                if state is None:
                    still.append(name)
                elif state != "ok":
                    raise ModelLoadError(f"model {name!r}: {state}")
            for name in still:
                if name not in reported:
                    log.info("waiting for model %s to become AVAILABLE", name)
                    reported.add(name)
            waiting = still
            if waiting and stop.wait(self._next_wait()):
                return False
        return True

    def reload_config(self, config: model_server_config_pb2.ModelServerConfig,
                      stop: threading.Event) -> None:
        """Serves a new model list (ModelService.HandleReloadConfigRequest, the config poll):
        new models are loaded before this returns; dropped models are unloaded. A label on a
        version that is not AVAILABLE refuses the whole list (ServingError), as TF Serving."""
        with self._poll_lock:
            with self._lock:
                added = [m.name for m in config.model_config_list.config if m.name not in self._config]
            dropped = self._set_config(config)
            for name in dropped:
                with self._lock:
                    loaded = [v for v, e in self._versions[name].items() if e.state == State.AVAILABLE]
                for version in loaded:
                    self._unload(name, version)
                with self._lock:
                    del self._versions[name]
                log.info("model %s removed from the config", name)
        self.wait_until_available(stop, added)

    def _not_served(self, name: str) -> ServingError:
        shown = name if len(name) <= 100 else name[:100] + "..."
        return ServingError(grpc.StatusCode.NOT_FOUND,
                            f"model {shown!r} is not served; served models: {sorted(self._config)}")

    def _labelled(self, spec: model_pb2.ModelSpec) -> int:
        """The version a spec's label names (caller holds the lock); INVALID_ARGUMENT for an
        unknown label, as ServerCore::GetModelVersionForLabel answers."""
        version = self._labels.get(spec.name, {}).get(spec.version_label)
        if version is None:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Unrecognized servable version label: {spec.version_label[:100]}")
        return version

    def servable(self, spec: model_pb2.ModelSpec) -> Servable:
        """The AVAILABLE servable a request's ModelSpec names (latest when unset)."""
        choice = spec.WhichOneof("version_choice")
        with self._lock:
            if spec.name not in self._config:
                raise self._not_served(spec.name)
            available = {
                v: e.servable for v, e in self._versions[spec.name].items()
                if e.state == State.AVAILABLE and e.servable is not None
            }
            wanted: int | None = self._labelled(spec) if choice == "version_label" else None
        if choice == "version":
            wanted = spec.version.value
        elif choice is None:
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
        choice = spec.WhichOneof("version_choice")
        with self._lock:
            if spec.name not in self._config:
                raise self._not_served(spec.name)
            entries = {v: dataclasses.replace(e) for v, e in self._versions[spec.name].items()}
            labelled = self._labelled(spec) if choice == "version_label" else None
        if choice is not None:
            wanted = labelled if labelled is not None else spec.version.value
            if wanted not in entries:
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND, f"model {spec.name!r} has no version {wanted}")
            entries = {wanted: entries[wanted]}
        if not entries:
            raise ServingError(
                grpc.StatusCode.NOT_FOUND, f"model {spec.name!r} has no version loaded yet"
            )
        response = get_model_status_pb2.GetModelStatusResponse()
        for version in sorted(entries, reverse=True):
            entry = entries[version]
            status = response.model_version_status.add(version=version, state=entry.state)
            status.status.error_code = 0  # OK, as TF Serving reports a healthy version
            if entry.error and entry.state == State.END:
                status.status.error_code = grpc.StatusCode.UNKNOWN.value[0]
                status.status.error_message = entry.error
        return response
