"""Vectorized parsing of a batch of raw lines into Arrow record batches per split.

Per-line Python parsing is what makes a naive TFT job slow; here a batch of
lines is split by pyarrow's C++ CSV reader (RFC 4180 quotes when the schema
allows them) and validated with arrow compute kernels. Bad rows are returned
untouched with their reason, never raised.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from pipeline.features import LABEL_KEY, SPLIT_NAMES
from pipeline.file_layout import Layout
from pipeline.specs import UNIX_TIME, DatasetSpec, LabelRule, RawColumn

# Rejection reasons, in the order they are checked (a row gets the first).
REASONS = ("undecodable", "column_count", "bad_label", "non_integer", "non_numeric", "bad_timestamp",
           "missing_time")
# Integers; integral floats such as "260.0" (seen in re-exported Criteo CSVs) count as integers.
_INT_PATTERN = r"^-?[0-9]{1,18}(\.0*)?$"
_NUMBER_PATTERN = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_BINARY_LABELS = {"0": 0, "1": 1, "0.0": 0, "1.0": 1}
_PM1_LABELS = {"-1": 0, "1": 1, "+1": 1, "-1.0": 0, "1.0": 1, "+1.0": 1}
_SPACES = re.compile(rb"\s+")


@dataclasses.dataclass
class ParsedBatch:
    """Good rows (file order) with their split index into `split_names`, bad rows with reasons."""

    rows: pa.RecordBatch
    splits: np.ndarray
    rejected: list[tuple[str, bytes]]
    lines: int
    split_names: tuple[str, ...] = SPLIT_NAMES

    def by_split(self) -> dict[str, pa.RecordBatch]:
        """Good rows grouped per split name."""
        return {name: self.rows.filter(pa.array(self.splits == i)) for i, name in enumerate(self.split_names)}


def _line_hashes(lines: list[bytes], seed: int) -> np.ndarray:
    """A 64-bit keyed hash of each line: depends only on the row's bytes and the seed, never on
    position, so that a split made from it is identical under any runner, sharding and parallelism.

    Copies of one keyed blake2b state: a keyed hash compresses the key block first, which the copy
    skips (a third less hashing time than a fresh keyed hash per line, the same digests).
    """
    keyed = hashlib.blake2b(digest_size=8, key=seed.to_bytes(8, "little", signed=True))

    def digest(line: bytes, copy=keyed.copy) -> bytes:
        state = copy()
        state.update(line)
        return state.digest()

    return np.frombuffer(b"".join([digest(line) for line in lines]), dtype="<u8").astype(np.uint64)


def split_ids(lines: list[bytes], seed: int) -> np.ndarray:
    """Split index into SPLIT_NAMES (8:1:1) from a keyed hash of each line."""
    buckets = _line_hashes(lines, seed) % np.uint64(10)
    return np.where(buckets < 8, 0, np.where(buckets == 8, 1, 2)).astype(np.int8)


def valid_cut(lines: list[bytes], seed: int, fraction: float) -> np.ndarray:
    """1 for the rows of a train file that go to valid (`--valid_fraction`), 0 for train: the same keyed hash."""
    units = (_line_hashes(lines, seed) >> np.uint64(11)).astype(np.float64) / float(1 << 53)  # uniform in [0, 1)
    return (units < fraction).astype(np.int8)


def _arrow_type(col: RawColumn) -> pa.DataType:
    return pa.int64() if col.is_integer else pa.float32() if col.is_float else pa.binary()


def raw_arrow_schema(spec: DatasetSpec) -> pa.Schema:
    """Arrow schema of the raw record batches: list columns (empty = missing) + the label if labeled."""
    return _list_schema([(col.name, _arrow_type(col)) for col in spec.raw_columns], spec.labeled)


def join_keys(spec: DatasetSpec) -> list[str]:
    """Main-file columns holding a join key that are no field: read as text for the lookup only."""
    fields = {col.name for col in spec.raw_columns}
    return list(dict.fromkeys(join.key for join in spec.joins if join.key not in fields))


def parsed_arrow_schema(spec: DatasetSpec) -> pa.Schema:
    """Arrow schema of `parse_lines`' rows: the main file's fields and join keys (pipeline.joins adds the rest)."""
    typed = [(col.name, _arrow_type(col)) for col in spec.file_columns]
    return _list_schema(typed + [(name, pa.binary()) for name in join_keys(spec)], spec.labeled)


def _list_schema(columns: list[tuple[str, pa.DataType]], labeled: bool) -> pa.Schema:
    fields = [pa.field(name, pa.list_(dtype)) for name, dtype in columns]
    if labeled:
        fields.append(pa.field(LABEL_KEY, pa.list_(pa.int64())))
    return pa.schema(fields)


def _undecodable(lines: list[bytes]) -> np.ndarray:
    bad = np.zeros(len(lines), dtype=bool)
    for i, line in enumerate(lines):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            bad[i] = True
    return bad


def _to_list_array(present_values: pa.Array, present: np.ndarray) -> pa.ListArray:
    """One-element lists where `present`, empty lists where missing."""
    offsets = np.zeros(len(present) + 1, dtype=np.int32)
    np.cumsum(present, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), present_values)


def _column_counts(lines: list[bytes], layout: Layout) -> np.ndarray:
    """Cells per line; lines holding a quote are counted by the csv module (RFC 4180)."""
    delim = layout.delimiter.encode()
    counts = np.fromiter((line.count(delim) + 1 for line in lines), dtype=np.int64, count=len(lines))
    if layout.quoting and any(b'"' in line for line in lines):
        for i, line in enumerate(lines):
            if b'"' in line:
                try:
                    counts[i] = len(next(csv.reader([line.decode("utf-8")], delimiter=layout.delimiter,
                                                    strict=True)))
                except (csv.Error, UnicodeDecodeError, StopIteration):
                    counts[i] = -1
    return counts


def _to_numpy(array: pa.Array) -> np.ndarray:
    return array.to_numpy(zero_copy_only=False)


def _labels(cells: pa.Array, rule: LabelRule) -> tuple[np.ndarray, np.ndarray]:
    """(valid, 0/1 label) per label cell under `rule`."""
    cells = pc.utf8_trim_whitespace(cells)
    if rule.kind in ("binary", "pm1"):
        table = _BINARY_LABELS if rule.kind == "binary" else _PM1_LABELS
        ok = _to_numpy(pc.is_in(cells, pa.array(list(table))))
        ones = [k for k, v in table.items() if v]
        return ok, _to_numpy(pc.is_in(cells, pa.array(ones))).astype(np.int64)
    ok = _to_numpy(pc.match_substring_regex(cells, _NUMBER_PATTERN))
    values = np.zeros(len(cells))
    values[ok] = _to_numpy(pc.cast(cells.filter(pa.array(ok)), pa.float64()))
    positive = values >= (rule.threshold or 0.0) if rule.kind == "threshold" else values > 0
    return ok, positive.astype(np.int64)


def _reason_of(col: RawColumn) -> str:
    if col.kind == "timestamp":
        return "bad_timestamp"
    return "non_numeric" if col.is_float else "non_integer"


def _values(cells: pa.Array, col: RawColumn, typed: bool) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """(values where present, present mask, bad mask) of one column's cells."""
    if typed and (col.is_integer and col.time_format in (None, UNIX_TIME) or col.is_float):
        present = _to_numpy(cells.is_valid())
        values = cells.drop_null()
        if col.is_float:
            finite = np.isfinite(_to_numpy(values))
            bad = np.zeros(len(cells), bool)
            bad[np.flatnonzero(present)[~finite]] = True
            present &= ~bad
            return pc.cast(values.filter(pa.array(finite)), pa.float32()), present, bad
        return values, present, np.zeros(len(cells), bool)
    if not (col.is_integer or col.is_float):  # categorical and multi cells stay exactly as in the file
        present = _to_numpy(pc.not_equal(cells, ""))
        return cells.filter(pa.array(present)).cast(pa.binary()), present, np.zeros(len(cells), bool)
    cells = pc.utf8_trim_whitespace(cells)
    present = _to_numpy(pc.not_equal(cells, ""))
    if col.kind == "timestamp" and col.time_format != UNIX_TIME:
        parsed = pc.strptime(cells, format=col.time_format, unit="s", error_is_null=True)
        bad = present & ~_to_numpy(parsed.is_valid())
        present &= ~bad
        return pc.cast(parsed.filter(pa.array(present)), pa.int64()), present, bad
    pattern = _NUMBER_PATTERN if col.is_float else _INT_PATTERN
    bad = present & ~_to_numpy(pc.match_substring_regex(cells, pattern))
    present &= ~bad
    text = cells.filter(pa.array(present))
    if col.is_float:
        values = pc.cast(text, pa.float64())
        finite = np.isfinite(_to_numpy(values))
        bad[np.flatnonzero(present)[~finite]] = True
        present &= ~bad
        return pc.cast(values.filter(pa.array(finite)), pa.float32()), present, bad
    return pc.cast(pc.replace_substring_regex(text, r"\.0*$", ""), pa.int64()), present, bad


