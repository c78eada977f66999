"""`pipeline` command line: the preprocessing job, and `pipeline generate` for data.

Exit codes: 0 done, 1 too many bad rows or a job failure, 2 bad input or
arguments (one-line message, nothing written).
"""

from __future__ import annotations

import argparse
import os
import sys

from pipeline.errors import EXIT_USAGE, UsageError
from pipeline.specs import DATASET_NAMES


def _job_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline",
        description=(
            "Beam/TFT preprocessing of raw CTR logs into gzipped tf.Example TFRecords, the TFT "
            "transform graph and stats.json (see docs/DESIGN.md §Preprocessing). "
            "Use `pipeline generate --help` for the synthetic Criteo generator. "
            "Unknown --flags are passed to Beam (e.g. --runner=DataflowRunner --project=...)."
        ),
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--dataset", choices=DATASET_NAMES, help="built-in raw layout")
    what.add_argument("--schema", help="schemas/<file>.yaml describing any other TSV/CSV")
    parser.add_argument("--input", action="append", required=True, metavar="PATH",
                        help="input file or glob, plain or .gz; repeatable")
    parser.add_argument("--output", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="seed of the hashed 8:1:1 split (default 0)")
    parser.add_argument("--min_count", type=int, default=2,
                        help="categorical values seen fewer times in train map to OOV (default 2)")
    parser.add_argument("--max_bad_fraction", type=float, default=0.01,
                        help="fail if an input has more rejected rows than this fraction (default 0.01)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a finished run in DIR (one holding DONE.json); other non-empty DIRs are refused")
    parser.add_argument("--batch_lines", type=int, default=20000, help="lines parsed per batch")
    parser.add_argument("--output_shards", type=int, default=2, help="TFRecord shards per split (default 2)")
    parser.add_argument("--range_mb", type=int, default=32, help="plain files are split into ranges of this size")
    parser.add_argument("--runner", default="DirectRunner",
                        help="Beam runner (default DirectRunner: local, offline, never Prism)")
    parser.add_argument("--direct_num_workers", type=int, default=2,
                        help="DirectRunner workers (default 2, the local job uses both cores; "
                             "more than 1 needs a multi_* running mode)")
    parser.add_argument("--direct_running_mode", default="multi_threading",
                        choices=["in_memory", "multi_threading", "multi_processing"],
                        help="DirectRunner mode (default multi_threading; a 1M-row job took 48-50 s in all "
                             "three here. Multi-worker modes once lost rows through a Beam data-plane race, "
                             "now disabled in pipeline.beam_graph; the job's row-count check still guards it)")
    return parser


def _print_summary(stats: dict, output: str) -> None:
    print(f"\n{stats['dataset']}: {stats['rows']:,} rows in {stats['wall_seconds']:.1f}s "
          f"({stats['rows_per_second']:,.0f} rows/s) -> {output}")
    print(f"{'split':<6} {'rows':>10} {'pos.ratio':>9}")
    for split, s in stats["splits"].items():
        print(f"{split:<6} {s['rows']:>10,} {s['positive_ratio']:>9.4f}")
    rejected = {k: v for k, v in stats["rejected"].items() if v and k != "total"}
    print(f"rejected: {stats['rejected']['total']:,}" + (f" {rejected}" if rejected else ""))
    print(f"{'field':<18} {'vocab':>9} {'oov(valid)':>10} {'missing':>8}")
    for f in stats["fields"]:
        print(f"{f['name']:<18} {f['vocab_size']:>9,} {f['oov_rate']['valid']:>10.4f} "
              f"{f['missing_rate']['train']:>8.4f}")


def _run_job(argv: list[str]) -> int:
    from pipeline.job import JobIntegrityError, RunConfig, TooManyBadRows, run
    from pipeline.specs import load_spec

    parser = _job_parser()
    args, extra = parser.parse_known_args(argv)
    beam_args = [f"--runner={args.runner}"]
    if args.runner == "DirectRunner":
        beam_args += [f"--direct_num_workers={args.direct_num_workers}",
                      f"--direct_running_mode={args.direct_running_mode}"]
    try:
        spec = load_spec(args.dataset, args.schema)
        config = RunConfig(
            spec=spec, inputs=tuple(args.input), output=args.output.rstrip("/"), seed=args.seed,
            min_count=args.min_count, max_bad_fraction=args.max_bad_fraction,
            overwrite=args.overwrite, batch_lines=args.batch_lines,
            range_bytes=args.range_mb << 20, output_shards=args.output_shards, beam_args=tuple(beam_args + extra),
        )
        stats = run(config)
    except UsageError as err:
        print(f"pipeline: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (TooManyBadRows, JobIntegrityError) as err:
        print(f"pipeline: error: {err}", file=sys.stderr)
        return 1
    _print_summary(stats, args.output)
    return 0


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TF's INFO banner drowns the summary
    if argv and argv[0] == "generate":
        from pipeline.generate import main as generate_main

        sys.exit(generate_main(argv[1:]))
    code = _run_job(argv)
    # A TFT Beam run can segfault at interpreter exit (docs/DESIGN.md §Pitfalls):
    # flush and leave without the interpreter's teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
