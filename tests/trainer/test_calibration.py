"""Temperature, beta and isotonic calibration: the fits recover known maps, the maps match hand-computed values in
numpy and TF, the run records them, and older runs read as before."""

import json
import math

import numpy as np
import pytest

from trainer.calibration import (
    CALIBRATION_FILE,
    IDENTITY,
    Calibration,
    CalibrationError,
    calibrate,
    fit_beta,
    fit_isotonic,
    fit_temperature,
    read_calibration,
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
    temperature = read_calibration(tmp_path).temperature
    assert temperature == pytest.approx(result["temperature"]) == pytest.approx(2.0, rel=0.03)
    for split in ("valid", "test"):
        q = result[split]
        assert q["logloss_calibrated"] < q["logloss"] and q["ece_calibrated"] < q["ece"]
    assert roc_auc(test[0], test[1] / result["temperature"]) == roc_auc(*test)  # AUC unchanged

    off = calibrate("none", valid, test, tmp_path)  # a rerun without calibration leaves no stale T
    assert not (tmp_path / CALIBRATION_FILE).exists() and read_calibration(tmp_path) == IDENTITY
    assert off["temperature"] == 1.0 and off["test"]["logloss_calibrated"] == off["test"]["logloss"]


def test_read_calibration_of_older_and_broken_runs(tmp_path):
    assert read_calibration(tmp_path) == IDENTITY  # a run from before calibration
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps({"temperature": 2.0}))  # before beta: no method key
    assert read_calibration(tmp_path) == Calibration.from_temperature(2.0)
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps({"temperature": -2}))
    with pytest.raises(CalibrationError, match="finite number > 0"):
        read_calibration(tmp_path)
    (tmp_path / CALIBRATION_FILE).write_text("{}")
    with pytest.raises(CalibrationError, match="holds no valid calibration"):
        read_calibration(tmp_path)
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps({"method": "platt"}))
    with pytest.raises(CalibrationError, match="unknown calibration method 'platt'"):
        read_calibration(tmp_path)
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps({"method": "beta", "params": {"a": -1, "b": 1, "c": 0}}))
    with pytest.raises(CalibrationError, match="a, b >= 0"):
        read_calibration(tmp_path)
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps({"method": "beta", "params": {"a": 1, "b": 2}}))
    with pytest.raises(CalibrationError, match="holds no valid calibration"):
        read_calibration(tmp_path)
    assert read_calibration(tmp_path.parent / "nowhere") == IDENTITY


def test_maps_match_hand_computed_values_in_numpy_and_tf():
    import tensorflow as tf

    z = np.array([0.0, 2.0, -3.0])
    softplus = np.log1p(np.exp(z))
    # beta: b * softplus(z) - a * softplus(-z) + c; at z = 0 both softplus are ln 2
    beta = Calibration("beta", 1.0, 2.0, 0.5)
    assert beta.apply(np.zeros(1))[0] == pytest.approx(math.log(2) + 0.5)
    want = 2.0 * softplus - 1.0 * np.log1p(np.exp(-z)) + 0.5
    np.testing.assert_allclose(beta.apply(z), want, rtol=1e-12)
    np.testing.assert_allclose(beta.apply_tf(tf.constant(z, tf.float32)).numpy(), want, rtol=1e-6)
    # a = b = 1 / T, c = 0 is temperature: z / T, exactly in the temperature form
    t = Calibration.from_temperature(4.0)
    np.testing.assert_allclose(t.apply(z), z / 4.0, rtol=0)
    np.testing.assert_allclose(Calibration("beta", 0.25, 0.25, 0.0).apply(z), z / 4.0, atol=1e-12)
    np.testing.assert_allclose(t.apply_tf(tf.constant(z, tf.float32)).numpy(), z / 4.0, rtol=1e-7)
    assert IDENTITY.apply(z) is not None and np.array_equal(IDENTITY.apply(z), z) and IDENTITY.temperature == 1.0
    assert beta.temperature is None and t.temperature == pytest.approx(4.0)


