"""The Beam graph of one preprocessing run, written into a scratch directory.

Read ranges -> parse batches (per split, plus rejected rows) -> TFT analyze on
train, transform all splits -> gzipped tf.Example shards, the transform graph,
raw metadata and partial statistics. `pipeline.run` owns the scratch-then-
rename protocol and the final stats.json.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator

import apache_beam as beam
import numpy as np
import pyarrow as pa
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from apache_beam.io import fileio
from apache_beam.options.pipeline_options import PipelineOptions
from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils
from tfx_bsl.coders.example_coder import RecordBatchToExamplesEncoder
from tfx_bsl.tfxio import tensor_adapter, tensor_representation_util

from pipeline.layout import Layout
from pipeline.parse import REASONS, SPLIT_NAMES, parse_lines, raw_arrow_schema
from pipeline.sources import FileRange, read_line_batches
from pipeline.run import STATS_TMP, TFT_TMP, JobSpec
from pipeline.specs import LABEL_KEY, DatasetSpec
from pipeline.tfrecord_sink import GzipTFRecordSink
from pipeline.transform import make_preprocessing_fn


_progress = None  # one bar per worker process (the whole job under the local DirectRunner)


def _advance_progress(total_bytes: int | None, done: int) -> None:
    global _progress
    if _progress is None:
        from tqdm import tqdm

        _progress = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="read+parse", mininterval=2)
    _progress.update(done)


class ReadAndParse(beam.DoFn):
    """One file range -> raw record batches tagged by split, rejected lines, counts."""

    def __init__(self, spec: DatasetSpec, layouts: dict[str, Layout], seed: int, batch_lines: int,
                 total_bytes: int | None = None):
        self._spec = spec
        self._layouts = layouts
        self._seed = seed
        self._batch_lines = batch_lines
        self._total_bytes = total_bytes

    def process(self, rng: FileRange) -> Iterator:
        layout = self._layouts[rng.path]
        # [lines, rejected per reason..., good rows per split...]
        counts = np.zeros(1 + len(REASONS) + len(SPLIT_NAMES), dtype=np.int64)
        for lines in read_line_batches(rng, layout.header, self._batch_lines):
            parsed = parse_lines(lines, layout, self._spec, self._seed)
            _advance_progress(self._total_bytes, sum(map(len, lines)) + len(lines))
            counts[0] += parsed.lines
            for reason, line in parsed.rejected:
                counts[1 + REASONS.index(reason)] += 1
                yield beam.pvalue.TaggedOutput("rejected", (reason, line))
            for i, (split, batch) in enumerate(parsed.by_split().items()):
                counts[1 + len(REASONS) + i] += batch.num_rows
                if batch.num_rows:
                    yield beam.pvalue.TaggedOutput(split, batch)
        yield beam.pvalue.TaggedOutput("counts", (rng.path, counts))


def split_stats(batch: pa.RecordBatch, fields: list[str]) -> np.ndarray:
    """[rows, positives, oov per field..., missing per field...] of a transformed batch."""
    out = np.zeros(2 + 2 * len(fields), dtype=np.int64)
    out[0] = batch.num_rows
    out[1] = int(np.asarray(batch.column(LABEL_KEY).flatten()).sum())
    for i, name in enumerate(fields):
        ids = np.asarray(batch.column(name).flatten())
        out[2 + i] = int((ids == 0).sum())
        out[2 + len(fields) + i] = int((ids == 1).sum())
    return out


def _to_json_line(value) -> str:
    return json.dumps(value)


def _transformed_schema(spec: DatasetSpec):
    from tensorflow import int64
    from tensorflow.io import FixedLenFeature

    names = [*spec.field_names, LABEL_KEY]
    return schema_utils.schema_from_feature_spec({n: FixedLenFeature([], int64) for n in names})


class EncodeExamples(beam.DoFn):
    """Transformed record batch -> list of serialized tf.Example (tfx-bsl's C++ encoder)."""

    def __init__(self, spec: DatasetSpec):
        self._spec = spec
        self._encoder = None

    def setup(self):
        self._encoder = RecordBatchToExamplesEncoder(_transformed_schema(self._spec))

    def process(self, element) -> Iterator[list[bytes]]:
        batch, _ = element
        yield self._encoder.encode(batch)


def _write_json(pcoll, path: str, label: str):
    return pcoll | f"{label}ToJson" >> beam.Map(_to_json_line) | f"{label}Write" >> beam.io.WriteToText(
        path, shard_name_template="", num_shards=1
    )


@contextlib.contextmanager
def _no_time_based_data_flush():
    """Turns off the FnApiRunner's time-based flushing of gRPC data streams while the job runs.

    Beam 2.77's TimeBasedBufferingClosableOutputStream flushes from a timer
    thread every DATA_BUFFER_TIME_LIMIT_MS (1 s) as `callback(get()); _clear()`,
    while the bundle's thread keeps writing to the same buffer without the
    lock: an element written during the callback is cleared unsent. The
    runner's data servicer (multi_threading and multi_processing) and the
    embedded SDK harness (multi_threading) use it; in_memory does not. Rows
    vanished between ReadAndParse and the TFT transform (one batch, or a
    whole runner-side chunk of ~10 batches). With 0, only size-based flushes
    remain, done by the writing thread itself.
    """
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    saved = worker_handlers.DATA_BUFFER_TIME_LIMIT_MS
    worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = 0
    try:
        yield
    finally:
        worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = saved


def build_and_run(job: JobSpec) -> None:
    """Runs the Beam pipeline; outputs land in job.work_dir."""
    global _progress
    try:
        with _no_time_based_data_flush():
            _build_and_run(job)
    finally:
        if _progress is not None:
            _progress.close()
            _progress = None


def _build_and_run(job: JobSpec) -> None:
    spec = job.spec
    fields = spec.field_names
    raw_schema = raw_arrow_schema(spec)
    raw_metadata = dataset_metadata.DatasetMetadata(
        schema_utils.schema_from_feature_spec(spec.raw_feature_spec())
    )
    adapter_config = tensor_adapter.TensorAdapterConfig(
        raw_schema,
        tensor_representation_util.InferTensorRepresentationsFromSchema(raw_metadata.schema),
    )
    stats_dir = os.path.join(job.work_dir, STATS_TMP)
    options = PipelineOptions(list(job.beam_args))
    with beam.Pipeline(options=options) as p, tft_beam.Context(
        temp_dir=os.path.join(job.work_dir, TFT_TMP), force_tf_compat_v1=False
    ):
        parsed = (
            p
            | "Ranges" >> beam.Create(list(job.ranges))
            | "Distribute" >> beam.Reshuffle()
            | "ReadAndParse"
            >> beam.ParDo(
                ReadAndParse(spec, job.layouts, job.seed, job.batch_lines, job.input_bytes)
            ).with_outputs(
                *SPLIT_NAMES, "rejected", "counts"
            )
        )
        (train_out, _), transform_fn = (
            parsed.train,
            adapter_config,
        ) | "AnalyzeAndTransformTrain" >> tft_beam.AnalyzeAndTransformDataset(
            make_preprocessing_fn(spec, job.min_count), output_record_batches=True
        )
        transformed = {"train": train_out}
        for split in SPLIT_NAMES[1:]:
            transformed[split], _ = (
                ((parsed[split], adapter_config), transform_fn)
                | f"Transform{split.title()}" >> tft_beam.TransformDataset(output_record_batches=True)
            )
        for split, pcoll in transformed.items():
            _ = (
                pcoll
                | f"Encode{split.title()}" >> beam.ParDo(EncodeExamples(spec))
                | f"Write{split.title()}"
                >> fileio.WriteToFiles(
                    job.work_dir,
                    file_naming=fileio.default_file_naming(split, ".tfrecord.gz"),
                    sink=lambda _: GzipTFRecordSink(),
                    shards=job.output_shards,
                )
            )
            stats = (
                pcoll
                | f"Stats{split.title()}" >> beam.Map(lambda el: split_stats(el[0], fields))
                | f"SumStats{split.title()}" >> beam.CombineGlobally(_sum_arrays)
                | f"StatsList{split.title()}" >> beam.Map(lambda a: a.tolist())
            )
            _write_json(stats, os.path.join(stats_dir, f"{split}.json"), f"Stats{split.title()}")
        counts = (
            parsed.counts
            | "SumCounts" >> beam.CombinePerKey(_sum_arrays)
            | "CountsList" >> beam.Map(lambda kv: [kv[0], kv[1].tolist()])
            | "AllCounts" >> beam.combiners.ToList()
        )
        _write_json(counts, os.path.join(stats_dir, "inputs.json"), "Counts")
        for reason in REASONS:
            _ = (
                parsed.rejected
                | f"Only{reason}" >> beam.Filter(lambda el, r=reason: el[0] == r)
                | f"Line{reason}" >> beam.Map(lambda el: el[1])
                | f"Reject{reason}"
                >> beam.io.WriteToText(
                    os.path.join(job.work_dir, "rejected", reason),
                    file_name_suffix=".txt",
                    skip_if_empty=True,
                )
            )
        _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(job.work_dir)
        _ = raw_metadata | "WriteRawMetadata" >> tft_beam.WriteMetadata(
            os.path.join(job.work_dir, tft.TFTransformOutput.RAW_METADATA_DIR), pipeline=p
        )


def _sum_arrays(arrays) -> np.ndarray:
    total = None
    for a in arrays:
        total = a.copy() if total is None else total + a
    return total if total is not None else np.zeros(0, dtype=np.int64)
