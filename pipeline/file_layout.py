"""Per-file layout: delimiter, header, and which column is which, checked against the schema.

The schema's `delimiter:` and `header:` are enforced; `auto` (the built-in
Criteo schema) detects them from the first line, so that the raw TAB
`train.txt` and the Kaggle CSV with an `Id` column both work without a flag.
A first line is a header when it names the label column or at least half of
its cells name schema columns; a header that lacks the label column is an
error (never read by position).
"""

from __future__ import annotations

import csv
import dataclasses

from pipeline.specs import AUTO, DatasetSpec, SpecError

BOM = "\ufeff"


@dataclasses.dataclass(frozen=True)
class Layout:
    """How to split one file's lines; `names[i]` is the spec column of file column i (None: ignored).

    `libsvm`: lines are `label idx:val ...` and are rewritten to TAB-separated
    `label idx val ...` before splitting (see `pipeline.parse`). `split`: the
    split every row of this file belongs to (`--split given`, `pipeline
    transform`), None for a split computed per row. `valid_fraction`: with
    split "train", the share of its rows cut off to "valid" by a keyed hash
    (`--valid_fraction`, pipeline.parse.valid_cut); 0 for none.
    """

    delimiter: str
    header: bool
    names: tuple[str | None, ...]
    quoting: bool = False
    libsvm: bool = False
    split: str | None = None
    valid_fraction: float = 0.0

    def index_of(self, column: str) -> int:
        return self.names.index(column)


def _cells(line: str, delimiter: str, quoting: bool) -> list[str]:
    if quoting:
        return [c.strip() for c in next(csv.reader([line], delimiter=delimiter))]
    return [c.strip() for c in line.split(delimiter)]


def _libsvm_layout(spec: DatasetSpec, split: str | None) -> Layout:
    """Each `idx:val` token is two TAB columns: categorical fields read idx, numeric ones val."""
    names: list[str | None] = []
    kinds = {col.name: col.kind for col in spec.raw_columns}
    for column in spec.columns:
        if column == spec.label_column:
            names.append(column)
        elif kinds.get(column) == "categorical":
            names += [column, None]
        else:
            names += [None, column if column in kinds else None]
    return Layout("\t", False, tuple(names), libsvm=True, split=split)


def _delimiter(line: str, spec: DatasetSpec, where: str) -> str:
    if spec.delimiter != AUTO:
        if spec.delimiter not in line and len(spec.columns) > 1:
            raise SpecError(
                f"{where}: first line holds no {spec.delimiter!r}, the schema's delimiter; "
                "check the file or the schema's `delimiter:` key"
            )
        return spec.delimiter
    for candidate in ("\t", ","):
        if candidate in line:
            return candidate
    raise SpecError(f"{where}: first line has neither TAB nor comma separators; is it a {spec.name} file?")


def detect_layout(first_line: str, spec: DatasetSpec, where: str, split: str | None = None) -> Layout:
    """Layout of a file from its first line; SpecError if it cannot be read as `spec`."""
    if spec.format == "libsvm":
        return _libsvm_layout(spec, split)
    line = first_line.removeprefix(BOM).rstrip("\r\n")
    delimiter = _delimiter(line, spec, where)
    cells = _cells(line, delimiter, spec.quoting)
    by_lower = {c.lower(): c for c in spec.columns}
    named = [by_lower.get(c.lower()) for c in cells]
    has_label = spec.label_column is not None and spec.label_column in named
    looks_like_header = has_label or sum(n is not None for n in named) * 2 >= max(len(cells), 2)
    header = looks_like_header if spec.header is None else spec.header
    if not header:
        if looks_like_header and spec.header is False:
            raise SpecError(
                f"{where}: first line names the columns ({line[:60]}...) but the schema says header: false; "
                "set header: true (or auto)"
            )
        if len(cells) != len(spec.columns):
            no_label = spec.label_column is not None and len(cells) == len(spec.columns) - 1
            hint = (f"; if the file lacks the label column {spec.label_column!r}, use `pipeline transform "
                    "--run RUN_DIR --unlabeled` (or a schema with `label: null`)" if no_label else "")
            raise SpecError(
                f"{where}: first line has {len(cells)} columns, {spec.name} without a header has "
                f"{len(spec.columns)} ({' '.join(spec.columns[:4])} ...); check --dataset/--schema{hint}"
            )
        return Layout(delimiter, False, tuple(spec.columns), spec.quoting, split=split)
    if spec.label_column is not None and not has_label:
        raise SpecError(
            f"{where}: header lacks the label column {spec.label_column!r} (it has {cells[:6]}...); "
            "for a file without labels use `pipeline transform --run RUN_DIR --unlabeled` "
            "or a schema with `label: null`"
        )
    missing = [col.name for col in spec.raw_columns if col.name not in named]
    if missing:
        raise SpecError(f"{where}: header lacks the columns {missing} of {spec.name}")
    return Layout(delimiter, True, tuple(named), spec.quoting, split=split)
