"""One preprocessing run end to end: checks, scratch, Beam graph, stats.json, publish.

`pipeline transform` (`run_dir` set) runs the same protocol with a finished
run's transform graph instead of an analysis, into one split, "data".

The job writes into a scratch beside the output and publishes it with
DONE.json last (pipeline.scratch: naming, publishing, stale scratch). An
`--output` URI is written one of two ways (`write_mode`, `--write_mode`):
- staged (default for the DirectRunner): the job into a local temp dir
  (TMPDIR), then published to the URI by `pipeline.remote.publish`;
- direct (default for every other runner, whose workers do not share this
  machine's disk): the scratch is a prefix beside the URI, written by the
  workers (records, TFT's graph) and published through Beam's FileSystems
  (`pipeline.scratch.DirectScratch`).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import time
from collections.abc import Callable

from pipeline import fingerprint, remote
from pipeline.dataset_info import (
    FINGERPRINT_KEY,
    STATS_FILE,
    field_info,
    is_finished_output,
    is_uri,
    read_dataset_info,
)
from pipeline.distributions import distributions_json
from pipeline.errors import UsageError
from pipeline.features import DATA_SPLIT, DISTRIBUTIONS_FILE, DONE_FILE, LABEL_KEY, SPLIT_MODES, SPLIT_NAMES, id_layout
from pipeline.file_layout import detect_layout
from pipeline.job_spec import (
    INPUT_COUNTS_FILE,
    STATS_TMP,
    TIME_SPLIT_FILE,
    InputCounts,
    JobSpec,
    SplitStats,
    split_stats_file,
)
from pipeline.joins import load_side_tables
from pipeline.scratch import DirectScratch, LocalScratch, Scratch, direct_target, scratch_name
from pipeline.sources import first_line, is_compressed, plan_ranges, resolve_inputs
from pipeline.specs import DATASET_NAMES, DatasetSpec, SpecError, load_spec, spec_from_doc

# Raw columns a time split may order rows by.
TIME_KINDS = ("timestamp", "hour", "integer")
# What the transform graph of a run is made of: copied into a `pipeline transform` output.
GRAPH_DIRS = ("transform_fn", "transformed_metadata", "metadata")
WRITE_MODES = ("auto", "direct", "staged")
# Runners whose workers share this machine's disk (Beam's names, lower case, without "Runner").
LOCAL_RUNNERS = frozenset({"direct", "bundlebaseddirect", "switchingdirect", "prism"})
# Rejected lines quoted per reason in the message of a failed run, and how much of each.
QUOTED_LINES = 2
QUOTED_CHARS = 160
QUOTED_BYTES = 1 << 16  # read from the head of each reason's file

# pipeline.beam_graph (Beam/TFT) loads lazily in `run`, so that bad invocations fail in a second.


class JobIntegrityError(RuntimeError):
    """The written rows do not add up to the parsed rows."""


class TooManyBadRows(RuntimeError):
    """An input's rejected fraction is over --max_bad_fraction, or every row was rejected."""


class EmptySplit(RuntimeError):
    """A split holds no rows (or the inputs none at all): nothing to train, tune or evaluate on."""


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
    split: str = "hash"  # one of SPLIT_MODES
    time_field: str | None = None
    # `--split given` without a valid file: this share of the train rows, cut by a keyed hash.
    valid_fraction: float | None = None
    # `pipeline transform`: the finished run whose graph is applied, and the spec it was built for.
    run_dir: str | None = None
    graph_spec: DatasetSpec | None = None
    # `--run` as given, when a URI: what the Beam workers of a direct run read the graph from.
    run_uri: str | None = None
    write_mode: str = "auto"  # one of WRITE_MODES, resolved by `write_mode`


def runner_name(beam_args: tuple[str, ...]) -> str:
    """The Beam runner of the job: the last --runner among its Beam arguments (Beam's default otherwise)."""
    name = "DirectRunner"
    for arg, following in zip(beam_args, (*beam_args[1:], ""), strict=True):
        if arg.startswith("--runner="):
            name = arg.split("=", 1)[1]
        elif arg == "--runner" and following:
            name = following
    return name


