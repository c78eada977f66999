"""Vectorized parsing of a batch of raw lines into Arrow record batches per split.

Per-line Python parsing is what makes a naive TFT job slow; here a batch of
lines is split by pyarrow's C++ CSV reader and validated with arrow compute
kernels. Bad rows are returned untouched with their reason, never raised.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from pipeline.features import LABEL_KEY, SPLIT_NAMES
from pipeline.file_layout import Layout
from pipeline.specs import DatasetSpec

# Rejection reasons, in the order they are checked (a row gets the first).
REASONS = ("undecodable", "column_count", "bad_label", "non_integer")
# Integers; integral floats such as "260.0" (seen in re-exported Criteo CSVs) count as integers.
_INT_PATTERN = r"^-?[0-9]{1,18}(\.0*)?$"


@dataclasses.dataclass
class ParsedBatch:
    """Good rows (file order) with their split index, bad rows with reasons."""

    rows: pa.RecordBatch
    splits: np.ndarray
    rejected: list[tuple[str, bytes]]
    lines: int

    def by_split(self) -> dict[str, pa.RecordBatch]:
        """Good rows grouped per split name."""
        return {name: self.rows.filter(pa.array(self.splits == i)) for i, name in enumerate(SPLIT_NAMES)}


def split_ids(lines: list[bytes], seed: int) -> np.ndarray:
    """Split index into SPLIT_NAMES (8:1:1) from a keyed hash of each line.

    Depends only on the row's bytes and the seed, never on position, so it is
    identical under any runner, sharding and parallelism.
    """
    key = seed.to_bytes(8, "little", signed=True)
    buckets = np.fromiter(
        (int.from_bytes(hashlib.blake2b(line, digest_size=8, key=key).digest(), "little") % 10 for line in lines),
        dtype=np.int64,
        count=len(lines),
    )
    return np.where(buckets < 8, 0, np.where(buckets == 8, 1, 2)).astype(np.int8)


def raw_arrow_schema(spec: DatasetSpec) -> pa.Schema:
    """Arrow schema of the raw record batches: list columns (empty = missing) + label."""
    fields = [
        pa.field(col.name, pa.list_(pa.int64() if col.is_integer else pa.binary()))
        for col in spec.raw_columns
    ]
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


def parse_lines(lines: list[bytes], layout: Layout, spec: DatasetSpec, seed: int) -> ParsedBatch:
    """Parses lines (no newline) of one file; blank lines are skipped silently."""
    lines = [line[:-1] if line.endswith(b"\r") else line for line in lines if line.strip()]
    n = len(lines)
    reason = np.full(n, -1, dtype=np.int8)
    joined = b"\n".join(lines)
    try:
        joined.decode("utf-8")
    except UnicodeDecodeError:
        reason[_undecodable(lines)] = 0
    delim = layout.delimiter.encode()
    counts = np.fromiter((line.count(delim) for line in lines), dtype=np.int64, count=n)
    reason[(reason < 0) & (counts != len(layout.names) - 1)] = 1

    ok = np.flatnonzero(reason < 0)
    good_lines = [lines[i] for i in ok]
    cols, typed = _read_typed_or_strings(good_lines, layout, spec)

    label_str = cols[spec.label_column]
    if spec.label_rule == "binary":
        label_ok = pc.is_in(label_str, pa.array(["0", "1"])).to_numpy(zero_copy_only=False)
    else:
        label_ok = pc.match_substring_regex(label_str, r"^[0-9]{1,18}$").to_numpy(zero_copy_only=False)
    int_ok = np.ones(len(ok), dtype=bool)
    if not typed:  # some integer cell did not convert: find the rows, convert the rest
        for col in spec.raw_columns:
            if col.is_integer:
                s = cols[col.name]
                valid = pc.or_(pc.equal(s, ""), pc.match_substring_regex(s, _INT_PATTERN))
                int_ok &= valid.to_numpy(zero_copy_only=False)
    reason[ok[~label_ok]] = 2
    reason[ok[label_ok & ~int_ok]] = 3
    keep = label_ok & int_ok

    rejected = [(REASONS[r], lines[i]) for i, r in enumerate(reason) if r >= 0]
    kept_rows = ok[keep]
    splits = split_ids([lines[i] for i in kept_rows], seed)
    mask = pa.array(keep)
    arrays = []
    for col in spec.raw_columns:
        s = cols[col.name].filter(mask)
        if typed and col.is_integer:
            present = s.is_valid().to_numpy(zero_copy_only=False)
            values = s.drop_null()
        else:
            present = pc.not_equal(s, "").to_numpy(zero_copy_only=False)
            values = s.filter(pa.array(present))
            if col.is_integer:
                values = pc.cast(pc.replace_substring_regex(values, r"\.0*$", ""), pa.int64())
            else:
                values = values.cast(pa.binary())
        arrays.append(_to_list_array(values, present))
    label_int = pc.cast(label_str.filter(mask), pa.int64())
    if spec.label_rule == "positive":
        label_int = pc.cast(pc.greater(label_int, 0), pa.int64())
    arrays.append(_to_list_array(label_int, np.ones(len(label_int), dtype=bool)))
    rows = pa.RecordBatch.from_arrays(arrays, schema=raw_arrow_schema(spec))
    return ParsedBatch(rows=rows, splits=splits, rejected=rejected, lines=n)


def _read_typed_or_strings(lines: list[bytes], layout: Layout, spec: DatasetSpec) -> tuple[dict[str, pa.Array], bool]:
    """Columns with integer fields converted by the CSV reader itself (fast path), or all as strings.

    The fast path fails as a whole on any non-integer cell; the string path
    then validates cell by cell so that only the bad rows are rejected.
    """
    wanted = {spec.label_column: pa.string()}
    for col in spec.raw_columns:
        wanted[col.name] = pa.int64() if col.is_integer else pa.string()
    if not lines:
        return {name: pa.array([], pa.string()) for name in wanted}, False
    try:
        return _read_columns(lines, layout, wanted), True
    except pa.ArrowInvalid:
        return _read_columns(lines, layout, dict.fromkeys(wanted, pa.string())), False


def _read_columns(lines: list[bytes], layout: Layout, types: dict[str, pa.DataType]) -> dict[str, pa.Array]:
    """Splits lines into columns with pyarrow's CSV reader (no quoting; empty string cells stay "")."""
    tmp_names = [f"c{i}" for i in range(len(layout.names))]
    include = {f"c{layout.index_of(name)}": name for name in types}
    table = pacsv.read_csv(
        io.BytesIO(b"\n".join(lines) + b"\n"),
        read_options=pacsv.ReadOptions(column_names=tmp_names, use_threads=False, block_size=1 << 26),
        parse_options=pacsv.ParseOptions(delimiter=layout.delimiter, quote_char=False),
        convert_options=pacsv.ConvertOptions(
            column_types={c: types[name] for c, name in include.items()},
            include_columns=list(include),
            null_values=[""],
            strings_can_be_null=False,
        ),
    )
    return {include[c]: table.column(c).combine_chunks() for c in include}
