"""Calibration fitted on the validation split: temperature, beta or isotonic.

Why: early stopping keeps the epoch with the best validation monitor, but a
CTR model trained past its LogLoss minimum is over-confident (on Frappe, FNN:
test LogLoss 0.386 at AUC 0.946; T = 2.41 fitted on validation gave 0.283 at
the same AUC, issue 19). Every map is increasing, so the ranking (AUC) is
kept; each is fitted on validation only, never on test.

- temperature: P = sigmoid(z / T), one parameter (Guo et al., 2017). It fixes
  the overall confidence but not an asymmetric one: the FNN above keeps a
  test ECE of 0.050 after it (its positives are over-confident far more than
  its negatives).
- beta: P = sigmoid(a * log p - b * log(1 - p) + c) with p = sigmoid(z)
  (Kull et al., 2017, "Beyond sigmoids"), a, b >= 0; in logit form
  z' = b * softplus(z) - a * softplus(-z) + c. Temperature is its special
  case a = b = 1/T, c = 0. Same FNN: test LogLoss 0.260, ECE 0.019.
- isotonic: the non-parametric map (Zadrozny & Elkan, 2002): pool adjacent
  violators on the validation labels sorted by logit, each block's rate
  smoothed by one pseudo-row at the base rate (a block of 2,000 negatives is
  p = 1.7e-4 at a 34% base rate, not 0), a second pooling where the smoothing
  broke the order. Served as a piecewise-linear map of the logit through the
  blocks' (mean logit, logit of rate) knots, extended beyond the end knots
  with the mean slope between them: strictly increasing, so AUC is kept (a
  step function would tie rows and lose AUC). Where beta's two-slope shape
  still leaves a bias (Frappe: ECE 0.020-0.027), this follows the shape.

Temperature: golden-section search on log T (the LogLoss of sigmoid(z / T) is
convex in 1 / T, so unimodal in log T). Beta: the LogLoss is a logistic
regression on the features (log p, -log(1 - p), 1), convex: Newton steps with
backtracking; a coefficient that comes out negative is fixed at 0 and the
rest refitted (as the authors' `betacal`), which keeps the map increasing.
numpy only; the TF form of each map is graph constants (`apply_tf`).

The run keeps the map in `calibration.json` (read by `serving export`, which
puts it inside the SavedModel, and by `trainer --stage=evaluate|predict`); a
run without the file (older runs, `train.calibrate: none`) serves the model's
own logits.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib
from typing import Any

import numpy as np

from pipeline.atomic import write_text_atomic
from pipeline.errors import UsageError
from trainer.metrics import expected_calibration_error, log_loss, reliability, sigmoid

log = logging.getLogger("trainer")

CALIBRATION_FILE = "calibration.json"
CALIBRATION_METHODS = ("beta", "isotonic", "temperature", "none")
LOG_T_BRACKET = (math.log(1e-2), math.log(1e2))
"""Search range of log T: T from 0.01 (sharpen 100x) to 100 (flatten 100x)."""
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


class CalibrationError(UsageError):
    """The predictions cannot determine a calibration, or a run's calibration.json is unreadable."""


