"""The shared server-process helper fails readably: a server that exits shows its log and code."""

from __future__ import annotations

import sys

import pytest

from tests import server_process


def test_a_server_that_exits_fails_the_wait_with_its_log_and_exit_code(tmp_path):
    command = [sys.executable, "-c", "print('models.config is not valid'); raise SystemExit(2)"]
    with server_process.started(command, tmp_path, port_file=tmp_path / "ports") as server:
        with pytest.raises(AssertionError, match=r"(?s)server exited \(2\).*models.config is not valid"):
            server.wait_ready(["m"], timeout=60)
    assert server.stop() == 2


def test_a_server_that_never_gets_ready_times_out_and_is_stopped_by_pid(tmp_path):
    command = [sys.executable, "-c", "import time; print('loading', flush=True); time.sleep(600)"]
    with server_process.started(command, tmp_path, port_file=tmp_path / "ports") as server:
        with pytest.raises(AssertionError, match=r"(?s)timed out after 3 s waiting for the port file.*loading"):
            server.wait_ready(["m"], timeout=3)
    assert server.stop() == -15  # SIGTERM ended it, within the bounded wait
