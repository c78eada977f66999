"""What a finished `pipeline` run tells its readers (trainer, serving).

This is the one contract between the preprocessing job and everything
downstream: the transformed field names in model order, each field's id range
and the label key. Downstream code never hard-codes feature counts; it reads
them here, from `stats.json` written by the job next to `transform_fn/`.

A run is finished when its `DONE.json` marker (written last) is there. Outputs
written before the marker existed hold `stats.json` only; they were published
by a local rename, so a `stats.json` in place also marks them finished.
A URI (`gs://...`, any `tf.io.gfile` filesystem) has no atomic rename: there
only the marker counts, and files are read through `tf.io.gfile` (TensorFlow
loads only then, so the CLIs stay fast for local paths).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re

from pipeline.errors import UsageError
from pipeline.features import DONE_FILE, SPLIT_NAMES

STATS_FILE = "stats.json"
# stats.json / DONE.json / run.json key of the transform graph's fingerprint (pipeline.fingerprint).
FINGERPRINT_KEY = "fingerprint"
# Padding id of multi-valued fields (never a real id: those are >= 0).
PAD_ID = -1


class DatasetInfoError(UsageError):
    """A preprocessed data directory is missing or inconsistent."""


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    """One transformed field: ids are int64 in [0, vocab_size).

    A multi-valued field (`max_len` > 1) holds exactly `max_len` ids per
    example, padded at the end with `PAD_ID`; a single-valued one holds one id.
    """

    name: str
    vocab_size: int
    max_len: int = 1


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Fields (in model order), label key and file patterns of one run."""

    data_dir: pathlib.Path | str  # str for a URI (pathlib would fold `gs://` into `gs:/`)
    dataset: str
    label_key: str
    fields: tuple[FieldInfo, ...]
    # A `pipeline transform` output holds one split, "data", and may be unlabeled
    # (its records then have no label feature).
    splits: tuple[str, ...] = SPLIT_NAMES
    labeled: bool = True
    # The transform graph's fingerprint as stats.json records it (None: an older run,
    # see pipeline.fingerprint.of_data).
    fingerprint: str | None = None

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def vocab_sizes(self) -> list[int]:
        return [f.vocab_size for f in self.fields]

    def split_pattern(self, split: str) -> str:
        """Glob of the gzipped TFRecord shards of `split`."""
        if split not in self.splits:
            raise DatasetInfoError(f"{self.data_dir} has no split {split!r}; it holds {list(self.splits)}")
        return join(self.data_dir, f"{split}-*.tfrecord.gz")

    @property
    def transform_output_dir(self) -> pathlib.Path | str:
        """Directory loadable by `tft.TFTransformOutput`."""
        return self.data_dir


def field_info(record: dict) -> FieldInfo:
    """One field of stats.json's "fields" (or run.json's); KeyError, TypeError or ValueError if malformed."""
    return FieldInfo(name=record["name"], vocab_size=int(record["vocab_size"]), max_len=int(record.get("max_len", 1)))


def is_uri(path: str | pathlib.Path) -> bool:
    """True for `scheme://...` paths (object stores and other non-local filesystems)."""
    return isinstance(path, str) and re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", path) is not None


def join(base: str | pathlib.Path, name: str) -> str:
    """`base/name` for a local path or a URI alike."""
    return f"{str(base).rstrip('/')}/{name}"


def _is_file(path: str) -> bool:
    if is_uri(path):
        import tensorflow as tf

        return tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)
    return pathlib.Path(path).is_file()


def _read_text(path: str) -> str:
    if is_uri(path):
        import tensorflow as tf

        with tf.io.gfile.GFile(path, "r") as handle:
            return handle.read()
    return pathlib.Path(path).read_text()


def is_finished_output(data_dir: str | pathlib.Path) -> bool:
    """True if `data_dir` holds a finished run: its marker, or (local only) a pre-marker run's stats.json."""
    if _is_file(join(data_dir, DONE_FILE)):
        return True
    return not is_uri(data_dir) and _is_file(join(data_dir, STATS_FILE))


def read_dataset_info(data_dir: str | pathlib.Path) -> DatasetInfo:
    """Reads `stats.json` of a finished pipeline run (a local path or a URI), with a readable error."""
    data_dir = str(data_dir).rstrip("/") if is_uri(data_dir) else pathlib.Path(data_dir)
    stats_path = join(data_dir, STATS_FILE)
    if is_uri(data_dir) and not is_finished_output(data_dir):
        raise DatasetInfoError(
            f"{data_dir} is not a finished pipeline output: its {DONE_FILE} marker, written last, is missing "
            "(an interrupted run or another prefix; run `pipeline ... --output URI` to completion first)"
        )
    if not is_finished_output(data_dir):
        raise DatasetInfoError(
            f"{data_dir} is not a finished pipeline output: {STATS_FILE} is missing and so is the "
            f"{DONE_FILE} marker written last (an interrupted or foreign directory; "
            "run `pipeline --dataset ... --output DIR` to completion first)"
        )
    if not _is_file(stats_path):
        raise DatasetInfoError(
            f"{data_dir} has {DONE_FILE} but no {STATS_FILE}: the output was altered after the run; "
            "rerun `pipeline ... --output DIR --overwrite`"
        )
    try:
        stats = json.loads(_read_text(stats_path))
        fields = tuple(field_info(f) for f in stats["fields"])
        info = DatasetInfo(
            data_dir=data_dir,
            dataset=str(stats["dataset"]),
            label_key=str(stats["label_key"]),
            fields=fields,
            splits=tuple(str(s) for s in stats.get("splits", SPLIT_NAMES)),
            labeled=bool(stats.get("labeled", True)),
            fingerprint=stats.get(FINGERPRINT_KEY),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetInfoError(f"{stats_path} is malformed: {err!r}") from err
    if not fields or any(f.vocab_size < 1 or f.max_len < 1 for f in fields):
        raise DatasetInfoError(f"{stats_path} lists no fields or a field with vocab_size or max_len < 1")
    return info
