"""paper_tables.py --nas on tiny synthetic data: AutoCTR and NASRec rows in table 3, figure 2(a) and 2(b-d)."""

import json

import pytest

from benchmarks import paper_tables
from tests.trainer.synthetic import write_synthetic_run
from trainer.config import preset_path

NAS_BUDGET = ["--nas.blocks=2", "--nas.dense_dim=8", "--nas.population=2", "--nas.cycles=1", "--nas.sample_size=2",
              "--nas.candidate_steps=3"]


def test_plan_adds_a_search_and_retrain_row_per_method():
    cells = paper_tables.plan(["table3"], ["lr"], nas=["autoctr", "nasrec"])
    nas = {v: run for t, v, run in cells if v in ("autoctr", "nasrec")}
    assert {v: run.search for v, run in nas.items()} == {"autoctr": "autoctr", "nasrec": "nasrec"}
    assert all(a.startswith("--stage=retrain") for run in nas.values() for a in run.args)
    assert paper_tables.plan(["table3"], ["lr"]) == [c for c in cells if c[1] not in nas]  # opt-in


@pytest.mark.dist  # eight trainer processes: ~2 min on 2 loaded cores
def test_report_has_nas_rows_and_figure_2(tmp_path):
    data = write_synthetic_run(tmp_path / "data")
    out = tmp_path / "report"
    args = ["--data", str(data), "--out", str(out), "--seeds", "1", "--tables", "table3", "--models", "lr",
            "--nas", "autoctr", "nasrec", "--quick", "--config", str(preset_path("criteo", "cpu")),
            "--model.emb_dim=4", "--model.att_dim=8", *NAS_BUDGET]
    assert paper_tables.main(args) == 0
    for method in ("autoctr", "nasrec"):
        record = json.loads((out / "records" / f"table3__{method}__s1.json").read_text())
        search = json.loads((out / "runs" / f"search-{method}" / "s1" / "done.json").read_text())["seconds"]
        retrain = json.loads((out / "runs" / f"{method}-retrain" / "s1" / "done.json").read_text())["seconds"]
        assert record["train_seconds"] == pytest.approx(search + retrain)  # search + retrain, as OptFusion's
        assert 0 < record["test_auc"] <= 1 and record["infer_seconds"] > 0
    md = (out / "report.md").read_text()
    assert "| autoctr |" in md and "| nasrec |" in md
    assert "- nasrec budget (config `nas:`): blocks 2, dense_dim 8, population 2, cycles 1" in md
    assert "candidate_steps 3" in md.split("- autoctr budget")[1].splitlines()[0]
    assert (out / "figure2a_search_cost.png").is_file() and (out / "figure2bd_speed_auc.png").is_file()
    assert "figure2a_search_cost.png" in md