def write_mode(config: RunConfig) -> str:
    """"local" (a local DIR: scratch dir then rename), or for a URI "staged" or "direct" (module docstring).

    A URI is staged by default only where the workers share this machine's
    disk (LOCAL_RUNNERS): elsewhere they would write the launcher's temp path
    onto their own disks. `--write_mode=direct` forces direct writes for a local DIR too.
    """
    if config.write_mode not in WRITE_MODES:
        raise UsageError(f"--write_mode {config.write_mode!r}; expected one of {WRITE_MODES}")
    if config.write_mode == "direct":
        return "direct"
    if not is_uri(config.output):
        return "local"
    if config.write_mode == "staged":
        return "staged"
    runner = runner_name(config.beam_args).lower().removesuffix("runner")
    return "staged" if runner in LOCAL_RUNNERS else "direct"


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


def _inputs_per_split(config: RunConfig) -> list[tuple[str | None, str]]:
    """(given split or None, pattern) per --input; `--split given` wants SPLIT=PATTERN for each split."""
    if config.run_dir is not None:
        return [(DATA_SPLIT, pattern) for pattern in config.inputs]
    if config.split not in SPLIT_MODES:
        raise UsageError(f"--split {config.split!r}; expected one of {SPLIT_MODES}")
    if config.valid_fraction is not None and config.split != "given":
        raise UsageError("--valid_fraction belongs to --split given (train and test files, valid cut from train)")
    if config.split != "given":
        return [(None, pattern) for pattern in config.inputs]
    pairs: list[tuple[str | None, str]] = []
    for item in config.inputs:
        split, sep, pattern = item.partition("=")
        if not sep or split not in SPLIT_NAMES or not pattern:
            raise UsageError(
                f"--input {item}: with --split given every input is SPLIT=PATH with SPLIT one of "
                f"{list(SPLIT_NAMES)}, e.g. --input train=a.csv --input valid=b.csv --input test=c.csv"
            )
        pairs.append((split, pattern))
    given = {split for split, _ in pairs}
    if config.valid_fraction is not None:
        if not 0 < config.valid_fraction < 1:
            raise UsageError(f"--valid_fraction must be in (0, 1), got {config.valid_fraction}")
        if "valid" in given:
            raise UsageError("--split given: give either --input valid=PATH or --valid_fraction, not both")
        given.add("valid")
    absent = [s for s in SPLIT_NAMES if s not in given]
    if absent:
        raise UsageError(f"--split given: no --input for the splits {absent} (give SPLIT=PATH for each"
                         + (", or --valid_fraction F for valid)" if absent == ["valid"] else ")"))
    return pairs


def _check_time_field(config: RunConfig) -> None:
    if config.split != "time":
        if config.time_field is not None:
            raise UsageError("--time_field is only used with --split time")
        return
    # main-file columns only: a joined field cannot order the rows
    names = [col.name for col in config.spec.file_columns if col.kind in TIME_KINDS]
    if config.time_field not in names:
        raise UsageError(
            f"--split time needs --time_field naming a {'/'.join(TIME_KINDS)} field of the schema "
            f"(got {config.time_field!r}; candidates: {names})"
        )


def _direct_work_dir(config: RunConfig) -> str:
    """Checks a direct run's target (Beam's FileSystems, then tf.io.gfile for TFT); its scratch prefix."""
    parent, name = direct_target(config.output)
    target = f"{parent}/{name}"
    remote.check_target(target, config.overwrite)
    default = "" if config.write_mode == "direct" else f", the default for {runner_name(config.beam_args)}"
    remote.check_tf_writes(target, f"is written directly by the Beam workers (--write_mode=direct{default})")
    return f"{parent}/{scratch_name(name)}"


