"""Raw rows of a file as the raw feature spec wants them: for clients (serving, scoring, tests).

The same layout detection and validation as the Beam job (pipeline.parse).
`iter_raw_examples` skips the rows the job would reject (export verification,
tests); `iter_numbered_rows` yields every row with its line number and, for a
bad one, the reason (line-aligned batch scoring, pipeline.batch_scoring).
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterator

from pipeline.features import LABEL_KEY
from pipeline.file_layout import BOM, Layout, detect_layout
from pipeline.joins import join_rows, load_side_tables
from pipeline.parse import libsvm_to_tsv, parse_lines
from pipeline.sources import FileRange, first_line, read_line_batches, resolve_inputs
from pipeline.specs import DatasetSpec, SpecError, load_spec

__all__ = ["DatasetSpec", "load_spec", "iter_raw_examples", "serialize_example", "NumberedRow",
           "ScoringLayout", "scoring_layout", "iter_numbered_rows"]

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


@dataclasses.dataclass(frozen=True)
class NumberedRow:
    """One non-blank row of a file: its 1-based line number, its text, and either its
    features (as `iter_raw_examples` yields them, no label) or why it is bad (a
    pipeline.parse REASONS code)."""

    line: int
    text: bytes
    features: dict[str, list] | None
    reason: str | None = None


@dataclasses.dataclass(frozen=True)
class ScoringLayout:
    """How to read a file for scoring: its layout, whether it carries the label column
    (ignored either way: scoring never needs it), and the names of its columns (the
    header's cells, or the schema's columns) for --keep_columns."""

    path: str
    layout: Layout
    labeled: bool
    column_names: tuple[str, ...]

    def column_index(self, name: str) -> int:
        """Position of column `name` in each line; SpecError naming the columns there are."""
        if name not in self.column_names:
            raise SpecError(f"{self.path} has no column {name!r}; its columns are "
                            f"{[c for c in self.column_names if c]}")
        return self.column_names.index(name)

    def cells(self, text: bytes) -> list[str]:
        """A line's cells as in the file (quotes removed), for copying columns to the output."""
        line = libsvm_to_tsv(text) if self.layout.libsvm else text
        return _split(line.decode("utf-8", "replace"), self.layout)


def _split(line: str, layout: Layout) -> list[str]:
    if layout.quoting and '"' in line:
        try:
            return next(csv.reader([line], delimiter=layout.delimiter))
        except (csv.Error, StopIteration):
            pass  # a malformed quote: the row is bad anyway, its cells as split plainly
    return line.split(layout.delimiter)


def scoring_layout(path: str, spec: DatasetSpec, unlabeled: bool | None = None) -> ScoringLayout:
    """The layout of a file to score with `spec`'s graph, with or without the label column.

    `unlabeled` None detects it from the first line (header or column count):
    a file with the label column is read with it (and the label ignored), one
    without it by `spec.without_label()`. SpecError (the labeled layout's
    message) when neither fits: the file is not of this schema.
    """
    first = first_line(path).decode("utf-8", "replace")
    if unlabeled is None and spec.labeled:
        tries = [spec, spec.without_label()]
    else:
        tries = [spec.without_label() if unlabeled else spec]
    error: SpecError | None = None
    for candidate in tries:
        try:
            layout = detect_layout(first, candidate, path)
        except SpecError as err:
            error = error or err
            continue
        if layout.header:
            names = tuple(c.strip() for c in _split(first.removeprefix(BOM).rstrip("\r\n"), layout))
        else:
            names = tuple(n or "" for n in layout.names)
        return ScoringLayout(path, layout, candidate.labeled, names)
    assert error is not None
    raise error


def iter_numbered_rows(where: ScoringLayout, spec: DatasetSpec) -> Iterator[NumberedRow]:
    """Every non-blank row of the file in order: features, or the reason it cannot be scored.

    The label column, where present, is skipped unread: a row is never bad
    for its label alone. Blank lines are not rows (they keep their numbers).
    """
    parse_spec = dataclasses.replace(spec, label_column=None)  # no label read, none required
    tables = load_side_tables(spec)  # schema `joins:`: rows carry the joined fields (pipeline.joins)
    layout = where.layout
    number = 1 + int(layout.header)
    for lines in read_line_batches(FileRange(where.path, 0, None), layout.header, _BATCH_LINES):
        numbered = []
        for line in lines:
            if line.strip():
                numbered.append((number, line[:-1] if line.endswith(b"\r") else line))
            number += 1
        parsed = join_rows(parse_lines([text for _, text in numbered], layout, parse_spec, seed=0),
                           parse_spec, tables)
        # A row's verdict depends on its bytes only, so the rejected lines are known by content.
        bad = {text: reason for reason, text in parsed.rejected}
        columns = parsed.rows.to_pydict()
        good = 0
        for line_number, text in numbered:
            reason = bad.get(text)
            if reason is not None:
                yield NumberedRow(line_number, text, None, reason)
            else:
                yield NumberedRow(line_number, text, {name: values[good] for name, values in columns.items()})
                good += 1
        if good != parsed.rows.num_rows:
            raise AssertionError(f"{where.path}: {good} good rows matched of {parsed.rows.num_rows}")
