"""What the driver (pipeline.job) hands the Beam graph (pipeline.beam_graph), and what comes back.

Both modules import this one and never each other: the driver stays free of
Beam/TFT imports (bad invocations fail in a second), and the graph does not
know about stats.json or the scratch-then-rename protocol. The counts the
graph writes are named records, summed field by field, not packed arrays.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pipeline.features import SPLIT_NAMES
from pipeline.file_layout import Layout
from pipeline.parse import REASONS
from pipeline.sources import FileRange
from pipeline.specs import DatasetSpec

# Scratch folders of the graph inside JobSpec.work_dir, removed before publishing.
STATS_TMP = "_partial_stats"
TFT_TMP = "_tft_tmp"
INPUT_COUNTS_FILE = "inputs.json"
TIME_SPLIT_FILE = "time_split.json"
# InputCounts.parsed key of rows read under `--split time` (split later, by time).
UNSPLIT = "unsplit"


def split_stats_file(split: str) -> str:
    """Name of one split's SplitStats file in STATS_TMP."""
    return f"{split}.json"


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """Everything the Beam graph needs; built and validated by `pipeline.job.prepare`."""

    spec: DatasetSpec
    ranges: tuple[FileRange, ...]
    layouts: dict[str, Layout]
    work_dir: str
    seed: int = 0
    min_count: int = 2
    batch_lines: int = 20000
    output_shards: int = 2
    input_bytes: int | None = None  # progress total; None where an input is compressed
    beam_args: tuple[str, ...] = ()
    # Output splits: SPLIT_NAMES, or ("data",) for `pipeline transform`.
    split_names: tuple[str, ...] = SPLIT_NAMES
    # `--split time`: rows are split by this raw column's value (see pipeline.beam_graph.time_cutoffs).
    time_field: str | None = None
    # `pipeline transform`: the finished run whose transform graph is applied (no analysis).
    run_dir: str | None = None
    # The spec the transform graph was built for; differs from `spec` (the files read) when
    # unlabeled files go through a labeled run's graph: a dummy label is fed and dropped.
    graph_spec: DatasetSpec | None = None

    @property
    def transform_spec(self) -> DatasetSpec:
        return self.graph_spec or self.spec

    @property
    def dummy_label(self) -> bool:
        return self.transform_spec.labeled and not self.spec.labeled


def _add_counts(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in a | b}


@dataclasses.dataclass(frozen=True)
class InputCounts:
    """Per input file: lines read, lines rejected per reason, good rows per split."""

    lines: int
    rejected: dict[str, int]
    parsed: dict[str, int]

    @classmethod
    def zero(cls) -> InputCounts:
        return cls(0, dict.fromkeys(REASONS, 0), {})

    def __add__(self, other: InputCounts) -> InputCounts:
        return InputCounts(
            self.lines + other.lines,
            _add_counts(self.rejected, other.rejected),
            _add_counts(self.parsed, other.parsed),
        )

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> InputCounts:
        return cls(int(doc["lines"]), dict(doc["rejected"]), dict(doc["parsed"]))


@dataclasses.dataclass(frozen=True)
class SplitStats:
    """Per split of the transformed data: rows, positive labels, OOV, missing and value ids per field.

    `tokens`: ids that are values or OOV (not missing, not padding): the
    denominator of a multi-valued field's OOV rate.
    """

    rows: int
    positives: int
    oov: dict[str, int]
    missing: dict[str, int]
    tokens: dict[str, int]

    @classmethod
    def zero(cls, fields: list[str]) -> SplitStats:
        return cls(0, 0, dict.fromkeys(fields, 0), dict.fromkeys(fields, 0), dict.fromkeys(fields, 0))

    def __add__(self, other: SplitStats) -> SplitStats:
        return SplitStats(
            self.rows + other.rows,
            self.positives + other.positives,
            _add_counts(self.oov, other.oov),
            _add_counts(self.missing, other.missing),
            _add_counts(self.tokens, other.tokens),
        )

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> SplitStats:
        return cls(int(doc["rows"]), int(doc["positives"]), dict(doc["oov"]), dict(doc["missing"]),
                   dict(doc["tokens"]))