def prepare(config: RunConfig) -> JobSpec:
    """Validates inputs and output before anything is written; UsageError on bad input."""
    direct = write_mode(config) == "direct"
    if direct:
        work_dir = _direct_work_dir(config)
    elif is_uri(config.output):
        # pathlib would fold `gs://b/x` into a local `gs:/b/x`: `run` builds a staged URI in a local dir.
        raise UsageError(f"--output {config.output}: a staged URI output is built by pipeline.job.run, not prepare")
    else:
        output = pathlib.Path(config.output)
        _check_output(output, config.overwrite)
        work_dir = str(output.parent / scratch_name(output.name))
    if config.min_count < 1:
        raise UsageError(f"--min_count must be >= 1, got {config.min_count}")
    if not 0 <= config.max_bad_fraction <= 1:
        raise UsageError(f"--max_bad_fraction must be in [0, 1], got {config.max_bad_fraction}")
    _check_time_field(config)
    layouts = {}
    files: list[tuple[str, int]] = []
    for split, pattern in _inputs_per_split(config):
        for path, size in resolve_inputs([pattern]):
            if path in layouts:
                raise UsageError(f"input {path} is given twice; each file is read once")
            layouts[path] = detect_layout(first_line(path).decode("utf-8", "replace"), config.spec, path, split)
            if split == "train" and config.valid_fraction is not None:
                layouts[path] = dataclasses.replace(layouts[path], valid_fraction=config.valid_fraction)
            files.append((path, size))
    load_side_tables(config.spec)  # a bad side table (duplicate key, bad rows) is a usage error, before the job
    ranges = plan_ranges(files, config.range_bytes)
    return JobSpec(
        spec=config.spec,
        ranges=tuple(ranges),
        layouts=layouts,
        work_dir=work_dir,
        seed=config.seed,
        min_count=config.min_count,
        batch_lines=config.batch_lines,
        output_shards=config.output_shards,
        input_bytes=None if any(is_compressed(p) for p, _ in files) else sum(s for _, s in files),
        beam_args=config.beam_args,
        split_names=(DATA_SPLIT,) if config.run_dir is not None else SPLIT_NAMES,
        time_field=config.time_field,
        run_dir=config.run_uri if direct and config.run_uri else config.run_dir,
        graph_spec=config.graph_spec,
    )


Reader = Callable[[str], bytes]  # the scratch's file `name` (relative) -> its bytes


def _vocab_sizes(read: Reader, spec: DatasetSpec) -> dict[str, int]:
    """Ids per field: the int_domain TFT records for each transformed field (TFTransformOutput's rule).

    The schema is read with the job's own reader rather than tf.io.gfile, so
    that a direct run reads its stats back through Beam's FileSystems only.
    """
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tensorflow_transform.tf_metadata import schema_utils

    text = read("transformed_metadata/schema.pbtxt").decode()
    schema = text_format.Parse(text, schema_pb2.Schema(), allow_unknown_extension=True)
    domains = schema_utils.schema_as_feature_spec(schema).domains
    sizes = {}
    for name in spec.field_names:
        domain = domains.get(name)
        if not isinstance(domain, schema_pb2.IntDomain) or domain.min != 0:
            raise JobIntegrityError(f"transformed field {name} has no integer domain from 0 in TFT's schema: {domain}")
        sizes[name] = domain.max + 1
    return sizes


def _read_json(read: Reader, name: str):
    return json.loads(read(name))


def _split_record(config: RunConfig, read: Reader) -> dict:
    """How rows were assigned to splits (stats.json "split")."""
    if config.run_dir is not None:
        return {"mode": "transform", "transform_run": config.run_dir}
    if config.split == "given":
        inputs = {s: [p for s2, p in _inputs_per_split(config) if s2 == s] for s in SPLIT_NAMES}
        if config.valid_fraction is not None:
            return {"mode": "given", "inputs": inputs, "valid_fraction": config.valid_fraction, "seed": config.seed}
        return {"mode": "given", "inputs": inputs}
    if config.split == "time":
        cutoffs = _read_json(read, f"{STATS_TMP}/{TIME_SPLIT_FILE}")
        return {"mode": "time", "time_field": config.time_field, "fractions": [0.8, 0.1, 0.1], **cutoffs}
    return {"mode": "hash", "seed": config.seed, "fractions": [0.8, 0.1, 0.1]}