def libsvm_to_tsv(line: bytes) -> bytes:
    """`label idx:val idx:val` -> `label<TAB>idx<TAB>val...` (the layout names each column)."""
    return _SPACES.sub(b"\t", line.strip()).replace(b":", b"\t")


def parse_lines(
    lines: list[bytes], layout: Layout, spec: DatasetSpec, seed: int, time_field: str | None = None
) -> ParsedBatch:
    """Parses lines (no newline) of one file; blank lines are skipped silently.

    `time_field`: rows without a value in that column are rejected (`--split time`).
    """
    lines = [line[:-1] if line.endswith(b"\r") else line for line in lines if line.strip()]
    n = len(lines)
    reason = np.full(n, -1, dtype=np.int8)
    try:
        b"\n".join(lines).decode("utf-8")
    except UnicodeDecodeError:
        reason[_undecodable(lines)] = REASONS.index("undecodable")
    cut = [libsvm_to_tsv(line) for line in lines] if layout.libsvm else lines
    counts = _column_counts(cut, layout)
    reason[(reason < 0) & (counts != len(layout.names))] = REASONS.index("column_count")

    ok = np.flatnonzero(reason < 0)
    cols, typed = _read_typed_or_strings([cut[i] for i in ok], layout, spec)
    keep = np.ones(len(ok), dtype=bool)
    label = None
    if spec.label_column is not None:
        label_ok, label = _labels(cols[spec.label_column], spec.label_rule)
        reason[ok[~label_ok]] = REASONS.index("bad_label")
        keep &= label_ok
    parsed_columns = {}
    for col in spec.file_columns:
        values, present, bad = _values(cols[col.name], col, typed)
        parsed_columns[col.name] = (values, present)
        reason[ok[keep & bad]] = REASONS.index(_reason_of(col))
        keep &= ~bad
        if col.name == time_field:
            reason[ok[keep & ~present]] = REASONS.index("missing_time")
            keep &= present

    rejected = [(REASONS[r], lines[i]) for i, r in enumerate(reason) if r >= 0]
    kept_rows = ok[keep]
    split_names: tuple[str, ...] = SPLIT_NAMES
    if layout.split is None:
        splits = split_ids([lines[i] for i in kept_rows], seed)
    elif layout.valid_fraction:
        split_names, splits = (layout.split, "valid"), valid_cut([lines[i] for i in kept_rows], seed,
                                                                  layout.valid_fraction)
    else:
        split_names, splits = (layout.split,), np.zeros(len(kept_rows), np.int8)
    for name in join_keys(spec):
        keys = cols[name]
        present = _to_numpy(pc.not_equal(keys, ""))
        parsed_columns[name] = (keys.filter(pa.array(present)).cast(pa.binary()), present)
    arrays = []
    for name in [col.name for col in spec.file_columns] + join_keys(spec):
        values, present = parsed_columns[name]  # `values` holds the present cells only
        arrays.append(_to_list_array(values.filter(pa.array(keep[present])), present[keep]))
    if label is not None:
        arrays.append(_to_list_array(pa.array(label[keep]), np.ones(int(keep.sum()), dtype=bool)))
    rows = pa.RecordBatch.from_arrays(arrays, schema=parsed_arrow_schema(spec))
    return ParsedBatch(rows=rows, splits=splits, rejected=rejected, lines=n, split_names=split_names)


