"""Warm start across vocabularies: `trainer --stage=retrain|train --init=run:PATH`.

A daily retrain starts from yesterday's run although today's pipeline run
assigned other ids: ids are per field, most frequent first (pipeline/transform.py),
so a token moves when its rank changes, new tokens appear and rare ones drop out.
The token behind an id is its key in the run's `transform_fn/assets/vocabulary.tsv`
(`key<TAB>id`, the field index in the key's upper bits), so "the same token" is
the same key in both vocabularies. Fields without a vocabulary (hour, timestamp,
bucketized floats: docs/DESIGN.md §2) have positional ids and map id to id;
OOV (0) and missing (1) map to themselves.

FieldEmbedding keeps one table for all fields (field f's rows start after the
vocabulary sizes of the fields before it), so the mapping is one pair of global
row arrays (new rows <- old rows) applied to every embedding table of the model
(the supernet's, a baseline's embedding and linear tables). New rows keep the
model's initializer; every other weight is copied by variable path.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.dataset_info import DatasetInfo, join
from pipeline.errors import UsageError
from pipeline.features import FIRST_VALUE_ID
from trainer.zoo import KERAS_MODELS

if TYPE_CHECKING:  # the CLI imports this module for --init before TensorFlow loads
    import argparse

    import keras

INIT_CHOICES = ("fresh", "search")
RUN_PREFIX = "run:"
INIT_HELP_RUN = (
    "run:PATH (retrain and train) starts from a finished retrain/train run PATH even when --data's vocabularies "
    "differ from that run's: embedding rows are carried over by token, new tokens start from the initializer, "
    "other weights are copied by variable path; --architecture/--mode/--model and --config default to PATH's, "
    "and run.json records the carried / new / dropped tokens per field"
)


def parse_init(value: str) -> str:
    """argparse `type=` of --init: fresh, search or run:PATH."""
    import argparse

    if value in INIT_CHOICES or value.startswith(RUN_PREFIX) and len(value) > len(RUN_PREFIX):
        return value
    raise argparse.ArgumentTypeError(f"invalid choice {value!r} (choose from fresh, search, run:PATH)")


def init_run_dir(init: str | None) -> pathlib.Path | None:
    """PATH of `--init=run:PATH`, None for the other inits."""
    if init is None or not init.startswith(RUN_PREFIX):
        return None
    return pathlib.Path(init.removeprefix(RUN_PREFIX))


def read_run(run_dir: pathlib.Path) -> dict[str, Any]:
    """run.json of a finished retrain/train run, or a UsageError saying what PATH is instead."""
    from trainer.model_io import RUN_FILE, WEIGHTS_FILE

    where = f"--init=run:{run_dir}"
    if not (run_dir / RUN_FILE).is_file():
        raise UsageError(f"{where}: {run_dir} is not a trainer run directory ({RUN_FILE} is missing)")
    run = json.loads((run_dir / RUN_FILE).read_text())
    if run.get("stage") not in ("retrain", "train"):
        raise UsageError(f"{where}: {run_dir} is a {run.get('stage')!r} run; warm start needs a finished "
                         "retrain or train run (a search run's weights: --stage=retrain --init=search)")
    if not (run_dir / WEIGHTS_FILE).is_file():
        raise UsageError(f"{where}: {run_dir} has no {WEIGHTS_FILE}: the run did not finish (finish it with --resume)")
    return run


def use_previous_design(args: argparse.Namespace) -> None:
    """With --init=run:PATH, PATH's config and design (its --model, or its architecture and mode) where
    the command line gives none: the weights carried over need the same model."""
    from trainer.model_io import ARCH_FILE, CONFIG_FILE

    run_dir = init_run_dir(args.init)
    if run_dir is None:
        return
    run = read_run(run_dir)
    if args.config is None:
        args.config = run_dir / CONFIG_FILE
    if args.architecture is None and args.model is None and args.fixed_op is None:
        if run.get("model") in KERAS_MODELS:
            if args.stage != "train":
                raise UsageError(f"--init=run:{run_dir} trained the baseline {run['model']}: warm-start it "
                                 "with --stage=train")
            args.model = run["model"]
        else:
            args.architecture, args.mode = run_dir / ARCH_FILE, args.mode or run.get("mode") or "hard"


@dataclasses.dataclass(frozen=True)
class RowMap:
    """Embedding-table rows to carry: new_rows[i] of the new table <- old_rows[i] of the old one."""

    old_rows: np.ndarray
    new_rows: np.ndarray
    old_total: int
    new_total: int
    fields: dict[str, dict[str, Any]]  # per field: kind and counts of carried / moved / new / dropped tokens


def read_vocabulary(data_dir: str | pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """(keys, ids) of a pipeline run's vocabulary asset (int64 arrays, file order)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import tensorflow as tf

    from pipeline.transform import VOCAB_ASSET

    path = join(data_dir, f"transform_fn/assets/{VOCAB_ASSET}")
    if not tf.io.gfile.exists(path):
        raise UsageError(f"{path} is missing: warm start reads both runs' vocabularies (is {data_dir} a finished "
                         "`pipeline` output?)")
    with tf.io.gfile.GFile(path, "rb") as handle:
        data = handle.read()
    if not data.strip():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    table = pacsv.read_csv(
        pa.BufferReader(data), pacsv.ReadOptions(column_names=["key", "id"]),
        pacsv.ParseOptions(delimiter="\t"), pacsv.ConvertOptions(column_types={"key": pa.int64(), "id": pa.int64()}),
    )
    return table["key"].to_numpy(), table["id"].to_numpy()


