"""The Beam graph of one preprocessing run, written into a scratch directory.

Read ranges -> parse batches (per split, plus rejected rows) -> TFT analyze on
train, transform all splits -> gzipped tf.Example shards, the transform graph,
raw metadata and partial statistics (pipeline.job_spec's named counts).
`pipeline.job` owns the scratch-then-rename protocol and the final stats.json.

Memory is bounded by the vocabularies, not the rows: the FnApiRunner (the
DirectRunner) runs one fused stage at a time and holds every PCollection
that crosses stages whole in memory. So no rows cross stages: the analysis
reads and parses the files itself, the transform reads them again (after
the analysis, as its side input says), `--split time` reads them once more
first for the cut-offs, and the shards are written without a GroupByKey of
records (pipeline.tfrecord_sink.WriteShards). Only counts, vocabularies,
statistics and file names cross stages.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import operator
import os
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from apache_beam.options.pipeline_options import PipelineOptions
from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils
from tfx_bsl.coders.example_coder import RecordBatchToExamplesEncoder
from tfx_bsl.tfxio import tensor_adapter, tensor_representation_util

from pipeline.dataset_info import PAD_ID
from pipeline.distributions import OTHER_BIN, add_histograms, histogram_file, id_histograms
from pipeline.features import LABEL_KEY, MISSING_ID, OOV_ID, SPLIT_NAMES
from pipeline.file_layout import Layout
from pipeline.job_spec import (
    INPUT_COUNTS_FILE,
    STATS_TMP,
    TFT_TMP,
    TIME_SPLIT_FILE,
    UNSPLIT,
    InputCounts,
    JobSpec,
    SplitStats,
    split_stats_file,
)
from pipeline.joins import SideTable, join_rows, load_side_tables
from pipeline.parse import REASONS, parse_lines, raw_arrow_schema
from pipeline.sources import FileRange, read_line_batches
from pipeline.specs import DatasetSpec
from pipeline.tfrecord_sink import WriteShards
from pipeline.transform import MergeCountsFn, make_preprocessing_fn, reduce_counts

_progress = None  # one bar per worker process (the whole job under the local DirectRunner)


def _advance_progress(total_bytes: int | None, done: int) -> None:
    global _progress
    if _progress is None:
        from tqdm import tqdm

        _progress = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="read+parse", mininterval=2)
    _progress.update(done)


class ReadAndParse(beam.DoFn):
    """One file range -> raw record batches tagged by split, rejected lines, counts.

    With a `time_field` (`--split time`) every good batch goes to UNSPLIT: its
    split depends on the time cut-offs of all rows (`SplitByTime`). `tables`:
    the schema's side tables (a side input), joined to each parsed batch.
    """

    def __init__(self, spec: DatasetSpec, layouts: dict[str, Layout], seed: int, batch_lines: int,
                 total_bytes: int | None = None, time_field: str | None = None):
        self._spec = spec
        self._layouts = layouts
        self._seed = seed
        self._batch_lines = batch_lines
        self._total_bytes = total_bytes
        self._time_field = time_field

    def process(self, rng: FileRange, tables: tuple[SideTable, ...] = ()) -> Iterator:
        layout = self._layouts[rng.path]
        counts = InputCounts.zero()
        for lines in read_line_batches(rng, layout.header, self._batch_lines):
            parsed = join_rows(parse_lines(lines, layout, self._spec, self._seed, self._time_field), self._spec,
                               tables)
            _advance_progress(self._total_bytes, sum(map(len, lines)) + len(lines))
            rejected = dict.fromkeys(REASONS, 0)
            for reason, line in parsed.rejected:
                rejected[reason] += 1
                yield beam.pvalue.TaggedOutput("rejected", (reason, line))
            by_split = {UNSPLIT: parsed.rows} if self._time_field else parsed.by_split()
            for split, batch in by_split.items():
                if batch.num_rows:
                    yield beam.pvalue.TaggedOutput(split, batch)
            counts += InputCounts(parsed.lines, rejected, {s: b.num_rows for s, b in by_split.items()})
        yield beam.pvalue.TaggedOutput("counts", (rng.path, counts))


def _time_values(batch: pa.RecordBatch, field: str) -> np.ndarray:
    """The time column of rows parsed with `time_field` (one value per row: missing rows were rejected)."""
    return np.asarray(batch.column(field).flatten(), dtype=np.int64)


def time_cutoffs(keys_counts: tuple[np.ndarray, np.ndarray]) -> dict[str, int]:
    """Valid and test start times of `--split time`, from the rows per distinct time value.

    Test: the latest time values that together hold at least 10% of the rows;
    valid: the latest values before those holding at least 10%; train: the
    rest. Rows with equal time never straddle a cut, so a split may get more
    than 10% (or valid none, when test needs every value).
    """
    keys, counts = keys_counts
    if not len(keys):
        return {"valid_from": 0, "test_from": 0}
    total = int(counts.sum())
    before = np.cumsum(counts) - counts  # rows strictly earlier than keys[i]
    test = int(np.flatnonzero(total - before >= 0.1 * total)[-1])
    earlier = np.flatnonzero(before[test] - before[:test] >= 0.1 * total)
    valid = int(earlier[-1]) if len(earlier) else test
    return {"valid_from": int(keys[valid]), "test_from": int(keys[test])}


class SplitByTime(beam.DoFn):
    """UNSPLIT batches -> train / valid / test by the time cut-offs (a side input)."""

    def __init__(self, field: str):
        self._field = field

    def process(self, batch: pa.RecordBatch, cutoffs: dict[str, int]) -> Iterator:
        times = _time_values(batch, self._field)
        index = (times >= cutoffs["valid_from"]).astype(np.int8) + (times >= cutoffs["test_from"])
        for i, split in enumerate(SPLIT_NAMES):
            part = batch.filter(pa.array(index == i))
            if part.num_rows:
                yield beam.pvalue.TaggedOutput(split, part)


def split_stats(batch: pa.RecordBatch, fields: list[str]) -> SplitStats:
    """Rows, positives and OOV / missing / value ids per field of one transformed batch."""
    oov, missing, tokens = {}, {}, {}
    for name in fields:
        ids = np.asarray(batch.column(name).flatten())
        oov[name] = int((ids == OOV_ID).sum())
        missing[name] = int((ids == MISSING_ID).sum())
        tokens[name] = int(((ids != MISSING_ID) & (ids != PAD_ID)).sum())
    labels = batch.schema.get_field_index(LABEL_KEY)
    positives = int(np.asarray(batch.column(labels).flatten()).sum()) if labels >= 0 else 0
    return SplitStats(batch.num_rows, positives, oov, missing, tokens)


def batch_histograms(batch: pa.RecordBatch, fields: list[str]) -> dict[str, np.ndarray]:
    """pipeline.distributions' id histograms of one transformed batch."""
    return id_histograms({name: np.asarray(batch.column(name).flatten()) for name in fields})


