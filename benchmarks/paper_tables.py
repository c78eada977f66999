"""The paper's experiments in miniature on one dataset: tables 3-7, figures 2 and 3.

  python benchmarks/paper_tables.py --data DATA_DIR --seeds 3 --out reports/NAME \
      [--config PRESET.yaml] [--tables table3 table4 ...] [--models lr deepfm ...] [--quick] \
      [--tuned [--grid GRID.yaml]] [--nas autoctr nasrec] [--section.key=value ...]
  python benchmarks/paper_tables.py --data DATA_DIR --out reports/NAME --recalibrate METHOD

Every run is an ordinary `trainer` command in its own process (the path users
take), writing to OUT/runs/<run>/s<seed>/; its result goes to
OUT/records/<table>__<variant>__s<seed>.json. A rerun skips finished records
and resumes unfinished trainer runs (`--resume`), so a killed report
continues where it stopped. The report (report.md, report.html, figures) is
redrawn from all records at the end. Training seconds are wall time of the
trainer processes (search + retrain for OptFusion, and for AutoCTR and NASRec,
`--nas`: table 3 rows, figure 2(a)), TF start-up included;
inference is ms per 1,000 test rows in this process, batch 8192.

With --tuned, each table 3 baseline and OptFusion (its searches and
retrains) first runs `trainer --stage=tune` over GRID on validation AUC
(OUT/tune/<model>/, resumable) and then every seed with its best point
(`--config OUT/tune/<model>/best.yaml` and the tuned base's epochs). The
default grid is the reduced CPU one (trainer/configs/tune_grid_reduced.yaml);
the report header names the grid and its size.

--recalibrate METHOD trains nothing: it refits the calibration of every
recorded run with `trainer calibrate` (same models, the map fitted on
validation by METHOD), updates the records and redraws the report. Each
invocation appends its command to OUT/commands.txt, which the header lists.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import subprocess
import sys
import time
from collections.abc import Sequence

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results import header_command  # noqa: E402
from pipeline.atomic import write_text_atomic  # noqa: E402
from trainer.architecture import OPS  # noqa: E402
from trainer.calibration import CALIBRATION_METHODS  # noqa: E402
from trainer.config import SearchConfig  # noqa: E402
from trainer.nas import NAS_METHODS  # noqa: E402
from trainer.zoo import OPTFUSION  # noqa: E402

TABLES = ("table3", "table4", "table5", "table6", "table7")
COMMANDS_FILE = "commands.txt"
"""OUT's log of the invocations that made its records, one `date: command` per line."""
QUICK = ("--train.epochs=1", "--train.max_steps_per_epoch=3", "--train.batch_size=64")


@dataclasses.dataclass(frozen=True)
class Run:
    """One trainer command; `search` names the search run whose architecture it retrains, with its
    Hard ops chosen by `rule` (`search.hard_select`) from that search's weights, or as the search chose."""

    key: str
    args: tuple[str, ...]
    search: str | None = None
    rule: str | None = None


HARD_ROWS = {"beta": "optfusion_hard", "remove": "optfusion_hard_remove"}
"""Table 3's Hard rows by rule, each retrained from the same main search per seed (paired): the paper's
argmax(beta) is "OptFusion-Hard"; `remove` is a variant (benchmarks/hard_rule.py chose the default)."""


def searches() -> dict[str, tuple[str, ...]]:
    """Search runs by key: the main one-shot search and the ablations' own searches."""
    return {
        "main": (),
        "sequential": ("--search.sequential=true",),
        "crossnetv2": ("--model.shallow=crossnetv2",),
        "cin": ("--model.shallow=cin",),
        "n2": ("--model.n=2",),
        "n4": ("--model.n=4",),
    }


NAS_SEARCHES = {method: (f"--method={method}",) for method in NAS_METHODS}
"""AutoCTR / NASRec search runs by key; unlike searches()' arguments, theirs are search-only (no retrain takes them)."""


