"""Line-aligned batch scoring of a raw file: the one loop behind `serving predict` and
`trainer --stage=predict --input`.

Read every row with its line number (pipeline.raw_rows), validate it as the
Beam job does, score the valid ones in batches with a `Scorer` (a gRPC server
or the model in process), and write exactly one output line per input row, in
file order, after a header:

    line<TAB>[KEEP_COLUMN...<TAB>]probability[<TAB>reason]
    1<TAB>0.0312047

`line` is the row's 1-based line number in the input (a header is line 1;
blank lines are not rows), the kept columns are copied from the row as in
the file (--keep_columns), `probability` is P(click) with 7 significant
digits. A row that cannot be scored (wrong column count, a non-number where
the schema wants one, ...) is, by `on_bad_row`:

- "error" (default): nothing is written; BadRowError names file, line and why;
- "nan": a marker line, probability `nan`, the `reason` column says why;
- "skip": a marker line, probability empty, the `reason` column says why.

Under "nan" and "skip" every line has the `reason` column (empty when scored).
The label column is never needed: a file with it or without it (detected from
the header or the column count) scores alike. An output ending in `.csv` is
comma-separated. The file appears complete or not at all. A file of which no
row scores is an error whatever `on_bad_row` says (the wrong schema).
"""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from pipeline.atomic import atomic_path
from pipeline.errors import UsageError
from pipeline.features import MOSTLY_OOV_FRACTION

if TYPE_CHECKING:  # the reader loads Beam's filesystems: not before a CLI's --help
    from pipeline.raw_rows import NumberedRow, ScoringLayout
    from pipeline.specs import DatasetSpec

ON_BAD_ROW = ("error", "nan", "skip")
ON_BAD_ROW_HELP = (
    "a row that cannot be scored (wrong column count, a non-number in a numeric field): error (default) "
    "stops naming its file and line, writes nothing and exits 2; nan / skip write a marker line for it "
    "(probability nan / empty, the reason in a `reason` column) and score the rest, exit 0 if any row scored"
)
KEEP_COLUMNS_HELP = ("comma-separated input columns (header names, or the schema's column names for a file "
                     "without a header) copied into each output line, e.g. an id: --keep_columns Id")
UNLABELED_HELP = ("the file lacks the label column (default: detected from its header or column count; "
                  "the label is never needed for scoring)")

# probabilities of a batch's rows, and per row the fraction of categorical fields out of
# vocabulary (None when the model does not report it)
Scorer = Callable[[list[dict[str, list]]], tuple[np.ndarray, np.ndarray | None]]

_REASON_TEXT = {
    "undecodable": "not UTF-8",
    "column_count": "wrong number of columns",
    "non_integer": "a non-integer in an integer field",
    "non_numeric": "a non-number in a numeric field",
    "bad_timestamp": "a malformed timestamp",
}


class BadRowError(UsageError):
    """A row cannot be scored and the caller did not allow bad rows."""


class NothingScoredError(UsageError):
    """Not one row of the file could be scored: it is not a file of this schema."""


@dataclasses.dataclass
class ScoringSummary:
    """Rows in / scored / bad, for the stderr summary and the CLIs' exit codes."""

    path: str
    output: str
    rows: int = 0
    scored: int = 0
    reasons: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    mostly_oov: int | None = None  # rows whose categorical fields are mostly out of vocabulary
    probability_sum: float = 0.0

    @property
    def bad(self) -> int:
        return self.rows - self.scored

    def describe(self) -> str:
        """One line: rows in, scored, bad (by reason), the output."""
        reasons = ", ".join(f"{r} {n}" for r, n in self.reasons.most_common())
        mean = f", mean probability {self.probability_sum / self.scored:.4g}" if self.scored else ""
        oov = "" if self.mostly_oov is None else f", {self.mostly_oov} mostly out of vocabulary"
        return (f"{self.path}: {self.rows} rows in, {self.scored} scored, {self.bad} bad"
                f"{f' ({reasons})' if reasons else ''}{oov}{mean} -> {self.output}")

    def foreign_warning(self) -> str | None:
        """A warning when most scored rows have most categorical fields out of vocabulary."""
        if self.mostly_oov is None or not self.scored or self.mostly_oov * 2 <= self.scored:
            return None
        return f"warning: {foreign_rows_warning(self.mostly_oov, self.scored)}"


def foreign_rows_warning(mostly_oov: int, rows: int) -> str:
    """The one wording of the "not the training data" warning (client and batch scoring)."""
    return (f"these rows do not look like the training data: {mostly_oov} of {rows} rows have more "
            f"than {MOSTLY_OOV_FRACTION:.0%} of their categorical fields out of vocabulary, so their "
            "probabilities are near the model's prior; check the input format/schema and the model")


def mostly_oov(oov_fraction: np.ndarray) -> int:
    """Rows whose out-of-vocabulary fraction exceeds MOSTLY_OOV_FRACTION."""
    return int(np.count_nonzero(oov_fraction > MOSTLY_OOV_FRACTION))


