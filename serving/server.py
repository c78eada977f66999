"""A TF Serving-compatible server (gRPC + REST), for development and CI machines.

Production runs the official `tensorflow_model_server` (see
`configs.official_server_command` and serving/docker-compose.yaml). This
server implements the same services on the `tensorflow-serving-api` protos
(PredictionService: Predict, Classify, GetModelMetadata; ModelService:
GetModelStatus, HandleReloadConfigRequest), TF Serving's REST API
(serving/rest.py) and Prometheus page on `rest_api_port`, reads the same
config files and model layout, so that client code and contract tests are the
same against both. As TF Serving does, it listens only once the initial
models are AVAILABLE. Every failure is a status (gRPC code, or the HTTP code
TF Serving maps it to, always as JSON `{"error": ...}` on REST), never a
crash of the server; undecodable request bytes are INVALID_ARGUMENT. Metrics
are recorded where TF Serving records them (serving/metrics.py): Predict and
Classify on gRPC (prediction_service_impl.cc), every /v1/ request on REST
(http_server.cc), never GetModelMetadata, GetModelStatus or reloads on gRPC.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import http.server
import json
import logging
import os
import pathlib
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import message
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    predict_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from pipeline.errors import UsageError
from serving import configs, handlers, rest
from serving.configs import PROMETHEUS_PATH, BatchingSettings
from serving.manager import LoadPolicy, ModelManager
from serving.metrics import CLASSIFY, GRPC, PREDICT, REST, Metrics
from serving.servable import ServingError

log = logging.getLogger("serving")
# tensorflow_model_server sets no gRPC message limit of its own: SetMaxMessageSize(INT32_MAX).
MAX_MESSAGE_BYTES = 2**31 - 1
DEFAULT_THREADS = 4 * (os.cpu_count() or 1)  # TF Serving's grpc_max_threads / rest_api_num_threads


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    """Where and how to listen; names follow tensorflow_model_server's flags."""

    host: str = "0.0.0.0"  # all interfaces, like TF Serving; "127.0.0.1" = this machine only
    port: int = 8500
    rest_api_port: int | None = None  # None = no HTTP endpoint (0 = any free port)
    metrics_path: str = PROMETHEUS_PATH
    poll_seconds: float = 1.0
    max_message_bytes: int = MAX_MESSAGE_BYTES
    grpc_channel_arguments: tuple[tuple[str, int | str], ...] = ()
    grpc_threads: int = DEFAULT_THREADS
    rest_threads: int = DEFAULT_THREADS
    rest_timeout_s: float = 30.0  # per read on a REST connection: idle connections close
    load_policy: LoadPolicy = LoadPolicy()
    model_config_file: str | None = None  # re-read every config_poll_seconds (0 = never)
    config_poll_seconds: float = 0.0


def parse_channel_arguments(text: str) -> tuple[tuple[str, int | str], ...]:
    """TF Serving's --grpc_channel_arguments: "key=value,key=value" (integers as ints)."""
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--grpc_channel_arguments: {item!r} is not key=value")
        pairs.append((key, int(value) if value.lstrip("-").isdigit() else value))
    return tuple(pairs)


class _Observer:
    """Times a request and records it under its model name, if that model is served."""

    def __init__(self, manager: ModelManager, metrics: Metrics):
        self._manager = manager
        self._metrics = metrics

    @property
    def metrics(self) -> Metrics:
        return self._metrics

    def record(self, model: str | None, api: str, status: str, start: float,
               entrypoint: str) -> None:
        served = model if model is not None and self._manager.serves(model) else None
        self._metrics.record_request(served, api, status, (time.perf_counter() - start) * 1e6,
                                     entrypoint)


def _unary(api: str, request_class: Any, response_class: Any, answer: Callable[[Any], Any],
           observer: _Observer | None = None) -> grpc.RpcMethodHandler:
    """A method on raw bytes: parse errors are INVALID_ARGUMENT, ServingError its status,
    anything else INTERNAL; timed and recorded when it has an `observer`."""

    def call(raw: bytes, context: grpc.ServicerContext) -> Any:
        start = time.perf_counter()
        status, model = "OK", None
        try:
            try:
                request = request_class.FromString(raw)
            except message.DecodeError as err:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"cannot parse the request as {request_class.DESCRIPTOR.name}: "
                                   f"{err}") from err
            if request_class is not model_management_pb2.ReloadConfigRequest:
                model = request.model_spec.name
            return answer(request)
        except ServingError as err:
            status = err.code.name
            context.abort(err.code, err.message)
        except Exception as err:  # noqa: BLE001 - the server keeps answering
            status = "INTERNAL"
            log.exception("%s failed", api)
            context.abort(grpc.StatusCode.INTERNAL, f"{api}: {type(err).__name__}: {err}"[:400])
        finally:
            if observer is not None:
                observer.record(model, api, status, start, GRPC)

    return grpc.unary_unary_rpc_method_handler(
        call, request_deserializer=None, response_serializer=response_class.SerializeToString)


