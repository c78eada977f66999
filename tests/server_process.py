"""A model server in its own process, as production runs it, for the tests that need one.

`started(...)` runs `serving serve` (or any server command) on 127.0.0.1 with its
output in a log file (a file, not a pipe: an undrained pipe can block the server),
and always stops it by PID on exit: SIGTERM, a bounded wait, then SIGKILL. Every
wait is bounded in polls and in time, and every failure shows the log's tail.
"""

from __future__ import annotations

import contextlib
import functools
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence

import grpc

from serving import client as client_lib
from serving.process import stop_by_pid
from tests.conftest import ROOT

POLL_S = 0.1
LOG_TAIL_CHARS = 4000
STOP_TIMEOUT_S = 60


class ServerProcess:
    """One started server: its process, log and (once ready) gRPC target and REST port."""

    def __init__(self, command: Sequence[str], log: pathlib.Path, port_file: pathlib.Path | None,
                 grpc_target: str | None) -> None:
        self.command = list(command)
        self.log = log
        self.port_file = port_file
        self.grpc_target = grpc_target
        self.grpc_port: int | None = None
        self.rest_port: int | None = None
        with log.open("w") as out:
            self.process = subprocess.Popen(self.command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        self._exit_code: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def target(self) -> str:
        if self.grpc_target is not None:
            return self.grpc_target
        assert self.grpc_port is not None, "the gRPC port is known once wait_ready() returned"
        return f"127.0.0.1:{self.grpc_port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def describe(self) -> str:
        """What a failed assertion shows: the command and the log's tail."""
        return f"server {' '.join(self.command)}\n--- log tail ({self.log}) ---\n{self.log_text()[-LOG_TAIL_CHARS:]}"

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
        """Polls `condition` until true; fails (with the log) if the server exits or time runs out."""
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / POLL_S) + 1):
            if condition():
                return
            assert self.process.poll() is None, f"server exited ({self.process.returncode}) " \
                                                f"while waiting for {what}:\n{self.describe()}"
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_S)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}:\n{self.describe()}")

    def wait_ready(self, models: Sequence[str], timeout: float = 300) -> ServerProcess:
        """Waits for the port file (if any), then until every model in `models` is AVAILABLE."""
        deadline = time.monotonic() + timeout
        if self.port_file is not None:
            port_file = self.port_file
            self.wait_for(port_file.exists, f"the port file {port_file}", timeout)
            ports = [int(p) for p in port_file.read_text().split()]
            self.grpc_port, self.rest_port = ports[0], (ports[1] if len(ports) > 1 else None)
        with client_lib.ServingClient(self.target, timeout=10) as client:
            for name in models:
                self.wait_for(functools.partial(_available, client, name), f"model {name} AVAILABLE",
                              max(deadline - time.monotonic(), 1.0))
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, wait up to `timeout`, then SIGKILL; returns the exit code (idempotent)."""
        if self._exit_code is None:
            self._exit_code = stop_by_pid(self.process, timeout)
        return self._exit_code


def _available(client: client_lib.ServingClient, name: str) -> bool:
    try:
        return client_lib.AVAILABLE in client.status(name).values()
    except grpc.RpcError:  # not listening yet, or the model not loaded yet
        return False


def serve_command(model_config_file: pathlib.Path, port_file: pathlib.Path, *flags: str,
                  port: int = 0) -> list[str]:
    """`serving serve` on 127.0.0.1 (port 0 = any free port, read back from the port file)."""
    return [sys.executable, "-m", "serving.cli", "serve", "--model_config_file", str(model_config_file),
            "--host", "127.0.0.1", "--port", str(port), "--port_file", str(port_file), *flags]


@contextlib.contextmanager
def started(command: Sequence[str], workdir: pathlib.Path, *, port_file: pathlib.Path | None = None,
            grpc_target: str | None = None) -> Iterator[ServerProcess]:
    """Starts `command` (log in workdir/server.log) and stops it by PID on exit, even on failure.

    The gRPC target is read from `port_file` once ready, or given (`grpc_target`)."""
    server = ServerProcess(command, workdir / "server.log", port_file, grpc_target)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def serving(model_config_file: pathlib.Path, workdir: pathlib.Path, models: Sequence[str], *flags: str,
            port: int = 0, timeout: float = 300) -> Iterator[ServerProcess]:
    """`serving serve` started, ready (every model in `models` AVAILABLE), stopped by PID on exit."""
    port_file = workdir / "ports"
    with started(serve_command(model_config_file, port_file, *flags, port=port), workdir,
                 port_file=port_file) as server:
        yield server.wait_ready(models, timeout)
