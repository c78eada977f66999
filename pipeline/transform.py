"""The TFT preprocessing_fn: raw features -> one int64 id per field (docs/DESIGN.md §Preprocessing).

Id layout of every field: 0 = out of vocabulary, 1 = missing, 2.. = values
seen in the training split (at least `min_count` times for categorical
fields, once for integer fields), most frequent first.

Speed: instead of one `tft.vocabulary` per field (the main cost of a naive
job), every (field, value) pair becomes one int64 key and a single custom
analyzer counts all keys with numpy and writes one `key<TAB>id` asset, plus
a small asset of kept values per field from which each output's id range is
recorded in the transformed schema (readers ask TFT:
`num_buckets_for_transformed_feature`).
Categorical keys are 54-bit fingerprints of the token inside their field's
key range: two distinct tokens of one field share an id with probability
~n^2/2^55 (n = distinct tokens of the field), i.e. never in practice.
"""

from __future__ import annotations

import contextlib
import os

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam

from pipeline.dataset_info import PAD_ID
from pipeline.features import (
    FIELD_INDEX_BITS,
    FIRST_VALUE_ID,
    LABEL_KEY,
    MAX_FIELDS,
    MISSING_ID,
    OOV_ID,
)
from pipeline.specs import HOUR_FIELDS, DatasetSpec

VOCAB_ASSET = "vocabulary.tsv"
SIZES_ASSET = "vocabulary_sizes.txt"  # values kept per vocabulary field, one line each
# The vocabulary asset's contents when no key is kept (and before analysis): one line
# for a key that never occurs (keys are >= 0), since TF cannot build a table from an
# empty file. An empty training split then still yields a graph, and the job's own
# check reports the empty split (with the rejected rows) instead of a TF traceback.
EMPTY_VOCABULARY = b"-2\t0\n"

# Key of one (field, value): [string flag: 1 bit][field: FIELD_INDEX_BITS][value: 54 bits].
_FIELD_SHIFT = 54
_STRING_FLAG = 1 << (_FIELD_SHIFT + FIELD_INDEX_BITS)
_INT_OFFSET = 1 << 52
# Columns per feature in `_first_values_stacked`: more than the values one tf.Example
# can hold for a feature within any message size limit.
_CELL_WIDTH = 1 << 32


def field_of_key(keys: np.ndarray) -> np.ndarray:
    """Field index encoded in vocabulary keys (see `_integer_keys`, `_string_keys`)."""
    return (keys >> _FIELD_SHIFT) & (MAX_FIELDS - 1)


def value_labels(keys: np.ndarray) -> list[str]:
    """Run-independent names of vocabulary keys: `#` + a token's fingerprint (hex), or an integer token."""
    values = keys & ((1 << _FIELD_SHIFT) - 1)
    strings = (keys & _STRING_FLAG) != 0
    return [f"#{int(v):014x}" if s else str(int(v) - _INT_OFFSET) for v, s in zip(values, strings, strict=True)]


def discretize(values: tf.Tensor) -> tf.Tensor:
    """Criteo integer rule: v > 2 -> floor(ln(v)^2), else v itself (0, 1, 2, negatives).

    As in the reference code the result is an integer token, so e.g. 3
    (floor(ln(3)^2) = 1) shares the token of 1.
    """
    log_sq = tf.floor(tf.square(tf.math.log(tf.maximum(tf.cast(values, tf.float64), 1.0))))
    return tf.where(values > 2, tf.cast(log_sq, tf.int64), values)


def _first_values(sparse: tf.SparseTensor, default) -> tuple[tf.Tensor, tf.Tensor]:
    """(first value per row, present mask) of a VarLen feature; robust to all-missing batches."""
    values, present = _first_values_stacked([sparse], default)
    return values[:, 0], present[:, 0]


