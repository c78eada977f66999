"""The daily loop's gate and its last step: blessing (trainer --stage=evaluate --candidate), push, rollback.

Two tiny logistic-regression runs on the session's generated Criteo run: a
useful one (1 epoch) and a deliberately worse one (1 step, about chance).
Exit codes and written files are checked through the CLIs in subprocesses;
the rollback is checked against the bundled server in its own process.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from tensorflow_serving.config import model_server_config_pb2

from pipeline.dataset_info import read_dataset_info
from serving import cli, configs, export, module, push, session_loader
from serving.client import AVAILABLE, ServingClient
from tests import server_process
from tests.conftest import ROOT
from trainer import blessing

pytestmark = pytest.mark.slow
MODEL = "ctr"
TINY_LR = ["--model", "lr", "--train.epochs=1", "--train.batch_size=256"]


def _cli(package: str, *args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"{package}.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def runs(criteo_preprocessed_dir, tmp_path_factory) -> dict[str, pathlib.Path]:
    """good: 1 epoch (test AUC ~0.59); bad: 1 step (~0.5), both on the generated Criteo run."""
    from trainer.cli import run

    out = tmp_path_factory.mktemp("daily_runs")
    run(["--stage=train", "--data", str(criteo_preprocessed_dir), *TINY_LR, "--train.lr=0.01",
         "--train.emb_lr=0.01", "--out", str(out / "good")])
    run(["--stage=train", "--data", str(criteo_preprocessed_dir), *TINY_LR, "--train.max_steps_per_epoch=1",
         "--out", str(out / "bad")])
    return {"good": out / "good", "bad": out / "bad"}


@pytest.fixture(scope="module")
def blessings(runs, criteo_preprocessed_dir) -> dict[str, subprocess.CompletedProcess]:
    """The CLI on good vs bad (BLESSED) and bad vs good (NOT_BLESSED); blessing.json in each run."""
    return {name: _cli("trainer", "--stage=evaluate", "--data", criteo_preprocessed_dir, "--candidate",
                       runs[name], "--baseline", runs[other])
            for name, other in (("good", "bad"), ("bad", "good"))}


def _record(run: pathlib.Path) -> dict:
    return json.loads((run / blessing.BLESSING_FILE).read_text())


def _test_metrics(run: pathlib.Path) -> tuple[float, float]:
    """The run's own test AUC and calibrated LogLoss, computed from its TFRecords when it trained."""
    metrics = json.loads((run / "metrics.json").read_text())
    return metrics["test_auc"], metrics["calibration"]["test"]["logloss_calibrated"]


def test_a_better_candidate_is_blessed_on_raw_rows_through_its_own_graph(blessings, runs):
    result = blessings["good"]
    assert result.returncode == 0, result.stderr[-3000:]
    record = _record(runs["good"])
    assert record["decision"] == blessing.BLESSED and record["blessed"] and not record["first_day"]
    assert record["candidate"]["auc"] > record["baseline"]["auc"] + 0.05
    stats = json.loads((pathlib.Path(record["data_dir"]) / "stats.json").read_text())
    assert record["rows"] == stats["splits"]["test"]["rows"] and record["split"] == "test"
    assert [c["check"] for c in record["checks"]] == ["min_auc", "max_logloss", "auc_delta", "logloss_delta"]
    assert all(c["passed"] for c in record["checks"])
    # The raw rows re-read and scored through each run's TFT graph give the metrics each run computed on
    # its test TFRecords while training: the same rows, the same model, the same calibration.
    for side, name in (("candidate", "good"), ("baseline", "bad")):
        auc, logloss = _test_metrics(runs[name])
        assert record[side]["auc"] == pytest.approx(auc, abs=1e-5)
        assert record[side]["logloss"] == pytest.approx(logloss, abs=1e-4)
    assert "BLESSED" in result.stdout and f"LogLoss {record['candidate']['logloss']:.4f}" in result.stdout


def test_a_worse_candidate_is_not_blessed_naming_the_reason(blessings, runs):
    result = blessings["bad"]
    assert result.returncode == blessing.EXIT_NOT_BLESSED, result.stderr[-3000:]
    record = _record(runs["bad"])
    assert record["decision"] == blessing.NOT_BLESSED and not record["blessed"]
    failed = [c["check"] for c in record["checks"] if not c["passed"]]
    assert "auc_delta" in failed and "min_auc" in failed
    assert "candidate AUC >= baseline AUC" in record["reason"] and "NOT_BLESSED" in result.stdout


