"""One preprocessing run end to end: checks, scratch dir, Beam graph, stats.json, rename.

Output is built in a hidden sibling scratch directory `.DIR.partial-<pid>-<hex>`,
finished with the DONE.json marker written last, and renamed onto DIR only
when complete, so a killed job never leaves a DIR that looks finished (see
pipeline.dataset_info). A later run on the same DIR removes the scratch
directories whose process is gone. Rejected rows of a job that fails over
--max_bad_fraction are kept beside DIR as `DIR.rejected-<UTC time>`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shutil
import time
import uuid

from pipeline.atomic import write_text_atomic
from pipeline.dataset_info import STATS_FILE, is_finished_output, is_uri
from pipeline.errors import UsageError
from pipeline.features import DONE_FILE, LABEL_KEY, SPLIT_NAMES, id_layout
from pipeline.file_layout import detect_layout
from pipeline.job_spec import (
    INPUT_COUNTS_FILE,
    STATS_TMP,
    TFT_TMP,
    InputCounts,
    JobSpec,
    SplitStats,
    split_stats_file,
)
from pipeline.sources import first_line, is_compressed, plan_ranges, resolve_inputs
from pipeline.specs import DatasetSpec

# pipeline.beam_graph (Beam/TFT) loads lazily in `run`, so that bad invocations fail in a second.


class JobIntegrityError(RuntimeError):
    """The written rows do not add up to the parsed rows."""


class TooManyBadRows(RuntimeError):
    """An input's rejected fraction is over --max_bad_fraction."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The `pipeline` command line, validated by `prepare`."""

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
    """UsageError unless DIR is absent, empty, or (with --overwrite) a finished run."""
    if output.exists() and not output.is_dir():
        raise UsageError(f"output {output} exists and is not a directory; choose another --output")
    if not output.is_dir() or not any(output.iterdir()):
        return
    if not is_finished_output(output):
        raise UsageError(
            f"output {output} is not empty and holds no finished pipeline run (no {DONE_FILE}); "
            "--overwrite only replaces a finished run: move its files away or choose another --output"
        )
    if not overwrite:
        raise UsageError(
            f"output {output} holds a finished run; pass --overwrite to replace it or choose another --output"
        )


def _partial_pattern(output: pathlib.Path) -> re.Pattern[str]:
    """Names of this output's scratch dirs: `.NAME.partial-<pid>-<hex8>` (and `.NAME.partial-<hex8>`, pid-less)."""
    return re.compile(rf"\.{re.escape(output.name)}\.partial-(?:(?P<pid>\d+)-)?[0-9a-f]{{8}}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_partials(output: pathlib.Path) -> list[pathlib.Path]:
    """Deletes scratch dirs of `output` left by killed runs (only this output's naming, owner gone)."""
    pattern = _partial_pattern(output)
    removed: list[pathlib.Path] = []
    if not output.parent.is_dir():
        return removed
    for path in sorted(output.parent.iterdir()):
        match = pattern.fullmatch(path.name)
        if not match or not path.is_dir() or (match["pid"] and _alive(int(match["pid"]))):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def prepare(config: RunConfig) -> JobSpec:
    """Validates inputs and output before anything is written; UsageError on bad input."""
    if is_uri(config.output):
        # pathlib would fold `gs://b/x` into a local `gs:/b/x`; publishing to object stores
        # (temporary prefix, marker last) is not implemented yet.
        raise UsageError(
            f"--output {config.output}: only local or mounted paths are supported as output; "
            "write to a local DIR and copy it (gsutil -m cp -r DIR URI), readers accept the URI"
        )
    output = pathlib.Path(config.output)
    _check_output(output, config.overwrite)
    if config.min_count < 1:
        raise UsageError(f"--min_count must be >= 1, got {config.min_count}")
    if not 0 <= config.max_bad_fraction <= 1:
        raise UsageError(f"--max_bad_fraction must be in [0, 1], got {config.max_bad_fraction}")
    files = resolve_inputs(list(config.inputs))
    layouts = {
        path: detect_layout(first_line(path).decode("utf-8", "replace"), config.spec, path)
        for path, _ in files
    }
    work_dir = output.parent / f".{output.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
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
    """Ids per field, from the int_domain TFT's output records for each transformed field."""
    import tensorflow_transform as tft

    output = tft.TFTransformOutput(str(work_dir))
    return {name: output.num_buckets_for_transformed_feature(name) for name in spec.field_names}


def _read_json(path: pathlib.Path):
    return json.loads(path.read_text())


def collect_stats(job: JobSpec, config: RunConfig, seconds: float) -> dict:
    """stats.json content from the job's partial statistics and vocabulary asset."""
    work_dir = pathlib.Path(job.work_dir)
    fields = job.spec.field_names
    sizes = _vocab_sizes(work_dir, job.spec)
    inputs = []
    total = InputCounts.zero()
    for doc in sorted(_read_json(work_dir / STATS_TMP / INPUT_COUNTS_FILE), key=lambda d: d["path"]):
        counts = InputCounts.from_json(doc)
        total += counts
        inputs.append({"path": doc["path"], "lines": counts.lines, "rejected": counts.rejected})
    rejected = total.rejected
    by_split = {
        split: SplitStats.from_json(_read_json(work_dir / STATS_TMP / split_stats_file(split)))
        for split in SPLIT_NAMES
    }
    splits: dict[str, dict] = {}
    oov: dict[str, dict[str, float]] = {name: {} for name in fields}
    missing: dict[str, dict[str, float]] = {name: {} for name in fields}
    for split, stats in by_split.items():
        rows = stats.rows
        splits[split] = {
            "rows": rows,
            "positives": stats.positives,
            "positive_ratio": stats.positives / rows if rows else 0.0,
        }
        for name in fields:
            oov[name][split] = stats.oov[name] / rows if rows else 0.0
            missing[name][split] = stats.missing[name] / rows if rows else 0.0
    transformed = {split: stats.rows for split, stats in by_split.items()}
    check_row_counts(total.parsed, transformed)
    total_rows = sum(transformed.values())
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
        "id_layout": id_layout(),
        "seed": config.seed,
        "min_count": config.min_count,
        "wall_seconds": round(seconds, 2),
        "rows_per_second": round(sum(i["lines"] for i in inputs) / seconds, 1) if seconds else None,
        "rows": total_rows,
    }