def _with_dummy_label(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Unlabeled rows for a labeled graph: a label of 0 that `_WriteSplit` drops again."""
    offsets = pa.array(np.arange(batch.num_rows + 1, dtype=np.int32))
    label = pa.ListArray.from_arrays(offsets, pa.array(np.zeros(batch.num_rows, np.int64)))
    return batch.append_column(LABEL_KEY, label)


def _without_label(schema):
    """A copy of a TFT schema proto without the label feature."""
    out = type(schema)()
    out.CopyFrom(schema)
    kept = [f for f in out.feature if f.name != LABEL_KEY]
    del out.feature[:]
    out.feature.extend(kept)
    return out


def _sum(records: Iterable, zero):
    """Field-by-field sum of InputCounts or SplitStats records (`zero` for none)."""
    return functools.reduce(operator.add, records, zero)


def _to_json_line(value) -> str:
    return json.dumps(value)


@beam.ptransform_fn
def _WriteJson(pcoll, path: str):
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


class _LoopbackServer:
    """A grpc.Server whose wildcard ports bind the loopback interface instead."""

    def __init__(self, server: Any) -> None:
        self._server = server

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address.replace("[::]:", "localhost:", 1))


class _LoopbackGrpc:
    """The grpc module as the FnApiRunner sees it, with servers bound to loopback."""

    def __getattr__(self, name: str) -> Any:
        import grpc

        return getattr(grpc, name)

    def server(self, *args: Any, **kwargs: Any) -> _LoopbackServer:
        import grpc

        return _LoopbackServer(grpc.server(*args, **kwargs))


@contextlib.contextmanager
def _runner_servers_on_loopback():
    """Binds the DirectRunner's gRPC servers (the FnApiRunner's control, data,
    state and logging; the external worker pool; each multi_processing worker's
    logging server) to loopback.

    Beam 2.77 listens on `[::]:0`, every interface, for the whole job, with no
    authentication, while its workers (threads, or processes of this machine
    for multi_processing) dial `localhost:PORT`. `localhost:0` serves them the
    same and nothing outside the machine.
    """
    from apache_beam.runners.portability import local_job_service
    from apache_beam.runners.portability.fn_api_runner import worker_handlers
    from apache_beam.runners.worker import worker_pool_main

    modules = (worker_handlers, worker_pool_main, local_job_service)
    saved = [vars(module)["grpc"] for module in modules]
    for module in modules:
        vars(module)["grpc"] = _LoopbackGrpc()
    try:
        yield
    finally:
        for module, grpc_module in zip(modules, saved, strict=True):
            vars(module)["grpc"] = grpc_module


def build_and_run(job: JobSpec) -> None:
    """Runs the Beam pipeline; outputs land in job.work_dir."""
    global _progress
    try:
        with _no_time_based_data_flush(), _runner_servers_on_loopback():
            _build_and_run(job)
    finally:
        if _progress is not None:
            _progress.close()
            _progress = None


def _build_and_run(job: JobSpec) -> None:
    graph_spec = job.transform_spec
    raw_metadata = dataset_metadata.DatasetMetadata(
        schema_utils.schema_from_feature_spec(graph_spec.raw_feature_spec())
    )
    adapter_config = tensor_adapter.TensorAdapterConfig(
        raw_arrow_schema(graph_spec),
        tensor_representation_util.InferTensorRepresentationsFromSchema(raw_metadata.schema),
    )
    options = PipelineOptions(list(job.beam_args))
    with beam.Pipeline(options=options) as p, tft_beam.Context(
        temp_dir=os.path.join(job.work_dir, TFT_TMP), force_tf_compat_v1=False
    ):
        side_input = {}
        if job.spec.joins:  # the side tables, read once by a worker, reach every ReadAndParse as a side input
            tables = p | "JoinSpec" >> beam.Create([job.spec]) | "ReadSideTables" >> beam.Map(load_side_tables)
            side_input["tables"] = beam.pvalue.AsSingleton(tables)
        reads = 1 + (job.run_dir is None) + bool(job.time_field)  # the progress bar counts the bytes of all
        read = functools.partial(_read_splits, p, job, side_input, (job.input_bytes or 0) * reads or None)
        # Every pass reads the files anew: a PCollection read after an analysis (or by two stages) is
        # held whole in memory by the FnApiRunner, so re-reading is what bounds memory by vocabularies.
        cutoffs = _time_cutoffs(read("Times", None).unsplit, job) if job.time_field else None
        if job.run_dir is None:
            train = read("Analyze", cutoffs).splits[job.split_names[0]]
            transform_fn = (train, adapter_config) | "AnalyzeTrain" >> tft_beam.AnalyzeDataset(
                make_preprocessing_fn(graph_spec, job.min_count)
            )
            _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(job.work_dir)
            _ = raw_metadata | "WriteRawMetadata" >> tft_beam.WriteMetadata(
                os.path.join(job.work_dir, tft.TFTransformOutput.RAW_METADATA_DIR), pipeline=p
            )
        else:  # `pipeline transform`: the run's graph, no analysis (the job copies the graph over)
            transform_fn = p | "ReadTransformFn" >> tft_beam.ReadTransformFn(job.run_dir)
        parsed = read("", cutoffs)
        for split in job.split_names:
            pcoll, metadata = (
                ((parsed.splits[split], adapter_config), transform_fn)
                | f"Transform{split.title()}" >> tft_beam.TransformDataset(output_record_batches=True)
            )
            _ = pcoll | f"Write{split.title()}" >> _WriteSplit(metadata, split, job)
        _ = parsed.counts | "WriteInputCounts" >> _WriteInputCounts(job.work_dir)
        _ = parsed.rejected | "WriteRejected" >> _WriteRejected(job.work_dir)


@dataclasses.dataclass
class _Parsed:
    """One read of the inputs: raw batches per split (UNSPLIT alone in a `--split time` first read)."""

    splits: dict
    unsplit: object
    rejected: object
    counts: object


def _read_splits(p, job: JobSpec, side_input: dict, progress_bytes: int | None, label: str, cutoffs) -> _Parsed:
    """Reads and parses every range; `cutoffs` (a PCollection) splits UNSPLIT rows by time, if given."""
    tags = (UNSPLIT,) if job.time_field else job.split_names
    parsed = (
        p
        | f"{label}Ranges" >> beam.Create(list(job.ranges))
        | f"{label}Distribute" >> beam.Reshuffle()  # of the ranges only: spreads them over the workers
        | f"{label}ReadAndParse"
        >> beam.ParDo(
            ReadAndParse(job.spec, job.layouts, job.seed, job.batch_lines, progress_bytes, job.time_field),
            **side_input,
        ).with_outputs(*tags, "rejected", "counts")
    )
    if job.time_field and cutoffs is not None:
        by_time = parsed[UNSPLIT] | f"{label}SplitByTime" >> beam.ParDo(
            SplitByTime(job.time_field), beam.pvalue.AsSingleton(cutoffs)
        ).with_outputs(*SPLIT_NAMES)
        splits = {split: by_time[split] for split in SPLIT_NAMES}
    else:
        splits = {split: parsed[split] for split in tags if split != UNSPLIT}
    if job.dummy_label:
        splits = {s: pcoll | f"{label}DummyLabel{s.title()}" >> beam.Map(_with_dummy_label)
                  for s, pcoll in splits.items()}
    return _Parsed(splits, parsed[UNSPLIT] if job.time_field else None, parsed.rejected, parsed.counts)


def _time_cutoffs(unsplit, job: JobSpec):
    """`--split time`: the cut-offs (a one-element PCollection) from the histogram of all rows' times."""
    field = job.time_field or ""
    cutoffs = (
        unsplit
        | "TimeHistogram" >> beam.Map(lambda batch: reduce_counts(_time_values(batch, field), None))
        | "MergeTimes" >> beam.CombineGlobally(MergeCountsFn())
        | "TimeCutoffs" >> beam.Map(time_cutoffs)
    )
    _ = cutoffs | "WriteTimeSplit" >> _WriteJson(os.path.join(job.work_dir, STATS_TMP, TIME_SPLIT_FILE))
    return cutoffs


