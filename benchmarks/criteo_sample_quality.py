"""Test AUC of search + retrain variants on a real sample (Criteo or Frappe), 5 seeds.

One run's AUC on a small sample is noisy, so the mean and spread over seeds
are reported for: OptFusion Soft and Hard (fresh retrain; Hard under each
rule of `search.hard_select`, derived from the same search run by
trainer.selection.select_from_run), Hard warm-started from the search
(`--init=search`), each fixed operation on the searched
connections (`--fixed_op`, the paper's table 4), the paper's raw PROD
(`--model.prod_norm=false`) as a fixed op, and a logistic regression on the
same ids and split (the floor any fusion model should beat). A retrain that
predicts a constant exits non-zero: it is counted, not averaged.

Every finished run is appended to a JSON-lines log, so a long benchmark can
be stopped and the table made from what finished (`--table-only`). A search
run already finished in the work dir (its search.weights.npz written) is
reused, not rerun.

  python benchmarks/criteo_sample_quality.py [--dataset criteo|frappe] [--data DIR]
      [--seeds 1 2 3 4 5] [--rows ROW ...] [--log FILE --work DIR] [--table-only] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.architecture import OPS  # noqa: E402
from trainer.config import SearchConfig  # noqa: E402

SAMPLES = {
    "criteo": (ROOT.parent / "shared" / "data" / "criteo" / "train_head10k.tsv", ["--dataset", "criteo"],
               "10,000 rows"),
    "frappe": (ROOT.parent / "shared" / "data" / "frappe" / "frappe_valid.tsv",
               ["--schema", str(ROOT / "schemas" / "frappe.yaml")], "57,722 rows"),
}
DEFAULT_RULE = SearchConfig.hard_select  # the shipped default
MARGIN = 2.0  # a search.hard_select_tie_se to measure (with rule "alone")
# (key, label, retrain arguments, Hard rule "<hard_select>" or "<hard_select>@<tie_se>": the
# architecture file is trainer.selection.rule_architecture's, or the search's architecture.json for None);
# rows run in this order, seed by seed.
RETRAINS = [
    ("soft", "OptFusion Soft (search + fresh retrain)", ["--mode", "soft", "--init", "fresh"], None),
    ("soft_patience4", "OptFusion Soft, retrain with --train.patience=4",
     ["--mode", "soft", "--init", "fresh", "--train.patience=4"], None),
    ("hard_remove", "OptFusion Hard (search + fresh retrain; hard_select=remove: valid AUC lost without the op)",
     ["--mode", "hard", "--init", "fresh"], "remove"),
    ("hard_alone", "OptFusion Hard, hard_select=alone (valid AUC with the op alone)",
     ["--mode", "hard", "--init", "fresh"], "alone"),
    ("hard_margin", f"OptFusion Hard, hard_select=alone, hard_select_tie_se={MARGIN}",
     ["--mode", "hard", "--init", "fresh"], f"alone@{MARGIN}"),
    ("hard_beta", "OptFusion Hard, hard_select=beta (argmax beta, the paper's rule and the default)",
     ["--mode", "hard", "--init", "fresh"], "beta"),
    ("hard_search", f"OptFusion Hard, --init=search (warm start; hard_select={DEFAULT_RULE})",
     ["--mode", "hard", "--init", "search"], DEFAULT_RULE),
    *[(f"fixed_{op}", f"searched connections, --fixed_op {op}", ["--fixed_op", op, "--init", "fresh"], None)
      for op in OPS],
    ("fixed_prod_raw", "searched connections, --fixed_op prod, raw PROD (--model.prod_norm=false)",
     ["--fixed_op", "prod", "--init", "fresh", "--model.prod_norm=false"], None),
]
LABELS = {key: label for key, label, _, _ in RETRAINS} | {
    "logreg": "logistic regression, same ids (L2 picked on valid from 0, 1e-5, 1e-4, 1e-3)"}


LOGREG_L2 = (0.0, 1e-5, 1e-4, 1e-3)


def logistic_regression_auc(data: pathlib.Path, dataset: str, seed: int) -> tuple[float, float]:
    """Test AUC of sum-of-id-weights + bias, trained by the same loop (early stopped),
    at the L2 of LOGREG_L2 with the best validation AUC (a tuned floor); returns (AUC, L2)."""
    import keras

    from pipeline.dataset_info import read_dataset_info
    from trainer.config import load_config, preset_path
    from trainer.loop import Phase
    from trainer.zoo.lr import LR

    info = read_dataset_info(data)

    best = (-1.0, 0.0, 0.0)  # valid AUC, test AUC, L2
    for l2 in LOGREG_L2:
        config = load_config(preset_path(dataset, "cpu"), [f"--seed={seed}", "--train.lr=1e-2", "--train.emb_lr=1e-2",
                                                           f"--train.emb_l2={l2}", "--train.l2=0"])
        keras.utils.set_random_seed(seed)
        with tempfile.TemporaryDirectory() as tmp:
            model = LR(config.model, info.field_names, info.vocab_sizes)  # the zoo's `--model lr`
            phase = Phase("logreg", model, config, info, pathlib.Path(tmp) / "c", pathlib.Path(tmp) / "t",
                          train_arch=False)
            state = phase.fit()
            if state.best_auc > best[0]:
                best = (state.best_auc, phase.evaluate("test")["auc"], l2)
    return best[1], best[2]


def _prod_share(arch_path: pathlib.Path) -> tuple[float, int]:
    """Mean softmax(beta) weight of PROD over components, and how many take it by argmax(beta)."""
    from trainer.architecture import Architecture

    arch = Architecture.load(arch_path)
    shares = [w[OPS.index("prod")] for w in arch.soft_weights().values()]
    by_beta = Architecture(n=arch.n, alpha=arch.alpha, beta=arch.beta)  # without the search's selection
    return statistics.mean(shares), sum(op == "prod" for op in by_beta.hard_ops().values())


def _architecture(search: pathlib.Path, rule: str | None, data: pathlib.Path) -> pathlib.Path:
    """The search run's architecture file for Hard rule `rule` ("<hard_select>" at the search's
    tie_se or "<hard_select>@<tie_se>"; None: the search's own architecture.json)."""
    if rule is None:
        return search / "architecture.json"
    from pipeline.dataset_info import read_dataset_info
    from trainer.selection import rule_architecture

    name, _, tie_se = rule.partition("@")
    return rule_architecture(search, read_dataset_info(data), name, float(tie_se) if tie_se else None)