def plan(tables: list[str], models: list[str], optfusion: bool = True,
         nas: Sequence[str] = ()) -> list[tuple[str, str, Run]]:
    """(table, variant, run) for every cell of the requested tables (`optfusion` False: baselines only;
    `nas`: AutoCTR / NASRec rows of table 3, each its search + a retrain of the design it found)."""
    default = SearchConfig.hard_select  # tables 5-7: the shipped rule
    hard = lambda search, rule=default: Run(f"{search}-hard-{rule}", (  # noqa: E731
        "--stage=retrain", "--mode=hard"), search, rule)
    cells: list[tuple[str, str, Run]] = []
    if "table3" in tables:
        cells += [("table3", m, Run(m, ("--stage=train", f"--model={m}"))) for m in models]
        cells += [("table3", m, Run(f"{m}-retrain", ("--stage=retrain",), m)) for m in nas]
    if not optfusion:
        return cells
    if "table3" in tables:
        cells += [*(("table3", row, hard("main", rule)) for rule, row in HARD_ROWS.items()),
                  ("table3", "optfusion_soft", Run("main-soft", ("--stage=retrain", "--mode=soft"), "main"))]
    if "table4" in tables:
        cells += [("table4", op, Run(f"main-{op}", ("--stage=retrain", f"--fixed_op={op}"), "main")) for op in OPS]
    if "table5" in tables:
        cells += [("table5", "one-shot", hard("main")), ("table5", "sequential", hard("sequential"))]
    if "table6" in tables:
        cells += [("table6", "crossnet", hard("main")), ("table6", "crossnetv2", hard("crossnetv2")),
                  ("table6", "cin", hard("cin"))]
    if "table7" in tables:
        cells += [("table7", "n=2", hard("n2")), ("table7", "n=3", hard("main")), ("table7", "n=4", hard("n4"))]
    return cells


class Runner:
    """Runs trainer commands once per (run, seed), resumably, and times them."""

    def __init__(self, data: pathlib.Path, out: pathlib.Path, base_args: list[str]) -> None:
        self.data, self.out, self.base = data, out, base_args
        self.tuned: dict[str, list[str]] = {}  # model (or OPTFUSION) -> its tuned arguments, after the base's

    def _trainer(self, run_dir: pathlib.Path, args: list[str], tuned: Sequence[str] = ()) -> float:
        """Runs one trainer command to completion; its wall seconds (0 if it had finished before)."""
        done = run_dir / "done.json"
        if done.is_file():
            return float(json.loads(done.read_text())["seconds"])
        resume = ["--resume"] if (run_dir / "run.json").is_file() else []
        cmd = [sys.executable, "-c", "from trainer.cli import main; raise SystemExit(main())",
               f"--data={self.data}", f"--out={run_dir}", *args, *self.base, *tuned, *resume]
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        log = run_dir.parent / f"{run_dir.name}.log"
        with log.open("a") as sink:
            code = subprocess.call(cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT)
        if code != 0:
            raise RuntimeError(f"trainer failed (exit {code}) for {run_dir}; see {log}")
        seconds = time.perf_counter() - start
        write_text_atomic(done, json.dumps({"seconds": seconds}))
        return seconds

    def search(self, key: str, seed: int) -> tuple[pathlib.Path, float]:
        run_dir = self.out / "runs" / f"search-{key}" / f"s{seed}"
        seconds = self._trainer(run_dir, ["--stage=search", f"--seed={seed}", *{**searches(), **NAS_SEARCHES}[key]],
                                self.tuned.get(OPTFUSION, ()) if key in searches() else ())
        return run_dir, seconds

    def cell(self, run: Run, seed: int) -> tuple[pathlib.Path, float]:
        run_dir = self.out / "runs" / run.key / f"s{seed}"
        args, seconds = [*run.args, f"--seed={seed}"], 0.0
        if run.search is not None:
            search_dir, seconds = self.search(run.search, seed)
            arch = search_dir / "architecture.json"
            if run.rule is not None:
                from pipeline.dataset_info import read_dataset_info
                from trainer.selection import rule_architecture

                arch = rule_architecture(search_dir, read_dataset_info(self.data), run.rule)
            args += [f"--architecture={arch}", *searches().get(run.search, ())]
        tuned = self.tuned.get(OPTFUSION if run.search in searches() else run.key, ())
        return run_dir, seconds + self._trainer(run_dir, args, tuned)

    def tune(self, model: str, grid: pathlib.Path) -> list[str]:
        """Runs (or resumes) `trainer --stage=tune` of `model`; the arguments that give its runs the best point:
        best.yaml, plus the tuned base's budget keys that best.yaml leaves out (trainer/tune.py)."""
        import yaml

        from trainer.tune import BASE_CONFIG, BEST_CONFIG, TUNING_ONLY_KEYS

        out = self.out / "tune" / model
        self._trainer(out, ["--stage=tune", f"--model={model}", f"--grid={grid}"])
        base = yaml.safe_load((out / BASE_CONFIG).read_text())
        budget = {key: base[section][name] for key in TUNING_ONLY_KEYS for section, name in [key.split(".")]}
        return [f"--config={out / BEST_CONFIG}", *(f"--{key}={value}" for key, value in budget.items()
                                                     if value is not None)]


