"""The Beam graph of one preprocessing run, written into a scratch directory.

Read ranges -> parse batches (per split, plus rejected rows) -> TFT analyze on
train, transform all splits -> gzipped tf.Example shards, the transform graph,
raw metadata and partial statistics (pipeline.job_spec's named counts).
`pipeline.job` owns the scratch-then-rename protocol and the final stats.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import operator
import os
from collections.abc import Iterable, Iterator

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

from pipeline.features import LABEL_KEY, MISSING_ID, OOV_ID, SPLIT_NAMES
from pipeline.file_layout import Layout
from pipeline.job_spec import (
    INPUT_COUNTS_FILE,
    STATS_TMP,
    TFT_TMP,
    InputCounts,
    JobSpec,
    SplitStats,
    split_stats_file,
)
from pipeline.parse import REASONS, parse_lines, raw_arrow_schema
from pipeline.sources import FileRange, read_line_batches
from pipeline.specs import DatasetSpec
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
        counts = InputCounts.zero()
        for lines in read_line_batches(rng, layout.header, self._batch_lines):
            parsed = parse_lines(lines, layout, self._spec, self._seed)
            _advance_progress(self._total_bytes, sum(map(len, lines)) + len(lines))
            rejected = dict.fromkeys(REASONS, 0)
            for reason, line in parsed.rejected:
                rejected[reason] += 1
                yield beam.pvalue.TaggedOutput("rejected", (reason, line))
            by_split = parsed.by_split()
            for split, batch in by_split.items():
                if batch.num_rows:
                    yield beam.pvalue.TaggedOutput(split, batch)
            counts += InputCounts(parsed.lines, rejected, {s: b.num_rows for s, b in by_split.items()})
        yield beam.pvalue.TaggedOutput("counts", (rng.path, counts))


def split_stats(batch: pa.RecordBatch, fields: list[str]) -> SplitStats:
    """Rows, positives and OOV / missing ids per field of one transformed batch."""
    oov, missing = {}, {}
    for name in fields:
        ids = np.asarray(batch.column(name).flatten())
        oov[name] = int((ids == OOV_ID).sum())
        missing[name] = int((ids == MISSING_ID).sum())
    positives = int(np.asarray(batch.column(LABEL_KEY).flatten()).sum())
    return SplitStats(batch.num_rows, positives, oov, missing)


def _sum(records: Iterable, zero):
    """Field-by-field sum of InputCounts or SplitStats records (`zero` for none)."""
    return functools.reduce(operator.add, records, zero)


def _to_json_line(value) -> str:
    return json.dumps(value)


def _write_json(pcoll, path: str):
    """Writes the single element of `pcoll` as a JSON file at `path`."""
    return pcoll | "ToJson" >> beam.Map(_to_json_line) | "WriteJson" >> beam.io.WriteToText(
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
    raw_metadata = dataset_metadata.DatasetMetadata(
        schema_utils.schema_from_feature_spec(spec.raw_feature_spec())
    )
    adapter_config = tensor_adapter.TensorAdapterConfig(
        raw_arrow_schema(spec),
        tensor_representation_util.InferTensorRepresentationsFromSchema(raw_metadata.schema),
    )
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
            ).with_outputs(*SPLIT_NAMES, "rejected", "counts")
        )
        (train_out, train_metadata), transform_fn = (
            parsed.train,
            adapter_config,
        ) | "AnalyzeAndTransformTrain" >> tft_beam.AnalyzeAndTransformDataset(
            make_preprocessing_fn(spec, job.min_count), output_record_batches=True
        )
        transformed = {"train": (train_out, train_metadata)}
        for split in SPLIT_NAMES[1:]:
            transformed[split] = (
                ((parsed[split], adapter_config), transform_fn)
                | f"Transform{split.title()}" >> tft_beam.TransformDataset(output_record_batches=True)
            )
        for split, (pcoll, metadata) in transformed.items():
            _ = pcoll | f"Write{split.title()}" >> _WriteSplit(metadata, split, job)
        _ = parsed.counts | "WriteInputCounts" >> _WriteInputCounts(job.work_dir)
        _ = parsed.rejected | "WriteRejected" >> _WriteRejected(job.work_dir)
        _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(job.work_dir)
        _ = raw_metadata | "WriteRawMetadata" >> tft_beam.WriteMetadata(
            os.path.join(job.work_dir, tft.TFTransformOutput.RAW_METADATA_DIR), pipeline=p
        )


@beam.ptransform_fn
def _WriteSplit(pcoll, metadata, split: str, job: JobSpec):
    """Transformed record batches of one split -> its TFRecord shards and its SplitStats file."""
    fields = job.spec.field_names
    # What tft_beam.EncodeTransformedDataset does (tfx-bsl's encoder built from the schema in
    # TFT's transformed metadata), except that a batch stays one element: the library flattens
    # it to one element per record, and per-record elements through WriteToFiles' shard
    # grouping cost 11-17% more CPU here (whole job and write path, 300k rows, 2026-11-28).
    encoder = (
        metadata.deferred_metadata
        | "Schema" >> beam.Map(lambda m: m.schema)
        | "Encoder" >> beam.Map(RecordBatchToExamplesEncoder)
    )
    _ = (
        pcoll
        | "Encode"
        >> beam.Map(lambda el, coder: coder.encode(el[0]), coder=beam.pvalue.AsSingleton(encoder))
        | "WriteRecords"
        >> fileio.WriteToFiles(
            job.work_dir,
            file_naming=fileio.default_file_naming(split, ".tfrecord.gz"),
            sink=lambda _: GzipTFRecordSink(),
            shards=job.output_shards,
        )
    )
    stats = (
        pcoll
        | "Stats" >> beam.Map(lambda el: split_stats(el[0], fields))
        | "SumStats" >> beam.CombineGlobally(_sum, zero=SplitStats.zero(fields))
        | "StatsDict" >> beam.Map(dataclasses.asdict)
    )
    return _write_json(stats, os.path.join(job.work_dir, STATS_TMP, split_stats_file(split)))


@beam.ptransform_fn
def _WriteInputCounts(counts, work_dir: str):
    """(path, InputCounts) per file range -> one JSON list of the counts per input file."""
    per_input = (
        counts
        | "SumCounts" >> beam.CombinePerKey(_sum, zero=InputCounts.zero())
        | "CountsDict" >> beam.Map(lambda kv: {"path": kv[0], **dataclasses.asdict(kv[1])})
        | "AllCounts" >> beam.combiners.ToList()
    )
    return _write_json(per_input, os.path.join(work_dir, STATS_TMP, INPUT_COUNTS_FILE))


@beam.ptransform_fn
def _WriteRejected(rejected, work_dir: str):
    """(reason, line) -> the untouched lines in rejected/<reason>*.txt, one file set per reason."""
    for reason in REASONS:
        _ = (
            rejected
            | f"Only{reason}" >> beam.Filter(lambda el, r=reason: el[0] == r)
            | f"Line{reason}" >> beam.Map(lambda el: el[1])
            | f"Write{reason}"
            >> beam.io.WriteToText(
                os.path.join(work_dir, "rejected", reason),
                file_name_suffix=".txt",
                skip_if_empty=True,
            )
        )
