"""Does the input pipeline keep up with the search step? (docs/SCALING.md)

Three rates on the same data, each after a warm-up:
- input: `trainer.data.make_dataset` alone (interleaved parallel reads of the
  gzipped shards, batch-then-parse, prefetch), drained as fast as it goes;
- step: the search stage's train step (CPU preset, `trainer/configs/criteo_cpu.yaml`)
  on batches already in memory;
- fed: the same step fed by `make_dataset` (what training sees: on shared cores
  the two compete for the CPU).
Target: input >= 3x step. Data: `--data DIR` (a finished pipeline output) or,
by default, Criteo-shaped shards (39 fields, the vocabulary sizes of
benchmarks/train_bench.py) written to a temp dir in the pipeline's layout.

`--object_store` also times the two ways to read an output that TF cannot open
(pipeline/remote.py), against a GCS emulator on 127.0.0.1 started and stopped
here: staging it to a local cache once, or streaming its train records through
Beam's FileSystems into tf.data (a Python generator) on every pass.

  python benchmarks/input_bench.py [--rows 200000] [--shards 16] [--data DIR] [--object_store] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import struct
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.train_bench import FIELDS, VOCABS  # noqa: E402

TARGET_RATIO = 3.0
PRESET = ROOT / "trainer" / "configs" / "criteo_cpu.yaml"


def write_shards(out: pathlib.Path, rows: int, shards: int, seed: int = 0) -> pathlib.Path:
    """Criteo-shaped train/valid shards and a stats.json/DONE.json, like a finished pipeline run."""
    import numpy as np
    import tensorflow as tf

    from pipeline.features import DONE_FILE

    rng = np.random.default_rng(seed)
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    splits = {"train": rows, "valid": max(rows // 8, 1), "test": max(rows // 8, 1)}
    for split, n in splits.items():
        count = shards if split == "train" else 1
        ids = np.stack([rng.integers(0, v, n) for v in VOCABS], axis=1)
        labels = rng.integers(0, 2, n)
        for k in range(count):
            path = out / f"{split}-{k:05d}-of-{count:05d}.tfrecord.gz"
            with tf.io.TFRecordWriter(str(path), options) as writer:
                for row in range(k, n, count):
                    feature = {name: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(ids[row, j])]))
                               for j, name in enumerate(FIELDS)}
                    feature["label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(labels[row])]))
                    writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    stats = {"dataset": "criteo", "label_key": "label",
             "fields": [{"name": n, "vocab_size": v} for n, v in zip(FIELDS, VOCABS, strict=True)]}
    (out / "stats.json").write_text(json.dumps(stats))
    (out / DONE_FILE).write_text(json.dumps({"rows": sum(splits.values())}))
    return out


def input_rate(info, batch: int, batches: int) -> float:
    """Examples/s of make_dataset drained alone (shuffled as in training), after 5 warm-up batches."""
    from trainer.data import make_dataset

    it = iter(make_dataset(info, "train", batch, shuffle=True, seed=1).repeat())
    for _ in range(5):
        next(it)
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        _, labels = next(it)
        n += int(labels.shape[0])
    return n / (time.perf_counter() - start)


def step_rates(info, batch: int, steps: int) -> tuple[float, float, int]:
    """(in-memory step examples/s, make_dataset-fed step examples/s, parameters) of the search stage."""
    from trainer.config import load_config
    from trainer.data import make_dataset
    from trainer.loop import Phase
    from trainer.model_io import build_model

    config = load_config(PRESET, [f"train.batch_size={batch}"])
    fields = [{"name": f.name, "vocab_size": f.vocab_size} for f in info.fields]
    model = build_model(config, fields, mode="search")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="input_bench-"))
    phase = Phase("search", model, config, info, tmp / "ckpt", tmp / "tb", train_arch=True)
    it = iter(make_dataset(info, "train", batch, shuffle=True, seed=2).repeat())
    held = [next(it) for _ in range(8)]
    for features, labels in held[:3]:  # tracing
        float(phase.train_step(features, labels))
    start = time.perf_counter()
    for k in range(steps):
        features, labels = held[k % len(held)]
        loss = phase.train_step(features, labels)
    float(loss)
    in_memory = steps * batch / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(steps):
        features, labels = next(it)
        loss = phase.train_step(features, labels)
    float(loss)
    fed = steps * batch / (time.perf_counter() - start)
    return in_memory, fed, int(model.count_params())


def _stream_records(files: list[str]):
    """TFRecord payloads of gzipped shards read through Beam's FileSystems (the streaming alternative)."""
    from apache_beam.io.filesystem import CompressionTypes

    from pipeline.remote import _filesystems

    fs = _filesystems()
    for path in files:
        with fs.open(path, compression_type=CompressionTypes.GZIP) as handle:
            while header := handle.read(12):
                (length,) = struct.unpack("<Q", header[:8])
                yield handle.read(length)
                handle.read(4)  # the payload's CRC