STOPPING_KEYS = ("monitor", "best_epoch", "valid_auc_per_epoch", "valid_logloss_per_epoch")
"""What a record keeps of the run's early stopping (trainer/loop.py epoch_summary)."""


def recalibrate(out: pathlib.Path, data: pathlib.Path, method: str) -> list[str]:
    """Refits every recorded run's calibration with `method` (`trainer calibrate`, own process) and
    updates its records; the failures, one line each."""
    failed = []
    paths = sorted((out / "records").glob("*.json"))
    for i, path in enumerate(paths, 1):
        record = json.loads(path.read_text())
        run_dir = pathlib.Path(record["run_dir"])
        metrics = json.loads((run_dir / "metrics.json").read_text())
        if metrics["calibration"]["method"] != method:  # a run two records share is refit once
            cmd = [sys.executable, "-c", "from trainer.cli import main; raise SystemExit(main())", "calibrate",
                   f"--data={data}", f"--run_dir={run_dir}", f"--calibrate={method}"]
            with (run_dir.parent / f"{run_dir.name}.calibrate.log").open("a") as sink:
                code = subprocess.call(cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT)
            if code != 0:
                failed.append(f"calibrate {run_dir}: exit {code}")
                continue
            metrics = json.loads((run_dir / "metrics.json").read_text())
        previous = record.get("calibration_previous") or record["calibration"]
        record.update(calibration_record(metrics), calibration_previous=previous)
        write_text_atomic(path, json.dumps(record, indent=1))
        print(f"[{i}/{len(paths)}] {path.stem}: {previous} -> {method}, test ECE "
              f"{record['test_ece_calibrated']:.4f}", flush=True)
    return failed


def calibration_record(metrics: dict) -> dict:
    """The run's calibration (method, T of a temperature map) and its test LogLoss and ECE before and
    after (trainer/calibration.py)."""
    c = metrics["calibration"]
    return {"calibration": c["method"], "temperature": c["temperature"],
            "test_logloss_calibrated": c["test"]["logloss_calibrated"],
            "test_ece": c["test"]["ece"], "test_ece_calibrated": c["test"]["ece_calibrated"],
            "test_reliability": c["test"].get("reliability"),
            "test_reliability_calibrated": c["test"].get("reliability_calibrated")}


def inference_seconds(run_dir: pathlib.Path, data: pathlib.Path) -> float:
    """Seconds per 1,000 test rows of the trained model, in process (best of 3 passes)."""
    from pipeline.dataset_info import read_dataset_info
    from trainer.data import make_dataset
    from trainer.model_io import load_model

    model = load_model(run_dir)
    batches = list(make_dataset(read_dataset_info(data), "test", 8192))
    rows = sum(int(labels.shape[0]) for _, labels in batches)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for features, _ in batches:
            model(features, training=False)
        best = min(best, time.perf_counter() - start)
    return best / rows * 1000


