"""The paper-tables report: statistics, tables, HTML and both figures from made-up records."""

import math

import pytest

from benchmarks import report
from trainer.architecture import Architecture
from trainer.zoo import ZOO


def _records():
    aucs = {"lr": [0.70, 0.71, 0.72], "dcn": [0.74, 0.75, 0.76], "optfusion_soft": [0.78, 0.79, 0.80]}
    return [
        {"table": "table3", "variant": v, "seed": s + 1, "test_auc": auc, "test_logloss": 0.5 - auc / 10,
         "train_seconds": 10.0 * (s + 1), "infer_seconds": 0.002}
        for v, values in aucs.items() for s, auc in enumerate(values)
    ]


def test_summary_and_welch_comparison_of_the_best_variants():
    summary = report.summarize(_records())
    assert summary["table3"]["dcn"]["auc"] == [0.74, 0.75, 0.76]
    comparison = report.best_comparison(summary["table3"])
    assert (comparison["ours"], comparison["theirs"]) == ("optfusion_soft", "dcn")
    assert comparison["diff"] == pytest.approx(0.04)
    # equal spreads (stdev 0.01), n = 3 a side: t = 0.04 / sqrt(2 * 0.01^2 / 3) = 4.899
    assert comparison["t"] == pytest.approx(4.899, abs=1e-3)
    assert 0.005 < comparison["p"] < 0.02
    assert all(math.isnan(x) for x in report.welch([0.7], [0.8]))


def test_markdown_and_html_hold_every_variant(tmp_path):
    summary = report.summarize(_records())
    md = report.markdown("t", "- setup", summary, report.best_comparison(summary["table3"]), ["f.png"])
    assert "| dcn | 0.7500 +- 0.0100 |" in md
    assert "Welch's t = 4.90" in md
    page = report.to_html(md)
    assert page.count("<tr>") == 4 + 3 and '<img src="f.png"' in page  # table 3, then each row vs the best
    assert "table 3's `optfusion_hard" not in md  # no table 5-7 rows here
    assert "Hard rules paired" not in md  # no Hard rows


def test_rows_shared_with_table_3_are_named():
    records = [{**r, "table": "table5", "variant": "one-shot"} for r in _records() if r["variant"] == "dcn"]
    md = report.markdown("t", "- setup", report.summarize(records), None, [])
    assert f"`one-shot` is table 3's `{report.DEFAULT_HARD_ROW}` runs" in md


def test_figures_are_written(tmp_path):
    arch = Architecture.load(ZOO["dcn"].architecture_path)
    paths = report.draw_architecture(arch, "dcn", tmp_path / "figure3")
    assert [p.suffix for p in paths] == [".png", ".svg"]
    assert all(p.stat().st_size > 1000 for p in paths)
    assert "concat" in paths[1].read_text()  # H's op is drawn as a label
    times = report.draw_times(report.summarize(_records())["table3"], tmp_path / "figure2.png")
    assert times.stat().st_size > 1000


def test_calibrated_logloss_and_best_epoch_columns_and_older_records():
    calibrated = [{**r, "test_logloss_calibrated": 0.3 + r["seed"] / 100, "best_epoch": r["seed"] + 1}
                  for r in _records() if r["variant"] == "dcn"]
    older = [r for r in _records() if r["variant"] == "lr"]  # made before calibration existed
    md = report.markdown("t", "- setup", report.summarize(calibrated + older), None, [])
    assert "| test LogLoss, calibrated | test ECE, calibrated | test LogLoss, uncalibrated | test ECE, uncalibrated " \
           "| best epoch |" in md
    assert "| dcn | 0.7500 +- 0.0100 | 0.3200 +- 0.0100 | n/a | 0.4250 +- 0.0010 | n/a | 3.0 |" in md
    assert "| lr | 0.7100 +- 0.0100 | n/a | n/a | 0.4290 +- 0.0010 | n/a | n/a |" in md


def _calibrated_records():
    """Three seeds of a baseline and an OptFusion row with AUC, calibrated LogLoss and ECE."""
    rows = {"dcn": ([0.74, 0.75, 0.76], [0.30, 0.31, 0.32], [0.020, 0.021, 0.022]),
            "fnn": ([0.70, 0.71, 0.72], [0.35, 0.36, 0.37], [0.05, 0.05, 0.05]),
            "optfusion_hard": ([0.745, 0.755, 0.765], [0.25, 0.26, 0.27], [0.030, 0.031, 0.032])}
    return [{"table": "table3", "variant": v, "seed": s + 1, "test_auc": auc[s], "test_logloss": 0.4,
             "test_logloss_calibrated": ll[s], "test_ece": 0.06, "test_ece_calibrated": ece[s],
             "train_seconds": 1.0, "infer_seconds": 0.001}
            for v, (auc, ll, ece) in rows.items() for s in range(3)]


