"""Early stopping and temperature calibration, before and after, on the Frappe sample (issue 19).

Two `trainer --stage=train --model MODEL` runs of one seed on the Frappe CPU
preset, one per stopping rule (given explicitly, so the comparison does not
depend on what the preset ships): validation AUC alone at a constant lr,
patience 4 (the rule before issue 19); validation AUC - LogLoss with
reduce-LR-on-plateau x0.1, patience 3 (the trainer's default monitor and
decay). Both fit the temperature on validation, so the table shows each
rule with and without calibration: test AUC, LogLoss and 15-bin ECE, the
best epoch and T, beside the validation figures a preset may be chosen on.
Nothing is chosen on the test split. A run already finished in --work is
reused, not rerun.

  python benchmarks/calibration_quality.py [--data DIR] [--model fnn] [--seed 1] [--work DIR] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.frappe_sample import frappe_run  # noqa: E402

RULES = {
    "auc": ["--train.monitor=auc", "--train.lr_decay_factor=1", "--train.patience=4"],
    "auc_minus_logloss": ["--train.monitor=auc_minus_logloss", "--train.lr_decay_factor=0.1",
                          "--train.lr_decay_patience=1", "--train.patience=3"],
}


def train(data: pathlib.Path, out: pathlib.Path, model: str, seed: int, extra: list[str]) -> dict:
    """One trainer run in its own process (the path users take); its metrics.json."""
    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    command = [sys.executable, "-m", "trainer.cli", "--stage=train", f"--model={model}", f"--data={data}",
               f"--out={out}", f"--seed={seed}", "--calibrate=temperature", *extra]
    subprocess.run(command, check=True, cwd=ROOT)
    return json.loads((out / "metrics.json").read_text())


def table(results: dict[str, dict]) -> str:
    lines = ["| monitor (arguments) | best epoch / epochs | valid AUC | valid LogLoss, calibrated | T (valid) | "
             "test AUC | test LogLoss | test ECE | calibrated test LogLoss | calibrated test ECE |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in results.items():
        c = m["calibration"]
        valid, test = c["valid"], c["test"]
        lines.append(f"| {name} (`{' '.join(RULES[name])}`) | {m['best_epoch']} / {m['epochs']} | "
                     f"{m['best_valid_auc']:.4f} | {valid['logloss']:.4f}, {valid['logloss_calibrated']:.4f} | "
                     f"{c['temperature']:.3f} | {m['test_auc']:.4f} | {m['test_logloss']:.4f} | {test['ece']:.4f} | "
                     f"{test['logloss_calibrated']:.4f} | {test['ece_calibrated']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.results import header, publish

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=pathlib.Path,
                        help="finished pipeline run of the Frappe sample (default: run it)")
    parser.add_argument("--model", default="fnn", help="zoo model (default fnn)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", type=pathlib.Path, help="work dir for the data and runs (default: a temp dir)")
    parser.add_argument("--no-write", dest="write", action="store_false", help="print, do not write RESULTS.md")
    args = parser.parse_args(argv)
    setup = header()
    work = args.work or pathlib.Path(tempfile.mkdtemp(prefix="calibration-"))
    data = frappe_run(args.data, work)
    results = {name: train(data, work / name, args.model, args.seed, extra) for name, extra in RULES.items()}
    history = {name: [(round(r["valid_auc"], 4), round(r["valid_logloss"], 4), round(r["lr_scale"], 6))
                      for r in m["history"]] for name, m in results.items()}
    body = (f"{setup}- setup: pipeline on `shared/data/frappe/frappe_valid.tsv` (8:1:1 split), "
            f"`trainer --stage=train --model {args.model} --seed {args.seed} --calibrate=temperature`, preset "
            "`trainer/configs/frappe_cpu.yaml` plus each rule's arguments.\n\n"
            f"{table(results)}\n\n"
            "Per-epoch (valid AUC, valid LogLoss, lr scale):\n\n"
            + "".join(f"- {name}: {h}\n" for name, h in history.items()))
    publish("Frappe: early stopping and calibration", body, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