def label_warnings(splits: dict[str, dict], labeled: bool) -> list[str]:
    """Single-class data and splits without positives: the run goes on, the summary says so."""
    warnings: list[str] = []
    if not labeled:
        return warnings
    rows = sum(s["rows"] for s in splits.values())
    positives = sum(s["positives"] for s in splits.values())
    if rows and positives in (0, rows):
        warnings.append(
            f"all {rows} rows are {'positive' if positives else 'negative'}: single-class data "
            "(AUC is undefined, the model learns a constant); check the label column and label_rule"
        )
    elif rows:
        warnings += [f"split {split} has no positive rows (AUC is undefined on it)"
                     for split, s in splits.items() if s["rows"] and not s["positives"]]
    return warnings


def _field_records(job: JobSpec, config: RunConfig, by_split: dict[str, SplitStats], read: Reader) -> list[dict]:
    if config.run_dir is not None:
        sizes = {f.name: f.vocab_size for f in read_dataset_info(config.run_dir).fields}
    else:
        sizes = _vocab_sizes(read, job.spec)
    max_lens = job.spec.max_lens
    records = []
    for name in job.spec.field_names:
        rates: dict[str, dict[str, float]] = {"oov_rate": {}, "missing_rate": {}}
        for split, stats in by_split.items():
            # A multi-valued field's OOV rate is per token; single-valued fields' per row.
            tokens = stats.tokens[name] if max_lens[name] > 1 else stats.rows
            rates["oov_rate"][split] = stats.oov[name] / tokens if tokens else 0.0
            rates["missing_rate"][split] = stats.missing[name] / stats.rows if stats.rows else 0.0
        record = {"name": name, "vocab_size": sizes[name], **rates}
        if max_lens[name] > 1:
            record["max_len"] = max_lens[name]
        records.append(record)
    return records


def collect_stats(job: JobSpec, config: RunConfig, seconds: float, read: Reader) -> dict:
    """stats.json content from the job's partial statistics and TFT's schema, read from the scratch by `read`."""
    inputs = []
    total = InputCounts.zero()
    for doc in sorted(_read_json(read, f"{STATS_TMP}/{INPUT_COUNTS_FILE}"), key=lambda d: d["path"]):
        counts = InputCounts.from_json(doc)
        total += counts
        inputs.append({"path": doc["path"], "lines": counts.lines, "rejected": counts.rejected})
    rejected = total.rejected
    by_split = {
        split: SplitStats.from_json(_read_json(read, f"{STATS_TMP}/{split_stats_file(split)}"))
        for split in job.split_names
    }
    labeled = job.spec.labeled
    splits: dict[str, dict] = {}
    for split, stats in by_split.items():
        rows = stats.rows
        splits[split] = {
            "rows": rows,
            "positives": stats.positives if labeled else None,
            "positive_ratio": (stats.positives / rows if rows else 0.0) if labeled else None,
        }
    transformed = {split: stats.rows for split, stats in by_split.items()}
    if job.time_field:  # split after parsing: only the total can be compared
        check_row_counts({"all": sum(total.parsed.values())}, {"all": sum(transformed.values())})
    else:
        check_row_counts({s: total.parsed.get(s, 0) for s in job.split_names}, transformed)
    total_rows = sum(transformed.values())
    stats_doc = {
        "dataset": job.spec.name,
        "label_key": LABEL_KEY,
        "labeled": labeled,
        "fields": _field_records(job, config, by_split, read),
        "splits": splits,
        "split": _split_record(config, read),
        "warnings": label_warnings(splits, labeled),
        "rejected": {**rejected, "total": sum(rejected.values())},
        "inputs": inputs,
        "id_layout": id_layout(),
        "seed": config.seed,
        "min_count": config.min_count,
        "schema": job.transform_spec.to_doc(),
        "wall_seconds": round(seconds, 2),
        "rows_per_second": round(sum(i["lines"] for i in inputs) / seconds, 1) if seconds else None,
        "rows": total_rows,
    }
    if config.run_dir is not None:
        stats_doc["transform_run"] = config.run_dir
    return stats_doc


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


def _reasons(rejected: dict[str, int]) -> str:
    return ", ".join(f"{r}={n}" for r, n in rejected.items() if n and r != "total") or "none"