def _read_typed_or_strings(lines: list[bytes], layout: Layout, spec: DatasetSpec) -> tuple[dict[str, pa.Array], bool]:
    """Columns with numeric fields converted by the CSV reader itself (fast path), or all as strings.

    The fast path fails as a whole on any non-numeric cell; the string path
    then validates cell by cell so that only the bad rows are rejected.
    """
    wanted: dict[str, pa.DataType] = {}
    if spec.label_column is not None:
        wanted[spec.label_column] = pa.string()
    for col in spec.file_columns:
        numeric = col.is_integer and col.time_format in (None, UNIX_TIME)
        wanted[col.name] = pa.int64() if numeric else pa.float64() if col.is_float else pa.string()
    for name in join_keys(spec):
        wanted[name] = pa.string()
    if not lines:
        return {name: pa.array([], pa.string()) for name in wanted}, False
    try:
        return _read_columns(lines, layout, wanted), True
    except pa.ArrowInvalid:
        return _read_columns(lines, layout, dict.fromkeys(wanted, pa.string())), False


def _read_columns(lines: list[bytes], layout: Layout, types: dict[str, pa.DataType]) -> dict[str, pa.Array]:
    """Splits lines into columns with pyarrow's CSV reader (empty string cells stay "")."""
    tmp_names = [f"c{i}" for i in range(len(layout.names))]
    include = {f"c{layout.index_of(name)}": name for name in types}
    table = pacsv.read_csv(
        io.BytesIO(b"\n".join(lines) + b"\n"),
        read_options=pacsv.ReadOptions(column_names=tmp_names, use_threads=False, block_size=1 << 26),
        parse_options=pacsv.ParseOptions(
            delimiter=layout.delimiter, quote_char='"' if layout.quoting else False, double_quote=True
        ),
        convert_options=pacsv.ConvertOptions(
            column_types={c: types[name] for c, name in include.items()},
            include_columns=list(include),
            null_values=[""],
            strings_can_be_null=False,
        ),
    )
    return {include[c]: table.column(c).combine_chunks() for c in include}
