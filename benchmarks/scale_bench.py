"""End-to-end cost per stage as the rows grow: generate, preprocess, search, retrain, export, serve, score.

For each --rows N: `pipeline generate` writes N Criteo-format rows (Zipf
vocabularies: a heavy tail of values seen once), `pipeline` preprocesses them,
`trainer search` and `trainer retrain` run on a small CPU budget (one epoch
of at most --max_steps batches of --batch_size rows: a subsample of the
shuffled train split, the same at every N), `serving export` writes the
SavedModel, `serving serve` serves it (own process, 127.0.0.1, stopped by
PID) and `serving predict` scores the raw rows of the test split over gRPC.
Each stage's wall time and peak RSS (its whole process tree, sampled from
/proc every 0.5 s) go to a table; the table and a log-log plot
(benchmarks/scale_bench.png) go to benchmarks/RESULTS.md, section "Scale".
Big files live under --work_dir (default /tmp) and are deleted after each N.

    python benchmarks/scale_bench.py --rows 100000 1000000 [--rows_done FILE.json ...]

Start it without `nice`: every stage already runs under `nice -n 10`, and
niceness adds up (a niced driver would start its stages at 19, which starve
on a busy machine).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results import header, publish  # noqa: E402
from serving.process import STOP_TIMEOUT_S, ServeProcess, ServeProcessError  # noqa: E402

MODEL = "ctr"
PLOT = ROOT / "benchmarks" / "scale_bench.png"
STAGES = ("generate", "preprocess", "search", "retrain", "export", "serve", "score")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids of every process readable in /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants."""
    tree, total, todo = _children(), 0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += int(pathlib.Path(f"/proc/{current}/statm").read_text().split()[1]) * PAGE
        except OSError:
            pass
        todo += tree.get(current, [])
    return total


