"""The Beam runner a `--runner` value names, in any spelling: the DaskRunner is this project's patched one.

Beam 2.77's own DaskRunner loses data in this job (four defects, listed in
pipeline.dask_runner, which fixes them); every spelling of it ("DaskRunner",
"dask", Beam's full class path) runs `pipeline.dask_runner.DaskRunner`
instead. Beam registers no short name for it. This module imports neither
Beam nor dask: a bad invocation fails before they load.
"""

from __future__ import annotations

import importlib.util

from pipeline.errors import UsageError

DASK_RUNNER = "pipeline.dask_runner.DaskRunner"
# Each Create element (a file range of --range_mb) its own dask partition: a partition's outputs are held in
# one worker's memory, so the default of 128 ranges per partition would hold up to 4 GB of parsed rows there.
DASK_PARTITION_ARGS = ("--dask_partition_size=1",)
DASK_PARTITION_FLAGS = ("--dask_partition_size", "--dask_npartitions")


def runner_key(name: str) -> str:
    """A runner's name as Beam resolves it, in any spelling: "DaskRunner", "dask", a dotted path -> "dask"."""
    return name.rsplit(".", 1)[-1].lower().removesuffix("runner")


def is_dask(name: str) -> bool:
    return runner_key(name) == "dask"


def resolve_runner(name: str) -> str:
    """The runner class Beam is given for `--runner name`; UsageError for the DaskRunner without dask installed."""
    if not is_dask(name):
        return name
    if importlib.util.find_spec("distributed") is None:
        raise UsageError(
            f"--runner {name} needs dask[distributed], which is not installed: pip install -c requirements.lock "
            "-e '.[dask]' (make install does)"
        )
    return DASK_RUNNER


def dask_defaults(extra: list[str]) -> tuple[str, ...]:
    """Beam arguments the job adds for the DaskRunner: one file range per partition unless the user chose."""
    chosen = any(arg.split("=", 1)[0] in DASK_PARTITION_FLAGS for arg in extra)
    return () if chosen else DASK_PARTITION_ARGS
