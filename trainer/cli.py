"""Search a fusion architecture, retrain it, or train a fixed design; evaluate a finished run or score new data.

  trainer --stage=search  --data DIR [--config FILE] [--section.key=value ...] --out RUN [--resume]
  trainer --stage=retrain --data DIR --architecture RUN/architecture.json --mode {hard,soft}
          [--init {fresh,search}] --out RUN2
  trainer --stage=retrain --data DIR --architecture RUN/architecture.json
          --fixed_op {add,prod,concat,att} --out RUN2
  trainer --stage=train   --data DIR --architecture FILE --mode {hard,soft} --out RUN
  trainer --stage=train   --data DIR --model {lr,fnn,ipnn,deepfm,dcn,dcnv2_s,dcnv2_p,xdeepfm,edcn} --out RUN
  trainer --stage=train|retrain --data DIR --init=run:RUN --out RUN2   (RUN's design, rows carried by token)
  trainer --stage=tune    --data DIR --model {optfusion,NAME} [--grid FILE] [--max_trials N] [--epochs E] --out TUNE
  trainer --stage=evaluate --data DIR --run_dir RUN [--split NAME] [--output FILE.json]
  trainer --stage=predict  --data DIR --run_dir RUN [--split NAME] --output FILE.tsv|FILE.csv
  trainer --stage=predict  --data DIR --run_dir RUN --input RAW_FILE --output FILE.tsv|FILE.csv
          [--keep_columns COL,...] [--on_bad_row {error,nan,skip}] [--unlabeled]

evaluate and predict take a finished retrain/train run and any transformed data
made with that run's transform graph (a `pipeline` run, or a `pipeline transform`
output of new files: split "data", labeled or not); predict writes
`row<TAB>probability[<TAB>label]` per TFRecord (row = the record's index in the
split's stored order, see trainer/scoring.py). With --input, predict scores a raw
file of the run's schema through --data's transform graph instead: one line
`line<TAB>[kept columns<TAB>]probability` per input row, in file order, a bad row
an error naming its line unless --on_bad_row=nan|skip marks it (see
pipeline/batch_scoring.py).

retrain and train end by fitting a temperature on the validation split
(--calibrate, default temperature; RUN/calibration.json): the probabilities of
evaluate, predict and `serving export` are sigmoid(logit / T).

Bad input (config, data dir, architecture, run dir) fails before training with
one line and exit code 2; a diverging loss stops with exit code 1, keeping the
last good checkpoint. A retrained model that predicts one constant on the
validation split also exits 1, saving no weights; the message names the
component and its operation.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import sys
import time
from typing import Any

from pipeline import batch_scoring
from pipeline.dataset_info import read_dataset_info
from pipeline.errors import EXIT_USAGE, UsageError
from pipeline.features import SPLIT_NAMES
from pipeline.remote import local_view
from trainer.architecture import OPS
from trainer.strategies import STRATEGIES
from trainer.warmstart import INIT_HELP_RUN, init_run_dir, parse_init, use_previous_design
from trainer.zoo import OPTFUSION, ZOO, describe

log = logging.getLogger("trainer")

EXIT_DIVERGED = 1
TRAINING_STAGES = ("search", "retrain", "train", "tune")
SCORING_STAGES = ("evaluate", "predict")
DEFAULT_INIT = "fresh"
INIT_HELP = (
    "retrain: weights to start from: fresh (random) or search (the search run's weights beside "
    "--architecture, copied by variable path; CONCAT keeps the blocks of the remaining inputs). "
    "Default fresh: on the Criteo and Frappe samples (5 seeds, benchmarks/RESULTS.md) a Hard retrain from "
    "the search weights was no better (Criteo mean test AUC 0.707 vs 0.713 fresh; Frappe 0.945 vs 0.946)"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trainer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any further --section.key=value overrides the config, e.g. --train.lr=3e-4 --model.n=2 "
        "--search.fixed_op=add --search.sequential=true --train.jit_compile=true.",
    )
    parser.add_argument("--stage", required=True, choices=(*TRAINING_STAGES, *SCORING_STAGES),
                        help="search: one-shot supernet search; retrain: a searched architecture (fresh or "
                        "warm-started, --init); train: any architecture file (fixed designs, ablations) or a "
                        "baseline (--model); tune: keras-tuner over lr and L2 for --model (writes best.yaml "
                        "for --config); evaluate: AUC and LogLoss of a finished run (--run_dir) on a labeled "
                        "split of --data, printed and written as JSON; predict: one probability per record of "
                        "--data into --output (labeled or unlabeled data), or per row of a raw --input file")
    parser.add_argument("--data", required=True,
                        help="output DIR of a `pipeline` run (a local path or any tf.io.gfile URI); evaluate and "
                        "predict also take a `pipeline transform` output")
    parser.add_argument(
        "--config", type=pathlib.Path,
        help="YAML config; default: for retrain, the config.yaml beside --architecture, else the "
        "dataset's CPU preset trainer/configs/<dataset>_cpu.yaml, else the CPU base trainer/configs/cpu.yaml",
    )
    parser.add_argument("--architecture", type=pathlib.Path, help="architecture JSON (retrain, train)")
    parser.add_argument("--mode", choices=("hard", "soft"),
                        help="retrain/train: one op per component or the softmax(beta) mix")
    parser.add_argument("--init", type=parse_init, metavar="{fresh,search,run:PATH}",
                        help=f"{INIT_HELP}. {INIT_HELP_RUN}")
    parser.add_argument("--fixed_op", choices=OPS,
                        help="retrain/train: keep the architecture's connections, use this one operation in "
                        "every component (the paper's table 4; implies --mode=hard)")
    parser.add_argument("--model", choices=(OPTFUSION, *ZOO),
                        help=f"train/tune: a baseline of the zoo: {describe()}; tune also takes {OPTFUSION} "
                        "(tunes the search stage; retrain reuses its lr and L2, as the paper does)")
    parser.add_argument("--grid", type=pathlib.Path,
                        help="tune: YAML of config paths -> values (default: the paper's lr x L2 grid, "
                        "trainer/configs/tune_grid.yaml)")
    parser.add_argument("--max_trials", type=int, help="tune: trials at most (default: the whole grid)")
    parser.add_argument("--epochs", type=int, help="tune: epochs per trial (default: the config's train.epochs)")
    parser.add_argument("--out", type=pathlib.Path, help="run directory to write (search, retrain, train, tune)")
    parser.add_argument("--run_dir", type=pathlib.Path,
                        help="evaluate/predict: a finished retrain or train run (its --out)")
    parser.add_argument("--split",
                        help="evaluate/predict: split of --data (default: test, or the only split of a "
                        "`pipeline transform` output)")
    parser.add_argument("--output", type=pathlib.Path,
                        help="predict: file to write, tab-separated (comma-separated if it ends in .csv); "
                        "evaluate: JSON file (default: evaluation.SPLIT.json in --run_dir, replaced by the next "
                        "evaluation of that split); a given --output is never overwritten")
    parser.add_argument("--input",
                        help="predict: a raw file of --data's schema (labeled or not) to score line-aligned "
                        "through --data's transform graph, instead of --data's TFRecords")
    parser.add_argument("--keep_columns", help=f"predict --input: {batch_scoring.KEEP_COLUMNS_HELP}")
    parser.add_argument("--on_bad_row", choices=batch_scoring.ON_BAD_ROW,
                        help=f"predict --input: {batch_scoring.ON_BAD_ROW_HELP}")
    parser.add_argument("--unlabeled", action="store_true", default=None,
                        help=f"predict --input: {batch_scoring.UNLABELED_HELP}")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--calibrate", choices=("temperature", "none"),
                        help="retrain/train/tune: after training, fit one temperature T on the validation split "
                        "(minimum validation LogLoss of sigmoid(logit / T)) and write it to RUN/calibration.json; "
                        "`serving export`, evaluate and predict then give sigmoid(logit / T); none keeps T = 1 "
                        "(config train.calibrate, default temperature)")
    parser.add_argument("--strategy", choices=STRATEGIES,
                        help="tf.distribute strategy (config train.strategy, default: default); multi_worker and "
                        "parameter_server read TF_CONFIG, the chief writes --out (multi_worker: the other workers "
                        "write .OUT.worker-K beside it)")
    return parser


def _resolve_config_path(args: argparse.Namespace, dataset: str) -> pathlib.Path:
    from trainer.config import CONFIG_DIR, preset_path
    from trainer.model_io import CONFIG_FILE

    if args.resume and (args.out / CONFIG_FILE).is_file():
        if args.config is not None:
            log.warning("--config %s ignored: --resume continues with %s (plus any overrides)",
                        args.config, args.out / CONFIG_FILE)
        return args.out / CONFIG_FILE
    if args.config is not None:
        return args.config
    if args.stage == "retrain" and args.architecture is not None:
        beside = args.architecture.parent / CONFIG_FILE
        if beside.is_file():
            log.info("config: %s (the search run's, same lr/L2)", beside)
            return beside
    preset = preset_path(dataset, "cpu")
    if not preset.is_file():  # a schema-described dataset: the CPU base
        preset = CONFIG_DIR / "cpu.yaml"
    log.info("config: %s (CPU preset for %s: smaller than the paper's GPU setting)", preset, dataset)
    return preset


def run(argv: list[str]) -> dict[str, Any]:
    """Parses arguments, checks every input, runs the stage; raises on bad input."""
    return _run(*_parser().parse_known_args(argv))


def _run(args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    bad = [a for a in extra if not (a.startswith("--") and "=" in a)]
    if bad:
        raise UsageError(f"unrecognised argument {bad[0]!r} (overrides look like --section.key=value)")

    from trainer.architecture import Architecture
    from trainer.config import load_config
    from trainer.data import check_data
    from trainer.stages import run_fixed, run_search

    info = read_dataset_info(local_view(args.data))  # a URI TF cannot read here is staged once
    if args.stage in SCORING_STAGES:
        return _score(args, info)
    scoring_only = {"--run_dir": args.run_dir, "--split": args.split, "--output": args.output,
                    "--input": args.input, "--keep_columns": args.keep_columns, "--on_bad_row": args.on_bad_row,
                    "--unlabeled": args.unlabeled}
    given = [flag for flag, value in scoring_only.items() if value is not None]
    if given:
        raise UsageError(f"{given[0]} belongs to --stage=evaluate|predict, not --stage={args.stage}")
    if args.out is None:
        raise UsageError(f"--stage={args.stage} needs --out RUN (the run directory to write)")
    missing = [s for s in SPLIT_NAMES if s not in info.splits]
    if missing or not info.labeled:
        raise UsageError(
            f"{args.data} holds {'unlabeled ' if not info.labeled else ''}splits {list(info.splits)}: training "
            f"needs a labeled `pipeline` run with {list(SPLIT_NAMES)} (score new data with --stage=predict)"
        )
    use_previous_design(args)  # --init=run:PATH: its design and config unless given
    entry = ZOO.get(args.model) if args.model else None
    if args.model is not None and args.stage not in ("train", "tune"):
        raise UsageError(f"--model belongs to --stage=train|tune, not {args.stage}")
    if args.stage != "tune" and any(v is not None for v in (args.grid, args.max_trials, args.epochs)):
        raise UsageError("--grid, --max_trials and --epochs belong to --stage=tune")
    design_flags = (args.architecture, args.mode, args.fixed_op, None if init_run_dir(args.init) else args.init)
    if entry is not None and args.stage == "train" and any(v is not None for v in design_flags):
        raise UsageError("--model names the whole design: drop --architecture, --mode, --fixed_op and --init "
                         "(except --init=run:PATH)")
    if entry is not None:  # the design's own settings; the user's overrides win
        implied = [f"model.n={Architecture.load(entry.architecture_path).n}"] if entry.architecture_path else []
        extra = [*implied, *entry.overrides, *extra]
    if args.epochs is not None:
        extra = [*extra, f"train.epochs={args.epochs}"]
    if args.strategy is not None:
        extra = [*extra, f"train.strategy={args.strategy}"]
    if args.calibrate is not None:
        if args.stage == "search":
            raise UsageError("--calibrate belongs to --stage=retrain|train|tune: a search run is not served")
        extra = [*extra, f"train.calibrate={args.calibrate}"]
    config = load_config(_resolve_config_path(args, info.dataset), extra)
    from trainer.distribute import use_strategy, worker_out

    try:
        use_strategy(config.train.strategy, config.train.ps_min_shard_bytes)  # before any other op runs
    except ValueError as err:
        raise UsageError(str(err)) from err
    args.out = worker_out(args.out)
    check_data(info)
    if args.stage == "tune":
        return _tune(args, config, info)
    if entry is not None:
        if entry.architecture_path is None:
            return run_fixed("train", config, info, None, f"zoo:{args.model}", None, args.out,
                             resume=args.resume, zoo_model=args.model, init=args.init or DEFAULT_INIT)
        args.architecture, args.mode = entry.architecture_path, "hard"
    if args.stage == "search":
        if any(v is not None for v in (args.architecture, args.mode, args.init, args.fixed_op)):
            raise UsageError("--architecture, --mode, --init and --fixed_op belong to --stage=retrain|train, "
                             "not search (the search's own fixed op is --search.fixed_op=OP)")
        return run_search(config, info, args.out, resume=args.resume)
    if args.fixed_op is not None and args.mode == "soft":
        raise UsageError("--fixed_op uses one operation per component: it needs --mode=hard (or no --mode)")
    mode = "hard" if args.fixed_op is not None else args.mode
    if args.architecture is None or mode is None:
        raise UsageError(f"--stage={args.stage} needs --architecture FILE and --mode {{hard,soft}} (or --fixed_op OP)")
    if args.init is not None and args.stage != "retrain" and init_run_dir(args.init) is None:
        raise UsageError(f"--init={args.init} belongs to --stage=retrain (train starts fresh or from --init=run:PATH)")
    try:
        architecture = Architecture.load(args.architecture)
    except ValueError as err:
        raise UsageError(str(err)) from err
    if args.fixed_op is not None:
        architecture = architecture.with_op(args.fixed_op)
    if architecture.n != config.model.n:
        raise UsageError(
            f"{args.architecture} has n={architecture.n} but the config has model.n={config.model.n} "
            f"(pass --model.n={architecture.n})"
        )
    return run_fixed(args.stage, config, info, architecture, str(args.architecture), mode, args.out,
                     resume=args.resume, init=args.init or DEFAULT_INIT)


def _score(args: argparse.Namespace, info: Any) -> dict[str, Any]:
    """evaluate / predict: a finished run's model on --data (trainer/scoring.py)."""
    from trainer import scoring
    from trainer.data import check_data

    training_only = {"--out": args.out, "--architecture": args.architecture, "--mode": args.mode,
                     "--init": args.init, "--fixed_op": args.fixed_op, "--model": args.model, "--grid": args.grid,
                     "--max_trials": args.max_trials, "--epochs": args.epochs, "--strategy": args.strategy,
                     "--calibrate": args.calibrate}
    given = [flag for flag, value in training_only.items() if value is not None]
    if given or args.resume:
        raise UsageError(f"{(given or ['--resume'])[0]} belongs to the training stages, not --stage={args.stage}")
    if args.run_dir is None:
        raise UsageError(f"--stage={args.stage} needs --run_dir RUN (a finished retrain or train run)")
    raw_only = {"--input": args.input, "--keep_columns": args.keep_columns, "--on_bad_row": args.on_bad_row,
                "--unlabeled": args.unlabeled}
    given = [flag for flag, value in raw_only.items() if value is not None]
    if given and (args.stage != "predict" or args.input is None):
        raise UsageError(f"{given[0]} belongs to --stage=predict --input RAW_FILE")
    if args.input is not None and args.split is not None:
        raise UsageError("--split selects TFRecords of --data; --input scores a raw file: give one of both")
    check_data(info)
    if args.stage == "evaluate":
        return scoring.evaluate(args.run_dir, info, args.split, args.output)
    if args.output is None:
        raise UsageError("--stage=predict needs --output FILE (.tsv, or .csv for comma-separated)")
    if args.input is not None:
        return scoring.predict_raw(args.run_dir, info, args.input, args.output,
                                   on_bad_row=args.on_bad_row or "error",
                                   keep_columns=batch_scoring.parse_keep_columns(args.keep_columns),
                                   unlabeled=args.unlabeled)
    return scoring.predict(args.run_dir, info, args.output, args.split)


