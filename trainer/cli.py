"""Search a fusion architecture, retrain it, or train a fixed design; evaluate a finished run or score new data.

  trainer search   --data DIR [--config FILE] [--section.key=value ...] --out RUN [--resume]
                   [--method {optfusion,autoctr,nasrec}]
  trainer retrain  --data DIR --architecture RUN/architecture.json --out RUN2   (an autoctr/nasrec search's)
  trainer retrain  --data DIR --architecture RUN/architecture.json --mode {hard,soft}
                   [--init {fresh,search}] --out RUN2
  trainer retrain  --data DIR --architecture RUN/architecture.json
                   --fixed_op {add,prod,concat,att} --out RUN2
  trainer train    --data DIR --architecture FILE --mode {hard,soft} --out RUN
  trainer train    --data DIR --model {lr,fnn,ipnn,deepfm,dcn,dcnv2_s,dcnv2_p,xdeepfm,edcn} --out RUN
  trainer train|retrain --data DIR --init=run:RUN --out RUN2   (RUN's design, rows carried by token)
  trainer tune     --data DIR --model {optfusion,NAME} [--grid FILE] [--max_trials N] [--epochs E] --out TUNE
  trainer evaluate --data DIR --run_dir RUN [--split NAME] [--output FILE.json]
  trainer predict  --data DIR --run_dir RUN [--split NAME] --output FILE.tsv|FILE.csv
  trainer predict  --data DIR --run_dir RUN --input RAW_FILE --output FILE.tsv|FILE.csv
                   [--keep_columns COL,...] [--on_bad_row {error,nan,skip}] [--unlabeled]
  trainer calibrate --data DIR --run_dir RUN --calibrate {beta,isotonic,temperature,none}

`trainer --stage=NAME ...` is the same command as `trainer NAME ...` (the original form, kept for
scripts): e.g. trainer --stage=evaluate --data DIR --run_dir RUN. Each stage takes only its own
flags (`trainer NAME --help`); a flag of another stage is a usage error (exit 2). --verbose, before
or after the stage, shows TensorFlow's, Beam's and keras-tuner's own logs (hidden by default:
pipeline/quiet.py).

evaluate and predict take a finished retrain/train run and any transformed data
made with that run's transform graph (a `pipeline` run, or a `pipeline transform`
output of new files: split "data", labeled or not); predict writes
`row<TAB>probability[<TAB>label]` per TFRecord (row = the record's index in the
split's stored order, see trainer/scoring.py). With --input, predict scores a raw
file of the run's schema through --data's transform graph instead: one line
`line<TAB>[kept columns<TAB>]probability` per input row, in file order, a bad row
an error naming its line unless --on_bad_row=nan|skip marks it (see
pipeline/batch_scoring.py).

retrain and train end by fitting a calibration on the validation split
(--calibrate beta|isotonic|temperature|none, trainer/calibration.py;
RUN/calibration.json): the probabilities of evaluate, predict and `serving
export` are the calibrated ones. calibrate refits it on a finished run (its
own pipeline output as --data) with another method, without retraining.

Bad input (config, data dir, architecture, run dir) fails before training with
one line and exit code 2; a diverging loss stops with exit code 1, keeping the
last good checkpoint. A retrained model that predicts one constant on the
validation split also exits 1, saving no weights; the message names the
component and its operation.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import re
import sys
import time
from typing import Any

from pipeline import batch_scoring, quiet
from pipeline.dataset_info import read_dataset_info
from pipeline.errors import EXIT_USAGE, UsageError
from pipeline.features import SPLIT_NAMES
from pipeline.remote import local_view
from trainer.architecture import OPS
from trainer.calibration import CALIBRATION_METHODS
from trainer.nas import METHODS, OPTFUSION_METHOD
from trainer.nas.space import is_nas_file
from trainer.strategies import STRATEGIES
from trainer.warmstart import INIT_HELP_RUN, init_run_dir, parse_init, use_previous_design
from trainer.zoo import OPTFUSION, ZOO, describe

log = logging.getLogger("trainer")

EXIT_DIVERGED = 1
TRAINING_STAGES = ("search", "retrain", "train", "tune")
SCORING_STAGES = ("evaluate", "predict", "calibrate")
DEFAULT_INIT = "fresh"
INIT_HELP = (
    "retrain: weights to start from: fresh (random) or search (the search run's weights beside "
    "--architecture, copied by variable path; CONCAT keeps the blocks of the remaining inputs). "
    "Default: the config's train.retrain_init (fresh; search in official.yaml, the official code's protocol). "
    "Fresh because on the Criteo and Frappe samples (5 seeds, benchmarks/RESULTS.md) a Hard retrain from "
    "the search weights was no better (Criteo mean test AUC 0.707 vs 0.713 fresh; Frappe 0.945 vs 0.946)"
)


STAGE_HELP = {
    "search": "one-shot supernet search, or a whole-architecture search (--method autoctr or nasrec)",
    "retrain": "a searched architecture (fresh or warm-started, --init)",
    "train": "any architecture file (fixed designs, ablations) or a baseline (--model)",
    "tune": "keras-tuner over lr and L2 for --model (writes best.yaml for --config)",
    "evaluate": "AUC and LogLoss of a finished run (--run_dir) on a labeled split of --data, printed and "
                "written as JSON; or, with --candidate, the blessing of a candidate against --baseline",
    "predict": "one probability per record of --data into --output (labeled or unlabeled data), or per row "
               "of a raw --input file",
    "calibrate": "refit the calibration of a finished run (--run_dir) with --calibrate on the validation split "
                 "of --data (the run's own pipeline output); the model is unchanged",
}
OVERRIDES_EPILOG = ("Any further --section.key=value overrides the config, e.g. --train.lr=3e-4 --model.n=2 "
                    "--search.fixed_op=add --search.sequential=true --train.jit_compile=true.")
# A config override: --section.key=value or --key=value (anything else left over by argparse is refused).
OVERRIDE = re.compile(r"^--\w+(\.\w+)*=")


# Every flag of every stage, defined once: argparse keywords by flag name.
FLAGS: dict[str, dict[str, Any]] = {
    "--data": dict(required=True, help="output DIR of a `pipeline` run (a local path or any tf.io.gfile URI); "
                   "evaluate and predict also take a `pipeline transform` output"),
    "--config": dict(type=pathlib.Path, help="YAML config; default: for retrain, the config.yaml beside "
                     "--architecture, else the dataset's CPU preset trainer/configs/<dataset>_cpu.yaml, else "
                     "the CPU base trainer/configs/cpu.yaml"),
    "--out": dict(type=pathlib.Path, required=True, help="run directory to write"),
    "--resume": dict(action="store_true", help="continue the run in --out from its last checkpoint"),
    "--strategy": dict(choices=STRATEGIES, help="tf.distribute strategy (config train.strategy, default: "
                       "default); multi_worker and parameter_server read TF_CONFIG, the chief writes --out "
                       "(multi_worker: the other workers write .OUT.worker-K beside it)"),
    "--architecture": dict(type=pathlib.Path, help="architecture JSON (an autoctr or nasrec search's takes no "
                           "--mode, --fixed_op or --init)"),
    "--method": dict(choices=METHODS, default=OPTFUSION_METHOD, help="search method: optfusion (the one-shot "
                     "fusion supernet, default), autoctr (evolution, each candidate trained on a subsample) or "
                     "nasrec (a weight-sharing supernet, then evolution over its subnets); budgets in the "
                     "config's nas: section (docs/NAS.md)"),
    "--mode": dict(choices=("hard", "soft"), help="one op per component or the softmax(beta) mix"),
    "--init": dict(type=parse_init, metavar="{fresh,search,run:PATH}", help=f"{INIT_HELP}. {INIT_HELP_RUN}"),
    "--fixed_op": dict(choices=OPS, help="keep the architecture's connections, use this one operation in "
                       "every component (the paper's table 4; implies --mode=hard)"),
    "--model": dict(choices=(OPTFUSION, *ZOO), help=f"a baseline of the zoo: {describe()}; tune also takes "
                    f"{OPTFUSION} (tunes the search stage; retrain reuses its lr and L2, as the paper does)"),
    "--calibrate": dict(choices=CALIBRATION_METHODS, help="after training, fit an increasing map of the logit "
                        "on the validation split: beta (a * log p - b * log(1 - p) + c), isotonic (pooled adjacent "
                        "violators, served piecewise-linear) or temperature (logit / T); written to "
                        "RUN/calibration.json, `serving export`, evaluate and predict then give the calibrated "
                        "probability; none keeps the model's (config train.calibrate, default in trainer/config.py). "
                        "calibrate: the method to refit"),
    "--grid": dict(type=pathlib.Path, help="YAML of config paths -> values (default: the paper's lr x L2 grid, "
                   "trainer/configs/tune_grid.yaml)"),
    "--max_trials": dict(type=int, help="trials at most (default: the whole grid)"),
    "--epochs": dict(type=int, help="epochs per trial (default: the config's train.epochs)"),
    "--run_dir": dict(type=pathlib.Path, help="a finished retrain or train run (its --out); required, except for "
                      "evaluate --candidate"),
    "--split": dict(help="split of --data (default: test, or the only split of a `pipeline transform` "
                    "output)"),
    "--output": dict(type=pathlib.Path, help="predict: file to write, tab-separated (comma-separated if it "
                     "ends in .csv); evaluate: JSON file (default: evaluation.SPLIT.json in --run_dir, replaced "
                     "by the next evaluation of that split); a given --output is never overwritten"),
    "--input": dict(help="a raw file of --data's schema (labeled or not) to score line-aligned through "
                    "--data's transform graph, instead of --data's TFRecords"),
    "--keep_columns": dict(help=f"with --input: {batch_scoring.KEEP_COLUMNS_HELP}"),
    "--on_bad_row": dict(choices=batch_scoring.ON_BAD_ROW, help=f"with --input: {batch_scoring.ON_BAD_ROW_HELP}"),
    "--unlabeled": dict(action="store_true", default=None, help=f"with --input: {batch_scoring.UNLABELED_HELP}"),
    # evaluate --candidate: the blessing before a push (trainer/blessing.py)
    "--candidate": dict(type=pathlib.Path, help="blessing: the finished run to bless (trained on --data), in place "
                        "of --run_dir. Scores it and --baseline on the raw rows of --data's held-out --split "
                        "(default test), each through its own transform graph, and writes blessing.json (default "
                        "CANDIDATE/blessing.json, or --output): both AUCs and LogLosses, the thresholds, BLESSED or "
                        "NOT_BLESSED with the reason. Exit 0 blessed, 3 not blessed, 2 bad input. Thresholds: "
                        "trainer/configs/blessing.yaml, overridden by --blessing_config and the flags below"),
    "--baseline": dict(type=pathlib.Path, help="with --candidate: the model to beat: a finished run (scored "
                       "through its own pipeline run's graph), an exported SavedModel version dir, or BASE/NAME "
                       "(its highest version); omitted on the first day: the absolute floors alone decide"),
    "--blessing_config": dict(type=pathlib.Path, help="with --candidate: YAML with a `blessing:` section (any of "
                              "min_auc, max_logloss, auc_delta, logloss_delta) over trainer/configs/blessing.yaml"),
    "--min_auc": dict(type=float, help="with --candidate: absolute floor on the candidate's AUC"),
    "--max_logloss": dict(type=float, help="with --candidate: absolute ceiling on the candidate's LogLoss"),
    "--auc_delta": dict(type=float, help="with --candidate: blessed only if candidate AUC >= baseline AUC - "
                        "auc_delta"),
    "--logloss_delta": dict(type=float, help="with --candidate: blessed only if candidate LogLoss <= baseline "
                            "LogLoss + logloss_delta"),
}
_BLESSING = ("--candidate", "--baseline", "--blessing_config", "--min_auc", "--max_logloss", "--auc_delta",
             "--logloss_delta")


_TRAINING = ("--data", "--config", "--out", "--resume", "--strategy")
_DESIGN = ("--architecture", "--mode", "--fixed_op")
_SCORING = ("--data", "--run_dir", "--split", "--output")
# Each stage's flags, in --help order: adding a flag to a stage is adding its name here.
STAGE_FLAGS: dict[str, tuple[str, ...]] = {
    "search": (*_TRAINING, "--method"),
    "retrain": (*_TRAINING, *_DESIGN, "--init", "--calibrate"),
    "train": (*_TRAINING, *_DESIGN, "--init", "--model", "--calibrate"),
    "tune": (*_TRAINING, "--model", "--grid", "--max_trials", "--epochs", "--calibrate"),
    "evaluate": (*_SCORING, *_BLESSING),
    "predict": (*_SCORING, "--input", "--keep_columns", "--on_bad_row", "--unlabeled"),
    "calibrate": ("--data", "--run_dir", "--calibrate"),
}


class _TrainerParser(argparse.ArgumentParser):
    """The top-level parser: translates `--stage=NAME` to the subcommand and refuses leftovers that are not
    config overrides (and any leftover of evaluate/predict) with the subcommand's usage."""

    _stage_parsers: dict[str, argparse.ArgumentParser]

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        parsed, extra = super().parse_known_args(_subcommand_argv(sys.argv[1:] if args is None else args),
                                                 namespace)
        bad = [a for a in extra if parsed.stage in SCORING_STAGES or not OVERRIDE.match(a)
               or a.split("=", 1)[0] in FLAGS]  # --model=lr on search: another stage's flag
        if bad:
            self._stage_parsers[parsed.stage].error(f"unrecognized arguments: {' '.join(bad)}")
        if parsed.stage in SCORING_STAGES and parsed.run_dir is None and getattr(parsed, "candidate", None) is None:
            needed = "--run_dir" + (" (or --candidate, the blessing)" if parsed.stage == "evaluate" else "")
            self._stage_parsers[parsed.stage].error(f"the following arguments are required: {needed}")
        # Flags of other stages read as None, so the stage code needs no per-stage attribute checks.
        return argparse.Namespace(**{**dict.fromkeys(_DESTS), **vars(parsed)}), extra


