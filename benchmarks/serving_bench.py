"""Serving latency and throughput: bundled gRPC server vs the in-process SavedModel call.

Over loopback gRPC, with the server in its own process (as in production):
p50/p99 latency at batch 1, examples/s with 8 concurrent clients at batch 1,
and examples/s at batch 512, each next to the in-process SavedModel call on
the same serialized raw tf.Examples, measured in the same run. Targets
(docs/DESIGN.md §Targets): p50 <= 5 ms at batch 1; batch-512 gRPC throughput >= 70% of the
in-process call.

The model: `--run RUN --data DATA` (a retrained run and its pipeline output),
or, without them, one built here in the CPU preset's shape (criteo_cpu.yaml:
emb 8, n = 3) on generated Criteo rows: a Soft retrain with every edge and a
mix of all four fusion ops (the most expensive retrained graph), trained for a
few steps only, since latency does not depend on the weights' values.

  python benchmarks/serving_bench.py [--run RUN --data DATA] [--requests 400] [--no-write]
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import http.client
import json
import pathlib
import random
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results import header, write_section  # noqa: E402

MODEL = "ctr"


def build_run(work: pathlib.Path, rows: int) -> tuple[pathlib.Path, pathlib.Path]:
    """Generated rows -> pipeline -> a CPU-preset-shaped Soft retrain; returns (run, data)."""
    from pipeline.generate import generate
    from trainer.architecture import Architecture, candidate_inputs, connectable_components, fusing_components
    from trainer.cli import run

    raw = work / "train.txt"
    generate(rows, raw, seed=0, progress=False)
    data = work / "data"
    subprocess.run([sys.executable, "-m", "pipeline", "--dataset", "criteo", "--input", str(raw),
                    "--output", str(data)], cwd=ROOT, check=True, capture_output=True)
    n, rng = 3, random.Random(0)
    arch = Architecture(
        n=n, alpha={c: {s: 0.5 for s in candidate_inputs(c, n)} for c in connectable_components(n)},
        beta={c: [rng.gauss(0, 1) for _ in range(4)] for c in fusing_components(n)})
    arch.save(work / "arch.json")
    run(["--stage=retrain", "--data", str(data), "--architecture", str(work / "arch.json"),
         "--mode", "soft", "--out", str(work / "run"), "--config",
         str(ROOT / "trainer/configs/criteo_cpu.yaml"), "--train.epochs=1",
         "--train.max_steps_per_epoch=20"])
    return work / "run", data


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=pathlib.Path, help="retrained run dir (default: build one)")
    parser.add_argument("--data", type=pathlib.Path, help="its pipeline output dir")
    parser.add_argument("--rows", type=int, default=20_000, help="generated rows when building")
    parser.add_argument("--requests", type=int, default=400, help="batch-1 requests per measurement")
    parser.add_argument("--big_batches", type=int, default=20, help="batch-512 requests per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the median is reported")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md")
    args = parser.parse_args()
    if (args.run is None) != (args.data is None):
        parser.error("give both --run and --data, or neither")

    started = header()  # its load average is the one before the build and measurements
    import grpc
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_service_pb2_grpc

    from serving.client import ServingClient
    from serving.export import export
    from serving.server import free_port

    work = pathlib.Path(tempfile.mkdtemp(prefix="serving_bench_"))
    run_dir, data = (args.run, args.data) if args.run else build_run(work, args.rows)
    result = export(str(run_dir), str(data), str(work / "models"), MODEL, verify_rows=200)
    version_dir = result.version_dir
    payload_1 = held_out_examples(data, args.requests)
    payload_512 = [held_out_examples(data, 512)] * args.big_batches

    port_file = work / "port"
    server = subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "serve", "--model_config_file",
         str(work / "models/models.config"), "--port", "0", "--host", "127.0.0.1",
         "--rest_api_port", str(free_port()), "--port_file", str(port_file)], cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        while not port_file.exists():
            if server.poll() is not None:
                raise SystemExit("the server exited at start-up")
            time.sleep(0.2)
        grpc_port, rest_port = port_file.read_text().split()
        target = f"127.0.0.1:{grpc_port}"
        with ServingClient(target) as client:
            client.wait_until_available(MODEL, 300)
        channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)])
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        def request(serialized: list[bytes]) -> predict_pb2.PredictRequest:
            req = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=MODEL, signature_name="serving_default"))
            req.inputs["examples"].CopyFrom(tf.make_tensor_proto(serialized, dtype=tf.string))
            return req

        req_1 = [request([e]) for e in payload_1]
        req_512 = [request(b) for b in payload_512]
        loaded = tf.saved_model.load(str(version_dir))
        fn = loaded.signatures["serving_default"]

        def local(serialized):
            return fn(examples=tf.constant(serialized))["probabilities"].numpy()

        def remote(req):
            return stub.Predict(req, timeout=60)

        rest_bodies = [json.dumps({"instances": [{"b64": base64.b64encode(e).decode()}]}).encode()
                       for e in payload_1]
        rest_conn = http.client.HTTPConnection("127.0.0.1", int(rest_port), timeout=60)

        def rest(body):
            rest_conn.request("POST", f"/v1/models/{MODEL}:predict", body=body,
                              headers={"Content-Type": "application/json"})
            response = rest_conn.getresponse()
            answer = response.read()
            if response.status != 200:
                raise SystemExit(f"REST predict failed: {response.status} {answer[:300]!r}")
            return answer

        for _ in range(20):  # warm every path
            local([payload_1[0]])
            remote(req_1[0])
            rest(rest_bodies[0])
        local(payload_512[0])
        remote(req_512[0])
        rows = {k: [] for k in ("local1", "grpc1", "rest1", "local8", "grpc8", "local512",
                                "grpc512")}
        for _ in range(args.rounds):
            lat, _ = measure(local, [[e] for e in payload_1])
            rows["local1"].append(lat)
            lat, _ = measure(remote, req_1)
            rows["grpc1"].append(lat)
            lat, _ = measure(rest, rest_bodies)
            rows["rest1"].append(lat)
            _, wall = measure(local, [[e] for e in payload_1], threads=8)
            rows["local8"].append(len(payload_1) / wall)
            _, wall = measure(remote, req_1, threads=8)
            rows["grpc8"].append(len(payload_1) / wall)
            _, wall = measure(local, payload_512)
            rows["local512"].append(512 * len(payload_512) / wall)
            _, wall = measure(remote, req_512)
            rows["grpc512"].append(512 * len(payload_512) / wall)
        channel.close()
        rest_conn.close()
    finally:
        server.terminate()
        server.wait(timeout=60)

    def p(key: str, q: float) -> float:
        return float(np.median([percentile(r, q) for r in rows[key]]))

    def tput(key: str) -> float:
        return float(np.median(rows[key]))

    ratio = tput("grpc512") / tput("local512")
    table = "\n".join([
        "| measure | in-process SavedModel | gRPC (bundled server) | REST (bundled server) |",
        "|---|---|---|---|",
        f"| batch 1 latency p50 | {p('local1', 50):.2f} ms | {p('grpc1', 50):.2f} ms "
        f"| {p('rest1', 50):.2f} ms |",
        f"| batch 1 latency p99 | {p('local1', 99):.2f} ms | {p('grpc1', 99):.2f} ms "
        f"| {p('rest1', 99):.2f} ms |",
        f"| batch 1, 8 concurrent clients | {tput('local8'):,.0f} ex/s | {tput('grpc8'):,.0f} ex/s "
        "| - |",
        f"| batch 512, one client | {tput('local512'):,.0f} ex/s | {tput('grpc512'):,.0f} ex/s "
        "| - |",
    ])

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    verdict = (
        f"Targets: batch-1 p50 in-process <= 1 ms: {p('local1', 50):.2f} ms "
        f"({met(p('local1', 50) <= 1)}); over gRPC <= 2 ms: {p('grpc1', 50):.2f} ms "
        f"({met(p('grpc1', 50) <= 2)}); batch-512 gRPC throughput >= 85% of in-process: "
        f"{ratio:.0%} ({met(ratio >= 0.85)}). REST batch-1 p50 (reported, no target): "
        f"{p('rest1', 50):.2f} ms."
    )
    model_note = (f"Model: {run_dir}" if args.run else
                  "Model: built by the benchmark in the CPU preset's shape (criteo_cpu.yaml: "
                  "emb 8, n = 3), Soft retrain with every edge and all four ops mixed, 20 steps.")
    body = "\n\n".join([
        started,
        f"{model_note} Inputs: serialized raw tf.Examples of the test split (REST: as "
        '{"instances": [{"b64": ...}]}). Server: '
        "`serving serve` in its own process, default batching.config (max 512 rows, 1000 us). "
        f"Median of {args.rounds} rounds; {args.requests} batch-1 requests and "
        f"{args.big_batches} batch-512 requests per round; requests pre-built.",
        table, verdict,
    ])
    print(body)
    if not args.no_write:
        print(f"written to {write_section('Serving', body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