def _tune(args: argparse.Namespace, config: Any, info: Any) -> dict[str, Any]:
    """keras-tuner over --grid; each trial is the search stage (optfusion) or the train stage."""
    from trainer.stages import run_fixed, run_search
    from trainer.tune import GRID_FILE, Grid, tune

    if args.model is None:
        raise UsageError(f"--stage=tune needs --model {OPTFUSION} or a zoo model")
    if args.max_trials is not None and args.max_trials < 1 or args.epochs is not None and args.epochs < 1:
        raise UsageError("--max_trials and --epochs must be >= 1")
    grid = Grid.load(args.grid or GRID_FILE)
    entry = ZOO.get(args.model)

    def trial(trial_config: Any, run_dir: pathlib.Path, resume: bool) -> float:
        if args.model == OPTFUSION:
            summary = run_search(trial_config, info, run_dir, resume=resume)
            return float(list(summary["phases"].values())[-1]["best_valid_auc"])
        if entry is not None and entry.architecture_path is None:
            summary = run_fixed("train", trial_config, info, None, f"zoo:{args.model}", None, run_dir,
                                resume=resume, zoo_model=args.model)
        else:
            from trainer.architecture import Architecture

            assert entry is not None and entry.architecture_path is not None
            summary = run_fixed("train", trial_config, info, Architecture.load(entry.architecture_path),
                                str(entry.architecture_path), "hard", run_dir, resume=resume)
        return float(summary["best_valid_auc"])

    start = time.perf_counter()
    summary = tune(config, grid, trial, args.out, project=args.model, max_trials=args.max_trials)
    return {**summary, "seconds": time.perf_counter() - start}