def _grpc_services(manager: ModelManager, observer: _Observer,
                   reload: Callable[[model_server_config_pb2.ModelServerConfig], None]
                   ) -> list[grpc.GenericRpcHandler]:
    def predict(request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        return handlers.predict(manager.servable(request.model_spec), request, observer.metrics)

    def classify(request: classification_pb2.ClassificationRequest) -> Any:
        return handlers.classify(manager.servable(request.model_spec), request)

    def metadata(request: get_model_metadata_pb2.GetModelMetadataRequest) -> Any:
        return handlers.metadata(manager.servable(request.model_spec), request)

    def reload_config(request: model_management_pb2.ReloadConfigRequest) -> Any:
        if request.config.WhichOneof("config") != "model_config_list":
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               "ServerModelConfig type not supported by HandleReloadConfigRequest."
                               " Only ModelConfigList is currently supported")
        try:
            configs.check_models_config(request.config, "ReloadConfigRequest.config")
        except configs.ConfigFileError as err:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from err
        reload(request.config)
        return model_management_pb2.ReloadConfigResponse()  # status OK

    # Only Predict and Classify are recorded, as in prediction_service_impl.cc.
    prediction = {
        "Predict": _unary(PREDICT, predict_pb2.PredictRequest, predict_pb2.PredictResponse,
                          predict, observer),
        "Classify": _unary(CLASSIFY, classification_pb2.ClassificationRequest,
                           classification_pb2.ClassificationResponse, classify, observer),
        "GetModelMetadata": _unary("GetModelMetadata",
                                   get_model_metadata_pb2.GetModelMetadataRequest,
                                   get_model_metadata_pb2.GetModelMetadataResponse, metadata),
    }
    models = {
        "GetModelStatus": _unary("GetModelStatus", get_model_status_pb2.GetModelStatusRequest,
                                 get_model_status_pb2.GetModelStatusResponse, manager.status),
        "HandleReloadConfigRequest": _unary(
            "HandleReloadConfigRequest", model_management_pb2.ReloadConfigRequest,
            model_management_pb2.ReloadConfigResponse, reload_config),
    }
    return [grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", prediction),
            grpc.method_handlers_generic_handler("tensorflow.serving.ModelService", models)]


