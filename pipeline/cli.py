"""`pipeline` command line: the preprocessing job, `pipeline transform` (a finished run's
graph applied to new files), `pipeline validate` (a run's data against a reference
run's) and `pipeline generate` for data.

Exit codes: 0 done, 1 too many bad rows (or all), an empty split or a job
failure (rejected rows kept), 2 bad input or arguments (one-line message,
nothing written), 3 the run was published but `--validate_against` found
anomalies (pipeline.validate).
"""

from __future__ import annotations

import argparse
import os
import sys

from pipeline import quiet
from pipeline.errors import EXIT_USAGE, UsageError
from pipeline.features import SPLIT_MODES
from pipeline.job import WRITE_MODES
from pipeline.specs import DATASET_NAMES


def _add_common(parser: argparse.ArgumentParser) -> None:
    """Flags of both jobs: output, bad rows, sizes, Beam runner."""
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="output directory, or a URI on any Beam filesystem (gs://B/prefix)")
    parser.add_argument("--write_mode", choices=WRITE_MODES, default="auto",
                        help="how a URI --output is written. auto (default): staged for the DirectRunner, direct "
                             "for any other runner. staged: built in this machine's TMPDIR, then uploaded with "
                             "DONE.json last (workers must share that disk). direct: the Beam workers write a "
                             "scratch prefix beside the URI, published into it with DONE.json last. A local DIR "
                             "is always built beside itself and renamed, unless direct is given")
    parser.add_argument("--max_bad_fraction", type=float, default=0.01,
                        help="fail if an input has more rejected rows than this fraction (default 0.01)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a finished run in DIR (one holding DONE.json); other non-empty DIRs are refused")
    parser.add_argument("--batch_lines", type=int, default=20000, help="lines parsed per batch")
    parser.add_argument("--output_shards", type=int, default=2, help="TFRecord shards per split (default 2)")
    parser.add_argument("--range_mb", type=int, default=32, help="plain files are split into ranges of this size")
    parser.add_argument("--runner", default="DirectRunner",
                        help="Beam runner (default DirectRunner: local, offline, never Prism); DataflowRunner, "
                             "FlinkRunner, SparkRunner, DaskRunner: BUILD.md. DaskRunner (any spelling) runs "
                             "pipeline.dask_runner's patched one (Beam 2.77's loses data) and needs the dask "
                             "extra; give --dask_client_address=tcp://HOST:PORT (else a LocalCluster)")
    parser.add_argument("--direct_num_workers", type=int, default=2,
                        help="DirectRunner workers (default 2, the local job uses both cores; "
                             "more than 1 needs a multi_* running mode)")
    parser.add_argument("--direct_running_mode", default="multi_threading",
                        choices=["in_memory", "multi_threading", "multi_processing"],
                        help="DirectRunner mode (default multi_threading; a 1M-row job took 48-50 s in all "
                             "three here. Multi-worker modes once lost rows through a Beam data-plane race, "
                             "now disabled in pipeline.beam_graph; the job's row-count check still guards it)")
    quiet.add_verbose_flag(parser)


def _job_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline",
        description=(
            "Beam/TFT preprocessing of raw CTR logs into gzipped tf.Example TFRecords, the TFT "
            "transform graph and stats.json (see docs/DESIGN.md §Preprocessing; schema files: docs/SCHEMA.md). "
            "`pipeline transform --help`: apply a finished run's graph to new files. "
            "`pipeline validate --help`: compare a run's data with a reference run's. "
            "`pipeline generate --help`: the synthetic Criteo generator. "
            "Unknown --flags are passed to Beam (e.g. --runner=DataflowRunner --project=...)."
        ),
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--dataset", choices=DATASET_NAMES, help="built-in dataset (schemas/NAME.yaml)")
    what.add_argument("--schema", help="schema file (docs/SCHEMA.md) describing any other TSV/CSV/libsvm file")
    parser.add_argument("--input", action="append", required=True, metavar="PATH",
                        help="input file or glob, plain or .gz; repeatable. With --split given: SPLIT=PATH "
                             "(train=a.csv valid=b.csv test=c.csv)")
    parser.add_argument("--split", choices=SPLIT_MODES, default="hash",
                        help="hash: 8:1:1 from a keyed hash of each row (default); given: files named per split "
                             "in --input; time: by --time_field, the latest values holding >= 10%% of the rows "
                             "are test, the latest before them holding >= 10%% valid, ties never split")
    parser.add_argument("--time_field", help="with --split time: a timestamp, hour or integer field")
    parser.add_argument("--valid_fraction", type=float, metavar="F",
                        help="with --split given and only train= and test= inputs: this share of the train rows "
                             "becomes valid, cut by a keyed hash of each row and --seed (deterministic)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the hashed 8:1:1 split and of --valid_fraction's cut (default 0)")
    parser.add_argument("--min_count", type=int, default=2,
                        help="categorical values seen fewer times in train map to OOV (default 2)")
    parser.add_argument("--validate_against", metavar="RUN",
                        help="after publishing, compare the run's train split with this finished run "
                             "(`pipeline validate`, docs/SCHEMA.md §Validation): anomalies.json in DIR, exit 3 "
                             "on anomalies (the run is kept)")
    _add_common(parser)
    return parser


