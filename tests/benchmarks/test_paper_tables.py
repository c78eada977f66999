"""paper_tables.py end to end on tiny synthetic data: trainer runs, records, report, resume."""

import json
import pathlib

import pytest
import yaml

from benchmarks import paper_tables
from tests.trainer.synthetic import write_synthetic_run
from trainer.config import SearchConfig, preset_path


@pytest.mark.slow
@pytest.mark.dist  # several trainer processes, ~1-2 min: make test-dist keeps make test under 20 min
def test_report_runs_each_cell_once_and_resumes(tmp_path, capsys, monkeypatch):
    data = write_synthetic_run(tmp_path / "data")
    out = tmp_path / "report"
    args = ["--data", str(data), "--out", str(out), "--seeds", "1", "--tables", "table3", "table4",
            "--models", "lr", "--quick", "--config", str(preset_path("criteo", "cpu")),
            "--model.emb_dim=4", "--model.att_dim=8"]
    assert paper_tables.main(args) == 0
    records = sorted(p.name for p in (out / "records").glob("*.json"))
    assert records == sorted(["table3__lr__s1.json", "table3__optfusion_hard__s1.json",
                              "table3__optfusion_hard_remove__s1.json", "table3__optfusion_soft__s1.json",
                              *(f"table4__{op}__s1.json" for op in ("add", "prod", "concat", "att"))])
    record = json.loads((out / "records" / "table4__prod__s1.json").read_text())
    assert 0.0 < record["test_auc"] <= 1.0 and record["infer_seconds"] > 0
    assert record["best_epoch"] == 1 and len(record["valid_auc_per_epoch"]) == len(record["valid_logloss_per_epoch"])
    assert record["temperature"] > 0 and record["test_logloss_calibrated"] > 0 and 0 <= record["test_ece"] <= 1
    md = (out / "report.md").read_text()
    assert "| optfusion_soft |" in md and "Table 4" in md
    assert (out / "figure3_architecture.png").is_file() and (out / "figure3_architecture.svg").is_file()
    assert "[8/8]" in capsys.readouterr().out
    # Both Hard rows retrain the one main search: argmax(beta) and `remove` from its saved weights.
    search = out / "runs" / "search-main" / "s1"
    hard = {json.loads((out / "records" / f"table3__{v}__s1.json").read_text())["run_dir"]: v
            for v in ("optfusion_hard", "optfusion_hard_remove")}
    used = {v: json.loads((pathlib.Path(d) / "run.json").read_text())["architecture_source"] for d, v in hard.items()}
    assert used == {"optfusion_hard": str(search / "architecture_beta.json"),
                    "optfusion_hard_remove": str(search / "architecture_remove@1se.json")}

    # A rerun trains nothing (every record exists) and redraws the report.
    calls = []
    monkeypatch.setattr(paper_tables.subprocess, "call", lambda *a, **k: calls.append(a) or 0)
    (out / "report.md").unlink()
    assert paper_tables.main(args) == 0
    assert calls == [] and (out / "report.md").is_file()

    # A record another run wrote (an old report's optfusion_hard, then `remove`: runs/main-hard) is redone.
    stale = out / "records" / "table3__optfusion_hard__s1.json"
    stale.write_text(json.dumps({**json.loads(stale.read_text()), "run_dir": str(out / "runs" / "main-hard" / "s1")}))
    assert paper_tables.main(args) == 0
    assert json.loads(stale.read_text())["run_dir"] == str(out / "runs" / "main-hard-beta" / "s1")

    # --recalibrate trains nothing: every run's map is refit by `trainer calibrate`, records and report follow.
    monkeypatch.undo()
    before = {p.name: json.loads(p.read_text()) for p in (out / "records").glob("*.json")}
    assert paper_tables.main(["--data", str(data), "--out", str(out), "--recalibrate", "isotonic"]) == 0
    for name, old in before.items():
        new = json.loads((out / "records" / name).read_text())
        assert new["calibration"] == "isotonic" and new["calibration_previous"] == old["calibration"] == "temperature"
        assert new["test_auc"] == old["test_auc"] and new["train_seconds"] == old["train_seconds"]
        metrics = json.loads((pathlib.Path(new["run_dir"]) / "metrics.json").read_text())
        assert new["test_ece_calibrated"] == metrics["calibration"]["test"]["ece_calibrated"]
    md = (out / "report.md").read_text()
    assert "was refit by `trainer calibrate`" in md and "trainer/calibration.py): isotonic;" in md
    assert len((out / paper_tables.COMMANDS_FILE).read_text().splitlines()) == 4  # three runs and this one
    assert "benchmarks/paper_tables.py --data" in md and "--recalibrate isotonic`" in md  # listed in the header


