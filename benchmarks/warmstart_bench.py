"""Warm start across a vocabulary change vs cold start: the daily retrain (trainer --init=run:PATH).

Day 1 and day 2 are generated Criteo rows of two seeds (pipeline/generate.py:
the same click model and token distributions, other draws, so the frequent
tokens are shared but change rank, i.e. move id, and the tail differs). Each
day is its own `pipeline` run, so its vocabulary and ids are its own. A model
is trained on day 1; on day 2 the same model is trained cold (fresh weights)
and warm (`--init=run:DAY1`, rows carried by token), plus a warm run of a single
training step (the day-1 model at day 2's ids). Reported per epoch: the
validation AUC and LogLoss and the wall time since the trainer process started
(start-up and, for warm, loading the day-1 run included). The target: warm
reaches the cold start's epoch-1 validation AUC in less time.

  python benchmarks/warmstart_bench.py [--rows 100000] [--epochs 2] [--model fnn] [--workdir DIR] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import re
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STEP_RUN = "warm, 1 step"
EPOCH_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO \[\w+\] epoch (\d+):", re.M)


def _pipelines(jobs: dict[str, list[str]], workdir: pathlib.Path) -> None:
    """`pipeline` runs side by side (much of each one's fixed cost is one thread)."""
    procs = {name: subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=ROOT,
                                    stdout=subprocess.DEVNULL, stderr=(workdir / f"{name}.err").open("w"))
             for name, args in jobs.items()}
    for name, proc in procs.items():
        if proc.wait() != 0:
            sys.exit(f"pipeline {name} failed:\n{(workdir / f'{name}.err').read_text()[-3000:]}")