class _PooledHTTPServer(http.server.HTTPServer):
    """HTTP/1.1 on a fixed pool of worker threads, never a thread per connection.

    At most `threads` connections are served at once; a read waits at most
    `timeout_s` (idle keep-alive connections are closed then); connections beyond
    `threads` more than that wait in a bounded queue or are closed at once.
    """

    def __init__(self, address: tuple[str, int], handler: type, threads: int):
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="http")
        self._threads = threads
        self._pending = 0
        self._open: set[socket.socket] = set()
        self._pending_lock = threading.Lock()
        super().__init__(address, handler)

    def busy(self) -> bool:
        """More connections than workers: keep-alive is refused so that idle ones free up."""
        with self._pending_lock:
            return self._pending > self._threads

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._pending_lock:
            if self._pending >= 4 * self._threads:
                self.shutdown_request(request)
                return
            self._pending += 1
            self._open.add(request)
        self._pool.submit(self._serve, request, client_address)

    def _serve(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - one broken connection must not end the server
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            with self._pending_lock:
                self._pending -= 1
                self._open.discard(request)

    def server_close(self) -> None:
        """Closes the listener and every open connection, then ends the workers."""
        super().server_close()
        with self._pending_lock:
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed by the client
        self._pool.shutdown(wait=True, cancel_futures=True)


def _http_server(options: ServerOptions, metrics: Metrics, api: rest.RestApi,
                 observer: _Observer) -> _PooledHTTPServer:
    max_body = options.max_message_bytes

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = options.rest_timeout_s

        def setup(self) -> None:
            super().setup()
            # Headers and body are separate writes: without this, Nagle's algorithm holds
            # the body until the client's delayed ACK (~40 ms per keep-alive request).
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if self.server.busy():  # type: ignore[attr-defined]
                self.close_connection = True
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def _send_json(self, status: int, body: dict[str, Any]) -> None:
            self._send(status, json.dumps(body, indent=1).encode(), "application/json")

        def send_error(self, code: int, message: str | None = None,
                       explain: str | None = None) -> None:
            """http.server's own errors (over-long URL or headers, bad request line) as
            JSON, like every other answer, instead of its HTML page."""
            self.close_connection = True
            text = message or self.responses.get(code, ("error",))[0]
            self._send_json(code, {"error": text if not explain else f"{text}: {explain}"})

        def _body(self) -> bytes | None:
            """The request body; None (answered) when its length is missing or too large."""
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self.close_connection = True
                self._send_json(411, {"error": "POST needs a Content-Length header"})
                return None
            if int(length) > max_body:
                self.close_connection = True
                self._send_json(413, {"error": f"request body of {length} bytes exceeds the "
                                               f"limit of {max_body} bytes"})
                return None
            return self.rfile.read(int(length))

        def _api(self, method: str, body: bytes) -> None:
            start = time.perf_counter()
            reply = api.handle(method, self.path, body, self.headers.get("Origin", ""))
            observer.record(reply.model, reply.api, reply.code.name, start, REST)
            if reply.body is None:  # a CORS preflight answered OK: no body
                self._send(reply.http_status, b"", "application/json")
            else:
                self._send_json(reply.http_status, reply.body)

        def _dispatch(self) -> None:
            """Every method: the metrics page, the REST API (which answers methods other than
            GET and POST "Malformed request", as TF Serving's handler does), else 404. A body
            is read whatever the answer, so that it is never taken for the next request."""
            has_body = self.command == "POST" or "Content-Length" in self.headers
            body = self._body() if has_body else b""
            if body is None:
                return
            if self.command == "GET" and self.path == options.metrics_path:
                self._send(200, metrics.prometheus().encode(), "text/plain; version=0.0.4")
            elif self.path.lower().startswith(rest.API_PREFIX):
                self._api(self.command, body)
            else:
                self._send_json(404, {"error": f"no such path; the REST API is under "
                                               f"{rest.API_PREFIX}, metrics at {options.metrics_path}"})

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _dispatch

        def log_message(self, *args: Any) -> None:
            pass

    return _PooledHTTPServer((options.host, options.rest_api_port or 0), Handler,
                             options.rest_threads)


class ModelServer:
    """Version manager + gRPC + REST/metrics; `start()` loads, then listens; `stop()` is
    the clean shutdown."""

    def __init__(
        self,
        config: model_server_config_pb2.ModelServerConfig,
        batching: BatchingSettings,
        options: ServerOptions,
    ):
        self.options = options
        self.metrics = Metrics()
        self.manager = ModelManager(config, batching, options.poll_seconds, options.load_policy,
                                    on_runtime=self.metrics.record_runtime)
        self._observer = _Observer(self.manager, self.metrics)
        self._file_config = config  # what models.config said last: polls reload when it changes
        self._stopping = threading.Event()
        self._grpc: grpc.Server | None = None
        self._http: _PooledHTTPServer | None = None
        self.port = 0
        self.rest_port = 0

    def start(self) -> bool:
        """Loads the initial models, then listens (as tensorflow_model_server does).

        Returns False when `stop()` came first; ModelLoadError when a model has no
        version that loads; OSError when a port cannot be bound.
        """
        if not self.manager.wait_until_available(self._stopping):
            return False
        self.manager.start()
        grpc_options = [
            ("grpc.max_receive_message_length", self.options.max_message_bytes),
            ("grpc.max_send_message_length", self.options.max_message_bytes),
            ("grpc.so_reuseport", 0),
            *self.options.grpc_channel_arguments,
        ]
        self._grpc = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=self.options.grpc_threads),
            handlers=_grpc_services(self.manager, self._observer, self._reload),
            options=grpc_options,
        )
        address = f"{self.options.host}:{self.options.port}"
        try:
            self.port = self._grpc.add_insecure_port(address)
        except RuntimeError as err:  # grpc raises RuntimeError when it cannot bind
            raise OSError(f"cannot bind gRPC port {address}: {err}") from err
        if self.port == 0:
            raise OSError(f"cannot bind gRPC port {address} (in use?)")
        if self.options.rest_api_port is not None:
            self._http = _http_server(self.options, self.metrics, rest.RestApi(self.manager, self.metrics),
                                      self._observer)
            self.rest_port = self._http.server_address[1]
            threading.Thread(target=self._http.serve_forever, name="http", daemon=True).start()
        self._grpc.start()
        if self.options.model_config_file and self.options.config_poll_seconds > 0:
            threading.Thread(target=self._poll_config, name="config-poller", daemon=True).start()
        return True

    def stop_loading(self) -> None:
        """Makes a `start()` still waiting for the initial models return False (signal-safe)."""
        self._stopping.set()

    def _reload(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        self.manager.reload_config(config, self._stopping)

    def _poll_config(self) -> None:
        """Re-reads models.config every config_poll_seconds and serves its list when the file
        changed (a list set by HandleReloadConfigRequest stays until then); a bad file keeps
        the current list."""
        path = pathlib.Path(str(self.options.model_config_file))
        while not self._stopping.wait(self.options.config_poll_seconds):
            try:
                config = configs.read_models_config(path)
                if config != self._file_config:
                    log.info("%s changed: reloading the model list", path)
                    self._file_config = config
                    self._reload(config)
            except Exception as err:  # noqa: BLE001 - keep serving the current models
                log.error("cannot reload %s: %s", path, err)

    def stop(self, grace_seconds: float = 5.0) -> None:
        """Stops taking requests, lets in-flight ones finish, then unloads the models."""
        self._stopping.set()
        if self._grpc is not None:
            self._grpc.stop(grace_seconds).wait()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        self.manager.stop()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free now (for tests and tools that must know it before listening)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