def _transform_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline transform",
        description=(
            "Applies a finished run's transform graph (same ids, same OOV, no new vocabulary) to new "
            "labeled or unlabeled files of the run's schema. DIR gets one split, data-*.tfrecord.gz, the "
            "graph, stats.json and DONE.json: `trainer --stage=evaluate` and batch scoring read it."
        ),
    )
    parser.add_argument("--run", required=True, metavar="RUN_DIR", help="finished `pipeline` output")
    parser.add_argument("--input", action="append", required=True, metavar="PATH",
                        help="input file or glob, plain or .gz; repeatable")
    parser.add_argument("--unlabeled", action="store_true",
                        help="the files lack the label column (scoring logs, a test set): records carry no label")
    _add_common(parser)
    return parser


def _beam_args(args: argparse.Namespace, extra: list[str]) -> tuple[str, ...]:
    """Beam's arguments: the resolved runner (pipeline.runners), its defaults here, then the unknown flags."""
    from pipeline.runners import dask_defaults, is_dask, resolve_runner

    beam_args = [f"--runner={resolve_runner(args.runner)}"]
    if args.runner == "DirectRunner":
        beam_args += [f"--direct_num_workers={args.direct_num_workers}",
                      f"--direct_running_mode={args.direct_running_mode}"]
    elif is_dask(args.runner):
        beam_args += dask_defaults(extra)
    return tuple(beam_args + extra)


def _print_summary(stats: dict, output: str) -> None:
    print(f"\n{stats['dataset']}: {stats['rows']:,} rows in {stats['wall_seconds']:.1f}s "
          f"({stats['rows_per_second']:,.0f} rows/s) -> {output}")
    print(f"{'split':<6} {'rows':>10} {'pos.ratio':>9}")
    for split, s in stats["splits"].items():
        ratio = "-" if s["positive_ratio"] is None else f"{s['positive_ratio']:.4f}"
        print(f"{split:<6} {s['rows']:>10,} {ratio:>9}")
    rejected = {k: v for k, v in stats["rejected"].items() if v and k != "total"}
    print(f"rejected: {stats['rejected']['total']:,}" + (f" {rejected}" if rejected else ""))
    print(f"transform fingerprint: {stats['fingerprint']}")
    shown = "valid" if "valid" in stats["splits"] else next(iter(stats["splits"]))
    print(f"{'field':<18} {'vocab':>9} {'oov(' + shown + ')':>10} {'missing':>8}")
    for f in stats["fields"]:
        print(f"{f['name']:<18} {f['vocab_size']:>9,} {f['oov_rate'][shown]:>10.4f} "
              f"{f['missing_rate'][next(iter(stats['splits']))]:>8.4f}")
    for warning in stats["warnings"]:
        print(f"warning: {warning}")


def _run_job(argv: list[str]) -> int:
    from pipeline.job import EmptySplit, JobIntegrityError, RunConfig, TooManyBadRows, run, transform_config
    from pipeline.specs import load_spec

    transform = bool(argv) and argv[0] == "transform"
    parser = _transform_parser() if transform else _job_parser()
    args, extra = parser.parse_known_args(argv[1:] if transform else argv)
    reference = None if transform else args.validate_against
    try:
        common = dict(  # the runner is resolved first: a DaskRunner without dask fails before anything is read
            beam_args=_beam_args(args, extra), inputs=tuple(args.input), output=args.output.rstrip("/"),
            max_bad_fraction=args.max_bad_fraction, overwrite=args.overwrite, batch_lines=args.batch_lines,
            range_bytes=args.range_mb << 20, output_shards=args.output_shards, write_mode=args.write_mode,
        )
        if reference is not None:
            from pipeline.dataset_info import is_uri
            from pipeline.validate import load_run

            load_run(reference, "--validate_against")  # a bad reference fails before the job runs
            if is_uri(args.output):
                raise UsageError("--validate_against needs a local --output DIR (validation reads local runs)")
        if transform:
            config = transform_config(args.run, args.unlabeled, **common)
        else:
            config = RunConfig(
                spec=load_spec(args.dataset, args.schema), seed=args.seed, min_count=args.min_count,
                split=args.split, time_field=args.time_field, valid_fraction=args.valid_fraction, **common,
            )
        stats = run(config)
    except UsageError as err:
        print(f"pipeline: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (TooManyBadRows, EmptySplit, JobIntegrityError) as err:
        print(f"pipeline: error: {err}", file=sys.stderr)
        return 1
    _print_summary(stats, args.output)
    if reference is None:
        return 0
    from pipeline.validate import validate_runs

    try:
        return validate_runs(reference, config.output)
    except UsageError as err:
        print(f"pipeline: error: --validate_against: {err}", file=sys.stderr)
        return EXIT_USAGE


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    verbose = quiet.wants_verbose(argv)  # global (`pipeline --verbose transform ...`) or after the subcommand
    argv = argv[1:] if argv[:1] == [quiet.VERBOSE_FLAG] else argv
    quiet.configure(verbose, import_tensorflow=argv[:1] not in (["generate"], ["validate"]))  # JSON/CSV only: no TF
    if argv and argv[0] == "generate":
        from pipeline.generate import main as generate_main

        sys.exit(generate_main(argv[1:]))
    if argv and argv[0] == "validate":
        from pipeline.validate import main as validate_main

        sys.exit(validate_main(argv[1:]))
    code = _run_job(argv)
    # A TFT Beam run can segfault at interpreter exit (docs/DESIGN.md §Pitfalls):
    # flush and leave without the interpreter's teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
