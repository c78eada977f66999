"""The CTR daily loop as an Apache Airflow 3 DAG (issue 21): one run per logical day.

    plan -> ingest -> pipeline (validated against the served run) -> search (weekly) -> train (warm start)
         -> evaluate (blessing against the served model) -> push

Every step is one of the project's CLIs (`pipeline`, `trainer`, `serving`), run as a subprocess by the
python of the project's own virtualenv (setting `python`): this file and daily_steps.py import neither
TensorFlow nor the project, so Airflow lives in its own venv with its own pins.

Exit codes: 0 is done; 3 from validation (anomalies) or the blessing (NOT_BLESSED) is a verdict, not a
crash: the task raises AirflowSkipException, so it is not retried, and everything downstream is skipped
(default trigger rule all_success: the day stops cleanly, the served version stays). 2 is bad input:
AirflowFailException, no retry. Anything else (1, a signal) is a failure, retried `retries` times.

Settings, each read when a task runs: the Airflow Variable `ctr_daily_<name>`, else the environment
variable `CTR_DAILY_<NAME>`, else the default below (README.md, "The daily loop on Airflow").
"""

from __future__ import annotations

import datetime
import os
import pathlib
import shlex
import shutil
import subprocess
from typing import Any

import daily_steps as steps  # beside this file in the dags folder, which Airflow puts on sys.path
import pendulum
from airflow.sdk import Param, Variable, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

DAG_ID = "ctr_daily"
OPTFUSION = "optfusion"  # the `model` setting that searches an architecture (weekly); else a zoo model name
# name -> (default, what it is); None: required.
SETTINGS: dict[str, tuple[str | None, str]] = {
    "python": (None, "python of the project's venv, which runs `python -m pipeline.cli` etc."),
    "workdir": (None, "the loop's directory: days' raw files, data/, runs/, models/ (TF Serving's base path), "
                      "pushed.json"),
    "input": ("", "raw log file of a day, `{ds}` the logical date (e.g. /logs/criteo/{ds}.tsv); empty: "
                  "`pipeline generate` makes a synthetic day"),
    "rows": ("20000", "rows of a generated day"),
    "model": (OPTFUSION, f"{OPTFUSION}: `trainer search` on the first day and each search_weekday, then "
                         "`trainer retrain`; or a zoo model (lr, deepfm, ...) trained with `trainer train`"),
    "search_weekday": ("6", "weekday of the weekly search, 0 Monday .. 6 Sunday; `none`: only the first day"),
    "train_overrides": ("", "config overrides for search/train, e.g. `--train.epochs=1` (space-separated)"),
    "model_name": (steps.MODEL_NAME, "the served model's name (models/NAME/VERSION)"),
}


def setting(name: str) -> str:
    """The Variable ctr_daily_NAME, else $CTR_DAILY_NAME, else the default; a missing required one fails."""
    value = Variable.get(f"ctr_daily_{name}", default=None)
    if value is None:
        value = os.environ.get(f"CTR_DAILY_{name.upper()}", SETTINGS[name][0])
    if value is None:
        raise AirflowFailException(f"set the Airflow Variable ctr_daily_{name} (or $CTR_DAILY_{name.upper()}): "
                                   f"{SETTINGS[name][1]}")
    return value


def layout() -> steps.Layout:
    return steps.Layout(pathlib.Path(setting("workdir")))