def test_every_model_is_compared_with_the_best_baseline_on_auc_logloss_and_ece():
    table3 = report.summarize(_calibrated_records())["table3"]
    assert report.best_baseline(table3) == "dcn"
    versus = report.versus_best(table3)
    assert set(versus) == {"fnn", "optfusion_hard"}
    # AUC +0.005 with equal spreads 0.01: t = 0.005 / sqrt(2 * 0.0001 / 3) = 0.612, a tie
    assert versus["optfusion_hard"]["auc"]["diff"] == pytest.approx(0.005)
    assert versus["optfusion_hard"]["auc"]["verdict"] == "tie" and versus["optfusion_hard"]["auc"]["p"] > 0.5
    # LogLoss lower by 0.05 (t = 6.1, p < 0.05): a win; ECE higher by 0.01 (t = 12.2): a loss
    assert versus["optfusion_hard"]["logloss_calibrated"]["verdict"] == "win"
    assert versus["optfusion_hard"]["ece_calibrated"]["diff"] == pytest.approx(0.01)
    assert versus["optfusion_hard"]["ece_calibrated"]["verdict"] == "lose"
    assert versus["fnn"]["auc"]["verdict"] == "lose"
    md = report.markdown("t", "- setup", report.summarize(_calibrated_records()), None, [])
    assert "| optfusion_hard | +0.0050 (0." in md and "**Where OptFusion wins, ties or loses:**" in md
    assert "- `optfusion_hard` vs `dcn`: AUC tie (+0.0050" in md and "calibrated LogLoss win (-0.0500" in md
    assert "calibrated ECE lose (+0.0100" in md


def test_reliability_diagrams_pool_over_seeds_and_are_drawn(tmp_path):
    # seed 1: bin 1 (p in [1/15, 2/15)) 10 rows at 0.1, observed 0.2; seed 2: same bin, 30 rows at 0.12,
    # observed 0.1, and bin 14 (p = 1 included) 5 rows at 0.97, observed 1.0
    pooled = report.pooled_reliability([[[0.1, 0.2, 10]], [[0.12, 0.1, 30], [0.97, 1.0, 5]]])
    assert pooled[0] == pytest.approx((0.115, 0.125, 40)) and pooled[1] == pytest.approx((0.97, 1.0, 5))
    assert report.pooled_reliability([[[0.1, 0.2, 10]], None]) == []  # a seed without a diagram
    records = [{**r, "test_reliability": [[0.3, 0.4, 10]], "test_reliability_calibrated": [[0.35, 0.36, 10]]}
               for r in _calibrated_records()]
    path = report.draw_reliability(report.summarize(records)["table3"], tmp_path / "reliability.png")
    assert path is not None and path.stat().st_size > 1000
    assert report.draw_reliability(report.summarize(_calibrated_records())["table3"], tmp_path / "none.png") is None
    baseline_only = report.summarize([r for r in records if r["variant"] == "dcn"])["table3"]
    assert report.draw_reliability(baseline_only, tmp_path / "one.png") is not None  # no OptFusion row yet


def test_hard_rules_are_compared_paired_by_seed():
    hard = {"optfusion_hard": [0.70, 0.71, 0.72], "optfusion_hard_remove": [0.74, 0.71, 0.71]}
    records = [{"table": "table3", "variant": v, "seed": s, "test_auc": auc, "test_logloss": 0.4,
                "train_seconds": 1.0, "infer_seconds": 0.001}
               for v, values in hard.items() for s, auc in zip((3, 1, 2), values, strict=True)]
    comparison = report.rule_comparison(report.summarize(records)["table3"])
    # by seed 1, 2, 3: remove 0.71, 0.71, 0.74 vs beta 0.71, 0.72, 0.70: differences 0, -0.01, +0.04
    auc = comparison["optfusion_hard_remove auc"]
    assert auc["diff"] == pytest.approx(0.01) and auc["n"] == 3
    # t = 0.01 / (stdev(0, -0.01, 0.04) / sqrt 3) = 0.01 / (0.026458 / 1.732) = 0.655, df 2
    assert auc["t_p"] == pytest.approx(0.580, abs=2e-3)
    assert auc["w_p"] == pytest.approx(1.0)  # the zero pair dropped: ranks 1 (-) and 2 (+)
    assert comparison["optfusion_hard_remove logloss"] == {"diff": 0.0, "t_p": 1.0, "w_p": 1.0, "n": 3}
    md = report.markdown("t", "- setup", report.summarize(records), None, [])
    assert "`optfusion_hard_remove` - `optfusion_hard` auc +0.0100 over 3 seeds (paired t p = 0.580" in md
    assert report.rule_comparison({"optfusion_hard": report.summarize(records)["table3"]["optfusion_hard"]}) is None
