"""The daily loop in three generated days, from the project's own commands (issue 21, item 6).

Day 1 trains and pushes v1, and a server starts on it. Day 2 validates against day 1, warm-starts
from day 1's run, is blessed against it and pushes v2 while a bounded stream of gRPC Predicts runs
(every failed request is counted). Day 3 carries a drifted field and must stop at validation
(exit 3, the field named), so v2 stays served. One summary line per day and step; exit 0 only when
every step behaved as expected, 1 otherwise. The server runs on 127.0.0.1 and is stopped by PID.

    python scripts/daily_demo.py --workdir daily_out [--rows 20000] [--drift C3]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # orchestration/ (not an installed package)

from orchestration import daily_steps as steps  # noqa: E402 (the commands, shared with the Airflow DAG)
from pipeline import quiet  # noqa: E402

quiet.configure(verbose=False)  # before TensorFlow loads (serving.client): no C++ log lines

import grpc  # noqa: E402

from pipeline import raw_rows  # noqa: E402
from pipeline.validate import ANOMALIES_FILE, EXIT_ANOMALIES  # noqa: E402
from serving import examples  # noqa: E402
from serving.client import AVAILABLE, ServingClient  # noqa: E402
from serving.process import ServeProcess, ServeProcessError  # noqa: E402
from trainer.blessing import BLESSING_FILE, EXIT_NOT_BLESSED  # noqa: E402

MODEL = steps.MODEL_NAME
MARKER = "DAILY_DEMO"  # the work dir is emptied only when an earlier run of this script made it
STREAM_INTERVAL_S = 0.05
STREAM_MAX_REQUESTS = 2000  # ~100 s at the interval: the stream's bound in count
STREAM_MAX_S = 120.0  # and in time
SWITCH_TIMEOUT_S = 120.0
STREAM_ROWS = 8


class ScenarioError(Exception):
    """A step did not behave as the scenario expects."""


def say(day: int, step: str, outcome: str) -> None:
    """The one summary line per day and step."""
    print(f"day {day} {step}: {outcome}", flush=True)


def cli(package: str, args: Sequence[str]) -> list[str]:
    return steps.cli(sys.executable, package, *args)


def run(log: pathlib.Path, command: Sequence[str], expect: Sequence[int] = (0,)) -> int:
    """Runs one command (output to `log`); a return code outside `expect` is a ScenarioError."""
    with log.open("w") as out:
        code = subprocess.run(list(command), stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if code not in expect:
        tail = log.read_text(errors="replace")[-3000:]
        raise ScenarioError(f"{' '.join(command)} exited {code} (expected {list(expect)}); log {log}:\n{tail}")
    return code


class RequestStream(threading.Thread):
    """Predicts every STREAM_INTERVAL_S until stopped or bounded (count, time); counts failures."""

    def __init__(self, target: str, batch: list[bytes]) -> None:
        super().__init__(daemon=True)
        self.target, self.batch = target, batch
        self.sent = self.failed = 0
        self.errors: list[str] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + STREAM_MAX_S
        with ServingClient(self.target, timeout=10) as client:
            while (not self._stop_event.is_set() and self.sent < STREAM_MAX_REQUESTS
                   and time.monotonic() < deadline):
                self.sent += 1
                try:
                    client.predict_scores(MODEL, self.batch)
                except grpc.RpcError as err:
                    self.failed += 1
                    self.errors.append(f"{err.code().name}: {err.details()}")
                self._stop_event.wait(STREAM_INTERVAL_S)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)


def served_version(client: ServingClient) -> int:
    """The highest AVAILABLE version (TF Serving's `latest` policy serves exactly that one)."""
    ready = [v for v, state in client.status(MODEL).items() if state == AVAILABLE]
    if not ready:
        raise ScenarioError(f"no version of {MODEL} AVAILABLE")
    return max(ready)


def wait_served(client: ServingClient, version: int) -> None:
    deadline = time.monotonic() + SWITCH_TIMEOUT_S
    while True:
        try:
            if served_version(client) == version:
                return
        except (grpc.RpcError, ScenarioError):
            pass
        if time.monotonic() > deadline:
            raise ScenarioError(f"v{version} not served after {SWITCH_TIMEOUT_S:g} s: {client.status(MODEL)}")
        time.sleep(0.2)


def request_batch(raw: pathlib.Path) -> list[bytes]:
    spec = raw_rows.load_spec(dataset="criteo")
    batch = []
    for features, _ in raw_rows.iter_raw_examples(str(raw), spec):
        batch.append(examples.to_example(features).SerializeToString())
        if len(batch) == STREAM_ROWS:
            break
    return batch


def day_data(args: argparse.Namespace, day: int, drift: Sequence[str] = (),
             previous: pathlib.Path | None = None) -> tuple[pathlib.Path, int]:
    """generate + pipeline (validated against `previous`); (data dir, the job's exit code)."""
    where, label = args.layout, f"day{day}"
    raw, data = where.raw(label), where.data(label)
    run(where.log(label, "generate"), cli("pipeline", steps.generate(raw, args.rows, day, drift)))
    say(day, "generate", f"{args.rows} rows{' drift ' + ','.join(drift) if drift else ''}")
    code = run(where.log(label, "pipeline"), cli("pipeline", steps.pipeline_job(raw, data, previous)),
               expect=(0, EXIT_ANOMALIES))
    return data, code


def train_and_bless(args: argparse.Namespace, day: int, data: pathlib.Path,
                    previous: pathlib.Path | None) -> pathlib.Path:
    """Trains the day's run (warm from `previous`) and blesses it against `previous`; returns the run."""
    where, label = args.layout, f"day{day}"
    out = where.run(label)
    run(where.log(label, "train"),
        cli("trainer", steps.train(data, out, model="lr", init=previous, overrides=[f"--train.epochs={args.epochs}"])))
    say(day, "train", "warm start from day " + str(day - 1) if previous else "cold start")
    code = run(where.log(label, "evaluate"), cli("trainer", steps.evaluate(data, out, previous)),
               expect=(0, EXIT_NOT_BLESSED))
    blessing = json.loads((out / BLESSING_FILE).read_text())
    if code != 0:
        raise ScenarioError(f"day {day} candidate NOT_BLESSED: {blessing}")
    say(day, "evaluate", "BLESSED")
    return out


def push(args: argparse.Namespace, day: int, run_dir: pathlib.Path, data: pathlib.Path) -> None:
    run(args.layout.log(f"day{day}", "push"), cli("serving", steps.push(run_dir, data, args.base, MODEL)))
    say(day, "push", f"v{steps.versions(args.base, MODEL)[-1]} pushed")


def scenario(args: argparse.Namespace) -> None:
    work: pathlib.Path = args.workdir
    # Day 1: cold start, first push, the server starts on v1.
    data1, _ = day_data(args, 1)
    say(1, "pipeline", "ok")
    run1 = train_and_bless(args, 1, data1, None)
    push(args, 1, run1, data1)
    server = ServeProcess(args.base / "models.config", work / "server.ports", work / "server.log",
                          "--file_system_poll_wait_seconds", "1")
    try:
        target = server.target()
        with ServingClient(target, timeout=10) as client:
            wait_served(client, 1)
            say(1, "serve", f"v1 served at {target} (pid {server.pid})")
            # Day 2: validated, warm-started, blessed against day 1, pushed under a request stream.
            data2, code = day_data(args, 2, previous=data1)
            if code != 0:
                raise ScenarioError(f"day 2 (no drift) stopped at validation: see "
                                    f"{args.layout.log('day2', 'pipeline')}")
            say(2, "pipeline", "validated against day 1: no anomaly")
            run2 = train_and_bless(args, 2, data2, run1)
            stream = RequestStream(target, request_batch(args.layout.raw("day2")))
            stream.start()
            try:
                time.sleep(1)  # a few requests on v1 before the push
                push(args, 2, run2, data2)
                wait_served(client, 2)
                time.sleep(2)  # a few requests on v2 after the switch
            finally:
                stream.stop()
            say(2, "serve", f"v2 served, {stream.sent} requests, {stream.failed} failed requests")
            if stream.failed or not stream.sent:
                raise ScenarioError(f"request stream: {stream.failed} of {stream.sent} failed {stream.errors[:3]}")
            # Day 3: a drifted field stops the day at validation; nothing is trained or pushed.
            data3, code = day_data(args, 3, drift=args.drift, previous=data2)
            if code != EXIT_ANOMALIES:
                raise ScenarioError(f"day 3 (drift {args.drift}) passed validation (exit {code})")
            report = json.loads((data3 / ANOMALIES_FILE).read_text())
            anomalies = [(a["field"] or "dataset", a["check"]) for a in report["anomalies"]]
            named = sorted({field for field, _ in anomalies})
            say(3, "pipeline", f"stopped: anomalies in {', '.join(named)} "
                               f"({'; '.join(f'{f} {c}' for f, c in anomalies)})")
            drifted = [d for d in args.drift if "=" not in d]
            if not set(drifted) <= set(named):
                raise ScenarioError(f"day 3 anomalies {named} do not name the drifted fields {drifted}")
            time.sleep(2)  # two file-system polls: nothing may have changed
            on_disk, served = steps.versions(args.base, MODEL), served_version(client)
            say(3, "serve", f"v{served} still served (versions on disk {on_disk})")
            if served != 2 or on_disk[-1] != 2:
                raise ScenarioError(f"after day 3 v{served} is served, versions {on_disk}: expected v2")
    finally:
        server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("daily_out"),
                        help="where the days' data, runs, models and logs go (new, empty, or an earlier "
                             "demo's: emptied first)")
    parser.add_argument("--rows", type=int, default=20000, help="generated rows per day")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs per day")
    parser.add_argument("--drift", action="append", default=None,
                        help="day 3's drift, as `pipeline generate --drift` (repeatable; default C3)")
    args = parser.parse_args(argv)
    args.drift = args.drift or ["C3"]
    marker = args.workdir / MARKER
    if args.workdir.exists() and any(args.workdir.iterdir()) and not marker.exists():
        parser.error(f"--workdir {args.workdir} is not empty and not an earlier demo's (no {MARKER}): "
                     "name a new or empty directory")
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    marker.write_text("written by scripts/daily_demo.py, which empties this directory on its next run\n")
    args.layout = steps.Layout(args.workdir)
    args.base = args.layout.models
    start = time.monotonic()
    try:
        scenario(args)
    except (ScenarioError, ServeProcessError) as err:
        print(f"daily demo FAILED: {err}", file=sys.stderr, flush=True)
        return 1
    print(f"daily demo passed in {time.monotonic() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