def main(argv: list[str] | None = None) -> int:
    from trainer.zoo import ZOO

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=pathlib.Path, help="output DIR of a `pipeline` run")
    parser.add_argument("--out", required=True, type=pathlib.Path, help="report directory (resumable)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 1..N per model")
    parser.add_argument("--config", type=pathlib.Path, help="trainer preset (default: the dataset's CPU preset)")
    parser.add_argument("--tables", nargs="+", default=list(TABLES), choices=TABLES)
    parser.add_argument("--models", nargs="+", default=list(ZOO), choices=list(ZOO), help="table 3 baselines")
    parser.add_argument("--no-optfusion", dest="optfusion", action="store_false",
                        help="run table 3's baselines only (OptFusion's runs follow in a later rerun)")
    parser.add_argument("--nas", nargs="*", default=[], choices=NAS_METHODS,
                        help="table 3 also runs these whole-architecture searches (search + retrain, budgets in the "
                             "config's nas: section, docs/NAS.md); figure 2(a) compares their time with OptFusion's")
    parser.add_argument("--quick", action="store_true", help="1 epoch of 3 steps per run (tests, smoke runs)")
    parser.add_argument("--tuned", action="store_true",
                        help="tune each table 3 model and OptFusion over --grid on validation AUC first, then run "
                             "every seed at its best point (OUT/tune/<model>/best.yaml)")
    parser.add_argument("--grid", type=pathlib.Path,
                        help="tune grid of --tuned (default: the reduced CPU grid "
                             "trainer/configs/tune_grid_reduced.yaml; the paper's: trainer/configs/tune_grid.yaml)")
    parser.add_argument("--title", default=None, help="report title (default: the data dir's name)")
    parser.add_argument("--recalibrate", choices=CALIBRATION_METHODS,
                        help="train nothing: refit every recorded run's calibration with this method (`trainer "
                             "calibrate`, on validation) and redraw the report")
    args, extra = parser.parse_known_args(argv)
    base = ([f"--config={args.config}"] if args.config else []) + (list(QUICK) if args.quick else []) + extra
    runner = Runner(args.data.resolve(), args.out.resolve(), base)
    records_dir = args.out / "records"
    records_dir.mkdir(parents=True, exist_ok=True)
    with (args.out / COMMANDS_FILE).open("a") as log:
        argv_used = sys.argv[1:] if argv is None else argv
        log.write(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
                  f"{header_command(['python', 'benchmarks/paper_tables.py', *argv_used])}\n")
    if args.recalibrate:
        failed = recalibrate(args.out.resolve(), args.data.resolve(), args.recalibrate)
        seeds = max((json.loads(p.read_text())["seed"] for p in records_dir.glob("*.json")), default=0)
        write_report(args.out, args.title or args.data.name, base, seeds, failed)
        return 1 if failed else 0
    cells = plan(args.tables, args.models, args.optfusion, args.nas)
    total, finished, failed = len(cells) * args.seeds, 0, []
    tuned_note = None
    if args.tuned:
        from trainer.tune import BEST_CONFIG, CPU_GRID_FILE, Grid

        grid_path = (args.grid or CPU_GRID_FILE).resolve()
        grid = Grid.load(grid_path)
        tuned_note = (f"tuned: each model at its best point of `{grid_path.name}` ({grid.size()} points: "
                      f"{', '.join(grid.values)}; validation AUC, the config's seed)"
                      + (", a reduced grid for CPU" if grid_path == CPU_GRID_FILE else ""))
        names = {run.key for table, _, run in cells if table == "table3" and run.search is None}
        optfusion = [OPTFUSION] if any(r.search in searches() for *_, r in cells) else []
        for model in [m for m in args.models if m in names] + optfusion:
            try:
                runner.tuned[model] = runner.tune(model, grid_path)
            except RuntimeError as err:  # its cells fail below rather than run untuned
                failed.append(f"tune {model}: {err}")
                print(f"tune {model}: FAILED ({err})", flush=True)
                runner.tuned[model] = [f"--config={runner.out / 'tune' / model / BEST_CONFIG}"]
    for seed in range(1, args.seeds + 1):
        for table, variant, run in cells:
            path = records_dir / f"{table}__{variant.replace('=', '')}__s{seed}.json"
            finished += 1
            if path.is_file() and pathlib.Path(json.loads(path.read_text())["run_dir"]).parent.name == run.key:
                continue  # done; a record of another run (e.g. `remove` before optfusion_hard was beta) is redone
            try:
                run_dir, seconds = runner.cell(run, seed)
            except RuntimeError as err:  # one failed run (e.g. a constant predictor) does not stop the rest
                failed.append(f"{table} {variant} seed {seed}: {err}")
                print(f"[{finished}/{total}] {table} {variant} seed {seed}: FAILED ({err})", flush=True)
                continue
            metrics = json.loads((run_dir / "metrics.json").read_text())
            record = {"table": table, "variant": variant, "seed": seed, "run_dir": str(run_dir),
                      "test_auc": metrics["test_auc"], "test_logloss": metrics["test_logloss"],
                      **calibration_record(metrics), **{k: metrics[k] for k in STOPPING_KEYS},
                      "train_seconds": seconds, "infer_seconds": inference_seconds(run_dir, args.data)}
            write_text_atomic(path, json.dumps(record, indent=1))
            print(f"[{finished}/{total}] {table} {variant} seed {seed}: test AUC {record['test_auc']:.4f} "
                  f"({seconds:.0f}s)", flush=True)
    write_report(args.out, args.title or args.data.name, base, args.seeds, failed, tuned_note)
    return 1 if failed else 0