def run_benchmark(data: pathlib.Path, dataset: str, seeds: list[int], rows: list[str], work: pathlib.Path,
                  log_path: pathlib.Path) -> None:
    """Runs every (seed, row) of `rows` not yet in the log, appending one JSON line per run."""
    from trainer.architecture import Architecture
    from trainer.cli import run
    from trainer.loop import TrainingFailed

    done = {(r["seed"], r["row"]) for r in _read_log(log_path) if r["dataset"] == dataset}

    def record(seed: int, row: str, **values) -> None:
        with log_path.open("a") as f:
            f.write(json.dumps({"dataset": dataset, "seed": seed, "row": row, **values}) + "\n")
        print(f"seed {seed} {row}: {values}", flush=True)

    for seed in seeds:
        search = work / f"search{seed}"
        if (seed, "search") not in done and any(key in rows for key, _, _, _ in RETRAINS):
            if not (search / "search.weights.npz").exists():
                run(["--stage=search", "--data", str(data), "--out", str(search), f"--seed={seed}"])
            state = json.loads((search / "checkpoints" / "search" / "state.json").read_text())
            share, hard_prod = _prod_share(search / "architecture.json")
            record(seed, "search", valid_auc=state["best_auc"], best_epoch=state["best_epoch"], prod_share=share,
                   hard_prod=hard_prod)
        for key, _, extra, rule in RETRAINS:
            if (seed, key) in done or key not in rows:
                continue
            arch = _architecture(search, rule, data)
            ops = Architecture.load(arch).hard_ops() if rule else None
            try:
                summary = run(["--stage=retrain", "--data", str(data), "--architecture", str(arch),
                               "--out", str(work / f"{key}{seed}"), *extra])
                record(seed, key, test_auc=summary["test_auc"], best_epoch=summary["best_epoch"], hard_ops=ops)
            except TrainingFailed as err:
                record(seed, key, test_auc=None, error=str(err), hard_ops=ops)
        if (seed, "logreg") not in done and "logreg" in rows:
            auc, l2 = logistic_regression_auc(data, dataset, seed)
            record(seed, "logreg", test_auc=auc, emb_l2=l2)


