"""The Airflow DAG (orchestration/ctr_daily_dag.py) for three logical days with `airflow dags test`.

Runs in `make test-airflow` (CI too), which builds Airflow's own venv and names it in $CTR_AIRFLOW_VENV;
skipped elsewhere. Airflow's home is a temp dir (sqlite metadata db), no webserver or scheduler: `dags test`
runs every task in its own process. The DAG calls the real CLIs with this (the project's) python.

Day 1 trains and pushes v1; day 2 validates against day 1, warm-starts from it, is blessed against v1
and pushes v2; day 3 carries a drifted C3 (dag run conf): the pipeline task exits 3, which is a skip
(one try, not retried), everything downstream is skipped, the run itself succeeds and v2 stays served.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.conftest import ROOT

AIRFLOW_VENV = os.environ.get("CTR_AIRFLOW_VENV")
pytestmark = pytest.mark.skipif(not AIRFLOW_VENV, reason="needs Airflow's own venv: run `make test-airflow`")

DAG_ID = "ctr_daily"
DAYS = ("2026-12-01", "2026-12-02", "2026-12-03")
ROWS = 20000  # the smallest generated day whose lr model clears the blessing's AUC floor reliably
DAY_TIMEOUT_S = 900
DOWNSTREAM = ("search", "train", "evaluate", "push")


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    """Runs `airflow ARGS` in a fresh home (sqlite db), with the DAG's settings in the environment."""
    home = tmp_path_factory.mktemp("airflow_home")
    work = tmp_path_factory.mktemp("daily")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "orchestration"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "CTR_DAILY_PYTHON": sys.executable,
        "CTR_DAILY_WORKDIR": str(work),
        "CTR_DAILY_ROWS": str(ROWS),
        "CTR_DAILY_MODEL": "lr",  # the weekly OptFusion search is left to real days (BUILD.md)
        "CTR_DAILY_SEARCH_WEEKDAY": "none",
        "CTR_DAILY_TRAIN_OVERRIDES": "--train.epochs=2",
    }

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([str(pathlib.Path(AIRFLOW_VENV) / "bin" / "airflow"), *args], env=env, cwd=home,
                              capture_output=True, text=True, timeout=timeout, check=False)

    migrated = run("db", "migrate")
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    run.work = work
    return run


def task_states(airflow, day: str) -> dict[str, str]:
    """task id -> state of the DAG run of logical date `day`."""
    listed = airflow("dags", "list-runs", DAG_ID, "-o", "json")
    assert listed.returncode == 0, listed.stderr[-3000:]
    runs = [r for r in json.loads(listed.stdout) if r["logical_date"].startswith(day)]
    assert len(runs) == 1, listed.stdout
    states = airflow("tasks", "states-for-dag-run", DAG_ID, runs[0]["run_id"], "-o", "json")
    assert states.returncode == 0, states.stderr[-3000:]
    return {t["task_id"]: t for t in json.loads(states.stdout)}


def dags_test(airflow, day: str, conf: dict | None = None) -> str:
    """`airflow dags test` of one logical day, which must end with the run succeeded; its output."""
    result = airflow("dags", "test", DAG_ID, day, "-c", json.dumps(conf or {}), timeout=DAY_TIMEOUT_S)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"day {day} exited {result.returncode}:\n{output[-8000:]}"
    return output


def versions(work: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in (work / "models" / "ctr").iterdir() if p.name.isdigit())


def test_three_days(airflow):
    work = airflow.work
    # Day 1: nothing served yet: no validation, a cold start, blessed on the absolute floors, v1 pushed.
    dags_test(airflow, DAYS[0])
    states = task_states(airflow, DAYS[0])
    assert {t: s["state"] for t, s in states.items()} == {
        "plan": "success", "ingest": "success", "pipeline": "success", "search": "skipped",
        "train": "success", "evaluate": "success", "push": "success"}, states
    assert versions(work) == [1]

    # Day 2: validated against day 1's data, warm-started from day 1's run, blessed against v1: v2.
    log = dags_test(airflow, DAYS[1])
    assert f"--validate_against {work / 'data' / DAYS[0]}" in log
    assert f"--init=run:{work / 'runs' / DAYS[0]}" in log
    assert f"--baseline {work / 'models' / 'ctr'}" in log
    assert {t: s["state"] for t, s in task_states(airflow, DAYS[1]).items()}["push"] == "success"
    assert versions(work) == [1, 2]
    blessing = json.loads((work / "runs" / DAYS[1] / "blessing.json").read_text())
    assert blessing["decision"] == "BLESSED", blessing

    # Day 3: C3 drifted: validation exits 3 -> pipeline skipped after one try, downstream skipped, v2 stays.
    log = dags_test(airflow, DAYS[2], {"drift": ["C3"]})
    states = task_states(airflow, DAYS[2])
    assert states["pipeline"]["state"] == "skipped", states
    assert int(states["pipeline"]["try_number"]) == 1, states  # a verdict, not retried as a crash
    assert all(states[t]["state"] == "skipped" for t in DOWNSTREAM), states
    assert "validation against the served run's data found anomalies" in log
    anomalies = json.loads((work / "data" / DAYS[2] / "anomalies.json").read_text())["anomalies"]
    assert "C3" in {a["field"] for a in anomalies}, anomalies
    assert versions(work) == [1, 2]
    assert not (work / "runs" / DAYS[2]).exists()
    pushed = json.loads((work / "pushed.json").read_text())
    assert pushed["2"]["run"] == str(work / "runs" / DAYS[1]), pushed