@dataclasses.dataclass(frozen=True)
class Calibration:
    """The served logit as a function of the model's z.

    "beta": b * softplus(z) - a * softplus(-z) + c; "temperature" is a = b = 1 / T,
    c = 0, applied as z / T exactly; "isotonic": linear between `knots` (z, logit),
    strictly increasing in both, with the mean slope between the end knots beyond
    them; "none" is the identity.
    """

    method: str = "none"
    a: float = 1.0
    b: float = 1.0
    c: float = 0.0
    knots: tuple[tuple[float, float], ...] = ()

    @classmethod
    def from_temperature(cls, temperature: float) -> Calibration:
        return cls("temperature", 1.0 / temperature, 1.0 / temperature, 0.0)

    @property
    def temperature(self) -> float | None:
        """T of a temperature map (1 for none); None for beta."""
        return {"none": 1.0, "temperature": 1.0 / self.a}.get(self.method)

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """The calibrated logits (numpy, float64 inside)."""
        z = np.asarray(logits, dtype=np.float64)
        if self.method == "none":
            return z
        if self.method == "temperature":
            return z / self.temperature  # type: ignore[operator]
        if self.method == "isotonic":
            x, y = np.array(self.knots).T
            slope = (y[-1] - y[0]) / (x[-1] - x[0])
            inside = np.interp(z, x, y)
            return np.where(z < x[0], y[0] + slope * (z - x[0]),
                            np.where(z > x[-1], y[-1] + slope * (z - x[-1]), inside))
        return self.b * np.logaddexp(0.0, z) - self.a * np.logaddexp(0.0, -z) + self.c

    def apply_tf(self, logits: Any) -> Any:
        """The same map on a float32 tensor: what the export and the raw scorer compute (graph constants)."""
        import tensorflow as tf

        if self.method == "none":
            return logits
        if self.method == "temperature":
            return logits / tf.constant(self.temperature, tf.float32)
        if self.method == "isotonic":
            return _piecewise_tf(logits, self.knots)
        return (tf.constant(self.b, tf.float32) * tf.nn.softplus(logits)
                - tf.constant(self.a, tf.float32) * tf.nn.softplus(-logits) + tf.constant(self.c, tf.float32))

    def describe(self) -> str:
        if self.method == "temperature":
            return f"sigmoid(logit / T), T = {self.temperature:.4g}"
        if self.method == "beta":
            return (f"beta: sigmoid({self.b:.4g} * softplus(logit) - {self.a:.4g} * softplus(-logit) "
                    f"+ {self.c:.4g})")
        if self.method == "isotonic":
            (x0, y0), (x1, y1) = self.knots[0], self.knots[-1]
            return (f"isotonic: sigmoid(piecewise-linear map of the logit), {len(self.knots)} knots from "
                    f"({x0:.4g}, {y0:.4g}) to ({x1:.4g}, {y1:.4g})")
        return "none: sigmoid(logit)"

    def params(self) -> dict[str, Any]:
        """What calibration.json keeps of the map (read back by read_calibration)."""
        if self.method == "isotonic":
            return {"knots": [list(k) for k in self.knots]}
        return {"a": self.a, "b": self.b, "c": self.c}


def _piecewise_tf(logits: Any, knots: tuple[tuple[float, float], ...]) -> Any:
    """Calibration.apply's isotonic map on a float tensor of any shape (the knots as float32 constants)."""
    import tensorflow as tf

    x, y = (tf.constant(v, logits.dtype) for v in zip(*knots, strict=True))
    z = tf.reshape(logits, [-1])
    last = len(knots) - 2  # the segment index of z beyond the knots: its end segment, replaced below
    i = tf.clip_by_value(tf.searchsorted(x, z, side="right") - 1, 0, last)
    x0, x1, y0, y1 = tf.gather(x, i), tf.gather(x, i + 1), tf.gather(y, i), tf.gather(y, i + 1)
    inside = y0 + (z - x0) * (y1 - y0) / (x1 - x0)
    slope = (y[-1] - y[0]) / (x[-1] - x[0])
    out = tf.where(z < x[0], y[0] + slope * (z - x[0]), tf.where(z > x[-1], y[-1] + slope * (z - x[-1]), inside))
    return tf.reshape(out, tf.shape(logits))


IDENTITY = Calibration()


def fit_temperature(labels: np.ndarray, logits: np.ndarray, tol: float = 1e-7) -> float:
    """The T > 0 minimising the LogLoss of sigmoid(logits / T) on (labels, logits).

    Golden-section search on log T within LOG_T_BRACKET to `tol`. Logits that
    are all 0 carry no scale: T = 1. A minimum at the bracket's edge (e.g.
    separable labels, where the loss keeps falling as T -> 0) is returned with
    a warning rather than extrapolated.
    """
    labels, logits = _checked(labels, logits, "temperature")
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


def fit_beta(labels: np.ndarray, logits: np.ndarray) -> Calibration:
    """The beta calibration (a, b >= 0, c) minimising the LogLoss on (labels, logits).

    Logistic regression on (log p, -log(1 - p), 1) by Newton's method; a
    negative a or b is fixed at 0 and the rest refitted. Refuses logits that
    leave no increasing map (constant, or a = b = 0: no ranking to keep).
    """
    labels, logits = _checked(labels, logits, "beta")
    if np.ptp(logits) == 0:
        raise CalibrationError("beta calibration: the validation logits are constant; nothing to calibrate")
    features = np.stack([-np.logaddexp(0.0, -logits), np.logaddexp(0.0, logits), np.ones_like(logits)], axis=1)
    free = [0, 1, 2]
    while True:
        weights = _newton_logistic(features[:, free], labels)
        negative = [i for i, w in zip(free, weights, strict=True) if i < 2 and w < 0]
        if not negative:
            break
        free.remove(min(negative, key=lambda i: weights[free.index(i)]))
    full = dict.fromkeys(range(3), 0.0) | {i: float(w) for i, w in zip(free, weights, strict=True)}
    if full[0] == 0.0 and full[1] == 0.0:
        raise CalibrationError("beta calibration: the fit on validation leaves no increasing map (a = b = 0): "
                               "the model's validation logits do not rank the labels")
    return Calibration("beta", full[0], full[1], full[2])