@beam.ptransform_fn
def _WriteSplit(pcoll, metadata, split: str, job: JobSpec):
    """Transformed record batches of one split -> its TFRecord shards and its SplitStats file."""
    fields = job.spec.field_names
    drop = job.dummy_label
    # What tft_beam.EncodeTransformedDataset does (tfx-bsl's encoder built from the schema in
    # TFT's transformed metadata), except that a batch stays one element: the library flattens
    # it to one element per record, and per-record elements through WriteToFiles' shard
    # grouping cost 11-17% more CPU here (whole job and write path, 300k rows, 2026-11-28).
    # Metadata of an analysis is deferred (a PCollection); one read with the graph is a plain object.
    deferred = getattr(metadata, "deferred_metadata", None)
    if deferred is None:
        deferred = pcoll.pipeline | "Metadata" >> beam.Create([metadata])
    encoder = (
        deferred
        | "Schema" >> beam.Map(lambda m: _without_label(m.schema) if drop else m.schema)
        | "Encoder" >> beam.Map(RecordBatchToExamplesEncoder)
    )
    batches = pcoll | "Batch" >> beam.Map(lambda el: el[0].drop_columns([LABEL_KEY]) if drop else el[0])
    _ = (
        batches
        | "Encode" >> beam.Map(lambda batch, coder: coder.encode(batch), coder=beam.pvalue.AsSingleton(encoder))
        | "WriteRecords" >> WriteShards(job.work_dir, split, job.output_shards)
    )
    stats = (
        batches
        | "Stats" >> beam.Map(lambda batch: split_stats(batch, fields))
        | "SumStats" >> beam.CombineGlobally(_sum, zero=SplitStats.zero(fields))
        | "StatsDict" >> beam.Map(dataclasses.asdict)
    )
    zero = {name: np.zeros(OTHER_BIN + 1, np.int64) for name in fields}
    _ = (
        batches
        | "Histograms" >> beam.Map(batch_histograms, fields)
        | "SumHistograms" >> beam.CombineGlobally(lambda hs: functools.reduce(add_histograms, hs, zero))
        | "HistogramsDict" >> beam.Map(lambda hs: {name: h.tolist() for name, h in hs.items()})
        | "WriteHistograms" >> _WriteJson(os.path.join(job.work_dir, STATS_TMP, histogram_file(split)))
    )
    return stats | "WriteStats" >> _WriteJson(os.path.join(job.work_dir, STATS_TMP, split_stats_file(split)))


@beam.ptransform_fn
def _WriteInputCounts(counts, work_dir: str):
    """(path, InputCounts) per file range -> one JSON list of the counts per input file."""
    per_input = (
        counts
        | "SumCounts" >> beam.CombinePerKey(_sum, zero=InputCounts.zero())
        | "CountsDict" >> beam.Map(lambda kv: {"path": kv[0], **dataclasses.asdict(kv[1])})
        | "AllCounts" >> beam.combiners.ToList()
    )
    return per_input | "WriteCounts" >> _WriteJson(os.path.join(work_dir, STATS_TMP, INPUT_COUNTS_FILE))


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