def check_not_empty(stats: dict, config: RunConfig) -> None:
    """TooManyBadRows if every row was rejected; EmptySplit if the inputs hold no rows.

    TFT analyzes an empty training split without an error (see
    pipeline.transform.EMPTY_VOCABULARY), so this check, not a TF traceback,
    is what a run with nothing to learn from ends in.
    """
    inputs = ", ".join(config.inputs)
    lines = sum(item["lines"] for item in stats["inputs"])
    if stats["rows"] == 0 and lines:
        raise TooManyBadRows(
            f"all {lines} rows of {inputs} were rejected ({_reasons(stats['rejected'])}): check that "
            "--dataset/--schema describes these files (columns, label and label_rule, field kinds, formats)"
        )
    if stats["rows"] == 0:
        raise EmptySplit(f"{inputs} hold no rows (a header at most)")


def check_splits(stats: dict, config: RunConfig) -> None:
    """EmptySplit naming each split without rows, the rows per split and why its mode left it empty."""
    empty = [split for split, s in stats["splits"].items() if not s["rows"]]
    if not empty:
        return
    counts = ", ".join(f"{split} {s['rows']}" for split, s in stats["splits"].items())
    record = stats["split"]
    if record["mode"] == "given":
        why = "; ".join(f"the --input of {split} ({', '.join(record['inputs'].get(split, [])) or 'none'}) "
                        "holds no valid rows" for split in empty)
    elif record["mode"] == "time":
        why = (f"the time cut-offs (valid from {record['valid_from']}, test from {record['test_from']}) leave "
               f"no rows there: {config.time_field} has too few distinct values for three splits; use --split hash")
    else:
        why = "an 8:1:1 hash split of so few rows leaves no rows there; give more rows"
    raise EmptySplit(f"empty {'splits' if len(empty) > 1 else 'split'} {', '.join(empty)} "
                     f"(rows per split: {counts}): {why}")


def quote_rejected(kept: str, per_reason: int = QUOTED_LINES) -> list[str]:
    """The first rejected lines of each reason file in `kept` (a local dir or a URI prefix), shortened."""
    quoted = []
    for name in sorted(remote.list_objects(kept)):
        reason = pathlib.PurePosixPath(name).name.split("-", 1)[0]
        head = remote.read_bytes(f"{kept}/{name}", QUOTED_BYTES).splitlines()
        for line in head[:per_reason]:
            text = line.decode("utf-8", "replace")
            quoted.append(f"  {reason}: {text[:QUOTED_CHARS]!r}{' ...' if len(text) > QUOTED_CHARS else ''}")
    return quoted