def fit_isotonic(labels: np.ndarray, logits: np.ndarray) -> Calibration:
    """The isotonic map of (labels, logits): pooled adjacent violators, smoothed rates (module docstring).

    Equal logits are one point; a knot's z is its block's mean logit over rows.
    Refuses logits that leave fewer than two knots (constant logits, one
    label, or labels that fall as the logit rises).
    """
    labels, logits = _checked(labels, logits, "isotonic")
    values, index = np.unique(logits, return_inverse=True)
    counts = np.bincount(index).astype(np.float64)
    positives, counts, z_sums = _pool(np.bincount(index, weights=labels), counts, values * counts)
    base = float(labels.mean())  # one pseudo-row at the base rate per block
    smoothed, weights, z_sums, counts = _pool(positives + base, counts + 1, z_sums, counts)
    if smoothed.size < 2:
        raise CalibrationError("isotonic calibration: the fit on validation leaves one level (constant logits, one "
                               "label, or labels that do not rise with the logit): no increasing map")
    rate = smoothed / weights
    knots = tuple(zip(map(float, z_sums / counts), map(float, np.log(rate) - np.log1p(-rate)), strict=True))
    return Calibration("isotonic", knots=knots)


def _pool(sums: np.ndarray, weights: np.ndarray, *carried: np.ndarray) -> tuple[np.ndarray, ...]:
    """Pool adjacent violators: merge neighbours, in the given order, until the means sums / weights strictly
    increase. Returns the blocks' sums, weights and `carried` sums (merged alongside)."""
    blocks: list[list[float]] = []
    for row in zip(sums, weights, *carried, strict=True):
        blocks.append(list(row))
        while len(blocks) > 1 and blocks[-2][0] * blocks[-1][1] >= blocks[-1][0] * blocks[-2][1]:
            last = blocks.pop()
            blocks[-1] = [x + y for x, y in zip(blocks[-1], last, strict=True)]
    return tuple(np.array(column) for column in zip(*blocks, strict=True))


def _newton_logistic(features: np.ndarray, labels: np.ndarray, max_steps: int = 100) -> np.ndarray:
    """Weights minimising the mean logistic loss of features @ w (convex): Newton with backtracking."""
    weights = np.zeros(features.shape[1])
    weights[:-1] = 1.0  # the identity map where both slopes are free

    def loss(w: np.ndarray) -> float:
        z = features @ w
        return float(np.mean(np.logaddexp(0.0, z) - labels * z))

    current = loss(weights)
    for _ in range(max_steps):
        p = sigmoid(features @ weights)
        gradient = features.T @ (p - labels) / labels.size
        hessian = (features * (p * (1 - p))[:, None]).T @ features / labels.size
        step = np.linalg.solve(hessian + 1e-10 * np.eye(len(weights)), gradient)
        if float(gradient @ step) < 1e-14:  # Newton decrement: converged
            break
        scale = 1.0
        while (trial := loss(weights - scale * step)) > current - 1e-4 * scale * float(gradient @ step):
            scale /= 2
            if scale < 1e-10:
                return weights
        weights, current = weights - scale * step, trial
    if not np.all(np.isfinite(weights)):
        raise CalibrationError("beta calibration did not converge (non-finite weights)")
    return weights