def test_plan_shares_the_searches_between_tables():
    cells = paper_tables.plan(list(paper_tables.TABLES), ["lr"])
    searches = {run.search for _, _, run in cells if run.search}
    assert searches == set(paper_tables.searches())
    keys = [(t, v) for t, v, _ in cells]
    assert len(keys) == len(set(keys))
    default_row = paper_tables.HARD_ROWS[SearchConfig.hard_select]
    one_shot = {run for t, v, run in cells if (t, v) in {("table3", default_row), ("table5", "one-shot")}}
    assert len(one_shot) == 1  # the same run dir answers both cells
    hard = {run for t, v, run in cells if t == "table3" and v in paper_tables.HARD_ROWS.values()}
    assert {(run.search, run.rule) for run in hard} == {("main", "beta"), ("main", "remove")}



def test_a_failed_run_is_reported_and_the_rest_goes_on(tmp_path, monkeypatch):
    attempts = []

    def fails(self, run, seed):
        attempts.append(run.key)
        raise RuntimeError(f"trainer failed (exit 1) for {run.key}")

    monkeypatch.setattr(paper_tables.Runner, "cell", fails)
    data = write_synthetic_run(tmp_path / "data")
    code = paper_tables.main(["--data", str(data), "--out", str(tmp_path / "r"), "--seeds", "1",
                              "--tables", "table3", "--models", "lr", "fnn"])
    assert code == 1 and attempts == ["lr", "fnn", "main-hard-beta", "main-hard-remove", "main-soft"]
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Failed runs" in md and "table3 fnn seed 1: trainer failed (exit 1) for fnn" in md


@pytest.mark.slow
@pytest.mark.dist  # several trainer processes, ~1-2 min: make test-dist keeps make test under 20 min
def test_tuned_runs_each_model_at_its_best_grid_point(tmp_path):
    data = write_synthetic_run(tmp_path / "data")
    grid = tmp_path / "grid.yaml"  # lr x dense L2 x embedding L2, one L2 point each: 2 trials
    grid.write_text("grid:\n  train.lr: [1.0e-4, 3.0e-2]\n  train.l2: [1.0e-7]\n  train.emb_l2: [1.0e-6]\n"
                    "tie:\n  train.emb_lr: train.lr\n")
    out = tmp_path / "report"
    args = ["--data", str(data), "--out", str(out), "--seeds", "1", "--tables", "table3", "--models", "lr",
            "--no-optfusion", "--quick", "--tuned", "--grid", str(grid), "--config",
            str(preset_path("criteo", "cpu"))]
    assert paper_tables.main(args) == 0
    best = yaml.safe_load((out / "tune" / "lr" / "best.yaml").read_text())["train"]
    used = yaml.safe_load((out / "runs" / "lr" / "s1" / "config.yaml").read_text())["train"]
    assert best["lr"] in (1e-4, 3e-2) and (best["l2"], best["emb_l2"]) == (1e-7, 1e-6)
    keys = ("lr", "emb_lr", "l2", "emb_l2")
    assert {k: used[k] for k in keys} == {k: best[k] for k in keys}
    assert used["epochs"] == 1 and used["max_steps_per_epoch"] == 3  # the tuned base's budget, not Config's
    assert "tuned: each model at its best point of `grid.yaml` (2 points" in (out / "report.md").read_text()