def nas_budgets(out: pathlib.Path) -> str:
    """The report's lines stating each NAS method's budget, read from its seed-1 search run's config."""
    import yaml

    lines = []
    for method in NAS_METHODS:
        config = out / "runs" / f"search-{method}" / "s1" / "config.yaml"
        if config.is_file():
            budget = {k: v for k, v in ((yaml.safe_load(config.read_text()) or {}).get("nas") or {}).items()
                      if method == "autoctr" or not k.startswith("candidate_")}  # NASRec trains no candidates
            lines.append(f"- {method} budget (config `nas:`): " + ", ".join(f"{k} {v}" for k, v in budget.items()) +
                         "\n")
    return "".join(lines)


def write_report(out: pathlib.Path, title: str, base: list[str], seeds: int, failed: Sequence[str] = (),
                 tuned: str | None = None) -> None:
    """Redraws report.md, report.html and the figures from every record in OUT/records."""
    from benchmarks import report
    from benchmarks.results import header
    from trainer.architecture import Architecture

    records = [json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))]
    summary = report.summarize(records)
    figures = []
    if "table3" in summary:
        figures.append(report.draw_times(summary["table3"], out / "figure2_times.png").name)
        figures += [f.name for f in (report.draw_search_cost(summary["table3"], out / "figure2a_search_cost.png"),
                                     report.draw_speed_vs_auc(summary["table3"], out / "figure2bd_speed_auc.png"),
                                     report.draw_reliability(summary["table3"], out / "reliability.png"))
                    if f is not None]
    arch_path = out / "runs" / "search-main" / "s1" / "architecture.json"
    if arch_path.is_file():
        paths = report.draw_architecture(Architecture.load(arch_path), f"{title}: searched architecture (seed 1)",
                                         out / "figure3_architecture")
        figures += [p.name for p in paths]
    setup = header() + (f"- trainer arguments: `{' '.join(base) or '(preset defaults)'}`; seeds 1..{seeds} "
                        "requested, the `seeds` column says how many each row holds\n"
                        + (f"- {tuned}\n" if tuned else "")) + nas_budgets(out)
    commands = out / COMMANDS_FILE
    if commands.is_file():
        setup += "- the invocations that made the records (OUT/commands.txt):\n" + "".join(
            f"  - {line.split(': ', 1)[0]}: `{line.split(': ', 1)[1]}`\n" for line in commands.read_text().splitlines())
    methods = sorted({r["calibration"] for r in records if r.get("calibration")})
    if methods:
        setup += (f"- calibration, fitted on each run's validation split (trainer/calibration.py): "
                  f"{', '.join(methods)}; 'calibrated' columns are after it, 'uncalibrated' the model's own\n")
    refit = sorted({r["calibration_previous"] for r in records if r.get("calibration_previous")})
    if refit:
        setup += (f"- the calibration of runs trained under {', '.join(refit)} was refit by `trainer calibrate` "
                  "(--recalibrate): the same trained models, a new map fitted on validation\n")
    md = report.markdown(f"OptFusion vs baselines: {title}", setup, summary,
                         report.best_comparison(summary.get("table3", {})), figures)
    if failed:  # rerun the script to retry them (their trainer runs resume)
        md += "\n## Failed runs\n\n" + "".join(f"- {line}\n" for line in failed)
    for name, text in (("report.md", md), ("report.html", report.to_html(md))):
        write_text_atomic(out / name, text)
    print(f"report: {out / 'report.md'}")


if __name__ == "__main__":
    raise SystemExit(main())
