"""A TF Serving-compatible gRPC server, for development and CI machines.

Production runs the official `tensorflow_model_server` (see
`configs.official_server_command` and serving/docker-compose.yaml). This
server implements the same services on the `tensorflow-serving-api` protos
(PredictionService: Predict, Classify, GetModelMetadata; ModelService:
GetModelStatus), reads the same three config files and model layout, so that
the client code and the contract tests are the same against both.
Every failure is a gRPC status, never a crash of the server.
"""

from __future__ import annotations

import dataclasses
import http.server
import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from serving import handlers
from serving.configs import PROMETHEUS_PATH, BatchingSettings
from serving.manager import ModelManager
from serving.metrics import Metrics
from serving.servable import ServingError

log = logging.getLogger("serving")


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    host: str = "0.0.0.0"
    port: int = 8500
    rest_api_port: int | None = None  # None = no HTTP endpoint (0 = any free port)
    metrics_path: str = PROMETHEUS_PATH
    poll_seconds: float = 1.0
    max_message_bytes: int = 64 << 20
    grpc_threads: int = 16


def _observed(api: str, metrics: Metrics) -> Callable:
    """Wraps a servicer method: ServingError -> its status, anything else -> INTERNAL; timed."""

    def wrap(method: Callable) -> Callable:
        def call(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            status = "OK"
            try:
                return method(self, request, context)
            except ServingError as err:
                status = err.code.name
                context.abort(err.code, err.message)
            except Exception as err:  # noqa: BLE001 - the server keeps answering
                status = "INTERNAL"
                log.exception("%s failed", api)
                context.abort(grpc.StatusCode.INTERNAL, f"{api}: {type(err).__name__}: {err}"[:400])
            finally:
                metrics.record(request.model_spec.name, api, status,
                               (time.perf_counter() - start) * 1e6)

        return call

    return wrap


def _servicers(manager: ModelManager, metrics: Metrics) -> tuple[Any, Any]:
    class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        @_observed("predict", metrics)
        def Predict(self, request, context):  # noqa: N802 - gRPC method name
            return handlers.predict(manager.servable(request.model_spec), request)

        @_observed("classify", metrics)
        def Classify(self, request, context):  # noqa: N802
            return handlers.classify(manager.servable(request.model_spec), request)

        @_observed("metadata", metrics)
        def GetModelMetadata(self, request, context):  # noqa: N802
            return handlers.metadata(manager.servable(request.model_spec), request)

    class ModelService(model_service_pb2_grpc.ModelServiceServicer):
        @_observed("status", metrics)
        def GetModelStatus(self, request, context):  # noqa: N802
            return manager.status(request)

    return PredictionService(), ModelService()


def _metrics_http(options: ServerOptions, metrics: Metrics) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            if self.path != options.metrics_path:
                self.send_error(404, f"metrics are at {options.metrics_path}")
                return
            body = metrics.prometheus().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer((options.host, options.rest_api_port), Handler)
    threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True).start()
    return httpd


class ModelServer:
    """gRPC server + version manager + metrics endpoint; `stop()` is the clean shutdown."""

    def __init__(
        self,
        config: model_server_config_pb2.ModelServerConfig,
        batching: BatchingSettings,
        options: ServerOptions,
    ):
        self.metrics = Metrics()
        self.manager = ModelManager(config, batching, options.poll_seconds)
        size_options = [
            ("grpc.max_receive_message_length", options.max_message_bytes),
            ("grpc.max_send_message_length", options.max_message_bytes),
        ]
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=options.grpc_threads), options=size_options
        )
        prediction, model = _servicers(self.manager, self.metrics)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction, self._grpc)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(model, self._grpc)
        self.port = self._grpc.add_insecure_port(f"{options.host}:{options.port}")
        if self.port == 0:
            raise OSError(f"cannot bind gRPC port {options.host}:{options.port} (in use?)")
        self._http = None if options.rest_api_port is None else _metrics_http(options, self.metrics)
        self.rest_port = self._http.server_address[1] if self._http else 0

    def start(self) -> None:
        self._grpc.start()
        self.manager.start()

    def stop(self, grace_seconds: float = 5.0) -> None:
        """Stops taking requests, lets in-flight ones finish, then unloads the models."""
        self._grpc.stop(grace_seconds).wait()
        if self._http is not None:
            self._http.shutdown()
        self.manager.stop()
