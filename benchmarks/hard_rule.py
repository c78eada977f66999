"""Which Hard rule (`search.hard_select`) to ship, chosen on development seeds, reported on fresh ones (issue 19).

Per seed: one `trainer --stage=search` run, then one Hard retrain per rule
from that SAME search (trainer.selection.rule_architecture), so the rules
compare paired. A rule whose Hard ops equal another rule's on that seed
reuses that retrain (same seed, same architecture: the same run).

Decision, fixed before any run: on the development seeds (101-105) the
default is the rule of highest mean VALIDATION AUC of its retrain, unless
its paired difference to beta (the paper's argmax(beta), and the simpler
rule) has a two-sided paired t-test p >= 0.05, in which case beta stays.
The test split plays no part in it. The chosen rule is then frozen
(trainer/config.py SearchConfig.hard_select, by hand, citing RESULTS.md)
and every rule is reported on fresh seeds 1-5: per seed valid / test AUC,
LogLoss and ECE (15 bins, before calibration), with paired t-test and
Wilcoxon signed-rank p-values of each rule against beta.

Every finished retrain is a JSON record in WORK/records/, every trainer run
resumes (`--resume`), so a killed benchmark continues where it stopped.

  python benchmarks/hard_rule.py --work DIR [--data DIR] [--rules beta remove alone]
      [--dev-seeds 101 ...] [--report-seeds 1 ...] [--phase dev|report|all] [--notes-file F] [--no-write]
      [--section.key=value ...]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
from collections.abc import Sequence

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.frappe_sample import frappe_run  # noqa: E402
from benchmarks.report import paired  # noqa: E402
from pipeline.atomic import write_text_atomic  # noqa: E402

PRESET = ROOT / "trainer" / "configs" / "frappe_cpu.yaml"
RULES = ("beta", "remove", "alone")
BASELINE = "beta"  # the paper's rule: a rule must beat it on validation to be the default
ALPHA = 0.05  # the decision's significance level (paired t-test on the development seeds)
METRICS = ("valid_auc", "valid_logloss", "test_auc", "test_logloss", "test_ece")
DEV_METRICS = METRICS[:2]  # the development table shows what the choice may see: validation only


def trainer(out: pathlib.Path, args: Sequence[str]) -> dict:
    """One trainer command in its own process (the path users take), resumed if it had started; metrics.json
    (or the search's architecture) once finished."""
    done = out / ("metrics.json" if "--stage=retrain" in args else "search.weights.npz")
    if not done.is_file():
        resume = ["--resume"] if (out / "run.json").is_file() else []
        out.parent.mkdir(parents=True, exist_ok=True)
        with (out.parent / f"{out.name}.log").open("a") as sink:
            code = subprocess.call([sys.executable, "-m", "trainer.cli", f"--out={out}", *args, *resume],
                                   stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT)
        if code != 0:
            raise RuntimeError(f"trainer failed (exit {code}) for {out}; see {out.parent / f'{out.name}.log'}")
    return json.loads(done.read_text()) if done.suffix == ".json" else {}


def record_of(metrics: dict) -> dict:
    """What a retrain's record keeps: validation and test quality (ECE before calibration)."""
    return {"valid_auc": metrics["best_valid_auc"], "valid_logloss": metrics["best_valid_logloss"],
            "test_auc": metrics["test_auc"], "test_logloss": metrics["test_logloss"],
            "test_ece": metrics["calibration"]["test"]["ece"], "best_epoch": metrics["best_epoch"]}


def run_seed(data: pathlib.Path, work: pathlib.Path, seed: int, rules: Sequence[str], extra: list[str]) -> None:
    """The search of `seed` and each rule's Hard retrain from it, each kept as WORK/records/<rule>__s<seed>.json."""
    from pipeline.dataset_info import read_dataset_info
    from trainer.architecture import Architecture
    from trainer.selection import rule_architecture

    records = work / "records"
    records.mkdir(parents=True, exist_ok=True)
    search = work / "search" / f"s{seed}"
    trainer(search, ["--stage=search", f"--data={data}", f"--seed={seed}", f"--config={PRESET}", *extra])
    trained: dict[str, str] = {}  # Hard ops (JSON) -> rule whose retrain has them
    for rule in rules:
        arch_path = rule_architecture(search, read_dataset_info(data), rule)
        arch = Architecture.load(arch_path)
        ops = json.dumps(arch.hard_ops(), sort_keys=True)
        path = records / f"{rule}__s{seed}.json"
        if path.is_file():
            trained.setdefault(ops, rule)
            continue
        same = trained.get(ops)
        if same is not None:
            metrics, run_dir = json.loads((work / same / f"s{seed}" / "metrics.json").read_text()), work / same
        else:
            run_dir = work / rule
            metrics = trainer(run_dir / f"s{seed}", ["--stage=retrain", "--mode=hard", f"--data={data}",
                                                     f"--architecture={arch_path}", f"--seed={seed}"])
            trained[ops] = rule
        margin = arch.selection_margin
        record = {"rule": rule, "seed": seed, "same_run_as": same, "hard_ops": arch.hard_ops(),
                  "margin": margin, **record_of(metrics), "run_dir": str(run_dir / f"s{seed}")}
        write_text_atomic(path, json.dumps(record, indent=1))
        print(f"seed {seed} {rule}: valid AUC {record['valid_auc']:.4f} test AUC {record['test_auc']:.4f} "
              f"LogLoss {record['test_logloss']:.4f}" + (f" (same Hard ops as {same})" if same else ""), flush=True)


def load_records(work: pathlib.Path) -> dict[str, dict[int, dict]]:
    """rule -> seed -> record."""
    out: dict[str, dict[int, dict]] = {}
    for path in sorted((work / "records").glob("*.json")):
        r = json.loads(path.read_text())
        out.setdefault(r["rule"], {})[r["seed"]] = r
    return out


def choose(records: dict[str, dict[int, dict]], seeds: Sequence[int]) -> tuple[str, dict[str, dict[str, float]]]:
    """The default rule by the decision in the module doc (validation AUC only), with each rule's
    paired comparison to beta on `seeds`."""
    complete = {rule: [by_seed[s]["valid_auc"] for s in seeds] for rule, by_seed in records.items()
                if all(s in by_seed for s in seeds)}
    if BASELINE not in complete:
        raise RuntimeError(f"no {BASELINE} retrain on every development seed {list(seeds)}: run --phase dev first")
    tests = {rule: paired(v, complete[BASELINE]) for rule, v in complete.items() if rule != BASELINE}
    best = max(complete, key=lambda rule: statistics.fmean(complete[rule]))
    chosen = best if best != BASELINE and tests[best]["t_p"] < ALPHA else BASELINE
    return chosen, tests


def table(records: dict[str, dict[int, dict]], seeds: Sequence[int], metrics: Sequence[str] = METRICS) -> str:
    """Per rule: mean +- stdev of each of `metrics`, the per-seed figures, and the paired tests against beta."""
    rules = [r for r in RULES if r in records and all(s in records[r] for s in seeds)]
    lines = ["| rule | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for rule in rules:
        cells = []
        for m in metrics:
            v = [records[rule][s][m] for s in seeds]
            cells.append(f"{statistics.fmean(v):.4f} +- {statistics.stdev(v) if len(v) > 1 else 0.0:.4f}")
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    lines += ["", f"Per seed ({' / '.join(metrics)}; = marks the same Hard ops as {BASELINE}, hence the same run):", ""]
    for rule in rules:
        lines.append(f"- {rule}: " + "; ".join(
            f"{s}: " + " / ".join(f"{r[m]:.4f}" for m in metrics) + (" =" if r["same_run_as"] == BASELINE else "")
            for s in seeds for r in [records[rule][s]]))
    lines += ["", f"Paired against {BASELINE} over seeds {list(seeds)} (mean difference; two-sided paired t-test p; "
              "Wilcoxon signed-rank p):", ""]
    for rule in rules:
        if rule == BASELINE:
            continue
        parts = []
        for m in metrics:
            t = paired([records[rule][s][m] for s in seeds], [records[BASELINE][s][m] for s in seeds])
            parts.append(f"{m} {t['diff']:+.4f} (t p={t['t_p']:.3f}, W p={t['w_p']:.3f})")
        same = sum(records[rule][s]["same_run_as"] == BASELINE for s in seeds)
        lines.append(f"- {rule} - {BASELINE}: " + "; ".join(parts) + f"; same Hard ops as {BASELINE} on {same} of "
                     f"{len(seeds)} seeds")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.results import header, publish

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, type=pathlib.Path, help="work dir for data, runs, records (resumable)")
    parser.add_argument("--data", type=pathlib.Path, help="finished pipeline run of the Frappe sample (default: "
                        "run the pipeline into WORK/data)")
    parser.add_argument("--rules", nargs="+", choices=RULES, default=list(RULES), help="rules to retrain (beta always)")
    parser.add_argument("--dev-seeds", type=int, nargs="+", default=[101, 102, 103, 104, 105],
                        help="development seeds: the default rule is chosen on their validation AUC")
    parser.add_argument("--report-seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5],
                        help="fresh seeds the frozen choice is reported on")
    parser.add_argument("--phase", choices=("dev", "report", "all"), default="all",
                        help="run the development seeds, the report seeds, or both (default)")
    parser.add_argument("--notes-file", type=pathlib.Path, help="text file added under the tables in RESULTS.md")
    parser.add_argument("--no-write", dest="write", action="store_false", help="print, do not write RESULTS.md")
    args, extra = parser.parse_known_args(argv)
    if BASELINE not in args.rules:
        args.rules.insert(0, BASELINE)
    setup = header()
    data = frappe_run(args.data, args.work)
    seeds = {"dev": args.dev_seeds, "report": args.report_seeds, "all": args.dev_seeds + args.report_seeds}[args.phase]
    try:
        for seed in seeds:
            run_seed(data.resolve(), args.work.resolve(), seed, args.rules, extra)
        records = load_records(args.work)
        chosen, _ = choose(records, args.dev_seeds)
    except RuntimeError as err:  # a failed trainer run (it resumes on a rerun) or no development records
        print(f"hard_rule: {err}", file=sys.stderr)
        return 1
    body = (f"{setup}- setup: pipeline on `shared/data/frappe/frappe_valid.tsv` (8:1:1 split), per seed one "
            f"`trainer --stage=search --config trainer/configs/frappe_cpu.yaml {' '.join(extra)}` and one "
            f"`--stage=retrain --mode=hard` per rule from it (search.hard_select_tie_se of the preset)\n\n"
            f"### Development seeds {args.dev_seeds}: the choice (validation AUC only)\n\n"
            f"{table(records, args.dev_seeds, DEV_METRICS)}\n\n"
            f"Chosen by the rule fixed in advance (benchmarks/hard_rule.py): **{chosen}**.\n")
    if all(all(s in records.get(r, {}) for s in args.report_seeds) for r in args.rules):
        body += f"\n### Fresh seeds {args.report_seeds}: the report\n\n{table(records, args.report_seeds)}\n"
    if args.notes_file:
        body += "\n" + args.notes_file.read_text().strip() + "\n"
    publish("Frappe: the Hard rule chosen on development seeds", body, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
