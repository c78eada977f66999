"""A dask.distributed LocalCluster in its own process, for the DaskRunner tests: 2 worker processes on 127.0.0.1.

`python -m tests.dask_cluster ADDRESS_FILE` writes the scheduler's address to
ADDRESS_FILE (temp, then rename) once both workers are up, and closes the
cluster on SIGTERM. Start it with tests.server_process.started: it is
stopped by PID even when a test fails.
"""

from __future__ import annotations

import pathlib
import signal
import sys
import threading

WORKERS = 2


def main(address_file: str) -> int:
    from dask.distributed import LocalCluster

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        cluster.wait_for_workers(WORKERS, timeout=300)
        path = pathlib.Path(address_file)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(cluster.scheduler_address)
        tmp.rename(path)
        while not stop.wait(0.5):  # a short wait: the SIGTERM handler runs between waits
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
