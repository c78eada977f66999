"""The Beam job's own gRPC servers (FnApiRunner control, data, state, logging) listen on loopback only."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import time

import psutil
import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.dist]  # a whole Beam job (~1 min): make test-dist


def _listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket of the process and its children."""
    try:
        process = psutil.Process(pid)
        processes = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return set()
    found = set()
    for proc in processes:
        try:
            found |= {(c.laddr.ip, c.laddr.port) for c in proc.net_connections(kind="tcp")
                      if c.status == psutil.CONN_LISTEN}
        except psutil.NoSuchProcess:
            continue
    return found


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)  # "::ffff:127.0.0.1" is loopback too (Python < 3.13 says no)
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


@pytest.mark.parametrize("mode", ["multi_threading", "multi_processing"])
def test_job_servers_listen_on_loopback_only(criteo_generated_file, tmp_path, mode):
    job = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "--dataset", "criteo", "--input", str(criteo_generated_file),
         "--output", str(tmp_path / "out"), f"--direct_running_mode={mode}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: set[tuple[str, int]] = set()
    try:
        deadline = time.monotonic() + 600
        while job.poll() is None and time.monotonic() < deadline:  # bounded: one job, 10 min at most
            seen |= _listening(job.pid)
            time.sleep(0.5)
        assert job.poll() is not None, "the job did not finish in 10 minutes"
    finally:
        if job.poll() is None:
            job.kill()
        _, err = job.communicate(timeout=60)
    assert job.returncode == 0, err[-3000:]
    assert seen, "no listening socket seen: the check did not observe the runner's servers"
    public = {(ip, port) for ip, port in seen if not _loopback(ip)}
    assert not public, f"the job listened beyond loopback: {sorted(public)}"
