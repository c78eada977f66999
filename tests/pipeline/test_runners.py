"""Refused Beam runners (pipeline/runners.py): the DaskRunner in any spelling exits 2 before anything runs."""

from __future__ import annotations

import pytest

from pipeline import cli as pipeline_cli
from pipeline.errors import UsageError
from pipeline.runners import ALTERNATIVES, check_runner, runner_key
from tests.conftest import run_pipeline

DASK_FULL_PATH = "apache_beam.runners.dask.dask_runner.DaskRunner"


@pytest.mark.parametrize("name", ["DaskRunner", "daskrunner", "Dask", "dask", DASK_FULL_PATH])
def test_every_spelling_of_the_dask_runner_is_refused_with_the_reason(name):
    with pytest.raises(UsageError) as err:
        check_runner(name)
    message = str(err.value)
    assert message.startswith(f"--runner {name}: refused.") and ALTERNATIVES in message
    assert "runs only the last of the pipeline's sinks" in message and "No shards found to finalize" in message


@pytest.mark.parametrize("name", ["DirectRunner", "direct", "apache_beam.runners.direct.direct_runner.DirectRunner",
                                  "DataflowRunner", "FlinkRunner", "SparkRunner", "PrismRunner", "my.FixedDaskRunner"])
def test_other_runners_pass(name):
    check_runner(name)
    assert runner_key(name) != "dask"


def test_the_cli_exits_2_with_the_reason_and_writes_nothing(tmp_path):
    """The production path: `pipeline ... --runner=<full path>` in a subprocess."""
    inp = tmp_path / "one.tsv"
    inp.write_text("0\t" + "\t" * 38 + "\n")
    out = tmp_path / "out"
    result = run_pipeline("--dataset", "criteo", "--input", str(inp), "--output", str(out),
                          f"--runner={DASK_FULL_PATH}", check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(f"pipeline: error: --runner {DASK_FULL_PATH}: refused.") and ALTERNATIVES in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.tsv"]


def test_pipeline_transform_refuses_it_too(tmp_path, capsys):
    """`pipeline transform` shares the check; the run dir is not even read (it does not exist)."""
    argv = ["transform", "--run", str(tmp_path / "no_run"), "--input", str(tmp_path / "x.tsv"),
            "--output", str(tmp_path / "out"), "--runner", "dask"]
    assert pipeline_cli._run_job(argv) == 2
    assert "--runner dask: refused." in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