def object_store_rates(data: pathlib.Path, info, batch: int) -> dict[str, float]:
    """Publish, stage (cold and cached) and streaming rates of `data` through a local GCS emulator."""
    import tensorflow as tf

    from pipeline import remote
    from pipeline.dataset_info import read_dataset_info
    from tests.gcs_emulator import local_emulator
    from trainer.data import feature_spec, split_files

    train_rows = sum(1 for _ in tf.data.TFRecordDataset(split_files(info, "train"), compression_type="GZIP"))
    size_mb = sum(p.stat().st_size for p in data.rglob("*") if p.is_file()) / 1e6
    with local_emulator("bench") as _, tempfile.TemporaryDirectory(prefix="input_bench-cache-") as cache:
        uri = "gs://bench/run"
        start = time.perf_counter()
        remote.publish(data, uri)
        publish_s = time.perf_counter() - start
        start = time.perf_counter()
        staged = remote.local_view(uri, cache)
        stage_s = time.perf_counter() - start
        start = time.perf_counter()
        remote.local_view(uri, cache)
        cached_s = time.perf_counter() - start
        staged_rate = input_rate(read_dataset_info(staged), batch, 300)
        objects = sorted(name for name in remote.list_objects(uri) if name.startswith("train-"))
        spec = feature_spec(info)
        ds = (tf.data.Dataset.from_generator(lambda: _stream_records([f"{uri}/{n}" for n in objects]),
                                             output_signature=tf.TensorSpec([], tf.string))
              .batch(batch).map(lambda s: tf.io.parse_example(s, spec), num_parallel_calls=tf.data.AUTOTUNE)
              .prefetch(tf.data.AUTOTUNE))
        start = time.perf_counter()
        streamed = sum(int(b["label"].shape[0]) for b in ds)
        stream_rate = streamed / (time.perf_counter() - start)
    return {"size_mb": size_mb, "train_rows": train_rows, "publish_s": publish_s, "stage_s": stage_s,
            "cached_s": cached_s, "staged_input": staged_rate, "streamed_input": stream_rate}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="a finished pipeline output (default: generated Criteo-shaped shards)")
    parser.add_argument("--rows", type=int, default=200_000, help="generated training rows")
    parser.add_argument("--shards", type=int, default=16, help="generated training shards")
    parser.add_argument("--batch", type=int, default=0, help="batch size (default: the CPU preset's)")
    parser.add_argument("--input_batches", type=int, default=300)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--object_store", action="store_true",
                        help="also time staging vs streaming from a local GCS emulator (needs gcp-storage-emulator)")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args()

    from benchmarks.results import header
    from pipeline.dataset_info import read_dataset_info
    from trainer.config import load_config

    head = header()  # the load average at start, before this run's own load
    batch = args.batch or load_config(PRESET).train.batch_size
    if args.data:
        data, source = pathlib.Path(args.data), f"pipeline output {args.data}"
    else:
        data = write_shards(pathlib.Path(tempfile.mkdtemp(prefix="input_bench-data-")), args.rows, args.shards)
        source = (f"generated Criteo-shaped shards: {args.rows:,} train rows in {args.shards} gzipped shards, "
                  "39 fields (benchmarks/train_bench.py vocabularies)")
    info = read_dataset_info(data)
    inp = input_rate(info, batch, args.input_batches)
    step, fed, params = step_rates(info, batch, args.steps)
    ratio = inp / step
    met = "met" if ratio >= TARGET_RATIO else "NOT met"
    verdict = f"input / step = {ratio:.1f}x (target >= {TARGET_RATIO:.0f}x: {met})"
    table = "\n".join([
        "| measure | value |", "|---|---|",
        f"| input: make_dataset alone, examples/s | {inp:,.0f} |",
        f"| step: search train step, batches in memory, examples/s | {step:,.0f} |",
        f"| fed: search train step fed by make_dataset, examples/s | {fed:,.0f} |",
    ])
    if args.object_store:
        o = object_store_rates(data, info, batch)
        table += "\n".join([
            "", f"| object store (emulator): publish {o['size_mb']:.1f} MB, s | {o['publish_s']:.1f} |",
            f"| object store: stage to the local cache, s (train rows / s) | {o['stage_s']:.1f} "
            f"({o['train_rows'] / o['stage_s']:,.0f}) |",
            f"| object store: cached local_view, s | {o['cached_s']:.2f} |",
            f"| object store: make_dataset on the staged copy, examples/s | {o['staged_input']:,.0f} |",
            f"| object store: train records streamed via Beam FileSystems into tf.data, examples/s "
            f"| {o['streamed_input']:,.0f} |",
        ])
    print(table + "\n" + verdict)
    if not args.no_write:
        from benchmarks.results import write_section

        body = (head + f"- data: {source}\n- model: search stage, `{PRESET.relative_to(ROOT)}` "
                f"(CPU preset), batch {batch}, {params:,} parameters; input {args.input_batches} batches, "
                f"step {args.steps} steps, each after a warm-up. Input and step are measured in one process, "
                "one after the other: on a shared machine compare their ratio, not the absolute rates\n\n"
                + table + "\n\n" + verdict + "\n")
        print(f"wrote {write_section('Input pipeline', body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