_DESTS = tuple(name[2:] for name in FLAGS)


def _subcommand_argv(argv: list[str]) -> list[str]:
    """`trainer --stage=NAME ...` (or `--stage NAME`), the original form, as `trainer NAME ...`."""
    args = [str(a) for a in argv]
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg.startswith("--stage="):
            return [arg.split("=", 1)[1], *args[:i], *args[i + 1:]]
        if arg == "--stage" and i + 1 < len(args):
            return [args[i + 1], *args[:i], *args[i + 2:]]
    return args


def _add_flags(parser: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    """The stage's flags from the one definition of each (FLAGS), plus --verbose."""
    for name in names:
        parser.add_argument(name, **FLAGS[name])
    quiet.add_verbose_flag(parser)


def _parser() -> _TrainerParser:
    parser = _TrainerParser(prog="trainer", description=__doc__, allow_abbrev=False,
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog="`trainer STAGE --help` lists a stage's flags.")
    quiet.add_verbose_flag(parser)
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE", parser_class=argparse.ArgumentParser)
    parser._stage_parsers = {}
    for stage, names in STAGE_FLAGS.items():
        parser._stage_parsers[stage] = sub = stages.add_parser(
            stage, help=STAGE_HELP[stage], description=f"trainer {stage}: {STAGE_HELP[stage]}.",
            epilog=OVERRIDES_EPILOG if stage in TRAINING_STAGES else None, allow_abbrev=False)
        _add_flags(sub, names)
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
    from trainer.architecture import Architecture
    from trainer.config import load_config
    from trainer.data import check_data
    from trainer.stages import run_fixed, run_search

    info = read_dataset_info(local_view(args.data))  # a URI TF cannot read here is staged once
    if args.stage in SCORING_STAGES:
        return _score(args, info)
    missing = [s for s in SPLIT_NAMES if s not in info.splits]
    if missing or not info.labeled:
        raise UsageError(
            f"{args.data} holds {'unlabeled ' if not info.labeled else ''}splits {list(info.splits)}: training "
            f"needs a labeled `pipeline` run with {list(SPLIT_NAMES)} (score new data with `trainer predict`)"
        )
    use_previous_design(args)  # --init=run:PATH: its design and config unless given
    entry = ZOO.get(args.model) if args.model else None
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
        extra = [*extra, f"train.calibrate={args.calibrate}"]
    config_path = _resolve_config_path(args, info.dataset)
    config = load_config(config_path, extra, info.dataset)
    preset = _model_preset(args, config, info.dataset)
    if preset:  # under the command line's overrides; recorded resolved, so a resume does not reapply it
        config = load_config(config_path, [*preset, "train.model_presets=false", *extra], info.dataset)
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
        return run_search(config, info, args.out, resume=args.resume, method=args.method)
    if args.architecture is not None and is_nas_file(args.architecture):
        return _nas_design(args, config, info)
    if args.fixed_op is not None and args.mode == "soft":
        raise UsageError("--fixed_op uses one operation per component: it needs --mode=hard (or no --mode)")
    mode = "hard" if args.fixed_op is not None else args.mode
    if args.architecture is None or mode is None:
        raise UsageError(f"trainer {args.stage} needs --architecture FILE and --mode {{hard,soft}} (or --fixed_op OP)")
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
                     resume=args.resume, init=args.init or config.train.retrain_init)