def run_cli(package: str, args: list[str], verdict: str | None = None) -> None:
    """Runs one CLI, its output into the task log; exit 3 is `verdict` (a skip), 2 a failure without retry."""
    work = layout().work
    work.mkdir(parents=True, exist_ok=True)
    command = steps.cli(setting("python"), package, *args)
    print(f"$ {shlex.join(command)}", flush=True)
    with subprocess.Popen(command, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace") as process:
        assert process.stdout is not None
        for line in process.stdout:
            print(line, end="", flush=True)
    code = process.returncode
    if code == 0:
        return
    if code == steps.STOP_EXIT_CODE and verdict is not None:
        raise AirflowSkipException(f"{verdict} (`{package}` exit {code}): the day stops here, nothing downstream "
                                   "runs and the served version stays")
    if code == steps.USAGE_EXIT_CODE:
        raise AirflowFailException(f"`{package} {args[0]}` refused its input (exit {code}, see the log above): "
                                   "not retried")
    raise RuntimeError(f"`{package} {args[0]}` failed with exit code {code} (see the log above)")


def fresh(*paths: pathlib.Path) -> None:
    """Removes what an earlier try of this day's step left (the trainer refuses a non-empty --out)."""
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


@dag(
    dag_id=DAG_ID,
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,  # a missed day is replayed on purpose (`airflow backfill create`), not on unpause
    max_active_runs=1,  # each day warm-starts from and validates against the previous day's push
    default_args={"retries": int(os.environ.get("CTR_DAILY_RETRIES", "2")),
                  "retry_delay": datetime.timedelta(seconds=float(os.environ.get("CTR_DAILY_RETRY_DELAY_S", "300"))),
                  "execution_timeout": datetime.timedelta(hours=6)},  # a hung step fails (and is retried)
    params={"drift": Param([], type="array", description="simulation only: `pipeline generate --drift` "
                           "changes of a generated day, e.g. [\"C3\"]")},
    doc_md=__doc__,
    tags=["ctr"],
)
def ctr_daily() -> None:
    @task
    def plan() -> dict[str, Any]:
        """The day's paths, the served run (None before the first push) and whether this is a search day."""
        context = get_current_context()
        when = context.get("logical_date") or context["dag_run"].run_after  # a manual run may have no date
        day, where = when.strftime("%Y-%m-%d"), layout()
        try:
            served = steps.served(where, setting("model_name"))
        except (LookupError, ValueError, KeyError) as err:
            raise AirflowFailException(str(err)) from err
        if str(where.run(day)) in {run for run, _ in steps.pushed(where).values()}:
            raise AirflowSkipException(f"{day} was pushed already ({steps.PUSHED_FILE}): its run is kept")
        weekday = setting("search_weekday")
        weekly = weekday != "none" and when.weekday() == int(weekday)
        return {"day": day, "search": setting("model") == OPTFUSION and (served is None or weekly),
                "served_run": str(served.run) if served else None,
                "served_data": str(served.data) if served else None}

    @task
    def ingest(day: dict[str, Any]) -> str:
        """The day's raw file: the `input` log file (a missing one is retried: late logs), or a generated day."""
        template = setting("input")
        if template:
            raw = pathlib.Path(template.format(ds=day["day"]))
            if not raw.is_file():
                raise FileNotFoundError(f"no logs for {day['day']}: {raw} (setting `input`)")
            return str(raw)
        raw = layout().raw(day["day"])
        drift = get_current_context()["params"]["drift"]
        seed = int(day["day"].replace("-", ""))  # a new, reproducible day for each logical date
        run_cli("pipeline", steps.generate(raw, int(setting("rows")), seed, drift))
        return str(raw)

    @task
    def pipeline(day: dict[str, Any], raw: str) -> None:
        served_data, data = day["served_data"], layout().data(day["day"])
        fresh(data)
        run_cli("pipeline", steps.pipeline_job(pathlib.Path(raw), data,
                                               pathlib.Path(served_data) if served_data else None),
                verdict="validation against the served run's data found anomalies")

    @task
    def search(day: dict[str, Any]) -> None:
        """A new architecture on search days; a no-op success otherwise. Not a skip: a skip here would need
        a trigger rule on train that also lets it run after a skipped (stopped) pipeline."""
        if not day["search"]:
            print("not a search day: train warm-starts the served run's design", flush=True)
            return
        where = layout()
        fresh(where.search(day["day"]))
        run_cli("trainer", steps.search(where.data(day["day"]), where.search(day["day"]),
                                        setting("train_overrides").split()))

    @task
    def train(day: dict[str, Any]) -> None:
        where, model = layout(), setting("model")
        init = pathlib.Path(day["served_run"]) if day["served_run"] else None
        architecture = where.search(day["day"]) / "architecture.json" if day["search"] else None
        fresh(where.run(day["day"]))
        run_cli("trainer", steps.train(where.data(day["day"]), where.run(day["day"]),
                                       model=None if init else model, init=init,
                                       architecture=architecture, overrides=setting("train_overrides").split()))

    @task
    def evaluate(day: dict[str, Any]) -> None:
        where = layout()
        baseline = where.models / setting("model_name") if day["served_run"] else None  # the served model
        run_cli("trainer", steps.evaluate(where.data(day["day"]), where.run(day["day"]), baseline),
                verdict="the candidate is NOT_BLESSED against the served model")

    @task
    def push(day: dict[str, Any]) -> None:
        where, name = layout(), setting("model_name")
        run, data = where.run(day["day"]), where.data(day["day"])
        run_cli("serving", steps.push(run, data, where.models, name))
        steps.record_push(where, steps.versions(where.models, name)[-1], run, data)

    day = plan()
    validated = pipeline(day, ingest(day))
    validated >> search(day) >> train(day) >> evaluate(day) >> push(day)


ctr_daily()