def _read_log(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def table(records: list[dict]) -> str:
    """The markdown table: one row per model, mean and stdev over the seeds that finished."""
    lines = ["| model | test AUC mean | stdev | min | max | constant (exit 1) | per seed |",
             "|---|---|---|---|---|---|---|"]
    for key, label in LABELS.items():
        runs = sorted((r for r in records if r["row"] == key), key=lambda r: r["seed"])
        if not runs:
            continue
        v = [r["test_auc"] for r in runs if r["test_auc"] is not None]
        failed = len(runs) - len(v)
        stats = (f"{statistics.mean(v):.4f} | {statistics.stdev(v) if len(v) > 1 else 0.0:.4f} | "
                 f"{min(v):.4f} | {max(v):.4f}") if v else "- | - | - | -"
        per_seed = ", ".join("const" if r["test_auc"] is None else f"{r['test_auc']:.4f}" for r in runs)
        lines.append(f"| {label} | {stats} | {failed} of {len(runs)} | {per_seed} |")
    searches = [r for r in records if r["row"] == "search"]
    if searches:
        lines.append("")
        lines.append(
            f"Searches ({len(searches)}): best valid AUC mean {statistics.mean(r['valid_auc'] for r in searches):.4f}; "
            f"PROD's mean softmax(beta) share {statistics.mean(r['prod_share'] for r in searches):.3f}; "
            f"components where PROD has the largest beta, per search: {[r['hard_prod'] for r in searches]}."
        )
    for key, _, _, rule in RETRAINS:
        runs = sorted((r for r in records if r["row"] == key and r.get("hard_ops")), key=lambda r: r["seed"])
        if rule and runs:
            lines.append(f"Hard ops of row {key} (hard_select={rule}) per seed: " + "; ".join(
                f"{r['seed']}: " + " ".join(f"{c}={op}" for c, op in r["hard_ops"].items()) for r in runs) + ".")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(SAMPLES), default="criteo")
    parser.add_argument("--data", type=pathlib.Path, help="finished pipeline run of the sample (default: run it)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--rows", nargs="+", choices=list(LABELS), default=list(LABELS),
                        help="rows to run (default all; a second call with the same --log/--work adds rows)")
    parser.add_argument("--log", type=pathlib.Path, help="JSON-lines log of finished runs (default: a temp file)")
    parser.add_argument("--work", type=pathlib.Path, help="directory for the run dirs (default: a temp dir)")
    parser.add_argument("--table-only", action="store_true", help="make the table from --log, run nothing")
    parser.add_argument("--notes-file", type=pathlib.Path, help="text file added under the table in RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sample, pipeline_args, rows = SAMPLES[args.dataset]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        log_path = args.log or tmp / "runs.jsonl"
        if not args.table_only:
            data = args.data
            if data is None:
                if not sample.exists():
                    print(f"criteo_sample_quality: {sample} is absent; pass --data DIR", file=sys.stderr)
                    return 2
                data = tmp / "data"
                subprocess.run([sys.executable, "-m", "pipeline", *pipeline_args, "--input", str(sample),
                                "--output", str(data)], check=True, capture_output=True)
            work = args.work or tmp / "runs"
            work.mkdir(parents=True, exist_ok=True)
            run_benchmark(data, args.dataset, args.seeds, args.rows, work, log_path)
        records = [r for r in _read_log(log_path) if r["dataset"] == args.dataset and r["seed"] in args.seeds]
    text = table(records)
    print(text)
    if not args.no_write:
        from benchmarks.results import header, write_section

        command = ["python", "benchmarks/criteo_sample_quality.py", "--dataset", args.dataset, "--seeds",
                   *map(str, args.seeds)]
        how = (" (runs appended to one --log by several invocations with --rows subsets; table by --table-only)"
               if args.table_only else "")
        notes = args.notes_file.read_text().strip() if args.notes_file else ""
        body = (header(command).rstrip() + how + "\n"
                + f"- setup: pipeline on `{sample.relative_to(ROOT.parent)}` ({rows}, 8:1:1 split), "
                f"trainer CPU preset `trainer/configs/{args.dataset}_cpu.yaml` (smaller than the paper), "
                f"seeds {sorted({r['seed'] for r in records})}.\n\n" + text + ("\n\n" + notes if notes else ""))
        print(f"wrote {write_section(f'{args.dataset.capitalize()} sample quality', body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