def _model_preset(args: argparse.Namespace, config: Any, dataset: str) -> list[str]:
    """The overrides of trainer/configs/model_presets.yaml for this run, where the config asks for them."""
    from trainer.model_presets import RETRAIN_KEYS, preset_overrides

    if not config.train.model_presets:
        return []
    mode = "hard" if args.fixed_op is not None else args.mode
    key = args.model if args.stage == "train" else RETRAIN_KEYS.get(mode) if args.stage == "retrain" else None
    preset = preset_overrides(dataset, key) if key else []
    if preset:
        log.info("per-model preset of %s on %s (trainer/configs/model_presets.yaml): %s",
                 key, dataset, " ".join(preset))
    return preset


def _nas_design(args: argparse.Namespace, config: Any, info: Any) -> dict[str, Any]:
    """retrain / train of an AutoCTR or NASRec design (trainer/nas/): fresh weights, no fusion flags."""
    from trainer.nas.space import NasArchitecture
    from trainer.stages import run_fixed

    if init_run_dir(args.init) is not None:
        raise UsageError(f"--init={args.init}: warm starts across vocabularies take OptFusion and zoo runs, not an "
                         "autoctr/nasrec design; train it fresh (--architecture RUN/architecture.json)")
    given = [flag for flag, value in (("--mode", args.mode), ("--fixed_op", args.fixed_op)) if value is not None]
    if args.init not in (None, DEFAULT_INIT):
        given.append(f"--init={args.init}")
    if given:
        raise UsageError(f"{args.architecture} is an autoctr/nasrec design: {', '.join(given)} belong to OptFusion "
                         "architectures (drop them; the design trains from fresh weights)")
    try:
        design = NasArchitecture.load(args.architecture)
    except ValueError as err:
        raise UsageError(str(err)) from err
    return run_fixed(args.stage, config, info, None, str(args.architecture), None, args.out, resume=args.resume,
                     nas_design=design)