def _checked(labels: np.ndarray, logits: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    if labels.shape != logits.shape or labels.size == 0:
        raise CalibrationError(f"{method} fit needs equal, non-empty labels and logits. "
                               f"Received: {labels.shape} vs {logits.shape}")
    if not np.all(np.isfinite(logits)):
        raise CalibrationError(f"{method} fit: the logits hold NaN or Inf")
    return labels, logits


def quality(labels: np.ndarray, logits: np.ndarray, calibration: Calibration) -> dict[str, Any]:
    """LogLoss, 15-bin ECE and its reliability diagram of `logits` before and after `calibration`."""
    scaled = calibration.apply(logits)
    return {
        "logloss": log_loss(labels, logits),
        "ece": expected_calibration_error(labels, sigmoid(logits)),
        "logloss_calibrated": log_loss(labels, scaled),
        "ece_calibrated": expected_calibration_error(labels, sigmoid(scaled)),
        "reliability": reliability(labels, sigmoid(logits)),
        "reliability_calibrated": reliability(labels, sigmoid(scaled)),
        "rows": int(np.asarray(labels).size),
    }


def fit(method: str, labels: np.ndarray, logits: np.ndarray) -> Calibration:
    """The `method` calibration fitted on (labels, logits); "none" is the identity."""
    if method == "none":
        return IDENTITY
    if method == "temperature":
        return Calibration.from_temperature(fit_temperature(labels, logits))
    if method == "beta":
        return fit_beta(labels, logits)
    if method == "isotonic":
        return fit_isotonic(labels, logits)
    raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS}. Received: {method!r}")


def calibrate(method: str, valid: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
              run_dir: pathlib.Path) -> dict[str, Any]:
    """Fits `method` on `valid` (labels, logits) and writes run_dir/calibration.json; reports both
    splits before and after. "none" removes a stale calibration.json and reports the identity."""
    path = run_dir / CALIBRATION_FILE
    calibration = fit(method, *valid)
    result: dict[str, Any] = {
        "method": method, "temperature": calibration.temperature,
        "params": calibration.params(),
        "fitted_on": "valid" if method != "none" else None,
        "valid": quality(*valid, calibration), "test": quality(*test, calibration),
    }
    if method == "none":
        path.unlink(missing_ok=True)
    else:
        write_text_atomic(path, json.dumps(result, indent=1) + "\n")
        log.info("calibration %s on valid; valid LogLoss %.4f -> %.4f, ECE %.4f -> %.4f; test LogLoss "
                 "%.4f -> %.4f, ECE %.4f -> %.4f", calibration.describe(), result["valid"]["logloss"],
                 result["valid"]["logloss_calibrated"], result["valid"]["ece"], result["valid"]["ece_calibrated"],
                 result["test"]["logloss"], result["test"]["logloss_calibrated"], result["test"]["ece"],
                 result["test"]["ece_calibrated"])
    return result


def read_calibration(run_dir: str | pathlib.Path) -> Calibration:
    """The run's map from its calibration.json; the identity for a run without one (older runs,
    calibrate none). Files written before beta calibration hold a temperature only."""
    path = pathlib.Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return IDENTITY
    fix = "rerun the training stage or delete the file to serve uncalibrated probabilities"
    try:
        data = json.loads(path.read_text())
        method = data.get("method", "temperature")
        if method == "temperature":
            temperature = float(data["temperature"])
            if not (math.isfinite(temperature) and temperature > 0):
                raise CalibrationError(f"{path}: temperature must be a finite number > 0. Received: "
                                       f"{temperature}; {fix}")
            return Calibration.from_temperature(temperature)
        if method == "isotonic":
            return _checked_knots(path, data["params"]["knots"], fix)
        if method != "beta":
            raise CalibrationError(f"{path}: unknown calibration method {method!r} (one of "
                                   f"{CALIBRATION_METHODS}); {fix}")
        a, b, c = (float(data["params"][k]) for k in "abc")
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CalibrationError(f"{path} holds no valid calibration ({err!r}); {fix}") from err
    if not all(map(math.isfinite, (a, b, c))) or min(a, b) < 0 or a == b == 0:
        raise CalibrationError(f"{path}: beta needs finite a, b >= 0 (not both 0) and c. Received: "
                               f"a={a}, b={b}, c={c}; {fix}")
    return Calibration("beta", a, b, c)


def _checked_knots(path: pathlib.Path, knots: Any, fix: str) -> Calibration:
    """An isotonic map from calibration.json's knots: two or more finite (z, logit) pairs, both strictly
    increasing (else the map would not keep the ranking, or not be a function)."""
    x, y = np.array(knots, dtype=np.float64).reshape(-1, 2).T
    if x.size < 2 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))) or np.any(np.diff(x) <= 0) \
            or np.any(np.diff(y) <= 0):
        raise CalibrationError(f"{path}: isotonic needs two or more finite knots [logit, calibrated logit], both "
                               f"strictly increasing. Received: {len(x)} knots; {fix}")
    return Calibration("isotonic", knots=tuple(zip(map(float, x), map(float, y), strict=True)))