def train(name: str, data: pathlib.Path, out: pathlib.Path, args: list[str]) -> dict:
    """One trainer process: per epoch valid AUC / LogLoss (metrics.json) and seconds since launch (its log)."""
    start = time.time()
    result = subprocess.run([sys.executable, "-m", "trainer.cli", "--stage=train", "--data", str(data),
                             "--out", str(out), *args], cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - start
    if result.returncode != 0:
        sys.exit(f"trainer {name} exited {result.returncode}:\n{result.stderr[-3000:]}")
    stamps = {int(epoch): datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp() - start
              for stamp, epoch in EPOCH_LINE.findall(result.stderr)}
    metrics = json.loads((out / "metrics.json").read_text())
    epochs = [{"epoch": h["epoch"], "auc": h["valid_auc"], "logloss": h["valid_logloss"],
               "seconds": stamps[h["epoch"]]} for h in metrics["history"]]
    run = json.loads((out / "run.json").read_text())
    return {"name": name, "wall": wall, "epochs": epochs, "warm_start": run.get("warm_start"),
            "test_auc": metrics["test_auc"], "test_logloss": metrics["test_logloss"]}


def time_to(runs: list[dict], auc: float) -> tuple[float, str] | None:
    """(seconds, run and epoch) of the earliest epoch of any of `runs` with valid AUC >= `auc`, None if none."""
    hits = [(e["seconds"], f"{run['name']} epoch {e['epoch']}")
            for run in runs for e in run["epochs"] if e["auc"] >= auc]
    return min(hits) if hits else None


def report(day1: dict, cold: dict, warms: list[dict], rows: int, model: str) -> str:
    """The RESULTS.md section body (after the header); `warms`: the warm runs (the full one last)."""
    warm = warms[-1]
    fields = warm["warm_start"]["fields"].values()
    counts = {k: sum(f[k] for f in fields) for k in ("carried", "moved", "new", "dropped")}
    lines = [
        f"Day 1 = {rows:,} generated Criteo rows (seed 0), day 2 = {rows:,} rows of seed 1, each its own `pipeline` "
        f"run; `--model {model}` at the CPU preset. Day 1 trained {len(day1['epochs'])} epoch(s) "
        f"({day1['wall']:.0f} s; day-1 valid AUC {day1['epochs'][-1]['auc']:.4f}, LogLoss "
        f"{day1['epochs'][-1]['logloss']:.4f}). Warm start carried {counts['carried']:,} tokens "
        f"({counts['moved']:,} of them at another id), {counts['new']:,} new, {counts['dropped']:,} dropped "
        "(all fields). Seconds are wall time since the trainer process started (start-up and, for warm, "
        "loading the day-1 run and both vocabularies included), at the end of each epoch's validation. "
        f"`{STEP_RUN}` is a warm run of one training step (`--train.max_steps_per_epoch=1`): the day-1 model "
        "with its rows moved to day 2's ids, almost untrained on day 2. An epoch costs cold and warm the same, "
        "so at equal epochs a few seconds' difference is start-up noise on this loaded machine (or the warm "
        "run's loading); warm start saves time by needing fewer epochs for an AUC.",
        "",
        "| day 2 | epoch | valid AUC | valid LogLoss | seconds |",
        "|---|---:|---:|---:|---:|",
    ]
    for run in (cold, *warms):
        lines += [f"| {run['name']} | {e['epoch']} | {e['auc']:.4f} | {e['logloss']:.4f} | {e['seconds']:.0f} |"
                  for e in run["epochs"]]
    first, best = cold["epochs"][0], max(cold["epochs"], key=lambda e: e["auc"])
    verdicts = []
    for what, target in (("epoch-1", first), (f"best (epoch {best['epoch']})", best)):
        reached = time_to(warms, target["auc"])
        faster = "faster" if reached and reached[0] < target["seconds"] else "NOT faster"
        verdicts.append(
            f"warm reaches cold's {what} valid AUC {target['auc']:.4f} at {reached[1]}, after "
            f"{reached[0]:.0f} s vs {target['seconds']:.0f} s cold ({faster})"
            if reached else f"warm never reaches cold's {what} valid AUC {target['auc']:.4f} (NOT met)")
    verdict = "; ".join(verdicts)
    lines += ["", f"Result: {verdict}. Test split, for reference only (nothing chosen on it): cold AUC "
              f"{cold['test_auc']:.4f} LogLoss {cold['test_logloss']:.4f}, warm AUC {warm['test_auc']:.4f} "
              f"LogLoss {warm['test_logloss']:.4f}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="generated rows per day")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each day-2 run (day 1: 1)")
    parser.add_argument("--model", default="fnn", help="trainer --model (a zoo baseline)")
    parser.add_argument("--workdir", type=pathlib.Path, help="where data and runs go (default: a temp dir)")
    parser.add_argument("--no-write", action="store_true", help="print the table, leave RESULTS.md alone")
    args = parser.parse_args()

    from benchmarks.results import header, publish
    from pipeline.generate import generate

    head = header(["python", *sys.argv])  # date and load at the start
    workdir = args.workdir or pathlib.Path(tempfile.mkdtemp(prefix="warmstart_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    days = {}
    for day, seed in (("day1", 0), ("day2", 1)):
        generate(args.rows, workdir / f"{day}.tsv", seed=seed, progress=False)
        days[day] = workdir / day
    _pipelines({day: ["--dataset", "criteo", "--input", str(workdir / f"{day}.tsv"), "--output", str(out)]
                for day, out in days.items()}, workdir)
    common = ["--model", args.model]
    day1 = train("day 1", days["day1"], workdir / "run1", [*common, "--train.epochs=1"])
    day2 = [*common, f"--train.epochs={args.epochs}", f"--train.patience={args.epochs}"]
    cold = train("cold", days["day2"], workdir / "cold", day2)
    init = f"--init=run:{workdir / 'run1'}"
    step = train(STEP_RUN, days["day2"], workdir / "warm_step", [*common, init, "--train.epochs=1",
                                                                  "--train.max_steps_per_epoch=1"])
    warm = train("warm", days["day2"], workdir / "warm", [*day2, init])
    body = report(day1, cold, [step, warm], args.rows, args.model)
    publish("Warm start across vocabularies", head + "\n" + body, not args.no_write)


if __name__ == "__main__":
    main()
