"""Session fixtures: a tiny model base dir and an in-process bundled server on it."""

from __future__ import annotations

import pathlib

import pytest

from serving import configs
from serving.client import ServingClient
from serving.server import ModelServer, ServerOptions
from tests.serving import tiny

# Small batches so that splitting, the queue limit and batching show with few rows.
TINY_BATCHING = configs.BatchingSettings(
    max_batch_size=8, batch_timeout_micros=2000, num_batch_threads=2, max_enqueued_batches=4
)
MAX_MESSAGE_BYTES = 1 << 20


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    base = tmp_path_factory.mktemp("models")
    for name in ("tiny", "tiny_versions"):
        (base / name).mkdir()
        tiny.write_version(base / name, 1, name)
        configs.update_models_config(base, name)
    configs.write_batching_config(base, TINY_BATCHING)
    configs.write_monitoring_config(base)
    return base


@pytest.fixture(scope="session")
def tiny_server(tiny_base: pathlib.Path):
    server = ModelServer(
        configs.read_models_config(tiny_base / configs.MODELS_CONFIG),
        configs.read_batching_config(tiny_base / configs.BATCHING_CONFIG),
        ServerOptions(host="127.0.0.1", port=0, rest_api_port=0, poll_seconds=0.2,
                      max_message_bytes=MAX_MESSAGE_BYTES),
    )
    server.start()
    with ServingClient(f"127.0.0.1:{server.port}", timeout=30) as client:
        for name in ("tiny", "tiny_versions"):
            client.wait_until_available(name, timeout=60)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_client(tiny_server: ModelServer):
    with ServingClient(f"127.0.0.1:{tiny_server.port}", timeout=30) as client:
        yield client
