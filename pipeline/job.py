"""One preprocessing run end to end: checks, scratch dir, Beam job, stats.json, rename.

Output is built in a hidden sibling scratch directory and renamed onto DIR
only when complete, so a killed job never leaves a DIR that looks finished
(stats.json is what marks a finished run, see pipeline.dataset_info).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import time
import uuid

import numpy as np
import pyarrow.csv as pacsv

from pipeline.atomic import write_text_atomic
from pipeline.dataset_info import STATS_FILE
from pipeline.layout import Layout, detect_layout
from pipeline.parse import REASONS, SPLIT_NAMES
from pipeline.sources import (
    FileRange,
    first_line,
    is_compressed,
    plan_ranges,
    resolve_inputs,
)
from pipeline.specs import HOUR_FIELDS, LABEL_KEY, DatasetSpec

# The Beam/TFT modules load lazily, so that bad invocations fail in a second.
STATS_TMP = "_partial_stats"
TFT_TMP = "_tft_tmp"


class UsageError(ValueError):
    """Bad input or arguments: reported in one line, exit code 2, nothing written."""


class JobIntegrityError(RuntimeError):
    """The written rows do not add up to the parsed rows."""


class TooManyBadRows(RuntimeError):
    """An input's rejected fraction is over --max_bad_fraction."""


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """Everything the Beam graph (pipeline.job) needs; built and validated by `prepare`."""

    spec: DatasetSpec
    ranges: tuple[FileRange, ...]
    layouts: dict[str, Layout]
    work_dir: str
    seed: int = 0
    min_count: int = 2
    batch_lines: int = 20000
    output_shards: int = 2
    input_bytes: int | None = None  # progress total; None where an input is compressed
    beam_args: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class RunConfig:
    spec: DatasetSpec
    inputs: tuple[str, ...]
    output: str
    seed: int = 0
    min_count: int = 2
    max_bad_fraction: float = 0.01
    overwrite: bool = False
    batch_lines: int = 20000
    range_bytes: int = 32 << 20
    output_shards: int = 2
    beam_args: tuple[str, ...] = ()


