"""Per-file layout detection: delimiter, header, and which column is which.

Users hold Criteo either as the raw TAB `train.txt` or as the Kaggle CSV with
an `Id` column and a header; both must work without a flag. The first line
decides: a header is recognized by containing the label column's name.
"""

from __future__ import annotations

import dataclasses

from pipeline.specs import DatasetSpec, SpecError


@dataclasses.dataclass(frozen=True)
class Layout:
    """How to split one file's lines; `names[i]` is the spec column of file column i (None: ignored)."""

    delimiter: str
    header: bool
    names: tuple[str | None, ...]

    def index_of(self, column: str) -> int:
        return self.names.index(column)


def detect_layout(first_line: str, spec: DatasetSpec, where: str) -> Layout:
    """Layout of a file from its first line; SpecError if it cannot be read as `spec`."""
    line = first_line.rstrip("\r\n")
    if spec.delimiter in line:
        delimiter = spec.delimiter
    elif "\t" in line:
        delimiter = "\t"
    elif "," in line:
        delimiter = ","
    else:
        raise SpecError(f"{where}: first line has neither TAB nor comma separators; is it a {spec.name} file?")
    cells = [c.strip().strip('"') for c in line.split(delimiter)]
    by_lower = {c.lower(): c for c in spec.columns}
    if spec.label_column.lower() in (c.lower() for c in cells):
        names = tuple(by_lower.get(c.lower()) for c in cells)
        missing = [c for c in spec.columns if c not in names and c not in spec.dropped]
        if missing:
            raise SpecError(f"{where}: header lacks the columns {missing} of {spec.name}")
        return Layout(delimiter, True, names)
    if len(cells) != len(spec.columns):
        raise SpecError(
            f"{where}: first line has {len(cells)} columns, {spec.name} without a header has "
            f"{len(spec.columns)} ({' '.join(spec.columns[:4])} ...); check --dataset/--schema"
        )
    return Layout(delimiter, False, tuple(spec.columns))
