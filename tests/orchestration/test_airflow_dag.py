"""The Airflow DAG (orchestration/ctr_daily_dag.py) for three logical days with `airflow dags test`.

Runs in `make test-airflow` (CI too), which builds Airflow's own venv and names it in $CTR_AIRFLOW_VENV;
skipped elsewhere. Airflow's home is a temp dir (sqlite metadata db), no webserver or scheduler: `dags test`
runs the tasks in its own process, each step's CLI a subprocess of this (the project's) python.

Day 1 trains and pushes v1; day 2 validates against day 1, warm-starts from it, is blessed against v1
and pushes v2; day 3 carries a drifted C3 (dag run conf): the pipeline task exits 3, which is a skip
(one try, not retried), everything downstream is skipped, the run itself succeeds and v2 stays served.
A stand-in python shows the other exit codes: a crash (1) is retried, NOT_BLESSED (3) stops the day.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import sqlite3
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
# A stand-in for the project's python: `-m PACKAGE.cli STAGE ...` exits 0, except that train crashes on
# its first call (exit 1) and the blessing says NOT_BLESSED (exit 3).
FAKE_PYTHON = """#!/bin/sh
case "$2 $3" in
  "trainer.cli train") if [ -e crashed ]; then exit 0; fi; touch crashed; exit 1;;
  "trainer.cli evaluate") echo "NOT_BLESSED (stand-in)"; exit 3;;
esac
exit 0
"""


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

    def run(*args: str, timeout: float = 300, **settings: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(pathlib.Path(AIRFLOW_VENV) / "bin" / "airflow"), *args],
                              env={**env, **settings}, cwd=home, capture_output=True, text=True, timeout=timeout,
                              check=False)

    migrated = run("db", "migrate")
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    run.home, run.work = home, work
    return run


def task_states(airflow, day: str) -> dict[str, tuple[str, int]]:
    """task id -> (state, try number) in the DAG run of logical date `day`, read from the sqlite db
    (`airflow tasks states-for-dag-run` shows no try number)."""
    with contextlib.closing(sqlite3.connect(f"file:{airflow.home / 'airflow.db'}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT ti.task_id, ti.state, ti.try_number FROM task_instance ti JOIN dag_run dr"
            " ON ti.dag_id = dr.dag_id AND ti.run_id = dr.run_id WHERE dr.dag_id = ? AND dr.logical_date LIKE ?",
            (DAG_ID, f"{day}%")).fetchall()
    assert rows, f"no run of {DAG_ID} on {day}"
    return {task: (state, tries) for task, state, tries in rows}


def dags_test(airflow, day: str, conf: dict | None = None, **settings: str) -> str:
    """`airflow dags test` of one logical day, which must end with the run succeeded; its output."""
    result = airflow("dags", "test", DAG_ID, day, "-c", json.dumps(conf or {}), timeout=DAY_TIMEOUT_S, **settings)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"day {day} exited {result.returncode}:\n{output[-8000:]}"
    return output


def versions(work: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in (work / "models" / "ctr").iterdir() if p.name.isdigit())


def test_crash_is_retried_and_not_blessed_stops_the_day(airflow, tmp_path):
    """Exit 1 is a crash (retried); exit 3 from the blessing is a verdict: skipped once, push skipped."""
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    work = tmp_path / "work"
    log = dags_test(airflow, "2026-11-30", CTR_DAILY_PYTHON=str(fake), CTR_DAILY_WORKDIR=str(work),
                    CTR_DAILY_RETRY_DELAY_S="0")
    states = task_states(airflow, "2026-11-30")
    assert states["train"] == ("success", 2), states  # exit 1: retried
    assert states["evaluate"] == ("skipped", 1), states  # exit 3: not retried
    assert states["push"][0] == "skipped", states
    assert "the candidate is NOT_BLESSED against the served model" in log
    assert not (work / "models").exists() and not (work / "pushed.json").exists()


def test_three_days(airflow):
    work = airflow.work
    # Day 1: nothing served yet: no validation, a cold start, blessed on the absolute floors, v1 pushed.
    dags_test(airflow, DAYS[0])
    states = task_states(airflow, DAYS[0])
    assert {task: state for task, (state, _) in states.items()} == {
        "plan": "success", "ingest": "success", "pipeline": "success", "search": "success",
        "train": "success", "evaluate": "success", "push": "success"}, states
    assert versions(work) == [1]

    # Day 2: validated against day 1's data, warm-started from day 1's run, blessed against v1: v2.
    log = dags_test(airflow, DAYS[1])
    assert f"--validate_against {work / 'data' / DAYS[0]}" in log
    assert f"--init=run:{work / 'runs' / DAYS[0]}" in log
    assert f"--baseline {work / 'models' / 'ctr'}" in log
    assert task_states(airflow, DAYS[1])["push"] == ("success", 1)
    assert versions(work) == [1, 2]
    blessing = json.loads((work / "runs" / DAYS[1] / "blessing.json").read_text())
    assert blessing["decision"] == "BLESSED", blessing

    # Day 3: C3 drifted: validation exits 3 -> pipeline skipped after one try, downstream skipped, v2 stays.
    log = dags_test(airflow, DAYS[2], {"drift": ["C3"]})
    states = task_states(airflow, DAYS[2])
    assert states["pipeline"] == ("skipped", 1), states  # a verdict, not retried as a crash
    assert all(states[task][0] == "skipped" for task in DOWNSTREAM), states
    assert "validation against the served run's data found anomalies" in log
    anomalies = json.loads((work / "data" / DAYS[2] / "anomalies.json").read_text())["anomalies"]
    assert "C3" in {a["field"] for a in anomalies}, anomalies
    assert versions(work) == [1, 2]
    assert not (work / "runs" / DAYS[2]).exists()
    pushed = json.loads((work / "pushed.json").read_text())
    assert pushed["2"]["run"] == str(work / "runs" / DAYS[1]), pushed
