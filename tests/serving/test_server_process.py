"""The shared server-process helper fails readably: a server that exits shows its log and code."""

from __future__ import annotations

import sys

import pytest

from serving import client as client_lib
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


def test_the_scripts_serve_process_reads_its_port_and_fails_naming_its_log(tmp_path):
    """serving/process.py (scripts/daily_demo.py, benchmarks/scale_bench.py): a real `serving serve`
    on 127.0.0.1 is reached at its port-file port and stopped by PID; a bad config names the log."""
    from serving.process import ServeProcess, ServeProcessError
    from tests.serving import tiny

    base = tmp_path / "models"
    tiny.write_version(base / "tiny", 1, "tiny")
    config = f'name: "tiny" base_path: "{base / "tiny"}" model_platform: "tensorflow"'
    (base / "models.config").write_text(f"model_config_list {{ config {{ {config} }} }}\n")
    with ServeProcess(base / "models.config", tmp_path / "ports", tmp_path / "serve.log") as server:
        target = server.target(timeout=120)
        assert target.startswith("127.0.0.1:") and int(target.split(":")[1]) > 0
        with client_lib.ServingClient(target, timeout=10) as client:
            assert client.status("tiny") is not None
    assert server.process.poll() is not None  # stopped by PID on exit

    (tmp_path / "bad.config").write_text("not a config\n")
    bad = ServeProcess(tmp_path / "bad.config", tmp_path / "bad.ports", tmp_path / "bad.log")
    with pytest.raises(ServeProcessError, match=r"exited \d+ \(log .*bad.log\)"):
        bad.target(timeout=120)
    assert bad.stop() != 0
