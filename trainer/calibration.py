"""Temperature scaling: one T fitted on the validation split, so that P(click) = sigmoid(logit / T).

Why: early stopping keeps the epoch with the best validation monitor, but a
CTR model trained past its LogLoss minimum is over-confident (on Frappe, FNN:
test LogLoss 0.386 at AUC 0.946; T = 2.41 fitted on validation gave 0.283 at
the same AUC, issue 19). Dividing every logit by one T > 0 keeps the ranking
(AUC) and fixes the confidence; T is fitted on validation only, never on test.

The fit minimises the validation LogLoss of sigmoid(z / T). As a function of
s = 1 / T that loss is convex (softplus of a linear function), so in
u = log T = -log s it is unimodal: golden-section search on u over a wide
bracket finds the minimum without derivatives or step sizes, whatever the
scale of the logits. numpy only.

The run keeps T in `calibration.json` (read by `serving export`, which puts
the division inside the SavedModel, and by `trainer --stage=evaluate|predict`);
a run without the file (older runs, `train.calibrate: none`) means T = 1.
"""

from __future__ import annotations

import json
import logging
import math
import pathlib
from typing import Any

import numpy as np

from pipeline.atomic import write_text_atomic
from pipeline.errors import UsageError
from trainer.metrics import expected_calibration_error, log_loss, sigmoid

log = logging.getLogger("trainer")

CALIBRATION_FILE = "calibration.json"
LOG_T_BRACKET = (math.log(1e-2), math.log(1e2))
"""Search range of log T: T from 0.01 (sharpen 100x) to 100 (flatten 100x)."""
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


class CalibrationError(UsageError):
    """The predictions cannot determine a temperature, or a run's calibration.json is unreadable."""


def fit_temperature(labels: np.ndarray, logits: np.ndarray, tol: float = 1e-7) -> float:
    """The T > 0 minimising the LogLoss of sigmoid(logits / T) on (labels, logits).

    Golden-section search on log T within LOG_T_BRACKET to `tol`. Logits that
    are all 0 carry no scale: T = 1. A minimum at the bracket's edge (e.g.
    separable labels, where the loss keeps falling as T -> 0) is returned with
    a warning rather than extrapolated.
    """
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    if labels.shape != logits.shape or labels.size == 0:
        raise CalibrationError(f"temperature fit needs equal, non-empty labels and logits. "
                               f"Received: {labels.shape} vs {logits.shape}")
    if not np.all(np.isfinite(logits)):
        raise CalibrationError("temperature fit: the logits hold NaN or Inf")
    if not np.any(logits):
        return 1.0

    def loss(u: float) -> float:
        return log_loss(labels, logits * math.exp(-u))

    lo, hi = LOG_T_BRACKET
    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = loss(a), loss(b)
    while hi - lo > tol:
        if fa <= fb:  # the minimum is in [lo, b]
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = loss(a)
        else:  # in [a, hi]
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = loss(b)
    u = (lo + hi) / 2.0
    if min(u - LOG_T_BRACKET[0], LOG_T_BRACKET[1] - u) < 1e-3:
        log.warning("temperature fit: T = %.3g is at the edge of its range [%.3g, %.3g] (validation "
                    "predictions nearly separable or constant)", math.exp(u), *map(math.exp, LOG_T_BRACKET))
    return math.exp(u)


def quality(labels: np.ndarray, logits: np.ndarray, temperature: float) -> dict[str, float]:
    """LogLoss and 15-bin ECE of `logits` before and after dividing by `temperature`."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    return {
        "logloss": log_loss(labels, logits),
        "ece": expected_calibration_error(labels, sigmoid(logits)),
        "logloss_calibrated": log_loss(labels, scaled),
        "ece_calibrated": expected_calibration_error(labels, sigmoid(scaled)),
        "rows": int(np.asarray(labels).size),
    }


def calibrate(method: str, valid: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
              run_dir: pathlib.Path) -> dict[str, Any]:
    """Fits T on `valid` (labels, logits) for `method` "temperature" and writes
    run_dir/calibration.json; reports both splits before and after. "none"
    removes a stale calibration.json (T = 1) and reports T = 1."""
    path = run_dir / CALIBRATION_FILE
    if method == "none":
        path.unlink(missing_ok=True)
        temperature = 1.0
    elif method == "temperature":
        temperature = fit_temperature(*valid)
    else:
        raise ValueError(f"calibration method must be 'temperature' or 'none'. Received: {method!r}")
    result: dict[str, Any] = {
        "method": method, "temperature": temperature, "fitted_on": "valid" if method != "none" else None,
        "valid": quality(*valid, temperature), "test": quality(*test, temperature),
    }
    if method != "none":
        write_text_atomic(path, json.dumps(result, indent=1) + "\n")
        log.info("calibration: T = %.4f on valid; valid LogLoss %.4f -> %.4f, ECE %.4f -> %.4f; test LogLoss "
                 "%.4f -> %.4f, ECE %.4f -> %.4f", temperature, result["valid"]["logloss"],
                 result["valid"]["logloss_calibrated"], result["valid"]["ece"], result["valid"]["ece_calibrated"],
                 result["test"]["logloss"], result["test"]["logloss_calibrated"], result["test"]["ece"],
                 result["test"]["ece_calibrated"])
    return result


def read_temperature(run_dir: str | pathlib.Path) -> float:
    """The run's T from its calibration.json; 1.0 for a run without one (older runs, calibrate none)."""
    path = pathlib.Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return 1.0
    try:
        temperature = float(json.loads(path.read_text())["temperature"])
    except (ValueError, KeyError, TypeError) as err:
        raise CalibrationError(f"{path} holds no valid temperature ({err}); rerun the training stage "
                               "or delete the file to serve uncalibrated probabilities") from err
    if not (math.isfinite(temperature) and temperature > 0):
        raise CalibrationError(f"{path}: temperature must be a finite number > 0. Received: {temperature}")
    return temperature
