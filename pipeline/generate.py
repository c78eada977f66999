"""Synthetic Criteo raw TSV (`label I1..I13 C1..C26`) with a learnable, interaction-driven signal.

Realistic enough to exercise the whole system at any scale: per-field missing
rates close to Criteo's, negative values in I2, Zipf-distributed categorical
ids (heavy tail: many values seen once, so min_count matters) written as
32-bit hex hashes. The click probability depends on first-order effects and,
more strongly, on pairwise interactions (C1 x C2, C3 x I3 bucket, C4 x C5 x C6),
so models with better fusion/interaction capacity score visibly higher.
Deterministic from the seed: chunk k draws from its own (seed, k) generator.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
import time

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from tqdm import tqdm

from pipeline import quiet
from pipeline.atomic import atomic_path
from pipeline.errors import EXIT_USAGE

CHUNK_ROWS = 200_000
N_INT, N_CAT = 13, 26
# Approximate missing rates of the real Criteo train.txt.
INT_MISSING = (0.45, 0.0, 0.21, 0.22, 0.03, 0.22, 0.04, 0.0, 0.04, 0.45, 0.04, 0.77, 0.22)
CAT_MISSING = (0, 0, 0.03, 0.03, 0, 0.12, 0, 0, 0, 0.03, 0, 0.03, 0, 0, 0, 0.03, 0, 0,
               0.44, 0.44, 0.03, 0.76, 0, 0.03, 0.44, 0.44)
# Zipf exponent per categorical field: smaller = heavier tail, more distinct values.
CAT_ZIPF = tuple(1.15 + 0.9 * ((7 * j) % N_CAT) / N_CAT for j in range(N_CAT))
INT_LOG_MEAN = tuple(0.5 + 0.35 * ((5 * i) % N_INT) for i in range(N_INT))
_HEX = np.frombuffer(b"0123456789abcdef", dtype="S1")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_DRIFT_FIELD_SEED = 1000  # added to a drifted field's index when its tokens are hashed


def _mix(*parts: npt.ArrayLike) -> np.ndarray:
    """64-bit hash of integer arrays (splitmix64 finalizer); wraps on purpose."""
    h = np.zeros(np.broadcast(*parts).shape, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for part in parts:
            h = (h ^ np.asarray(part).astype(np.uint64)) * _GOLDEN
            h ^= h >> np.uint64(31)
            h *= np.uint64(0xBF58476D1CE4E5B9)
            h ^= h >> np.uint64(29)
    return h


def _weight(scale: float, *parts: npt.ArrayLike) -> np.ndarray:
    """Pseudo-random weight in [-scale, scale) per value combination."""
    u = (_mix(*parts) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return (2.0 * u - 1.0) * scale


def _hex_tokens(field: int, ids: np.ndarray) -> pa.Array:
    h = (_mix(np.uint64(field + 1), ids) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    digits = (h[:, None] >> np.arange(28, -1, -4, dtype=np.uint32)) & np.uint32(0xF)
    return pa.array(np.ascontiguousarray(_HEX[digits]).view("S8").ravel()).cast(pa.string())


@dataclasses.dataclass(frozen=True)
class Drift:
    """A changed day of data (`--drift`): these categorical fields get all-new values (same frequencies, same
    effect on the label), and the click probability is multiplied by `label_scale` (capped at 1)."""

    fields: tuple[str, ...] = ()
    label_scale: float = 1.0


def parse_drift(items: list[str]) -> Drift:
    """`--drift` values: a categorical field (C1..C26) or `label=X`; ValueError naming a bad one."""
    fields, scale = [], 1.0
    for item in items:
        if item.startswith("label="):
            scale = float(item.removeprefix("label="))
            if not scale > 0:
                raise ValueError(f"--drift {item}: the label scale must be > 0")
        elif item in [f"C{j + 1}" for j in range(N_CAT)]:
            fields.append(item)
        else:
            raise ValueError(f"--drift {item}: expected a categorical field C1..C{N_CAT} or label=X")
    return Drift(tuple(fields), scale)


def generate_chunk(seed: int, chunk: int, rows: int, drift: Drift = Drift()) -> pa.Table:
    """One chunk of rows as a table of label, I1..I13, C1..C26 (nulls = missing)."""
    rng = np.random.default_rng([seed, chunk])
    cat_ids = [np.minimum(rng.zipf(CAT_ZIPF[j], rows) - 1, 1 << 40) for j in range(N_CAT)]
    ints = []
    for i in range(N_INT):
        v = np.floor(np.exp(rng.normal(INT_LOG_MEAN[i], 1.2, rows))).astype(np.int64)
        if i == 1:  # I2 holds negative values in the real data
            v = np.where(rng.random(rows) < 0.08, -rng.integers(1, 4, rows), v)
        ints.append(v)
    i3_bucket = np.minimum(np.log1p(np.maximum(ints[2], 0)).astype(np.int64), 6)
    top = [np.minimum(ids, 30) for ids in cat_ids]  # interactions live on frequent values
    logit = (
        -1.1
        + _weight(0.4, 1, top[0]) + _weight(0.4, 2, top[7]) + _weight(0.3, 3, top[12])
        - 0.15 * np.log1p(np.maximum(ints[0], 0)) + 0.1 * np.log1p(np.maximum(ints[5], 0))
        + _weight(1.4, 10, top[0], top[1])
        + _weight(1.2, 11, top[2], i3_bucket)
        + _weight(1.2, 12, top[3], top[4], top[5] % 4)
    )
    click = 1.0 / (1.0 + np.exp(-logit))
    if drift.label_scale != 1.0:
        click = np.minimum(click * drift.label_scale, 1.0)
    label = (rng.random(rows) < click).astype(np.int64)
    columns: dict[str, pa.Array] = {"label": pa.array(label)}
    for i in range(N_INT):
        missing = rng.random(rows) < INT_MISSING[i]
        columns[f"I{i + 1}"] = pa.array(ints[i], mask=missing)
    for j in range(N_CAT):
        missing = rng.random(rows) < CAT_MISSING[j]
        # A drifted field hashes its ids under another seed: every value is new, frequencies unchanged.
        tokens = _hex_tokens(j + (_DRIFT_FIELD_SEED if f"C{j + 1}" in drift.fields else 0),
                             cat_ids[j].astype(np.uint64))
        columns[f"C{j + 1}"] = pc.if_else(pa.array(missing), pa.scalar(None, pa.string()), tokens)
    return pa.table(columns)


def generate(rows: int, output: str | os.PathLike, seed: int = 0, progress: bool = True,
             drift: Drift = Drift()) -> None:
    """Writes `rows` rows of raw Criteo TSV to `output` (via a temp file, then rename)."""
    options = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    with atomic_path(output) as tmp, open(tmp, "wb") as out, tqdm(
        total=rows, unit="row", disable=not progress
    ) as bar:
        for chunk, start in enumerate(range(0, rows, CHUNK_ROWS)):
            n = min(CHUNK_ROWS, rows - start)
            pacsv.write_csv(generate_chunk(seed, chunk, n, drift), out, options)
            bar.update(n)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pipeline generate",
        description="Write a synthetic Criteo raw TSV (TAB, no header, label I1..I13 C1..C26).",
    )
    parser.add_argument("--rows", type=int, required=True, help="number of rows")
    parser.add_argument("--output", required=True, help="file to write")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--drift", action="append", default=[], metavar="CHANGE",
                        help="a changed day, to exercise `pipeline validate` (repeatable): a categorical field "
                             "(e.g. C3) gets all-new values with unchanged frequencies; label=X multiplies the "
                             "click probability by X (label=2 roughly doubles the positive rate)")
    quiet.add_verbose_flag(parser)
    args = parser.parse_args(argv)
    try:
        drift = parse_drift(args.drift)
    except ValueError as err:
        print(f"pipeline generate: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.rows < 1:
        print(f"pipeline generate: error: --rows must be >= 1, got {args.rows}", file=sys.stderr)
        return EXIT_USAGE
    if not pathlib.Path(args.output).resolve().parent.is_dir():
        print(f"pipeline generate: error: directory of --output {args.output} does not exist", file=sys.stderr)
        return EXIT_USAGE
    start = time.perf_counter()
    generate(args.rows, args.output, args.seed, drift=drift)
    seconds = time.perf_counter() - start
    print(f"wrote {args.rows:,} rows to {args.output} in {seconds:.1f}s ({args.rows / seconds:,.0f} rows/s)")
    return 0
