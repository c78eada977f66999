"""Per-field value distributions of a run (distributions.json), what `pipeline validate` compares.

Collected from the transformed ids, at no extra pass over the data: ids
2..TOP_K+1 of a field are its TOP_K most frequent training values (ids are
assigned by training count, pipeline.transform), so one `np.bincount` of
min(id, TOP_K + 2) per field and batch (`id_histograms`, beside the job's
split statistics) holds, per split, the OOV count (bin 0), the missing count
(bin 1), the count of each top value, and the rest as one `other` bin.
After the job, `distributions_doc` names each top id by a key that is the
same in every run of the field (`value_key`), from the run's vocabulary asset:
- categorical and multi fields: `#` and the token's 54-bit fingerprint in hex
  (the vocabulary key without its field bits; the raw string is not kept);
- integer and float fields (the log-squared rule): the integer token;
- hour / timestamp fields (hour_of_day, weekday, is_weekend): the value;
- quantile-bucketed floats: `bucket N` of the run's own boundaries, which
  differ from run to run (their measure is None: not compared).
Valid and test splits count the training top values; `other` holds the
kept values beyond rank TOP_K.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable

import numpy as np

from pipeline.dataset_info import PAD_ID
from pipeline.features import FIRST_VALUE_ID, MISSING_ID, OOV_ID
from pipeline.specs import DatasetSpec

# Top values recorded per field (TFDV keeps a truncated rank histogram likewise).
TOP_K = 100
OTHER_BIN = FIRST_VALUE_ID + TOP_K  # histogram bin of the values ranked beyond TOP_K
# Where the job's vocabulary asset lands in a run (TFT copies assets by name).
VOCABULARY_ASSET_PATH = "transform_fn/assets/vocabulary.tsv"
# Field kinds by the measure `pipeline validate` applies to their top values.
CATEGORICAL_KINDS = ("categorical", "multi")


def histogram_file(split: str) -> str:
    """Name of one split's id histograms in the job's partial statistics folder."""
    return f"{split}.histograms.json"


def id_histograms(ids_by_field: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per field, counts of [OOV, missing, top-1 .. top-TOP_K, other] among the given ids (padding left out)."""
    # Shifted by one, padding lands in a first bin that is dropped (half the time of masking it out).
    shift = -PAD_ID
    return {name: np.bincount(np.minimum(ids + shift, OTHER_BIN + shift), minlength=OTHER_BIN + 1 + shift)[shift:]
            for name, ids in ids_by_field.items()}


def add_histograms(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: a[name] + b[name] for name in a}


def measure_of(kind: str, bucketized: bool) -> str | None:
    """`linf` (categorical values), `js` (numeric tokens or values) or None (run-specific quantile buckets)."""
    if kind in CATEGORICAL_KINDS:
        return "linf"
    return None if bucketized else "js"


def _field_kinds(spec: DatasetSpec) -> dict[str, tuple[str, bool]]:
    """Model field -> (raw column kind, bucketized float)."""
    return {name: (col.kind, col.kind == "float" and bool(col.buckets))
            for col in spec.raw_columns for name in col.output_names}


def top_value_keys(vocabulary: bytes, spec: DatasetSpec) -> dict[str, list[str]]:
    """Per vocabulary field, the keys (`value_key`) of ids FIRST_VALUE_ID.. up to TOP_K, in id order."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from pipeline.transform import field_of_key, value_labels, vocab_fields

    table = pacsv.read_csv(
        io.BytesIO(vocabulary),
        read_options=pacsv.ReadOptions(column_names=["key", "id"]),
        parse_options=pacsv.ParseOptions(delimiter="\t"),
        convert_options=pacsv.ConvertOptions(column_types={"key": pa.int64(), "id": pa.int64()}),
    )
    keys, ids = table.column("key").to_numpy(), table.column("id").to_numpy()
    top = ids < OTHER_BIN
    keys, ids, fields = keys[top], ids[top], field_of_key(keys[top])
    out = {}
    for field, name, _ in vocab_fields(spec):
        mine = fields == field
        out[name] = value_labels(keys[mine][np.argsort(ids[mine])])
    return out


def distributions_doc(spec: DatasetSpec, histograms: dict[str, dict[str, list[int]]],
                      vocabulary: bytes | None) -> dict:
    """distributions.json: per field its kind, measure and, per split, counts and named top values.

    `histograms`: per split the summed `id_histograms`; `vocabulary`: the run's
    vocabulary asset (None when no field has a vocabulary).
    """
    keys = top_value_keys(vocabulary, spec) if vocabulary is not None else {}
    fields = {}
    for name, (kind, bucketized) in _field_kinds(spec).items():
        if name in keys:
            names = keys[name]
        elif bucketized:
            names = [f"bucket {i}" for i in range(TOP_K)]
        else:  # hour / timestamp fields: id = value + FIRST_VALUE_ID
            names = [str(i) for i in range(TOP_K)]
        splits = {}
        for split, by_field in histograms.items():
            hist = by_field[name]
            values = hist[FIRST_VALUE_ID:OTHER_BIN]
            splits[split] = {
                "present": int(sum(hist) - hist[MISSING_ID]),
                "missing": int(hist[MISSING_ID]),
                "oov": int(hist[OOV_ID]),
                "other": int(hist[OTHER_BIN]),
                "top": [[key, int(count)] for key, count in zip(names, values, strict=False) if count],
            }
        fields[name] = {"kind": kind, "measure": measure_of(kind, bucketized), "splits": splits}
    return {"top_k": TOP_K, "fields": fields}


def distributions_json(spec: DatasetSpec, splits: tuple[str, ...], partial_dir: str,
                       read: Callable[[str], bytes]) -> str:
    """distributions.json text of a finished job: `read` returns a scratch file's bytes by relative name.

    `partial_dir`: the job's partial statistics folder, holding `histogram_file(split)` per split.
    """
    from pipeline.transform import vocab_fields

    histograms = {split: json.loads(read(f"{partial_dir}/{histogram_file(split)}")) for split in splits}
    vocabulary = read(VOCABULARY_ASSET_PATH) if vocab_fields(spec) else None
    return json.dumps(distributions_doc(spec, histograms, vocabulary)) + "\n"