def check_row_counts(parsed: dict[str, int], written: dict[str, int]) -> None:
    """JobIntegrityError unless every parsed row of every split was written (rows per split name)."""
    if parsed != written:
        raise JobIntegrityError(
            f"rows per split {parsed} were parsed but "
            f"{written} written: the runner lost or duplicated data; "
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
            + " (raise --max_bad_fraction to accept them)"
        )


def keep_rejected(work_dir: pathlib.Path, output: pathlib.Path) -> pathlib.Path | None:
    """Moves a failed job's rejected/ rows beside DIR as `DIR.rejected-<UTC time>`; its path."""
    rejected = work_dir / "rejected"
    if not rejected.is_dir():
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    kept = output.parent / f"{output.name}.rejected-{stamp}"
    if kept.exists():
        kept = kept.with_name(f"{kept.name}-{uuid.uuid4().hex[:4]}")
    rejected.rename(kept)
    return kept


def done_summary(stats: dict) -> dict:
    """DONE.json: what a reader may check without parsing stats.json."""
    return {
        "dataset": stats["dataset"],
        "rows": stats["rows"],
        "splits": {split: s["rows"] for split, s in stats["splits"].items()},
        "rejected": stats["rejected"]["total"],
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


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
    from pipeline.beam_graph import build_and_run

    output = pathlib.Path(config.output)
    remove_stale_partials(output)
    work_dir = pathlib.Path(job.work_dir)
    start = time.perf_counter()
    try:
        build_and_run(job)
        stats = collect_stats(job, config, time.perf_counter() - start)
        try:
            if stats["splits"]["train"]["rows"] == 0:
                raise UsageError(f"no valid training rows in {', '.join(config.inputs)}; check --dataset/--schema")
            check_bad_fraction(stats, config.max_bad_fraction)
        except (UsageError, TooManyBadRows) as err:
            kept = keep_rejected(work_dir, output)
            if kept is None:
                raise
            raise type(err)(f"{err}; the rejected rows are kept in {kept}") from None
        # Scratch of the Beam job: partial stats, TFT temp, fileio's .temp* dirs.
        for scratch in [work_dir / STATS_TMP, work_dir / TFT_TMP, *work_dir.glob(".temp*")]:
            shutil.rmtree(scratch, ignore_errors=True)
        write_text_atomic(work_dir / STATS_FILE, json.dumps(stats, indent=1) + "\n")
        write_text_atomic(work_dir / DONE_FILE, json.dumps(done_summary(stats), indent=1) + "\n")
        _publish(work_dir, output)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return stats