def field_map(old_size: int, new_size: int, old_vocab: tuple[np.ndarray, np.ndarray] | None,
              new_vocab: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, dict[str, int]]:
    """Old id of each new id of one field (-1: new token, initializer) and the token counts.

    With vocabularies ((keys, ids) of this field in each run) a value id follows
    its key; without (a fixed-range field) ids map to themselves. OOV and
    missing always map to themselves.
    """
    source = np.full(new_size, -1, np.int64)
    special = min(FIRST_VALUE_ID, old_size, new_size)
    source[:special] = np.arange(special)
    if old_vocab is None or new_vocab is None:
        same = min(old_size, new_size)
        source[:same] = np.arange(same)
        carried = max(same - FIRST_VALUE_ID, 0)
        return source, {"carried": carried, "moved": 0, "new": max(new_size - FIRST_VALUE_ID, 0) - carried,
                        "dropped": max(old_size - FIRST_VALUE_ID, 0) - carried}
    (old_keys, old_ids), (new_keys, new_ids) = old_vocab, new_vocab
    for size, ids, which in ((old_size, old_ids, "previous"), (new_size, new_ids, "new")):
        if ids.size and (ids.max() >= size or ids.min() < FIRST_VALUE_ID):
            raise UsageError(f"the {which} run's vocabulary holds ids outside [{FIRST_VALUE_ID}, {size}) "
                             "(its stats.json and transform_fn/ do not belong together)")
    _, old_at, new_at = np.intersect1d(old_keys, new_keys, assume_unique=True, return_indices=True)
    source[new_ids[new_at]] = old_ids[old_at]
    carried = int(old_at.size)
    return source, {"carried": carried, "moved": int(np.count_nonzero(new_ids[new_at] != old_ids[old_at])),
                    "new": int(new_keys.size) - carried, "dropped": int(old_keys.size) - carried}


