"""Keyed side tables joined to the main file's rows (schema `joins:`, docs/SCHEMA.md §Joins).

A side table (MovieLens `u.user`, `u.item`) is read whole: it must fit in
memory, as users and items do. It is parsed by the main file's rules
(pipeline.parse, each joined column with its field's kind) into its keys and
one list column per joined field. The Beam job hands the tables to every
worker as a side input (pipeline.beam_graph); pipeline.raw_rows joins the same
way for clients, so that a served request carries the joined row exactly as
the TFRecords saw it. A main row whose key the table lacks gets the joined
fields missing; a duplicate key, an empty key or an unreadable row in a side
table stops the run (JoinError, exit 2).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import UsageError
from pipeline.file_layout import detect_layout
from pipeline.parse import ParsedBatch, parse_lines, raw_arrow_schema
from pipeline.sources import FileRange, first_line, read_line_batches, resolve_inputs
from pipeline.specs import DatasetSpec, Join, LabelRule, RawColumn

_BATCH_LINES = 100_000


class JoinError(UsageError):
    """A side table cannot be joined: unreadable rows, an empty or a duplicate key."""


@dataclasses.dataclass(frozen=True)
class SideTable:
    """One side table, parsed: unique binary `keys` and, per joined field, one list per key."""

    join: Join
    keys: pa.Array
    columns: dict[str, pa.ListArray]


def _side_spec(spec: DatasetSpec, join: Join) -> DatasetSpec:
    """The side table as a dataset of its own: the key (text) and the joined fields, no label."""
    return DatasetSpec(
        name=f"{spec.name} side table {join.path}",
        columns=join.columns,
        label_column=None,
        label_rule=LabelRule("binary"),
        raw_columns=(RawColumn(join.table_key, "categorical"), *spec.joined_columns(join)),
        delimiter=join.delimiter,
        header=join.header,
        quoting=join.quoting,
    )


def _utf8(lines: list[bytes], encoding: str) -> list[bytes]:
    """Lines re-encoded as UTF-8 (what the parser and tf.Example strings hold)."""
    if encoding == "utf-8":
        return lines
    return [line.decode(encoding).encode("utf-8") for line in lines]


def _read_table(spec: DatasetSpec, join: Join, index: int) -> SideTable:
    side = _side_spec(spec, join)
    where = f"joins[{index}] side table"
    batches = []
    for path, _ in resolve_inputs([join.path]):
        try:
            head = first_line(path).decode(join.encoding)
        except UnicodeDecodeError as err:
            raise JoinError(f"{where} {path}: not {join.encoding} ({err}); set the join's encoding:") from err
        layout = detect_layout(head, side, path)
        for lines in read_line_batches(FileRange(path, 0, None), layout.header, _BATCH_LINES):
            try:
                parsed = parse_lines(_utf8(lines, join.encoding), layout, side, seed=0)
            except UnicodeDecodeError as err:
                raise JoinError(f"{where} {path}: not {join.encoding} ({err}); set the join's encoding:") from err
            if parsed.rejected:
                reason, line = parsed.rejected[0]
                raise JoinError(
                    f"{where} {path}: {len(parsed.rejected)} rows cannot be read as the schema says, the first "
                    f"for {reason}: {line[:120].decode('utf-8', 'replace')!r}; fix the file or the fields' kinds"
                )
            batches.append(parsed.rows)
    if not sum(batch.num_rows for batch in batches):
        raise JoinError(f"{where} {join.path} holds no data rows")
    rows = pa.Table.from_batches(batches).combine_chunks()
    key_lists = rows.column(join.table_key).combine_chunks()
    empty = np.flatnonzero(_to_numpy(key_lists.value_lengths()) == 0)
    if len(empty):
        raise JoinError(f"{where} {join.path}: data row {empty[0] + 1} has an empty key column {join.table_key!r}")
    keys = key_lists.flatten()
    unique, counts = np.unique(_to_numpy(keys).astype(object), return_counts=True)
    if counts.max(initial=0) > 1:
        dupe = unique[np.argmax(counts > 1)]
        raise JoinError(
            f"{where} {join.path}: key {dupe.decode('utf-8', 'replace')!r} appears {counts.max()} times in column "
            f"{join.table_key!r}; a side table needs unique keys (deduplicate it; see docs/SCHEMA.md §Joins)"
        )
    columns = {col.name: rows.column(col.name).combine_chunks() for col in spec.joined_columns(join)}
    return SideTable(join, keys, columns)


def load_side_tables(spec: DatasetSpec) -> tuple[SideTable, ...]:
    """Every side table of `spec`, read and checked (none without joins); JoinError on a bad table."""
    return tuple(_read_table(spec, join, i) for i, join in enumerate(spec.joins))


def _to_numpy(array: pa.Array) -> np.ndarray:
    return array.to_numpy(zero_copy_only=False)


def _lookup(keys: pa.ListArray, table: SideTable) -> np.ndarray:
    """Row of `table` per main row (-1: no key, or a key the table lacks)."""
    present = _to_numpy(keys.value_lengths().fill_null(0)) > 0
    found = pc.index_in(keys.flatten(), value_set=table.keys).fill_null(-1)
    rows = np.full(len(keys), -1, dtype=np.int64)
    rows[present] = _to_numpy(found)
    return rows


def _take_lists(column: pa.ListArray, rows: np.ndarray) -> pa.ListArray:
    """The lists of `column` at `rows`, an empty list (missing) where the row is -1."""
    hit = rows >= 0
    taken = column.take(pa.array(rows[hit]))
    lengths = np.zeros(len(rows), dtype=np.int32)
    lengths[hit] = _to_numpy(taken.value_lengths())
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), taken.flatten())


def join_rows(parsed: ParsedBatch, spec: DatasetSpec, tables: tuple[SideTable, ...]) -> ParsedBatch:
    """`parse_lines`' rows with every joined field added, in the spec's field order (the raw schema)."""
    if not spec.joins:
        return parsed
    rows = parsed.rows
    joined: dict[str, pa.Array] = {}
    for table in tables:
        at = _lookup(rows.column(table.join.key), table)
        joined |= {name: _take_lists(column, at) for name, column in table.columns.items()}
    schema = raw_arrow_schema(spec)
    arrays = [joined[name] if name in joined else rows.column(name) for name in schema.names]
    return dataclasses.replace(parsed, rows=pa.RecordBatch.from_arrays(arrays, schema=schema))