def parse_keep_columns(text: str | None) -> tuple[str, ...]:
    """--keep_columns a,b -> ("a", "b")."""
    return tuple(c.strip() for c in (text or "").split(",") if c.strip())


def _describe_bad(row: NumberedRow, where: ScoringLayout) -> str:
    detail = _REASON_TEXT.get(row.reason or "", row.reason or "")
    if row.reason == "column_count":
        detail += f" ({len(where.cells(row.text))}, expected {len(where.layout.names)})"
    return detail


def _batches(rows: Iterator[NumberedRow], size: int) -> Iterator[list[NumberedRow]]:
    """Consecutive rows holding `size` good rows (bad ones ride along, in order)."""
    batch: list[NumberedRow] = []
    good = 0
    for row in rows:
        batch.append(row)
        good += row.features is not None
        if good == size:
            yield batch
            batch, good = [], 0
    if batch:
        yield batch


@contextlib.contextmanager
def _output_file(output: str | pathlib.Path | None) -> Iterator[pathlib.Path]:
    """A temp file renamed onto `output`, or copied to stdout (None) once complete."""
    if output is not None:
        with atomic_path(output) as tmp:
            yield tmp
        return
    with tempfile.TemporaryDirectory(prefix="optfusion-predict-") as tmp_dir:
        tmp = pathlib.Path(tmp_dir) / "predictions"
        yield tmp
        with tmp.open() as handle:
            shutil.copyfileobj(handle, sys.stdout)
        sys.stdout.flush()


def score_file(
    path: str, spec: DatasetSpec, scorer: Scorer, output: str | pathlib.Path | None, *, batch_size: int,
    on_bad_row: str = "error", keep_columns: Sequence[str] = (), unlabeled: bool | None = None,
    progress: Callable[[int], None] | None = None,
) -> ScoringSummary:
    """Scores every row of `path` (read with `spec`) into `output` (None: stdout), one line per row.

    Raises BadRowError (on_bad_row "error"), NothingScoredError (no row
    scored) or the reader's SpecError / InputError (not a file of `spec`);
    nothing is written then. `progress` is called with each batch's row count.
    """
    from pipeline.raw_rows import iter_numbered_rows, scoring_layout

    if on_bad_row not in ON_BAD_ROW:
        raise UsageError(f"--on_bad_row must be one of {list(ON_BAD_ROW)}. Received: {on_bad_row!r}")
    if batch_size < 1:
        raise UsageError(f"--batch_size must be >= 1. Received: {batch_size}")
    where = scoring_layout(path, spec, unlabeled)
    kept = [where.column_index(name) for name in keep_columns]
    marked = on_bad_row != "error"
    shown = "" if output is None else str(output)
    summary = ScoringSummary(path, shown or "stdout")
    delimiter = "," if shown.lower().endswith(".csv") else "\t"
    with _output_file(output) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter, lineterminator="\n")
        writer.writerow(["line", *keep_columns, "probability", *(["reason"] if marked else [])])
        for batch in _batches(iter_numbered_rows(where, spec), batch_size):
            good = [row.features for row in batch if row.features is not None]
            first_bad = next((row for row in batch if row.features is None), None)
            if first_bad is not None and not marked:
                raise BadRowError(
                    f"{path}:{first_bad.line}: cannot score this row: {_describe_bad(first_bad, where)}: "
                    f"{first_bad.text[:80].decode('utf-8', 'replace')!r}; fix it, or pass --on_bad_row=nan "
                    "(or skip) to mark bad rows and score the rest (nothing was written)")
            probabilities, oov = scorer(good) if good else (np.zeros(0), None)
            if len(probabilities) != len(good):
                raise RuntimeError(f"the scorer answered {len(probabilities)} probabilities for {len(good)} rows")
            scores = iter(probabilities)
            for row in batch:
                cells: list[str] = [str(row.line)]
                if kept:
                    values = where.cells(row.text)
                    cells += [values[i] if i < len(values) else "" for i in kept]
                if row.features is not None:
                    cells.append(f"{next(scores):.7g}")
                    cells += [""] if marked else []
                else:
                    cells += ["nan" if on_bad_row == "nan" else "", row.reason or ""]
                    summary.reasons[row.reason or ""] += 1
                writer.writerow(cells)
            summary.rows += len(batch)
            summary.scored += len(good)
            summary.probability_sum += float(np.sum(probabilities, dtype=np.float64))
            if oov is not None:
                summary.mostly_oov = (summary.mostly_oov or 0) + mostly_oov(np.asarray(oov))
            if progress is not None:
                progress(len(batch))
        if not summary.scored:
            reasons = ", ".join(f"{r} {n}" for r, n in summary.reasons.most_common())
            raise NothingScoredError(
                f"{path}: none of its {summary.rows} rows could be scored{f' ({reasons})' if reasons else ''}; "
                f"is it a {spec.name} file? check --format/--schema (nothing was written)")
    return summary