def test_first_day_is_decided_on_the_floors_alone(runs, criteo_preprocessed_dir, tmp_path):
    from trainer.cli import main

    code = main(["--stage=evaluate", f"--data={criteo_preprocessed_dir}", f"--candidate={runs['good']}",
                 f"--output={tmp_path / 'day1.json'}"])
    record = json.loads((tmp_path / "day1.json").read_text())
    assert code == 0 and record["first_day"] and record["baseline"] is None
    assert "first day" in record["note"] and [c["check"] for c in record["checks"]] == ["min_auc", "max_logloss"]
    config = tmp_path / "strict.yaml"
    config.write_text("blessing:\n  min_auc: 0.99\n")
    code = main(["--stage=evaluate", f"--data={criteo_preprocessed_dir}", f"--candidate={runs['good']}",
                 f"--output={tmp_path / 'strict.json'}", f"--blessing_config={config}", "--max_logloss=0.1"])
    record = json.loads((tmp_path / "strict.json").read_text())
    assert code == blessing.EXIT_NOT_BLESSED
    assert record["thresholds"]["min_auc"] == 0.99 and record["thresholds"]["max_logloss"] == 0.1
    assert record["thresholds"]["auc_delta"] == blessing.load_thresholds().auc_delta  # the defaults file's
    assert "min_auc" in record["reason"] and "max_logloss" in record["reason"]


@pytest.fixture(scope="module")
def served(runs, criteo_preprocessed_dir, tmp_path_factory) -> pathlib.Path:
    """BASE with the bad run exported as version 1 and a copy as version 2 (yesterday's pushes)."""
    base = tmp_path_factory.mktemp("daily_base")
    export.export(str(runs["bad"]), str(criteo_preprocessed_dir), str(base), MODEL, verify_rows=200)
    shutil.copytree(base / MODEL / "1", base / MODEL / "2")
    return base


def test_baseline_as_an_exported_model_dir(served, blessings, runs, criteo_preprocessed_dir, tmp_path):
    from trainer.cli import main

    code = main(["--stage=evaluate", f"--data={criteo_preprocessed_dir}", f"--candidate={runs['good']}",
                 f"--baseline={served / MODEL}", f"--output={tmp_path / 'b.json'}"])
    record = json.loads((tmp_path / "b.json").read_text())
    assert code == 0 and record["decision"] == blessing.BLESSED
    assert record["baseline"]["kind"] == "model_dir" and record["baseline"]["version"] == 2  # BASE/NAME: highest
    # serving_default under the session loader scores as the bad run itself did (same rows, same graph).
    as_run = _record(runs["good"])["baseline"]
    assert record["baseline"]["auc"] == pytest.approx(as_run["auc"], abs=1e-5)
    assert record["baseline"]["logloss"] == pytest.approx(as_run["logloss"], abs=1e-4)


def test_missing_or_unfinished_inputs_exit_2(runs, served, criteo_preprocessed_dir, tmp_path, capsys):
    from trainer.cli import main

    unfinished = tmp_path / "unfinished"
    shutil.copytree(runs["good"], unfinished)
    (unfinished / "model.weights.h5").unlink()
    (unfinished / blessing.BLESSING_FILE).unlink(missing_ok=True)  # the good run's, copied
    data = f"--data={criteo_preprocessed_dir}"
    cases = {
        "not a trainer run": [data, f"--candidate={tmp_path}"],
        "did not finish": [data, f"--candidate={unfinished}"],
        "neither a trainer run": [data, f"--candidate={runs['good']}", f"--baseline={tmp_path}"],
        "stats.json": [f"--data={tmp_path / 'nowhere'}", f"--candidate={runs['good']}"],
        "belongs to the blessing: trainer evaluate --candidate": [data, f"--run_dir={runs['good']}",
                                                                  f"--baseline={runs['bad']}"],
        "unknown key": [data, f"--candidate={runs['good']}", f"--blessing_config={tmp_path / 'bad.yaml'}"],
    }
    (tmp_path / "bad.yaml").write_text("blessing:\n  min_acu: 0.6\n")
    for expected, args in cases.items():
        before = sorted(p.name for p in tmp_path.iterdir())
        assert main(["--stage=evaluate", *args]) == 2, expected
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, (expected, err)
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    assert not (unfinished / blessing.BLESSING_FILE).exists()


def test_push_refuses_without_a_blessing_naming_the_run(blessings, runs, served, criteo_preprocessed_dir, capsys):
    before = sorted(p.name for p in (served / MODEL).iterdir())
    flags = ["--data", str(criteo_preprocessed_dir), "--model_base_path", str(served), "--model_name", MODEL]
    result = _cli("serving", "push", "--run", runs["bad"], "--blessing", runs["bad"] / blessing.BLESSING_FILE, *flags)
    assert result.returncode == 2 and "NOT_BLESSED" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and sorted(p.name for p in (served / MODEL).iterdir()) == before
    for run, blessing_file, why in ((runs["bad"], runs["good"] / blessing.BLESSING_FILE, "not"),  # another run's
                                    (runs["good"], runs["good"] / "missing.json", "not a readable")):
        assert cli.main(["push", "--run", str(run), "--blessing", str(blessing_file), *flags]) == 2
        assert why in capsys.readouterr().err
        assert sorted(p.name for p in (served / MODEL).iterdir()) == before


