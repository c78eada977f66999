"""A GCS emulator for tests and benchmarks: gcp-storage-emulator in memory on a free 127.0.0.1 port.

Test-only (the test extra installs gcp-storage-emulator): tests/test_gcs.py
and benchmarks/input_bench.py point Beam's FileSystems at it through
STORAGE_EMULATOR_HOST (`pipeline.remote.EMULATOR_ENV`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

from pipeline.remote import EMULATOR_ENV


@contextlib.contextmanager
def local_emulator(bucket: str, start_timeout_s: float = 30.0) -> Iterator[str]:
    """gcp-storage-emulator (in memory, one bucket) on a free 127.0.0.1 port, with STORAGE_EMULATOR_HOST set.

    For tests and benchmarks: the emulator is started as a child process and
    stopped by its PID when the block ends; the variable is restored.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1", "--port", str(port),
         "--in-memory", "--default-bucket", bucket, "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    saved = os.environ.get(EMULATOR_ENV)
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"GCS emulator on 127.0.0.1:{port} did not start (exit {proc.poll()})") from None
                time.sleep(0.2)
        os.environ[EMULATOR_ENV] = f"http://127.0.0.1:{port}"
        yield os.environ[EMULATOR_ENV]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if saved is None:
            os.environ.pop(EMULATOR_ENV, None)
        else:
            os.environ[EMULATOR_ENV] = saved
