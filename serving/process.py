"""`serving serve` in its own process on 127.0.0.1, for scripts and benchmarks that need a live server.

Started with any free port (read back from its port file), its output in a
log file (a file, not a pipe: an undrained pipe can block the server), and
stopped by PID: SIGTERM, a bounded wait, then SIGKILL. The tests have their
own, assertion-based variant (tests/server_process.py).
"""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from pipeline.errors import UsageError

STOP_TIMEOUT_S = 60


def stop_by_pid(process: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM, wait up to `timeout`, then SIGKILL; the exit code (idempotent). Shared with the tests'
    server helper (tests/server_process.py)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait(timeout=30)


class ServeProcessError(UsageError):
    """The server exited or did not open its port in time; the message names its log."""


class ServeProcess:
    """One `serving serve --model_config_file FILE` on 127.0.0.1; `prefix` wraps the command (e.g. nice)."""

    def __init__(self, model_config_file: pathlib.Path, port_file: pathlib.Path, log: pathlib.Path,
                 *flags: str, prefix: Sequence[str] = (), cwd: pathlib.Path | None = None) -> None:
        self.port_file = port_file
        self.port_file.unlink(missing_ok=True)  # a killed earlier run's file would give a stale port
        self.log = log
        self.start = time.perf_counter()
        command = [*prefix, sys.executable, "-m", "serving.cli", "serve", "--model_config_file",
                   str(model_config_file), "--host", "127.0.0.1", "--port", "0", "--port_file", str(port_file),
                   *flags]
        with log.open("w") as out:
            self.process = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.process.pid

    def target(self, timeout: float = 300) -> str:
        """'127.0.0.1:PORT' once the port file exists; ServeProcessError if the server exits or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while not self.port_file.exists():
            if self.process.poll() is not None:
                raise ServeProcessError(f"the server exited {self.process.returncode} (log {self.log})")
            if time.monotonic() > deadline:
                raise ServeProcessError(f"the server wrote no port file in {timeout:g} s (log {self.log})")
            time.sleep(0.2)
        return f"127.0.0.1:{int(self.port_file.read_text().split()[0])}"

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, wait up to `timeout`, then SIGKILL; the exit code (idempotent)."""
        return stop_by_pid(self.process, timeout)

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
