"""`--runner` resolution (pipeline/runners.py): every spelling of the DaskRunner runs the patched one.

No Beam job here (the DaskRunner's runs are in test_dask_runner.py, `make test-dist`).
"""

from __future__ import annotations

import importlib.util

import pytest

from pipeline import cli as pipeline_cli
from pipeline import runners

DASK_SPELLINGS = ["DaskRunner", "daskrunner", "Dask", "dask", "apache_beam.runners.dask.dask_runner.DaskRunner",
                  runners.DASK_RUNNER]


@pytest.fixture
def dask_installed(monkeypatch) -> dict[str, bool]:
    """find_spec answers as if dask[distributed] were installed; set ["installed"] = False for not."""
    real, state = importlib.util.find_spec, {"installed": True}

    def find_spec(name, *args):
        if name == "distributed":
            return real("json") if state["installed"] else None
        return real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    return state


@pytest.mark.parametrize("name", DASK_SPELLINGS)
def test_every_spelling_of_the_dask_runner_runs_the_patched_one(name, dask_installed):
    assert runners.resolve_runner(name) == runners.DASK_RUNNER


@pytest.mark.parametrize("name", ["DirectRunner", "direct", "apache_beam.runners.direct.direct_runner.DirectRunner",
                                  "DataflowRunner", "FlinkRunner", "SparkRunner", "my.DaskishRunner"])
def test_other_runners_are_passed_as_given(name):
    assert runners.resolve_runner(name) == name


def test_without_dask_the_cli_exits_2_naming_the_extra(tmp_path, capsys, dask_installed):
    """Before anything is read or written: the input does not even exist."""
    dask_installed["installed"] = False
    argv = ["--dataset", "criteo", "--input", str(tmp_path / "x.tsv"), "--output", str(tmp_path / "out"),
            "--runner", "apache_beam.runners.dask.dask_runner.DaskRunner"]
    assert pipeline_cli._run_job(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("pipeline: error: --runner apache_beam.runners.dask.dask_runner.DaskRunner needs "
                          "dask[distributed]") and "'.[dask]'" in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(("extra", "added"), [
    ([], ("--dask_partition_size=1",)),
    (["--dask_partition_size=4"], ()),
    (["--dask_npartitions", "8"], ()),
])
def test_beam_args_of_a_dask_run(extra, added, dask_installed):
    parser = pipeline_cli._job_parser()
    args, unknown = parser.parse_known_args(
        ["--dataset", "criteo", "--input", "x", "--output", "y", "--runner", "dask", *extra])
    assert pipeline_cli._beam_args(args, unknown) == (f"--runner={runners.DASK_RUNNER}", *added, *extra)