def _check_output(output: pathlib.Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise UsageError(f"output {output} exists and is not a directory; choose another --output")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        what = "holds a finished run" if (output / STATS_FILE).exists() else "is not empty"
        raise UsageError(f"output {output} {what}; pass --overwrite to replace it or choose another --output")


def prepare(config: RunConfig) -> JobSpec:
    """Validates inputs and output before anything is written; UsageError on bad input."""
    from pipeline.sources import InputError
    from pipeline.specs import SpecError

    output = pathlib.Path(config.output)
    _check_output(output, config.overwrite)
    if config.min_count < 1:
        raise UsageError(f"--min_count must be >= 1, got {config.min_count}")
    if not 0 <= config.max_bad_fraction <= 1:
        raise UsageError(f"--max_bad_fraction must be in [0, 1], got {config.max_bad_fraction}")
    try:
        files = resolve_inputs(list(config.inputs))
        layouts = {
            path: detect_layout(first_line(path).decode("utf-8", "replace"), config.spec, path)
            for path, _ in files
        }
    except (InputError, SpecError) as err:
        raise UsageError(str(err)) from err
    work_dir = output.parent / f".{output.name}.partial-{uuid.uuid4().hex[:8]}"
    ranges = plan_ranges(files, config.range_bytes)
    return JobSpec(
        spec=config.spec,
        ranges=tuple(ranges),
        layouts=layouts,
        work_dir=str(work_dir),
        seed=config.seed,
        min_count=config.min_count,
        batch_lines=config.batch_lines,
        output_shards=config.output_shards,
        input_bytes=None if any(is_compressed(p) for p, _ in files) else sum(s for _, s in files),
        beam_args=config.beam_args,
    )


def _vocab_sizes(work_dir: pathlib.Path, spec: DatasetSpec) -> dict[str, int]:
    from pipeline.transform import VOCAB_ASSET, field_of_key, vocab_fields

    sizes = {name: n + 2 for name, n in HOUR_FIELDS}
    vocab = vocab_fields(spec)
    if vocab:
        asset = work_dir / "transform_fn" / "assets" / VOCAB_ASSET
        table = pacsv.read_csv(
            asset,
            read_options=pacsv.ReadOptions(column_names=["key", "id"]),
            parse_options=pacsv.ParseOptions(delimiter="\t"),
        ) if asset.stat().st_size else None
        per_field = (
            np.bincount(field_of_key(table.column("key").to_numpy()), minlength=256)
            if table is not None
            else np.zeros(256, dtype=np.int64)
        )
        for field, name, _ in vocab:
            sizes[name] = int(per_field[field]) + 2
    return sizes


def _read_json(path: pathlib.Path):
    return json.loads(path.read_text())


def collect_stats(job: JobSpec, config: RunConfig, seconds: float) -> dict:
    """stats.json content from the job's partial statistics and vocabulary asset."""
    work_dir = pathlib.Path(job.work_dir)
    fields = job.spec.field_names
    sizes = _vocab_sizes(work_dir, job.spec)
    inputs = []
    rejected = dict.fromkeys(REASONS, 0)
    parsed = np.zeros(len(SPLIT_NAMES), dtype=np.int64)
    for path, counts in sorted(_read_json(work_dir / STATS_TMP / "inputs.json")):
        reasons = dict(zip(REASONS, counts[1:1 + len(REASONS)]))
        parsed += counts[1 + len(REASONS):]
        for reason, n in reasons.items():
            rejected[reason] += n
        inputs.append({"path": path, "lines": counts[0], "rejected": reasons})
    splits, oov, missing = {}, {}, {}
    for split in SPLIT_NAMES:
        values = _read_json(work_dir / STATS_TMP / f"{split}.json") or [0] * (2 + 2 * len(fields))
        rows, positives = values[0], values[1]
        splits[split] = {
            "rows": rows,
            "positives": positives,
            "positive_ratio": positives / rows if rows else 0.0,
        }
        for i, name in enumerate(fields):
            oov.setdefault(name, {})[split] = values[2 + i] / rows if rows else 0.0
            missing.setdefault(name, {})[split] = values[2 + len(fields) + i] / rows if rows else 0.0
    transformed = [splits[s]["rows"] for s in SPLIT_NAMES]
    check_row_counts(parsed.tolist(), transformed)
    total_rows = sum(transformed)
    return {
        "dataset": job.spec.name,
        "label_key": LABEL_KEY,
        "fields": [
            {"name": n, "vocab_size": sizes[n], "oov_rate": oov[n], "missing_rate": missing[n]}
            for n in fields
        ],
        "splits": splits,
        "rejected": {**rejected, "total": sum(rejected.values())},
        "inputs": inputs,
        "id_layout": {"oov": 0, "missing": 1, "first_value": 2},
        "seed": config.seed,
        "min_count": config.min_count,
        "wall_seconds": round(seconds, 2),
        "rows_per_second": round(sum(i["lines"] for i in inputs) / seconds, 1) if seconds else None,
        "rows": total_rows,
    }


def check_row_counts(parsed: list[int], written: list[int]) -> None:
    """JobIntegrityError unless every parsed row of every split was written."""
    if parsed != written:
        raise JobIntegrityError(
            f"rows per split {dict(zip(SPLIT_NAMES, parsed))} were parsed but "
            f"{dict(zip(SPLIT_NAMES, written))} written: the runner lost or duplicated data; "
            "output discarded (use --direct_running_mode=in_memory --direct_num_workers=1)"
        )


def check_bad_fraction(stats: dict, limit: float) -> None:
    """TooManyBadRows naming every input whose rejected fraction exceeds `limit`."""
    over = []
    for item in stats["inputs"]:
        bad = sum(item["rejected"].values())
        if item["lines"] and bad / item["lines"] > limit:
            detail = ", ".join(f"{r}={n}" for r, n in item["rejected"].items() if n)
            over.append(f"{item['path']}: {bad} of {item['lines']} rows rejected ({detail})")
    if over:
        raise TooManyBadRows(
            f"rejected fraction over --max_bad_fraction={limit}: " + "; ".join(over)
            + " (see the rejected/ rows; raise --max_bad_fraction to accept them)"
        )


def _publish(work_dir: pathlib.Path, output: pathlib.Path) -> None:
    if output.exists():
        trash = output.parent / f".{output.name}.old-{uuid.uuid4().hex[:8]}"
        output.rename(trash)
        work_dir.rename(output)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        work_dir.rename(output)


def run(config: RunConfig) -> dict:
    """Runs the job; returns stats. UsageError, TooManyBadRows on failure (nothing in DIR)."""
    job = prepare(config)
    from pipeline.job import build_and_run

    work_dir = pathlib.Path(job.work_dir)
    start = time.perf_counter()
    try:
        build_and_run(job)
        stats = collect_stats(job, config, time.perf_counter() - start)
        if stats["splits"]["train"]["rows"] == 0:
            raise UsageError(f"no valid training rows in {', '.join(config.inputs)}; check --dataset/--schema")
        check_bad_fraction(stats, config.max_bad_fraction)
        # Scratch of the Beam job: partial stats, TFT temp, fileio's .temp* dirs.
        for scratch in [work_dir / STATS_TMP, work_dir / TFT_TMP, *work_dir.glob(".temp*")]:
            shutil.rmtree(scratch, ignore_errors=True)
        write_text_atomic(work_dir / STATS_FILE, json.dumps(stats, indent=1) + "\n")
        _publish(work_dir, pathlib.Path(config.output))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return stats