def done_summary(stats: dict) -> dict:
    """DONE.json: what a reader may check without parsing stats.json."""
    return {
        "dataset": stats["dataset"],
        "rows": stats["rows"],
        "splits": {split: s["rows"] for split, s in stats["splits"].items()},
        "rejected": stats["rejected"]["total"],
        FINGERPRINT_KEY: stats[FINGERPRINT_KEY],
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def scratch_for(config: RunConfig, job: JobSpec) -> Scratch:
    """The job's scratch protocol: a local DIR's, or a direct run's (`write_mode`)."""
    if write_mode(config) == "direct":
        return DirectScratch(job.work_dir, config.output)
    return LocalScratch(job.work_dir, config.output)


def run(config: RunConfig) -> dict:
    """Runs the job; returns stats. UsageError, TooManyBadRows, EmptySplit on failure (nothing in DIR)."""
    if write_mode(config) == "staged":
        return _run_staged(config)
    job = prepare(config)
    from pipeline.beam_graph import build_and_run

    scratch = scratch_for(config, job)
    scratch.remove_stale()
    start = time.perf_counter()
    try:
        build_and_run(job)
        return finish(job, config, scratch, time.perf_counter() - start)
    finally:
        scratch.discard()


def finish(job: JobSpec, config: RunConfig, scratch: Scratch, seconds: float) -> dict:
    """After the Beam job: stats read back, checks, job scratch removed, stats.json, DONE.json last, publish.

    On a check's failure the rejected rows are kept beside the output and
    nothing is published; the caller discards the scratch either way.
    """
    if config.run_dir is not None:
        for name in GRAPH_DIRS:
            scratch.add_tree(pathlib.Path(config.run_dir) / name, name)
    stats = collect_stats(job, config, seconds, scratch.read_bytes)
    try:
        check_not_empty(stats, config)
        check_bad_fraction(stats, config.max_bad_fraction)
        check_splits(stats, config)
    except (TooManyBadRows, EmptySplit) as err:
        kept = scratch.keep_rejected() if stats["rejected"]["total"] else None
        if kept is None:
            raise
        quoted = "\n".join(["first rejected lines:", *quote_rejected(kept)])
        raise type(err)(f"{err}\n{quoted}\nthe rejected rows are kept in {kept}") from None
    fields = [field_info(f) for f in stats["fields"]]
    stats[FINGERPRINT_KEY] = fingerprint.compute(fields, scratch.names(), scratch.read_bytes)
    distributions = distributions_json(job.transform_spec, job.split_names, STATS_TMP, scratch.read_bytes)
    scratch.drop_job_scratch()
    scratch.write_text(STATS_FILE, json.dumps(stats, indent=1) + "\n")
    scratch.write_text(DISTRIBUTIONS_FILE, distributions)
    scratch.write_text(DONE_FILE, json.dumps(done_summary(stats), indent=1) + "\n")
    scratch.publish(config.overwrite)
    return stats


def _run_staged(config: RunConfig) -> dict:
    """`--output URI`, staged: the job into a local temp dir (TMPDIR), then published with the marker last.

    The target is checked before the job runs. On failure the temp dir is kept
    (its rejected rows are there, named by the job's error) and nothing is published.
    """
    import tempfile

    uri = config.output.rstrip("/")
    remote.check_target(uri, config.overwrite)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="optfusion-publish-"))
    local = tmp / "output"
    stats = run(dataclasses.replace(config, output=str(local), overwrite=False))
    remote.publish(local, uri, overwrite=config.overwrite)
    shutil.rmtree(tmp, ignore_errors=True)
    return stats


def run_spec(run_dir: str) -> DatasetSpec:
    """The spec a finished run's transform graph was built for (stats.json "schema")."""
    info = read_dataset_info(run_dir)  # readable error for a missing or unfinished run
    stats = json.loads((pathlib.Path(run_dir) / STATS_FILE).read_text())
    if "schema" in stats:
        return spec_from_doc(stats["schema"], f"{run_dir}/{STATS_FILE} (key schema)", info.dataset)
    if info.dataset in DATASET_NAMES:  # runs written before stats.json recorded the schema
        return load_spec(info.dataset)
    raise SpecError(f"{run_dir}/{STATS_FILE} records no schema (an older run of {info.dataset!r}): rerun it")


def check_graph(run_path: pathlib.Path) -> None:
    """UsageError unless the run's graph files have the fingerprint its stats.json records.

    A graph copied in from another run (another seed: other vocabularies)
    would give its ids, not the run's, to every file it transforms. An older
    run that records none is taken as it is.
    """
    info = read_dataset_info(run_path)
    actual = fingerprint.of_directory(run_path, info.fields)
    if info.fingerprint is not None and actual != info.fingerprint:
        raise UsageError(
            f"--run {run_path}: {run_path / STATS_FILE} records the transform fingerprint "
            f"{fingerprint.short(info.fingerprint)}, but the graph in {run_path / 'transform_fn'} (with "
            f"transformed_metadata/) has {fingerprint.short(actual)}: another run's graph; restore the run's own "
            "graph or rerun `pipeline` to make a consistent run"
        )


def transform_config(run_dir: str, unlabeled: bool, **kwargs) -> RunConfig:
    """RunConfig of `pipeline transform`: the run's spec and graph applied to new files."""
    run_path = remote.stage(run_dir) if is_uri(run_dir) else pathlib.Path(run_dir).resolve()
    if not (run_path / "transform_fn").is_dir():
        raise UsageError(f"--run {run_dir} holds no transform_fn/: give a finished `pipeline` output")
    check_graph(run_path)
    graph_spec = run_spec(str(run_path))
    spec = graph_spec.without_label() if unlabeled else graph_spec
    return RunConfig(spec=spec, graph_spec=graph_spec, run_dir=str(run_path),
                     run_uri=run_dir.rstrip("/") if is_uri(run_dir) else None, **kwargs)