def _beta_labels(a: float, b: float, c: float, rows: int = 200_000, seed: int = 0):
    """Logits z ~ N(-1, 2) and labels drawn from the beta map's probability of z."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-1.0, 2.0, rows)
    p = 1 / (1 + np.exp(-Calibration("beta", a, b, c).apply(z)))
    return (rng.random(rows) < p).astype(np.float64), z


@pytest.mark.parametrize("true", [(0.2, 1.0, -1.3), (1.5, 0.4, 0.3), (0.5, 0.5, 0.0)])
def test_fit_beta_recovers_a_known_map(true):
    labels, z = _beta_labels(*true)
    fitted = fit_beta(labels, z)
    assert fitted.method == "beta"
    assert (fitted.a, fitted.b, fitted.c) == pytest.approx(true, abs=0.05)
    # its LogLoss is no worse than temperature's, which is the special case a = b, c = 0
    assert log_loss(labels, fitted.apply(z)) <= log_loss(labels, z / fit_temperature(labels, z)) + 1e-9


def test_fit_beta_keeps_the_map_increasing():
    rng = np.random.default_rng(4)
    z = rng.normal(0.0, 2.0, 100_000)
    # clicks rise with z above 0 but also with |z| below it: unconstrained, a would be negative
    p = 1 / (1 + np.exp(-(np.abs(z) - 1.0)))
    labels = (rng.random(z.size) < p).astype(np.float64)
    fitted = fit_beta(labels, z)
    assert fitted.a == 0.0 and fitted.b > 0
    assert np.all(np.diff(fitted.apply(np.sort(z))) >= 0)  # increasing: the ranking (AUC) is kept
    assert roc_auc(labels, fitted.apply(z)) == pytest.approx(roc_auc(labels, z), abs=1e-12)
    with pytest.raises(CalibrationError, match="no increasing map"):  # labels ranked backwards
        fit_beta((z < 0).astype(np.float64), z)
    with pytest.raises(CalibrationError, match="constant"):
        fit_beta(np.array([0.0, 1.0]), np.ones(2))


def test_calibrate_beta_writes_a_run_file_export_reads(tmp_path):
    valid, test = _beta_labels(0.2, 1.0, -1.3, rows=50_000, seed=5), _beta_labels(0.2, 1.0, -1.3, rows=50_000, seed=6)
    result = calibrate("beta", valid, test, tmp_path)
    assert json.loads((tmp_path / CALIBRATION_FILE).read_text()) == result and result["temperature"] is None
    read = read_calibration(tmp_path)
    assert (read.a, read.b, read.c) == (result["params"]["a"], result["params"]["b"], result["params"]["c"])
    for split in ("valid", "test"):
        q = result[split]
        assert q["logloss_calibrated"] < q["logloss"] and q["ece_calibrated"] < q["ece"]
    assert roc_auc(test[0], read.apply(test[1])) == roc_auc(*test)


def test_fit_isotonic_pools_and_smooths_by_hand():
    # sorted by logit: labels 0 | 1 0 | 1 1 1 -> blocks {0}: 0, {1, 2}: 1/2, {3, 4, 5}: 1 (equal means pool)
    z, labels = np.arange(6.0), np.array([0, 1, 0, 1, 1, 1.0])
    fitted = fit_isotonic(labels, z)
    # base rate 4/6; each block's rate (s + base) / (n + 1): 1/3, 5/9, 11/12; knots at the blocks' mean z
    want = [(0.0, math.log(0.5)), (1.5, math.log(5 / 4)), (4.0, math.log(11))]
    assert fitted.method == "isotonic"
    np.testing.assert_allclose(np.array(fitted.knots), want, atol=1e-12)
    # linear between knots; beyond them the mean slope between the end knots
    slope = (math.log(11) - math.log(0.5)) / 4.0
    want_at = {0.75: (math.log(0.5) + math.log(5 / 4)) / 2, -1.0: math.log(0.5) - slope,
               6.0: math.log(11) + 2 * slope, 4.0: math.log(11)}
    np.testing.assert_allclose(fitted.apply(np.array(list(want_at))), list(want_at.values()), rtol=1e-12)


def test_fit_isotonic_pools_again_where_smoothing_breaks_the_order():
    # 200 negatives, then A: 22 positives and 78 negatives (rate 0.22), then B: 2 and 7 (0.222): PAV keeps A < B,
    # but one pseudo-row at the base rate 24 / 309 pulls the small B (0.2078) below the large A (0.2186)
    labels = np.r_[np.zeros(200), np.ones(22), np.zeros(78), np.ones(2), np.zeros(7)]
    z = np.arange(labels.size, dtype=np.float64)
    base = 24 / 309
    fitted = fit_isotonic(labels, z)
    rates = [base / 201, (24 + 2 * base) / 111]
    want = [(99.5, math.log(rates[0] / (1 - rates[0]))), (254.0, math.log(rates[1] / (1 - rates[1])))]
    np.testing.assert_allclose(np.array(fitted.knots), want, rtol=1e-12)


def test_fit_isotonic_refuses_what_leaves_no_increasing_map():
    z = np.linspace(-2, 2, 50)
    for labels in ((z < 0).astype(np.float64), np.zeros(50), np.ones(50)):  # falling, one label
        with pytest.raises(CalibrationError, match="no increasing map"):
            fit_isotonic(labels, z)
    with pytest.raises(CalibrationError, match="no increasing map"):
        fit_isotonic(np.array([0.0, 1.0]), np.ones(2))  # constant logits: one point


def test_isotonic_follows_a_shape_beta_cannot_and_keeps_the_ranking(tmp_path):
    """Clicks bounded away from 0 and 1 (p = 0.1 + 0.8 sigmoid(3 z)): no beta map reaches the floor and
    ceiling; isotonic, fitted on valid, is better calibrated on held-out rows, at the same AUC."""
    def draw(seed: int, rows: int = 40_000):
        rng = np.random.default_rng(seed)
        z = rng.normal(0.0, 1.5, rows)
        return (rng.random(rows) < 0.1 + 0.8 / (1 + np.exp(-3 * z))).astype(np.float64), z

    valid, test = draw(7), draw(8)
    beta = calibrate("beta", valid, test, tmp_path)["test"]
    result = calibrate("isotonic", valid, test, tmp_path)
    assert result["test"]["ece_calibrated"] < beta["ece_calibrated"] and result["test"]["ece_calibrated"] < 0.01
    assert result["test"]["logloss_calibrated"] < beta["logloss_calibrated"]
    read = read_calibration(tmp_path)
    assert read == fit_isotonic(*valid) and [list(k) for k in read.knots] == result["params"]["knots"]
    assert np.all(np.diff(read.apply(np.sort(test[1]))) > 0)  # strictly increasing: AUC exactly kept
    assert roc_auc(test[0], read.apply(test[1])) == roc_auc(*test)


def test_isotonic_map_in_tf_matches_numpy_inside_and_beyond_the_knots():
    import tensorflow as tf

    fitted = Calibration("isotonic", knots=((-1.0, -3.0), (0.5, 0.0), (2.0, 1.0)))
    z = np.array([[-4.0], [-1.0], [-0.25], [0.5], [1.0], [2.0], [3.5]])  # the serving shape (batch, 1)
    slope = 4.0 / 3.0
    want = np.array([[-3 - 3 * slope], [-3.0], [-1.5], [0.0], [1 / 3], [1.0], [1 + 1.5 * slope]])
    np.testing.assert_allclose(fitted.apply(z), want, rtol=1e-12)
    got = fitted.apply_tf(tf.constant(z, tf.float32))
    assert got.shape == (7, 1)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)


def test_read_calibration_refuses_broken_isotonic_knots(tmp_path):
    path = tmp_path / CALIBRATION_FILE
    for knots in ([[0, 1]], [[0, 1], [0, 2]], [[0, 2], [1, 1]], [[0, 1], [1, float("inf")]]):
        path.write_text(json.dumps({"method": "isotonic", "params": {"knots": knots}}))
        with pytest.raises(CalibrationError, match="strictly increasing"):
            read_calibration(tmp_path)
    path.write_text(json.dumps({"method": "isotonic", "params": {}}))
    with pytest.raises(CalibrationError, match="holds no valid calibration"):
        read_calibration(tmp_path)