def test_push_then_rollback_under_a_live_server(blessings, runs, served, criteo_preprocessed_dir, tmp_path,
                                                capsys):
    rows, _, _ = blessing.held_out_rows(read_dataset_info(str(criteo_preprocessed_dir)), "test")
    batch = {module.EXAMPLES_INPUT: np.array(rows[:64], dtype=object)}
    with server_process.serving(served / configs.MODELS_CONFIG, tmp_path, [MODEL],
                                "--file_system_poll_wait_seconds", "0.3") as server, \
            ServingClient(server.target, timeout=30) as client:
        result = _cli("serving", "push", "--run", runs["good"], "--blessing", runs["good"] / blessing.BLESSING_FILE,
                      "--data", criteo_preprocessed_dir, "--model_base_path", served, "--model_name", MODEL,
                      "--keep", "2")
        assert result.returncode == 0, result.stderr[-3000:]
        assert export.versions(served / MODEL) == [2, 3]  # version 3 pushed, version 1 removed (keep 2)
        assert not [p for p in (served / MODEL).iterdir() if p.name.startswith(".")]  # no temp dirs left
        server.wait_for(lambda: client.status(MODEL).get(3) == AVAILABLE, "the pushed version 3", timeout=120)

        assert cli.main(["rollback", "--model_base_path", str(served), "--model_name", MODEL]) == 0
        assert export.versions(served / MODEL) == [2, 3, 4]
        assert (served / MODEL / "4" / "saved_model.pb").read_bytes() == \
            (served / MODEL / "2" / "saved_model.pb").read_bytes()
        history = json.loads((served / MODEL / push.ROLLBACK_FILE).read_text())
        assert history[-1]["version"] == 4 and history[-1]["source"] == 2 and history[-1]["replaced"] == 3
        server.wait_for(lambda: client.status(MODEL).get(4) == AVAILABLE, "the rolled-back version 4",
                        timeout=120)
        served_p, _ = client.predict_scores(MODEL, rows[:64])  # the default policy: the highest version
    with session_loader.SessionModel(served / MODEL / "2") as old:
        expected = old.run(module.DEFAULT_SIGNATURE, batch)["probabilities"]
    np.testing.assert_allclose(served_p, expected, atol=1e-6)
    # A second rollback skips version 3 (replaced by a rollback) and the served model's copies: nothing left.
    assert cli.main(["rollback", "--model_base_path", str(served), "--model_name", MODEL]) == 2
    assert "--to VERSION" in capsys.readouterr().err


def test_prune_keeps_the_highest_and_the_pinned_versions(tmp_path):
    base, model_dir = tmp_path, tmp_path / MODEL
    for v in range(1, 7):
        (model_dir / str(v)).mkdir(parents=True)
        (model_dir / str(v) / "saved_model.pb").write_bytes(b"v%d" % v)
    config = model_server_config_pb2.ModelServerConfig()
    entry = config.model_config_list.config.add(name=MODEL, base_path=str(model_dir), model_platform="tensorflow")
    entry.version_labels["stable"] = 2
    entry.model_version_policy.specific.versions.append(4)
    (base / configs.MODELS_CONFIG).write_text(str(config))
    pinned = push.pinned_versions(base, MODEL)
    assert pinned == {2, 4}
    assert push.prune(model_dir, 1, pinned) == [1, 3, 5]
    assert export.versions(model_dir) == [2, 4, 6] and sorted(p.name for p in model_dir.iterdir()) == ["2", "4", "6"]


@pytest.mark.shared_data
def test_a_baseline_of_another_vocabulary_scores_through_its_own_graph(runs, criteo_preprocessed_dir,
                                                                       criteo_sample_dir, tmp_path):
    """Yesterday's run on another pipeline run (the real Criteo sample: other tokens, other ids) scores
    the new day's raw rows through its own TFT graph: as a run and as its export, the same answer."""
    from trainer.cli import main, run

    run(["--stage=train", "--data", str(criteo_sample_dir), *TINY_LR, "--train.max_steps_per_epoch=5",
         "--out", str(tmp_path / "old")])
    export.export(str(tmp_path / "old"), str(criteo_sample_dir), str(tmp_path / "base"), MODEL, verify_rows=100)
    records = {}
    for kind, baseline in (("run", tmp_path / "old"), ("model_dir", tmp_path / "base" / MODEL / "1")):
        out = tmp_path / f"{kind}.json"
        assert main(["--stage=evaluate", f"--data={criteo_preprocessed_dir}", f"--candidate={runs['good']}",
                     f"--baseline={baseline}", f"--output={out}"]) in (0, blessing.EXIT_NOT_BLESSED)
        records[kind] = json.loads(out.read_text())
    assert records["run"]["baseline"]["kind"] == "run" and records["model_dir"]["baseline"]["kind"] == "model_dir"
    for metric in ("auc", "logloss"):
        assert records["run"]["baseline"][metric] == pytest.approx(records["model_dir"]["baseline"][metric],
                                                                   abs=1e-5)
        assert records["run"]["candidate"][metric] == records["model_dir"]["candidate"][metric]
