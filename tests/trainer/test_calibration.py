"""Temperature scaling: the fit recovers a known T, the run records it, and older runs read as T = 1."""

import json
import math

import numpy as np
import pytest

from trainer.calibration import (
    CALIBRATION_FILE,
    CalibrationError,
    calibrate,
    fit_temperature,
    read_temperature,
)
from trainer.metrics import log_loss, roc_auc


def _synthetic(temperature: float, rows: int = 200_000, seed: int = 0):
    """Labels drawn from sigmoid(z), logits z * temperature: a model over- (T > 1) or under-confident (T < 1)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-1.0, 1.5, rows)
    labels = (rng.random(rows) < 1 / (1 + np.exp(-z))).astype(np.float64)
    return labels, z * temperature


@pytest.mark.parametrize("true_t", [2.41, 0.5, 1.0])
def test_fit_recovers_a_known_temperature(true_t):
    labels, logits = _synthetic(true_t)
    t = fit_temperature(labels, logits)
    assert t == pytest.approx(true_t, rel=0.02)
    best = log_loss(labels, logits / t)
    assert best <= log_loss(labels, logits / (t * 1.001)) and best <= log_loss(labels, logits / (t / 1.001))


def test_fit_is_scale_free_and_handles_degenerate_logits():
    labels, logits = _synthetic(1.0, rows=20_000, seed=1)
    assert fit_temperature(labels, logits * 40) == pytest.approx(40 * fit_temperature(labels, logits), rel=1e-5)
    assert fit_temperature(np.array([0.0, 1.0]), np.zeros(2)) == 1.0  # no scale to fit
    with pytest.raises(CalibrationError, match="NaN or Inf"):
        fit_temperature(np.array([0.0, 1.0]), np.array([0.0, np.nan]))
    with pytest.raises(CalibrationError, match="equal, non-empty"):
        fit_temperature(np.array([]), np.array([]))


def test_calibrate_writes_the_run_file_and_keeps_the_ranking(tmp_path):
    valid, test = _synthetic(2.0, rows=50_000, seed=2), _synthetic(2.0, rows=50_000, seed=3)
    result = calibrate("temperature", valid, test, tmp_path)
    assert json.loads((tmp_path / CALIBRATION_FILE).read_text()) == result
    assert read_temperature(tmp_path) == pytest.approx(result["temperature"]) == pytest.approx(2.0, rel=0.03)
    for split in ("valid", "test"):
        q = result[split]
        assert q["logloss_calibrated"] < q["logloss"] and q["ece_calibrated"] < q["ece"]
    assert roc_auc(test[0], test[1] / result["temperature"]) == roc_auc(*test)  # AUC unchanged

    off = calibrate("none", valid, test, tmp_path)  # a rerun without calibration leaves no stale T
    assert not (tmp_path / CALIBRATION_FILE).exists() and read_temperature(tmp_path) == 1.0
    assert off["temperature"] == 1.0 and off["test"]["logloss_calibrated"] == off["test"]["logloss"]


def test_read_temperature_of_older_and_broken_runs(tmp_path):
    assert read_temperature(tmp_path) == 1.0  # a run from before calibration
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps({"temperature": -2}))
    with pytest.raises(CalibrationError, match="finite number > 0"):
        read_temperature(tmp_path)
    (tmp_path / CALIBRATION_FILE).write_text("{}")
    with pytest.raises(CalibrationError, match="holds no valid temperature"):
        read_temperature(tmp_path)
    assert math.isclose(read_temperature(tmp_path.parent / "nowhere"), 1.0)