def _score(args: argparse.Namespace, info: Any) -> dict[str, Any]:
    """evaluate / predict / calibrate: a finished run's model on --data (trainer/scoring.py, trainer/stages.py)."""
    from trainer import scoring
    from trainer.data import check_data

    if _blessing_given(args):
        return _bless(args, info)
    raw_only = {"--keep_columns": args.keep_columns, "--on_bad_row": args.on_bad_row, "--unlabeled": args.unlabeled}
    given = [flag for flag, value in raw_only.items() if value is not None]
    if given and args.input is None:
        raise UsageError(f"{given[0]} needs --input RAW_FILE (it describes the raw file's rows)")
    if args.input is not None and args.split is not None:
        raise UsageError("--split selects TFRecords of --data; --input scores a raw file: give one of both")
    check_data(info)
    if args.stage == "calibrate":
        from trainer.stages import run_calibrate

        if args.calibrate is None:
            raise UsageError("trainer calibrate needs --calibrate METHOD (one of "
                             f"{', '.join(CALIBRATION_METHODS)})")
        return run_calibrate(args.run_dir, info, args.calibrate)
    if args.stage == "evaluate":
        return scoring.evaluate(args.run_dir, info, args.split, args.output)
    if args.output is None:
        raise UsageError("trainer predict needs --output FILE (.tsv, or .csv for comma-separated)")
    if args.input is not None:
        return scoring.predict_raw(args.run_dir, info, args.input, args.output,
                                   on_bad_row=args.on_bad_row or "error",
                                   keep_columns=batch_scoring.parse_keep_columns(args.keep_columns),
                                   unlabeled=args.unlabeled)
    return scoring.predict(args.run_dir, info, args.output, args.split)