def _print_summary(summary: dict[str, Any]) -> None:
    lines = [f"trainer {summary['stage']} done in {summary['seconds']:.0f}s -> {summary['run_dir']}"]
    if summary["stage"] == "tune":
        for t in summary["trials"][:5]:
            lines.append(f"  trial {t['id']}: valid AUC {t['val_auc']:.4f}  {t['values']}")
        lines.append(f"  best config: {summary['best_config']} (pass it to other stages with --config)")
    elif summary["stage"] == "search":
        for name, p in summary["phases"].items():
            lines.append(f"  {name}: best valid {p['monitor']} at epoch {p['best_epoch']} of {p['epochs']}: "
                         f"valid AUC {p['best_valid_auc']:.4f}, LogLoss {p['best_valid_logloss']:.4f}")
        lines.append(summary["rendering"])
        lines.append(f"  architecture: {summary['architecture']}")
    elif summary["stage"] == "evaluate":
        lines = [f"trainer evaluate: {summary['run_dir']} on split {summary['split']} of {summary['data_dir']}: "
                 f"AUC {summary['auc']:.4f}, LogLoss {summary['logloss']:.4f} (T = {summary['temperature']:.4g}; "
                 f"{summary['rows']} rows, "
                 f"{summary['positives']} positive) in {summary['seconds']:.1f}s -> {summary['output']}"]
    elif summary["stage"] == "predict" and "input" in summary:  # rows in / scored / bad: stderr
        print(f"trainer predict: {summary['summary']}, scored by {summary['run_dir']} in "
              f"{summary['seconds']:.1f}s", *filter(None, [summary["warning"]]), sep="\n", file=sys.stderr)
        return
    elif summary["stage"] == "predict":
        lines = [f"trainer predict: {summary['rows']} rows of split {summary['split']} of {summary['data_dir']} "
                 f"scored by {summary['run_dir']} in {summary['seconds']:.1f}s -> {summary['output']} "
                 f"(probability mean {summary['mean_probability']:.4f}, min {summary['min_probability']:.4g}, "
                 f"max {summary['max_probability']:.4g})"]
    else:
        calibration = summary["calibration"]
        lines.append(
            f"  {summary['model'] or summary['mode']}: test AUC {summary['test_auc']:.4f}, "
            f"LogLoss {summary['test_logloss']:.4f} "
            f"({summary['test_rows']} rows); best valid {summary['monitor']} at epoch {summary['best_epoch']} "
            f"of {summary['epochs']} (valid AUC {summary['best_valid_auc']:.4f}, LogLoss "
            f"{summary['best_valid_logloss']:.4f}); {summary['params']:,} parameters"
        )
        if calibration["method"] != "none":
            lines.append(f"  calibrated (T = {calibration['temperature']:.4f}, fitted on valid): test LogLoss "
                         f"{calibration['test']['logloss_calibrated']:.4f}, ECE {calibration['test']['ece']:.4f} -> "
                         f"{calibration['test']['ece_calibrated']:.4f}")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parsed = _parser().parse_known_args(sys.argv[1:] if argv is None else argv)  # --help before TF loads
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from trainer.loop import TrainingFailed

    try:
        summary = _run(*parsed)
    except UsageError as err:  # ConfigError, DatasetInfoError, RunDirError included
        print(f"trainer: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingFailed as err:
        print(f"trainer: error: {err}", file=sys.stderr)
        return EXIT_DIVERGED
    _print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
