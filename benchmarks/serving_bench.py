"""Serving latency and throughput: bundled gRPC/REST server vs the in-process SavedModel call.

Over loopback gRPC, with the server in its own process (as in production):
p50/p99 latency at batch 1, examples/s with 8 concurrent clients at batch 1,
and examples/s at batch 512, each next to the in-process SavedModel call on
the same serialized raw tf.Examples, measured in the same run (in-process:
the TF2 loaded signature, as a Python caller runs it, and the session
loader's callable, the C++ `Session::Run` path of `tensorflow_model_server`).
Targets
(docs/DESIGN.md §6 Targets): batch-1 p50 <= 1 ms in-process and <= 2 ms over
gRPC for the CPU-preset model; batch-512 gRPC throughput >= 85% of the
in-process call.

Models, all served by one server and measured in interleaved rounds (the
machine is shared: a round of every model, then the next round):

- `preset-hard`: what a user of the CPU preset serves, built as the README and
  `make demo` build it: `pipeline --dataset criteo` on the Criteo sample
  (`--criteo_input`, or an existing pipeline output `--criteo_data`), then
  `trainer --stage=search` and `trainer --stage=retrain --mode hard` with the
  default config (trainer/configs/criteo_cpu.yaml).
- `preset-soft`: the same search retrained with `--mode soft` (the searched
  mixture of all four ops in every component).
- `worst`: the costliest retrained graph in the CPU preset's shape (emb 8,
  n = 3): every edge on, a Soft mixture of all four ops in every component,
  on generated Criteo rows, trained for 20 steps only (latency does not depend
  on the weights' values).

  python benchmarks/serving_bench.py [--criteo_data DIR] [--requests 400] [--no-write]
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import dataclasses
import http.client
import json
import pathlib
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results import header, publish  # noqa: E402

CRITEO_SAMPLE = ROOT.parent / "shared" / "data" / "criteo" / "train_head10k.tsv"
CPU_PRESET = ROOT / "trainer/configs/criteo_cpu.yaml"


@dataclasses.dataclass(frozen=True)
class Model:
    name: str  # served model name
    run: pathlib.Path
    data: pathlib.Path
    how: str  # how it was built, for RESULTS.md


def _pipeline(raw: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    if (out / "DONE.json").is_file():  # kept by an earlier run with the same --work
        return out
    subprocess.run([sys.executable, "-m", "pipeline", "--dataset", "criteo", "--input", str(raw),
                    "--output", str(out)], cwd=ROOT, check=True, capture_output=True)
    return out


def _finished(data: pathlib.Path) -> pathlib.Path:
    if not (data / "DONE.json").is_file():
        raise SystemExit(f"{data} is not a finished pipeline output (no DONE.json): rerun the "
                         "pipeline or drop --criteo_data")
    return data


def build_preset(work: pathlib.Path, criteo_input: pathlib.Path,
                 criteo_data: pathlib.Path | None) -> list[Model]:
    """Criteo sample -> pipeline -> search -> Soft and Hard retrains, CPU preset defaults."""
    from trainer.architecture import Architecture
    from trainer.cli import run

    if criteo_data is None:
        if not criteo_input.is_file():
            raise SystemExit(f"the Criteo sample {criteo_input} is missing: pass --criteo_input "
                             "FILE or --criteo_data DIR")
        data = _pipeline(criteo_input, work / "criteo_data")
        source = f"`pipeline --dataset criteo --input {criteo_input.name}`"
    else:
        data = _finished(criteo_data)
        source = f"the pipeline output {criteo_data} (Criteo sample)"
    arch_file = work / "search" / "architecture.json"
    if not arch_file.is_file():
        run(["--stage=search", "--data", str(data), "--out", str(work / "search")])
    arch = Architecture.load(arch_file)
    found = (f"the search kept {len(arch.edges())} edges; Hard ops "
             + ", ".join(f"{c} {o}" for c, o in sorted(arch.hard_ops().items())))
    models = []
    for mode in ("soft", "hard"):
        out = work / f"retrain_{mode}"
        if not (out / "metrics.json").is_file():
            run(["--stage=retrain", "--data", str(data), "--architecture", str(arch_file),
                 "--mode", mode, "--out", str(out)])
        models.append(Model(
            f"preset-{mode}", out, data,
            f"{source}, then `trainer --stage=search` and `trainer --stage=retrain --mode {mode}` "
            f"with the default config ({CPU_PRESET.name}: emb 8, n = 3); {found}"))
    return models


def build_worst(work: pathlib.Path, rows: int) -> Model:
    """Generated rows -> pipeline -> every edge, all four ops mixed (Soft), 20 steps."""
    from pipeline.generate import generate
    from trainer.architecture import Architecture, candidate_inputs, connectable_components, fusing_components
    from trainer.cli import run

    raw = work / f"generated_{rows}.txt"
    if not raw.is_file():
        generate(rows, raw, seed=0, progress=False)
    data = _pipeline(raw, work / f"generated_{rows}_data")
    n, rng = 3, random.Random(0)
    arch = Architecture(
        n=n, alpha={c: {s: 0.5 for s in candidate_inputs(c, n)} for c in connectable_components(n)},
        beta={c: [rng.gauss(0, 1) for _ in range(4)] for c in fusing_components(n)})
    arch.save(work / "arch_all.json")
    if not (work / "run_worst" / "metrics.json").is_file():
        run(["--stage=retrain", "--data", str(data), "--architecture", str(work / "arch_all.json"),
             "--mode", "soft", "--out", str(work / "run_worst"), "--config", str(CPU_PRESET),
             "--train.epochs=1", "--train.max_steps_per_epoch=20"])
    return Model("worst", work / "run_worst", data,
                 f"{rows:,} generated Criteo rows, every edge on, Soft mixture of all four ops "
                 f"(random beta), CPU preset shape ({CPU_PRESET.name}), 20 training steps")


def held_out_examples(data: pathlib.Path, count: int) -> list[bytes]:
    """Serialized raw tf.Examples of the test split (what export verifies on)."""
    from serving import examples
    from serving.export import test_split_rows

    found = test_split_rows(data, count)
    if found is None:
        raise SystemExit(f"the pipeline inputs recorded in {data}/stats.json are gone")
    rows = found[0]
    while len(rows) < count:
        rows = rows + rows
    return examples.serialize_rows(rows[:count])


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.array(values), q))


def measure(call, payloads: list, threads: int = 1) -> tuple[list[float], float]:
    """Per-call latencies (ms) and total wall seconds of `call` over payloads."""
    latencies: list[float] = []

    def one(payload):
        start = time.perf_counter()
        call(payload)
        latencies.append((time.perf_counter() - start) * 1e3)

    start = time.perf_counter()
    if threads == 1:
        for payload in payloads:
            one(payload)
    else:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, payloads))
    return latencies, time.perf_counter() - start


def load_average() -> float:
    return float(pathlib.Path("/proc/loadavg").read_text().split()[0])


class Paths:
    """The in-process, gRPC and REST calls on one served model, requests pre-built."""

    def __init__(self, model: Model, version_dir: pathlib.Path, stub, rest_port: int,
                 requests: int, big_batches: int, inter_op: int, intra_op: int):
        import numpy as np
        import tensorflow as tf
        from tensorflow_serving.apis import model_pb2, predict_pb2

        from serving.session_loader import SessionModel, session_config

        payload_1 = held_out_examples(model.data, requests)
        payload_512 = [held_out_examples(model.data, 512)] * big_batches

        def request(serialized: list[bytes]) -> predict_pb2.PredictRequest:
            req = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model.name, signature_name="serving_default"))
            req.inputs["examples"].CopyFrom(tf.make_tensor_proto(serialized, dtype=tf.string))
            return req

        self.local_1 = [[e] for e in payload_1]
        self.local_512 = payload_512
        self.grpc_1 = [request([e]) for e in payload_1]
        self.grpc_512 = [request(b) for b in payload_512]
        self.rest_1 = [json.dumps({"instances": [{"b64": base64.b64encode(e).decode()}]}).encode()
                       for e in payload_1]
        self._fn = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
        self._session = SessionModel(version_dir, session_config(inter_op, intra_op))
        self._session_fn = self._session.callable("serving_default")
        self._tf = tf
        self._np = np
        self._stub = stub
        self._path = f"/v1/models/{model.name}:predict"
        self._rest_port = rest_port
        self._rest = http.client.HTTPConnection("127.0.0.1", rest_port, timeout=60)

    def local(self, serialized: list[bytes]):
        return self._fn(examples=self._tf.constant(serialized))["probabilities"].numpy()

    def session(self, serialized: list[bytes]):
        return self._session_fn({"examples": self._np.array(serialized, dtype=object)})["probabilities"]

    def remote(self, request):
        return self._stub.Predict(request, timeout=60)

    def rest(self, body: bytes) -> bytes:
        self._rest.request("POST", self._path, body=body, headers={"Content-Type": "application/json"})
        response = self._rest.getresponse()
        answer = response.read()
        if response.status != 200:
            raise SystemExit(f"REST predict failed: {response.status} {answer[:300]!r}")
        return answer

    def warm(self) -> None:
        for _ in range(20):
            self.local(self.local_1[0])
            self.session(self.local_1[0])
            self.remote(self.grpc_1[0])
            self.rest(self.rest_1[0])
        self.local(self.local_512[0])
        self.remote(self.grpc_512[0])

    def round(self, rows: dict[str, list]) -> None:
        """One round of every measurement, appended to `rows`."""
        rows["local1"].append(measure(self.local, self.local_1)[0])
        rows["session1"].append(measure(self.session, self.local_1)[0])
        rows["grpc1"].append(measure(self.remote, self.grpc_1)[0])
        # A fresh keep-alive connection: the server closes one idle for --rest_api_timeout_in_ms
        # (30 s), as long as the other models' measurements may take.
        self._rest.close()
        self._rest = http.client.HTTPConnection("127.0.0.1", self._rest_port, timeout=60)
        self.rest(self.rest_1[0])
        rows["rest1"].append(measure(self.rest, self.rest_1)[0])
        rows["local8"].append(len(self.local_1) / measure(self.local, self.local_1, threads=8)[1])
        rows["grpc8"].append(len(self.grpc_1) / measure(self.remote, self.grpc_1, threads=8)[1])
        rows["local512"].append(512 * len(self.local_512) / measure(self.local, self.local_512)[1])
        rows["session512"].append(512 * len(self.local_512) / measure(self.session, self.local_512)[1])
        rows["grpc512"].append(512 * len(self.grpc_512) / measure(self.remote, self.grpc_512)[1])

    def close(self) -> None:
        self._rest.close()
        self._session.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--criteo_input", type=pathlib.Path, default=CRITEO_SAMPLE,
                        help="raw Criteo sample for the preset models (default: %(default)s)")
    parser.add_argument("--criteo_data", type=pathlib.Path,
                        help="a finished pipeline output of that sample (skips the pipeline run)")
    parser.add_argument("--models", default="preset-hard,preset-soft,worst",
                        help="comma-separated subset of preset-soft, preset-hard, worst")
    parser.add_argument("--rows", type=int, default=20_000, help="generated rows for `worst`")
    parser.add_argument("--requests", type=int, default=400, help="batch-1 requests per measurement")
    parser.add_argument("--big_batches", type=int, default=20, help="batch-512 requests per round")
    parser.add_argument("--inter_op", type=int, default=0,
                        help="--tensorflow_inter_op_parallelism of the server and of the "
                        "in-process session (0: TF picks, TF Serving's default; -1: every op "
                        "of every batch in the request's thread)")
    parser.add_argument("--intra_op", type=int, default=0,
                        help="--tensorflow_intra_op_parallelism of the server, of the in-process "
                        "session and of the TF2 call (0: TF picks, TF Serving's default)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the median is reported")
    parser.add_argument("--work", type=pathlib.Path,
                        help="keep the built data and runs here and reuse them on the next run "
                        "(default: a temporary folder, removed at the end)")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md")
    args = parser.parse_args()
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(wanted) - {"preset-soft", "preset-hard", "worst"})
    if unknown or not wanted:
        parser.error(f"--models: unknown {unknown}; choose from preset-soft, preset-hard, worst")

    started = header()  # its load average is the one before the builds and measurements
    work = args.work or pathlib.Path(tempfile.mkdtemp(prefix="serving_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _measure(args, wanted, work, started)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            shutil.rmtree(work / "models", ignore_errors=True)  # exports are redone each run


def _measure(args: argparse.Namespace, wanted: list[str], work: pathlib.Path, started: str) -> int:
    """Builds (or reuses) the models, exports them, serves them and measures every path."""
    import grpc
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.intra_op)  # before TF's first op
    from tensorflow_serving.apis import (
        get_model_status_pb2,
        model_pb2,
        model_service_pb2_grpc,
        prediction_service_pb2_grpc,
    )

    from serving.client import ServingClient
    from serving.export import export
    from serving.limits import CALLER_THREAD_ROWS
    from serving.server import free_port

    models: list[Model] = []
    if any(m.startswith("preset-") for m in wanted):
        models += [m for m in build_preset(work, args.criteo_input, args.criteo_data) if m.name in wanted]
    if "worst" in wanted:
        models.append(build_worst(work, args.rows))
    versions = {m.name: export(str(m.run), str(m.data), str(work / "models"), m.name,
                               verify_rows=200).version_dir for m in models}

    port_file = work / "port"
    port_file.unlink(missing_ok=True)  # a killed earlier run with the same --work left one
    server = subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "serve", "--model_config_file",
         str(work / "models/models.config"), "--port", "0", "--host", "127.0.0.1",
         "--rest_api_port", str(free_port()), "--port_file", str(port_file),
         f"--tensorflow_inter_op_parallelism={args.inter_op}",
         f"--tensorflow_intra_op_parallelism={args.intra_op}"], cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = {m.name: {k: [] for k in ("local1", "session1", "grpc1", "rest1", "local8", "grpc8", "local512",
                                     "session512", "grpc512")} for m in models}
    loads: list[float] = []
    no_model: list[list[float]] = []  # GetModelStatus: the gRPC round trip without a model call
    try:
        deadline = time.monotonic() + 600
        while not port_file.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server exited or did not listen within 600 s")
            time.sleep(0.2)
        grpc_port, rest_port = port_file.read_text().split()
        target = f"127.0.0.1:{grpc_port}"
        with ServingClient(target) as client:
            for m in models:
                client.wait_until_available(m.name, 300)
        channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)])
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        status_stub = model_service_pb2_grpc.ModelServiceStub(channel)
        status_request = get_model_status_pb2.GetModelStatusRequest(
            model_spec=model_pb2.ModelSpec(name=models[0].name))

        def status(_) -> None:
            status_stub.GetModelStatus(status_request, timeout=60)

        paths = {m.name: Paths(m, versions[m.name], stub, int(rest_port), args.requests,
                               args.big_batches, args.inter_op, args.intra_op) for m in models}
        for path in paths.values():
            path.warm()
        for _ in range(args.rounds):  # interleaved: a slow spell of the machine hits every model
            loads.append(load_average())
            for name, path in paths.items():
                path.round(rows[name])
            no_model.append(measure(status, range(args.requests))[0])
        loads.append(load_average())
        for path in paths.values():
            path.close()
        channel.close()
    finally:
        server.terminate()
        server.wait(timeout=60)

    def p(name: str, key: str, q: float) -> float:
        return float(np.median([percentile(r, q) for r in rows[name][key]]))

    def tput(name: str, key: str) -> float:
        return float(np.median(rows[name][key]))

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    table = [
        "| model | batch-1 p50 in-process | session loader | gRPC | REST | batch-1 p99 in-process | gRPC "
        "| REST | 8 clients, batch 1: in-process / gRPC | batch 512: in-process / session loader / "
        "gRPC (gRPC share of in-process; range over rounds; of the session loader) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for m in models:
        n = m.name
        ratio = tput(n, "grpc512") / tput(n, "local512")
        shares = [g / loc for g, loc in zip(rows[n]["grpc512"], rows[n]["local512"], strict=True)]
        table.append(
            f"| {n} | {p(n, 'local1', 50):.2f} ms | {p(n, 'session1', 50):.2f} ms | {p(n, 'grpc1', 50):.2f} ms "
            f"| {p(n, 'rest1', 50):.2f} ms "
            f"| {p(n, 'local1', 99):.2f} ms | {p(n, 'grpc1', 99):.2f} ms | {p(n, 'rest1', 99):.2f} ms "
            f"| {tput(n, 'local8'):,.0f} / {tput(n, 'grpc8'):,.0f} ex/s "
            f"| {tput(n, 'local512'):,.0f} / {tput(n, 'session512'):,.0f} / {tput(n, 'grpc512'):,.0f} "
            f"ex/s ({ratio:.0%}; {min(shares):.0%}-{max(shares):.0%}; "
            f"{tput(n, 'grpc512') / tput(n, 'session512'):.0%}) |")
        verdicts.append(
            f"- {n}: in-process batch-1 p50 <= 1 ms {met(p(n, 'local1', 50) <= 1)} (TF2 signature), "
            f"{met(p(n, 'session1', 50) <= 1)} (session loader); gRPC <= 2 ms "
            f"{met(p(n, 'grpc1', 50) <= 2)}; batch-512 gRPC >= 85% of in-process {met(ratio >= 0.85)}.")
    built = "\n".join(f"- {m.name}: {m.how}." for m in models)
    body = "\n\n".join([
        started,
        "Models (one server serves them all; rounds interleave the models):\n\n" + built,
        f"Inputs: serialized raw tf.Examples of each model's test split (REST: as "
        '{"instances": [{"b64": ...}]}). Server: `serving serve` in its own process, default '
        f"batching.config (max 512 rows, 1000 us), --tensorflow_inter_op_parallelism={args.inter_op}, "
        f"--tensorflow_intra_op_parallelism={args.intra_op} (the in-process calls alike), "
        f"batches of <= {CALLER_THREAD_ROWS} rows in the caller's thread (the in-process session "
        "alike). "
        f"Median of {args.rounds} rounds; {args.requests} batch-1 requests and {args.big_batches} "
        "batch-512 requests per model and round; requests pre-built. 1-min load average at the "
        f"start of each round and at the end: {', '.join(f'{x:.2f}' for x in loads)}.",
        "\n".join(table),
        "gRPC round trip without a model call (GetModelStatus, same server and client): p50 "
        f"{np.median([percentile(r, 50) for r in no_model]):.2f} ms.",
        "Targets (docs/DESIGN.md §6; the CPU-preset model is preset-hard, what the README and "
        "`make demo` build; the other rows for comparison):\n\n" + "\n".join(verdicts),
    ])
    publish("Serving", body, not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