class PeakRss(threading.Thread):
    """Samples the RSS of a process tree every 0.5 s until stopped; `peak` in bytes."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak = pid, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            self._stop_event.wait(0.5)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


NICE = ("nice", "-n", "10")


def cli(package: str, *args: str) -> list[str]:
    return [*NICE, sys.executable, "-m", f"{package}.cli", *args]


def timed(log: pathlib.Path, command: Sequence[str]) -> tuple[float, int]:
    """Runs one stage; (wall s, peak RSS bytes of its process tree). Exits naming the log on failure."""
    start = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(list(command), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        sampler = PeakRss(process.pid)
        sampler.start()
        code = process.wait()
        peak = sampler.stop()
    if code != 0:
        sys.exit(f"scale_bench: {' '.join(command)} exited {code}; log {log}:\n"
                 f"{log.read_text(errors='replace')[-3000:]}")
    return time.perf_counter() - start, peak


def test_rows(raw: pathlib.Path, out: pathlib.Path, seed: int) -> int:
    """Writes the raw lines of the test split (the job's own keyed hash of each line) to `out`."""
    from pipeline.features import SPLIT_NAMES
    from pipeline.parse import split_ids

    test = SPLIT_NAMES.index("test")
    written = 0
    with raw.open("rb") as source, out.open("wb") as sink:
        while chunk := source.readlines(64 << 20):
            lines = [line.rstrip(b"\n") for line in chunk]
            keep = split_ids(lines, seed) == test
            sink.write(b"".join(line + b"\n" for line, k in zip(lines, keep, strict=True) if k))
            written += int(keep.sum())
    return written


def quality(test_file: pathlib.Path, scores_file: pathlib.Path) -> dict[str, float]:
    """Test AUC and LogLoss of the served probabilities (labels from the raw test rows)."""
    import numpy as np

    from trainer.metrics import log_loss, roc_auc

    with test_file.open("rb") as f:
        labels = np.array([int(line.split(b"\t", 1)[0]) for line in f])
    probs = np.loadtxt(scores_file, delimiter="\t", usecols=-1, dtype=np.float64, ndmin=1, skiprows=1)
    if len(probs) != len(labels):
        sys.exit(f"scale_bench: {len(probs)} scores for {len(labels)} test rows ({scores_file})")
    probs = np.clip(probs, 1e-7, 1 - 1e-7)
    return {"auc": roc_auc(labels, probs), "logloss": log_loss(labels, np.log(probs / (1 - probs)))}


class Server(ServeProcess):
    """`serving serve` of BASE/models.config under `nice` like every stage, its RSS sampled."""

    def __init__(self, base: pathlib.Path, log: pathlib.Path):
        super().__init__(base / "models.config", base.parent / "server.ports", log, prefix=NICE, cwd=ROOT)
        self.sampler = PeakRss(self.pid)
        self.sampler.start()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """Stops the server by PID; its peak RSS."""
        super().stop(timeout)
        return self.sampler.stop()


def run_size(rows: int, args: argparse.Namespace) -> dict:
    """All stages at one size; the record of wall s, peak RSS, vocabularies and test quality."""
    work = pathlib.Path(args.work_dir) / f"scale_{rows}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    raw, data, search, retrain, base = (work / n for n in ("raw.tsv", "data", "search", "retrain", "base"))
    budget = [f"--train.epochs={args.epochs}", f"--train.max_steps_per_epoch={args.max_steps}",
              f"--train.batch_size={args.batch_size}"]
    record: dict = {"rows": rows, "seconds": {}, "peak_rss_mb": {}}
    saved = pathlib.Path(args.work_dir) / f"scale_{rows}.json"  # after every stage: a stopped run keeps its figures

    def stage(name: str, command: Sequence[str]) -> None:
        print(f"[{rows:,}] {name} ...", flush=True)
        seconds, peak = timed(work / f"{name}.log", command)
        record["seconds"][name], record["peak_rss_mb"][name] = round(seconds, 1), round(peak / 2**20)
        print(f"[{rows:,}] {name}: {seconds:.1f} s, peak RSS {peak / 2**20:,.0f} MB", flush=True)
        saved.write_text(json.dumps(record) + "\n")

    stage("generate", cli("pipeline", "generate", "--rows", str(rows), "--seed", str(args.seed),
                          "--output", str(raw)))
    record["raw_mb"] = round(raw.stat().st_size / 1e6)
    stage("preprocess", cli("pipeline", "--dataset", "criteo", "--input", str(raw), "--output", str(data),
                            "--seed", str(args.seed), *args.job_args.split()))
    stats = json.loads((data / "stats.json").read_text())
    vocab = {f["name"]: f["vocab_size"] for f in stats["fields"]}
    record["vocab_total"] = sum(vocab.values())
    record["vocab_max"] = max(vocab.values())
    record["split_rows"] = {s: v["rows"] for s, v in stats["splits"].items()}
    stage("search", cli("trainer", "search", "--data", str(data), "--out", str(search), *budget))
    stage("retrain", cli("trainer", "retrain", "--data", str(data), "--architecture",
                         str(search / "architecture.json"), "--mode", "hard", "--out", str(retrain), *budget))
    stage("export", cli("serving", "export", "--run", str(retrain), "--data", str(data),
                        "--model_base_path", str(base), "--model_name", MODEL))
    test_file = work / "test.tsv"
    record["test_rows"] = test_rows(raw, test_file, args.seed)
    raw.unlink()  # the big input is not needed any more
    server = Server(base, work / "serve.log")
    try:
        try:
            target = server.target(timeout=600)
        except ServeProcessError as err:
            sys.exit(f"scale_bench: {err}")
        record["seconds"]["serve"] = round(time.perf_counter() - server.start, 1)  # start to port open
        stage("score", cli("serving", "predict", "--target", target, "--model_name", MODEL, "--input",
                           str(test_file), "--format", "criteo", "--batch_size", str(args.predict_batch),
                           "--wait_ready", "300", "--output", str(work / "scores.tsv")))
    finally:
        record["peak_rss_mb"]["serve"] = round(server.stop() / 2**20)
    record.update(quality(test_file, work / "scores.tsv"))
    print(json.dumps(record), flush=True)
    saved.write_text(json.dumps(record) + "\n")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return record


def _reached(record: dict, stage: str) -> bool:
    return stage in record["peak_rss_mb"] and stage in record["seconds"]


def table(records: list[dict]) -> str:
    """Markdown: one row per size, wall s and peak RSS per stage."""
    head = "| rows | " + " | ".join(f"{s} s / MB" for s in STAGES) + " | vocab total (max field) | test AUC / LogLoss |"
    lines = [head, "|" + "---|" * (len(STAGES) + 3)]
    for r in records:  # a stage a stopped run did not reach: "-"
        cells = [f"{r['seconds'][s]:,.1f} / {r['peak_rss_mb'][s]:,}" if _reached(r, s) else "-" for s in STAGES]
        vocab = f"{r['vocab_total']:,} ({r['vocab_max']:,})" if "vocab_total" in r else "-"
        quality = f"{r['auc']:.4f} / {r['logloss']:.4f}" if "auc" in r else "-"
        lines.append(f"| {r['rows']:,} | " + " | ".join(cells) + f" | {vocab} | {quality} |")
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: pathlib.Path) -> None:
    """Log-log plot of wall s and peak RSS per stage against rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for s in STAGES:
        done = [r for r in records if _reached(r, s)]
        left.plot([r["rows"] for r in done], [r["seconds"][s] for r in done], marker="o", label=s)
        right.plot([r["rows"] for r in done], [r["peak_rss_mb"][s] for r in done], marker="o", label=s)
    for ax, name in ((left, "wall seconds"), (right, "peak RSS of the stage's process tree, MB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("rows")
        ax.set_ylabel(name)
        ax.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="*", default=[100_000, 1_000_000], help="sizes to run")
    parser.add_argument("--rows_done", nargs="*", default=[],
                        help="records of earlier runs to tabulate too (WORK_DIR/scale_N.json, written per size)")
    parser.add_argument("--seed", type=int, default=0, help="generator and split seed")
    parser.add_argument("--work_dir", default="/tmp", help="where the big files go (never the repo)")
    parser.add_argument("--epochs", type=int, default=1, help="search and retrain epochs (default 1)")
    parser.add_argument("--max_steps", type=int, default=300, help="batches per epoch at most (default 300)")
    parser.add_argument("--batch_size", type=int, default=2048, help="training batch size (default 2048)")
    parser.add_argument("--predict_batch", type=int, default=1000, help="rows per gRPC PredictRequest")
    parser.add_argument("--job_args", default="", help="extra `pipeline` flags")
    parser.add_argument("--keep", action="store_true", help="keep each size's work dir")
    parser.add_argument("--no_write", action="store_true", help="print figures without touching RESULTS.md")
    args = parser.parse_args(argv)
    head = header()
    records = [json.loads(pathlib.Path(p).read_text()) for p in args.rows_done]
    records += [run_size(rows, args) for rows in args.rows]
    records.sort(key=lambda r: r["rows"])
    load_end = os.getloadavg()[0]
    plot(records, PLOT)
    body = (
        head
        + f"- stages: `pipeline generate` (seed {args.seed}), `pipeline` (DirectRunner defaults"
        f"{', ' + args.job_args if args.job_args else ''}), `trainer search` and `trainer retrain --mode hard` "
        f"with {args.epochs} epoch(s) of at most {args.max_steps} batches of {args.batch_size} (a small CPU budget: "
        "the same subsample of the shuffled train split at every size; validation on the full valid split), "
        "`serving export`, `serving serve` (127.0.0.1, stopped by PID; 'serve' s = start until its port is open, "
        "MB = the server's peak over scoring), `serving predict` of the raw test split over gRPC "
        f"(batches of {args.predict_batch}); every stage under `nice -n 10`\n"
        f"- peak RSS: the stage's whole process tree, sampled every 0.5 s; 1-min load average at end {load_end:.1f} "
        "(the machine is shared by several sessions: wall times are slower than on a quiet machine)\n"
        f"- plot: `{PLOT.relative_to(ROOT)}`\n\n"
        + table(records)
    )
    publish("Scale", body, not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