def _blessing_given(args: argparse.Namespace) -> list[str]:
    """The blessing flags (_BLESSING) given on the command line."""
    return [flag for flag in _BLESSING if getattr(args, flag[2:]) is not None]


def _bless(args: argparse.Namespace, info: Any) -> dict[str, Any]:
    """evaluate --candidate: the blessing (trainer/blessing.py)."""
    from trainer import blessing

    if args.candidate is None:
        raise UsageError(f"{_blessing_given(args)[0]} belongs to the blessing: trainer evaluate --candidate RUN")
    if args.run_dir is not None or args.input is not None:
        raise UsageError("--candidate takes the place of --run_dir (and scores --data's raw rows, not --input)")
    thresholds = blessing.load_thresholds(args.blessing_config, min_auc=args.min_auc, max_logloss=args.max_logloss,
                                          auc_delta=args.auc_delta, logloss_delta=args.logloss_delta)
    return blessing.bless(args.candidate, args.baseline, info, thresholds, args.split, args.output)


def _tune(args: argparse.Namespace, config: Any, info: Any) -> dict[str, Any]:
    """keras-tuner over --grid; each trial is the search stage (optfusion) or the train stage."""
    from trainer.stages import run_fixed, run_search
    from trainer.tune import GRID_FILE, Grid, tune

    if args.model is None:
        raise UsageError(f"trainer tune needs --model {OPTFUSION} or a zoo model")
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
    elif summary["stage"] == "search" and "method" in summary:
        best = summary["best"]
        lines.append(f"  {summary['method']}: {summary['candidates']} candidates ({summary['cached']} seen before), "
                     f"best #{best['index']}: valid AUC {best['valid_auc']:.4f}, LogLoss {best['valid_logloss']:.4f}")
        lines.append(summary["rendering"])
        lines.append(f"  architecture: {summary['architecture']} (trainer retrain --architecture it)")
    elif summary["stage"] == "search":
        for name, p in summary["phases"].items():
            lines.append(f"  {name}: best valid {p['monitor']} at epoch {p['best_epoch']} of {p['epochs']}: "
                         f"valid AUC {p['best_valid_auc']:.4f}, LogLoss {p['best_valid_logloss']:.4f}")
        lines.append(summary["rendering"])
        lines.append(f"  architecture: {summary['architecture']}")
    elif summary["stage"] == "evaluate" and "decision" in summary:
        from trainer.blessing import describe

        lines = [describe(summary)]
    elif summary["stage"] == "evaluate":
        lines = [f"trainer evaluate: {summary['run_dir']} on split {summary['split']} of {summary['data_dir']}: "
                 f"AUC {summary['auc']:.4f}, LogLoss {summary['logloss']:.4f} (calibration {summary['calibration']}; "
                 f"{summary['rows']} rows, "
                 f"{summary['positives']} positive) in {summary['seconds']:.1f}s -> {summary['output']}"]
    elif summary["stage"] == "predict" and "input" in summary:  # rows in / scored / bad: stderr
        print(f"trainer predict: {summary['summary']}, scored by {summary['run_dir']} in "
              f"{summary['seconds']:.1f}s", *filter(None, [summary["warning"]]), sep="\n", file=sys.stderr)
        return
    elif summary["stage"] == "calibrate":
        c = summary["calibration"]
        lines.append(f"  calibration {summary['previous']} -> {c['method']} (fitted on valid): test LogLoss "
                     f"{c['test']['logloss']:.4f} -> {c['test']['logloss_calibrated']:.4f}, ECE {c['test']['ece']:.4f} "
                     f"-> {c['test']['ece_calibrated']:.4f}; serve it with `serving export` again")
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
            lines.append(f"  calibrated ({calibration['method']}, fitted on valid): test LogLoss "
                         f"{calibration['test']['logloss_calibrated']:.4f}, ECE {calibration['test']['ece']:.4f} -> "
                         f"{calibration['test']['ece_calibrated']:.4f}")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parsed = _parser().parse_known_args(argv)  # --help and usage errors before TF loads
    quiet.configure(getattr(parsed[0], "verbose", False))
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
    return int(summary.get("exit_code", 0))


if __name__ == "__main__":
    sys.exit(main())