def plan(previous: pathlib.Path, info: DatasetInfo) -> RowMap:
    """The row map from run `previous`'s embedding tables to a model of `info`'s fields (read before training)."""
    from pipeline.job import run_spec
    from pipeline.remote import local_view
    from pipeline.transform import field_of_key, vocab_fields

    run = read_run(previous)
    old_names = [f["name"] for f in run["fields"]]
    if old_names != info.field_names:
        raise UsageError(
            f"--init=run:{previous} has fields {old_names}, {info.data_dir} has {info.field_names}: warm start "
            "carries rows of the same fields (same schema); train this data with --init=fresh"
        )
    old_dir = local_view(run["data_dir"])
    try:
        old_kinds = {i: k for i, _, k in vocab_fields(run_spec(str(old_dir)))}
        new_kinds = {i: k for i, _, k in vocab_fields(run_spec(str(info.data_dir)))}
    except (UsageError, OSError) as err:
        raise UsageError(f"--init=run:{previous}: {err} (the previous run's data_dir, from its run.json, "
                         "must still be there: its vocabulary says which token each row holds)") from err
    if old_kinds != new_kinds:
        raise UsageError(f"--init=run:{previous}: the fields' kinds differ between {old_dir} and {info.data_dir} "
                         "(another schema); train with --init=fresh")
    old_vocab, new_vocab = (_by_field(read_vocabulary(d), field_of_key) for d in (old_dir, info.data_dir))
    old_sizes = [int(f["vocab_size"]) for f in run["fields"]]
    old_offsets = np.cumsum([0, *old_sizes[:-1]])
    new_offsets = np.cumsum([0, *info.vocab_sizes[:-1]])
    old_rows, new_rows, report = [], [], {}
    for index, field in enumerate(info.fields):
        has_vocab = index in new_kinds
        source, counts = field_map(old_sizes[index], field.vocab_size,
                                   old_vocab.get(index, _EMPTY) if has_vocab else None,
                                   new_vocab.get(index, _EMPTY) if has_vocab else None)
        kept = np.flatnonzero(source >= 0)
        new_rows.append(new_offsets[index] + kept)
        old_rows.append(old_offsets[index] + source[kept])
        report[field.name] = {"kind": new_kinds.get(index, "positional"), **counts}
    return RowMap(np.concatenate(old_rows), np.concatenate(new_rows), sum(old_sizes), sum(info.vocab_sizes), report)


_EMPTY = (np.zeros(0, np.int64), np.zeros(0, np.int64))


def _by_field(vocab: tuple[np.ndarray, np.ndarray], field_of_key: Any) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    keys, ids = vocab
    fields = field_of_key(keys)
    return {int(f): (keys[fields == f], ids[fields == f]) for f in np.unique(fields)}


def remap_table(old: np.ndarray, new: np.ndarray, rows: RowMap) -> np.ndarray:
    """`new` (the initialized table) with the carried rows of `old` in their new places."""
    if old.shape[0] != rows.old_total or new.shape[0] != rows.new_total or old.shape[1:] != new.shape[1:]:
        raise ValueError(f"table of shape {old.shape} there, {new.shape} here; the vocabularies say "
                         f"{rows.old_total} and {rows.new_total} rows")
    out = np.array(new, copy=True)
    out[rows.new_rows] = old[rows.old_rows]
    return out


def apply(model: keras.Model, previous: pathlib.Path, rows: RowMap) -> list[str]:
    """Loads run `previous` into `model`: embedding tables through `rows`, other weights by variable
    path (copy_weights_by_path). Returns the paths left fresh (not in the previous model)."""
    from trainer.model_io import copy_weights_by_path, load_model

    old = load_model(previous)
    saved = {v.path: np.asarray(v.numpy()) for v in old.weights}
    try:
        for v in model.embedding_variables:
            if v.path in saved:
                try:
                    saved[v.path] = remap_table(saved[v.path], np.asarray(v.numpy()), rows)
                except ValueError as err:
                    raise ValueError(f"{v.path}: {err}") from err
        return copy_weights_by_path(model, saved, getattr(old, "component_inputs", {}))
    except ValueError as err:
        raise UsageError(f"--init=run:{previous}: {err}") from err