def _first_values_stacked(sparses: list[tf.SparseTensor], default) -> tuple[tf.Tensor, tf.Tensor]:
    """(first value, present mask), both [rows, F], of F VarLen features of one dtype.

    A fixed number of graph ops whatever F (no op per feature): the exported
    TFT graph runs per serving request, where the cost at batch 1 is per op,
    not per value. One SparseConcat joins the F features, each widened to
    `_CELL_WIDTH` columns, so that value c of feature j lands in column
    j * _CELL_WIDTH + c and one indices tensor gives every value's field.
    """
    rows = sparses[0].dense_shape[0]
    shape = tf.stack([rows, len(sparses)])
    wide = tf.stack([rows, _CELL_WIDTH])
    joined = tf.sparse.concat(1, [tf.SparseTensor(s.indices, s.values, wide) for s in sparses])
    row, column = joined.indices[:, 0], joined.indices[:, 1]
    cell = tf.stack([row, column // _CELL_WIDTH], axis=1)  # (row, field) of every value
    present = tf.scatter_nd(cell, tf.ones_like(row), shape) > 0
    first = tf.where(tf.equal(column % _CELL_WIDTH, 0))[:, 0]
    dense = tf.tensor_scatter_nd_update(
        tf.fill(shape, tf.constant(default, joined.values.dtype)),
        tf.gather(cell, first), tf.gather(joined.values, first),
    )
    return dense, present


def discretize_float(values: tf.Tensor) -> tf.Tensor:
    """The integer rule on floats: v > 2 -> floor(ln(v)^2), else floor(v) (so 0.5 -> 0, -1.5 -> -2)."""
    v = tf.cast(values, tf.float64)
    log_sq = tf.floor(tf.square(tf.math.log(tf.maximum(v, 1.0))))
    small = tf.clip_by_value(tf.floor(v), -float(_INT_OFFSET), float(_INT_OFFSET - 1))
    return tf.cast(tf.where(v > 2, log_sq, small), tf.int64)


def _token_keys(fields: list[int], tokens: tf.Tensor) -> tf.Tensor:
    """Keys of [rows, len(fields)] integer tokens, column j of field fields[j]."""
    bucket = tf.clip_by_value(tokens, -_INT_OFFSET, _INT_OFFSET - 1)
    return tf.constant([(f << _FIELD_SHIFT) + _INT_OFFSET for f in fields], tf.int64) + bucket


def _integer_keys(fields: list[int], values: tf.Tensor) -> tf.Tensor:
    """Keys of [rows, len(fields)] integer values, column j of field fields[j]."""
    return _token_keys(fields, discretize(values))


def _float_keys(fields: list[int], values: tf.Tensor) -> tf.Tensor:
    """Keys of [rows, len(fields)] float values (the integer rule on floor(v))."""
    return _token_keys(fields, discretize_float(values))


def _string_keys(fields: list[int], tokens: tf.Tensor) -> tf.Tensor:
    """Keys of [rows, len(fields)] tokens, column j of field fields[j]."""
    fingerprint = tf.strings.to_hash_bucket_fast(tokens, 1 << _FIELD_SHIFT)
    return tf.constant([_STRING_FLAG + (f << _FIELD_SHIFT) for f in fields], tf.int64) + fingerprint


def _calendar_ids(hour: tf.Tensor, weekday: tf.Tensor, valid: tf.Tensor, present: tf.Tensor) -> list[tf.Tensor]:
    """hour_of_day, weekday (Mon = 0), is_weekend ids (values + 2; OOV if invalid, missing if absent)."""
    values = [hour, weekday, tf.cast(weekday >= 5, tf.int64)]
    return [
        tf.where(present, tf.where(valid, v + FIRST_VALUE_ID, OOV_ID), MISSING_ID)
        for v in values
    ]


def _hour_fields(yymmddhh: tf.Tensor, present: tf.Tensor) -> list[tf.Tensor]:
    """Avazu hour -> hour_of_day, weekday (Mon = 0), is_weekend ids (values + 2)."""
    hour = yymmddhh % 100
    date = yymmddhh // 100
    year, month, day = 2000 + date // 10000, (date // 100) % 100, date % 100
    # days since 1970-01-01 (Howard Hinnant's days_from_civil), which was a Thursday.
    y = year - tf.cast(month <= 2, tf.int64)
    era = y // 400
    yoe = y - era * 400
    mp = (month + 9) % 12
    doy = (153 * mp + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146097 + doe - 719468
    weekday = (days + 3) % 7
    valid = (hour < 24) & (month >= 1) & (month <= 12) & (day >= 1) & (day <= 31)
    return _calendar_ids(hour, weekday, valid, present)


def _time_fields(seconds: tf.Tensor, present: tf.Tensor) -> list[tf.Tensor]:
    """Unix seconds (UTC) -> hour_of_day, weekday (Mon = 0), is_weekend ids (values + 2)."""
    days = seconds // 86400  # floor division: times before 1970 count back correctly
    hour = (seconds // 3600) % 24
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday
    return _calendar_ids(hour, weekday, tf.ones_like(present), present)


class CountVocabulary(tft_beam.experimental.PTransformAnalyzer):
    """Counts int64 keys of all fields in one pass and writes the `key<TAB>id` asset.

    Input elements: tuples holding one [batch, fields] int64 array (-1 = missing).
    Output: two single-element PCollections, the vocabulary and the sizes asset paths.
    """

    def __init__(self, min_counts: dict[int, int]):
        super().__init__()
        self._min_counts = min_counts

    def expand(self, pcoll):
        paths = (
            pcoll
            | "CountBatch" >> beam.Map(_count_batch)
            | "MergeCounts" >> beam.CombineGlobally(MergeCountsFn())
            | "WriteVocabulary" >> beam.Map(write_vocabulary, self._min_counts, self.base_temp_dir)
        )
        return (
            paths | "VocabularyPath" >> beam.Map(lambda p: p[0]),
            paths | "SizesPath" >> beam.Map(lambda p: p[1]),
        )


def _count_batch(batch) -> tuple[np.ndarray, np.ndarray]:
    keys = np.asarray(batch[0]).ravel()
    return reduce_counts(keys[keys >= 0], None)


def reduce_counts(keys: np.ndarray, counts: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    uniq, inverse = np.unique(keys, return_inverse=True)
    summed = np.bincount(inverse, weights=counts, minlength=len(uniq)).astype(np.int64)
    return uniq, summed


class MergeCountsFn(beam.CombineFn):
    """Sums (keys, counts) pairs; compacts every few inputs to bound memory."""

    _COMPACT_EVERY = 16

    def create_accumulator(self):
        return []

    def add_input(self, acc, element):
        acc.append(element)
        return [self._compact(acc)] if len(acc) >= self._COMPACT_EVERY else acc

    def merge_accumulators(self, accumulators):
        return [self._compact([pair for acc in accumulators for pair in acc])]

    def extract_output(self, acc):
        return self._compact(acc)

    @staticmethod
    def _compact(pairs) -> tuple[np.ndarray, np.ndarray]:
        if not pairs:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        keys = np.concatenate([k for k, _ in pairs])
        counts = np.concatenate([c for _, c in pairs])
        return reduce_counts(keys, counts)


def assign_ids(keys: np.ndarray, counts: np.ndarray, min_counts: dict[int, int]) -> np.ndarray:
    """Ids per key (-1 = below its field's min count): per field, by count desc then key."""
    fields = field_of_key(keys)
    threshold = np.zeros(MAX_FIELDS, dtype=np.int64)
    for field, min_count in min_counts.items():
        threshold[field] = min_count
    kept = counts >= threshold[fields]
    order = np.lexsort((keys, -counts, fields))
    order = order[kept[order]]
    ids = np.full(len(keys), -1, dtype=np.int64)
    sorted_fields = fields[order]
    starts = np.searchsorted(sorted_fields, sorted_fields, side="left")
    ids[order] = np.arange(len(order)) - starts + FIRST_VALUE_ID
    return ids


def write_vocabulary(keys_counts, min_counts: dict[int, int], temp_dir: str) -> tuple[str, str]:
    """Writes the `key<TAB>id` asset and the sizes asset (kept values per field of `min_counts`)."""
    keys, counts = keys_counts
    ids = assign_ids(keys, counts, min_counts)
    kept = ids >= 0
    tf.io.gfile.makedirs(temp_dir)
    path = os.path.join(temp_dir, VOCAB_ASSET)
    table = pa.table({"key": keys[kept], "id": ids[kept]})
    buffer = pa.BufferOutputStream()
    pacsv.write_csv(
        table, buffer, pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    )
    with tf.io.gfile.GFile(path, "wb") as out:
        out.write(buffer.getvalue().to_pybytes() if kept.any() else EMPTY_VOCABULARY)
    per_field = np.bincount(field_of_key(keys[kept]), minlength=MAX_FIELDS)
    sizes_path = os.path.join(temp_dir, SIZES_ASSET)
    with tf.io.gfile.GFile(sizes_path, "w") as out:
        out.write("".join(f"{per_field[field]}\n" for field in min_counts))
    return path, sizes_path


def _set_id_range(ids: tf.Tensor, values: tf.Tensor) -> None:
    """Records ids in [0, vocab_size(values)) in the transformed schema (TFT's int_domain).

    Readers get each field's vocabulary size from TFT's output
    (`TFTransformOutput.num_buckets_for_transformed_feature`), as for TFT's own
    vocabularies; TFT evaluates `values` once, after the analysis.
    """
    tft.schema_inference.set_tensor_schema_override(
        ids, tf.constant(0, tf.int64), tf.cast(values, tf.int64) + FIRST_VALUE_ID - 1
    )


def _lookup(keys: tf.Tensor, asset_path: tf.Tensor | str):
    """`key<TAB>id` table lookup, the table built and initialised once per loaded graph.

    When TFT traces the final graph, `asset_path` is an eager path: the table
    is then created under `tf.init_scope()`, so that it becomes a resource the
    SavedModel initialises at load (init op), as TFT's own vocabulary lookup
    does. Built inside the traced function instead, it would be re-created and
    `vocabulary.tsv` re-read on every call of the exported graph.
    """
    with contextlib.ExitStack() as stack:
        if tf.inside_function() and not tf.is_symbolic_tensor(asset_path):
            stack.enter_context(tf.init_scope())
        initializer = tf.lookup.TextFileInitializer(
            asset_path, tf.int64, 0, tf.int64, 1, delimiter="\t"
        )
        table = tf.lookup.StaticHashTable(initializer, default_value=OOV_ID)
        size = table.size()
    return table.lookup(keys), size


def vocab_fields(spec: DatasetSpec) -> list[tuple[int, str, str]]:
    """(field index in model order, raw column, vocabulary kind) of every vocabulary field.

    Vocabulary kinds: integer, float (the integer rule on floor(v)), categorical, multi.
    Hour and timestamp columns (3 fixed-range fields) and bucketized floats have none.
    """
    out, index = [], 0
    for col in spec.raw_columns:
        if not (col.kind in ("hour", "timestamp") or col.kind == "float" and col.buckets):
            out.append((index, col.name, col.kind))
        index += len(col.output_names)
    return out


def _first_column(ids: tf.Tensor) -> tf.Tensor:
    """[rows] ids as they are, the first column of [rows, n] ids (no op where the rank is known)."""
    if ids.shape.rank == 1:
        return ids
    if ids.shape.rank == 2:
        return ids[:, 0]
    return tf.reshape(ids, [tf.shape(ids)[0], -1])[:, 0]


def oov_fields(spec: DatasetSpec) -> list[str]:
    """The categorical fields (string tokens, single or multi-valued) whose OOV ids `oov_fraction` counts.

    Integer fields are left out: an unseen number is common in real traffic, an
    unseen token in most categorical fields is a row of another dataset.
    """
    return [col.name for col in spec.raw_columns if col.kind in ("categorical", "multi")]


def oov_fraction(transformed: dict[str, tf.Tensor], fields: list[str]) -> tf.Tensor:
    """Per row, the fraction of `fields` whose id is OOV_ID (float32 [rows]; 0 without fields).

    A multi-valued field ([rows, max_len]) counts by its first id (MISSING_ID
    when it has no token). A few ops whatever the number of fields (they run
    at every serving request): one stack, one compare, one mean.
    """
    if not fields:
        any_ids = next(iter(transformed.values()))
        return tf.zeros(tf.shape(any_ids)[:1], tf.float32)
    firsts = [_first_column(transformed[name]) for name in fields]
    is_oov = tf.cast(tf.equal(tf.stack(firsts, axis=1), OOV_ID), tf.float32)
    return tf.reduce_mean(is_oov, axis=1)


def _multi_tokens(text: tf.Tensor, separator: str, max_len: int) -> tuple[tf.Tensor, tf.Tensor]:
    """[rows] cells -> ([rows, max_len] tokens, present mask): empty tokens dropped, truncated, padded at the end."""
    tokens = tf.strings.split(text, separator)
    tokens = tf.ragged.boolean_mask(tokens, tf.not_equal(tokens, ""))
    dense = tokens.to_tensor(default_value="", shape=[None, max_len])
    return dense, tf.not_equal(dense, "")


def make_preprocessing_fn(spec: DatasetSpec, min_count: int):
    """preprocessing_fn mapping raw features of `spec` to field ids (and the label if labeled)."""
    vocab = vocab_fields(spec)
    min_counts = {f: (min_count if kind in ("categorical", "multi") else 1) for f, _, kind in vocab}
    position = {name: j for j, (_, name, _) in enumerate(vocab)}  # line of the sizes asset

    def preprocessing_fn(inputs):
        outputs: dict[str, tf.Tensor] = {}
        for col in spec.raw_columns:
            if col.kind in ("hour", "timestamp"):
                values, here = _first_values(inputs[col.name], 0)
                calendar = _hour_fields if col.kind == "hour" else _time_fields
                for (_, size), name, ids in zip(HOUR_FIELDS, col.output_names, calendar(values, here), strict=True):
                    outputs[name] = ids
                    _set_id_range(ids, tf.constant(size, tf.int64))
            elif col.kind == "float" and col.buckets:
                values, here = _first_values(inputs[col.name], 0.0)
                # Quantile boundaries of the training split's present values; buckets may be
                # empty when values repeat, the id range stays buckets + 2.
                boundaries = tft.quantiles(tf.boolean_mask(values, here), col.buckets, epsilon=0.01 / col.buckets)
                bucket = tft.apply_buckets(values, boundaries)
                outputs[col.name] = tf.where(here, tf.cast(bucket, tf.int64) + FIRST_VALUE_ID, MISSING_ID)
                _set_id_range(outputs[col.name], tf.constant(col.buckets, tf.int64))
        if vocab:
            # Every single-valued field of a kind at once ([rows, F] tensors), then each multi field.
            keys: list[tf.Tensor] = []
            present: list[tf.Tensor] = []
            columns: dict[str, tuple[int, int]] = {}
            for kind, default, to_keys in (("integer", 0, _integer_keys), ("float", 0.0, _float_keys),
                                           ("categorical", "", _string_keys)):
                group = [(field, name) for field, name, k in vocab if k == kind]
                if group:
                    values, here = _first_values_stacked([inputs[n] for _, n in group], default)
                    start = sum(int(k.shape[1]) for k in keys)
                    keys.append(to_keys([f for f, _ in group], values))
                    present.append(here)
                    columns.update({n: (start + j, 1) for j, (_, n) in enumerate(group)})
            for field, name, kind in vocab:
                if kind == "multi":
                    col = spec.column(name)
                    text, _ = _first_values(inputs[name], "")
                    tokens, here = _multi_tokens(text, col.separator or "", col.max_len)
                    columns[name] = (sum(int(k.shape[1]) for k in keys), col.max_len)
                    keys.append(_string_keys([field] * col.max_len, tokens))
                    present.append(here)
            all_keys, all_present = tf.concat(keys, axis=1), tf.concat(present, axis=1)
            stacked = tf.where(all_present, all_keys, -1)
            asset, sizes_asset = tft.experimental.ptransform_analyzer(
                inputs=[stacked],
                ptransform=CountVocabulary(min_counts),
                output_dtypes=[tf.string, tf.string],
                output_shapes=[[], []],
                # placeholder contents before analysis
                output_asset_default_values=[EMPTY_VOCABULARY, b"0\n" * len(vocab)],
                name="count_vocabulary",
            )
            kept = tf.strings.to_number(
                tf.strings.split(tf.strings.strip(tf.io.read_file(sizes_asset)), "\n"), tf.int64
            )
            ids = tft.apply_vocabulary(stacked, asset, lookup_fn=_lookup)
            # Single-valued fields: one where and one unstack for all (no ops per field).
            single = tf.unstack(tf.where(all_present, ids, MISSING_ID), axis=1)
            for name, (start, width) in columns.items():
                if spec.column(name).kind == "multi":
                    here = all_present[:, start:start + width]
                    field_ids = tf.where(here, ids[:, start:start + width], PAD_ID)
                    # No token at all: MISSING_ID first, the rest padding.
                    first = tf.logical_and(tf.logical_not(tf.reduce_any(here, axis=1, keepdims=True)),
                                           tf.equal(tf.range(width), 0)[tf.newaxis, :])
                    outputs[name] = tf.where(first, tf.constant(MISSING_ID, tf.int64), field_ids)
                else:
                    outputs[name] = single[start]
                _set_id_range(outputs[name], kept[position[name]])
        if spec.labeled:
            outputs[LABEL_KEY] = inputs[LABEL_KEY]
        return {name: outputs[name] for name in [*spec.field_names, *([LABEL_KEY] if spec.labeled else [])]}

    return preprocessing_fn
