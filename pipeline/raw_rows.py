"""Raw rows of a file as the raw feature spec wants them: for clients (serving, tests).

The same layout detection and validation as the Beam job (pipeline.parse),
one row at a time: rows the job would reject are skipped here.
"""

from __future__ import annotations

from collections.abc import Iterator

from pipeline.features import LABEL_KEY
from pipeline.file_layout import detect_layout
from pipeline.joins import join_rows, load_side_tables
from pipeline.parse import parse_lines
from pipeline.sources import FileRange, first_line, read_line_batches, resolve_inputs
from pipeline.specs import DatasetSpec, load_spec

__all__ = ["DatasetSpec", "load_spec", "iter_raw_examples", "serialize_example"]

_BATCH_LINES = 2048


def iter_raw_examples(
    path: str, spec: DatasetSpec, split: str | None = None, seed: int = 0
) -> Iterator[tuple[dict[str, list], int | None]]:
    """Yields (features, label) per valid row of `path` (plain or .gz, in file order).

    With `split` ("train", "valid" or "test") only the rows the job with
    `--seed seed` assigned to that split: the raw rows behind its TFRecords.

    features: {raw feature name: [value]} or [] where missing; integer features
    hold Python ints (timestamps: Unix seconds), float features floats, string
    features bytes (tf.train.BytesList wants bytes; a multi-valued field is
    its cell's text, e.g. b"a^b^c"). The label is 0/1 under the schema's
    label_rule; None for an unlabeled spec (`label: null`, `spec.without_label()`).
    """
    tables = load_side_tables(spec)  # schema `joins:`: rows carry the joined fields (pipeline.joins)
    for file_path, _ in resolve_inputs([path]):
        layout = detect_layout(first_line(file_path).decode("utf-8", "replace"), spec, file_path)
        for lines in read_line_batches(FileRange(file_path, 0, None), layout.header, _BATCH_LINES):
            parsed = join_rows(parse_lines(lines, layout, spec, seed=seed), spec, tables)
            rows = parsed.rows if split is None else parsed.by_split()[split]
            columns = rows.to_pydict()
            labels = columns.pop(LABEL_KEY, None)
            for i in range(rows.num_rows):
                yield {name: values[i] for name, values in columns.items()}, None if labels is None else labels[i][0]


def serialize_example(features: dict[str, list], label: int | None, spec: DatasetSpec) -> bytes:
    """A serialized raw tf.Example of one row (label included unless None), typed by `spec`."""
    import tensorflow as tf

    feature = {}
    for col in spec.raw_columns:
        values = features.get(col.name, [])
        if col.is_integer:
            feature[col.name] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        elif col.is_float:
            feature[col.name] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
        else:
            feature[col.name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
    if label is not None:
        feature[LABEL_KEY] = tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
