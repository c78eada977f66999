"""orchestration/daily_steps.py: the daily loop's commands and state, shared by the demo and the Airflow DAG.

It cannot import the project (it runs in Airflow's venv), so the facts it mirrors are checked here against
their homes, its command lines against the CLIs' own parsers, and the served run through a rollback.
"""

from __future__ import annotations

import json
import pathlib

import pytest

from orchestration import daily_steps as steps
from pipeline.errors import EXIT_USAGE
from pipeline.validate import EXIT_ANOMALIES
from serving import push as serving_push
from serving.cli import build_parser as serving_parser
from trainer import blessing
from trainer.cli import _parser as trainer_parser


def test_mirrored_facts_match_their_homes():
    assert steps.STOP_EXIT_CODE == EXIT_ANOMALIES == blessing.EXIT_NOT_BLESSED
    assert steps.USAGE_EXIT_CODE == EXIT_USAGE
    assert steps.BLESSING_FILE == blessing.BLESSING_FILE
    assert steps.ROLLBACK_FILE == serving_push.ROLLBACK_FILE


def test_the_dag_and_its_steps_import_nothing_of_the_project():
    """Airflow's venv has neither the project nor TensorFlow: only the CLIs' subprocesses do."""
    for path in (pathlib.Path(steps.__file__), pathlib.Path(steps.__file__).parent / "ctr_daily_dag.py"):
        imports = [line for line in path.read_text().splitlines() if line.startswith(("import ", "from "))]
        assert imports and not [line for line in imports if any(
            name in line.split("#")[0] for name in ("pipeline", "trainer", "serving", "tensorflow", "keras"))], path


def test_commands_parse_with_the_clis_own_parsers(tmp_path):
    data, run, prev = tmp_path / "data", tmp_path / "run", tmp_path / "prev"
    parsed, extra = trainer_parser().parse_known_args(
        steps.train(data, run, model=None, init=prev, overrides=["--train.epochs=1"]))
    assert (parsed.stage, parsed.data, parsed.out, str(parsed.init)) == ("train", str(data), run, f"run:{prev}")
    assert extra == ["--train.epochs=1"]
    parsed, _ = trainer_parser().parse_known_args(
        steps.train(data, run, model="lr", init=None, architecture=prev / "architecture.json"))
    assert (parsed.stage, parsed.mode, parsed.architecture) == ("retrain", "hard", prev / "architecture.json")
    parsed, _ = trainer_parser().parse_known_args(steps.evaluate(data, run, prev))
    assert (parsed.stage, parsed.candidate, parsed.baseline) == ("evaluate", run, prev)
    parsed = serving_parser().parse_args(steps.push(run, data, tmp_path / "models"))
    assert (parsed.run, parsed.blessing, parsed.model_name) == (str(run), str(run / "blessing.json"), "ctr")


def test_served_follows_pushes_and_rollbacks(tmp_path):
    layout = steps.Layout(tmp_path)
    assert steps.served(layout) is None  # before the first push
    model_dir = layout.models / steps.MODEL_NAME
    for version, day in ((1, "d1"), (2, "d2")):
        (model_dir / str(version)).mkdir(parents=True)
        steps.record_push(layout, version, layout.run(day), layout.data(day))
    assert steps.served(layout) == steps.Served(2, layout.run("d2"), layout.data("d2"))
    # `serving rollback --to 1` copies v1 into v3 and records it: v3 is d1's run.
    (model_dir / "3").mkdir()
    (model_dir / steps.ROLLBACK_FILE).write_text(json.dumps([{"version": 3, "source": 1, "replaced": 2}]))
    assert steps.served(layout) == steps.Served(3, layout.run("d1"), layout.data("d1"))
    assert not list(tmp_path.glob(f".{steps.PUSHED_FILE}.*"))  # no temp file left behind
    (model_dir / "4").mkdir()  # pushed by hand, outside the loop
    with pytest.raises(LookupError, match="was not pushed by this loop"):
        steps.served(layout)
