"""Raw rows -> serialized tf.Example, the wire format of `serving_default`.

Clients (the `serving predict` CLI, export verification and warmup records)
all build requests here, from the rows `pipeline.raw_rows.iter_raw_examples`
yields, so that what the server sees is exactly what the raw feature spec
describes: one value per present feature, no feature where a cell is missing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf


def feature_kinds(raw_feature_spec: Mapping[str, Any]) -> dict[str, tf.dtypes.DType]:
    """Raw feature name -> its dtype, from a `tft.TFTransformOutput.raw_feature_spec()`."""
    return {name: spec.dtype for name, spec in raw_feature_spec.items()}


def _kind(value: Any) -> tf.dtypes.DType:
    if isinstance(value, (bytes, str)):
        return tf.string
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return tf.int64
    return tf.float32


def to_example(
    features: Mapping[str, Sequence[Any]], dtypes: Mapping[str, tf.dtypes.DType] | None = None
) -> tf.train.Example:
    """One raw row as a tf.Example; empty lists are left out (= missing).

    With `dtypes` (the raw feature spec's), values are converted to them and
    unknown keys dropped; without, each value's Python type decides, which is
    what `iter_raw_examples` rows need (they already hold the spec's types).
    """
    example = tf.train.Example()
    fmap = example.features.feature
    for name, values in features.items():
        if not values or (dtypes is not None and name not in dtypes):
            continue
        dtype = dtypes[name] if dtypes is not None else _kind(values[0])
        if dtype == tf.string:
            fmap[name].bytes_list.value.extend(
                v if isinstance(v, bytes) else str(v).encode() for v in values
            )
        elif dtype.is_integer:
            fmap[name].int64_list.value.extend(int(v) for v in values)
        else:
            fmap[name].float_list.value.extend(float(v) for v in values)
    return example


def serialize_rows(
    rows: Iterable[Mapping[str, Sequence[Any]]],
    dtypes: Mapping[str, tf.dtypes.DType] | None = None,
) -> list[bytes]:
    return [to_example(row, dtypes).SerializeToString() for row in rows]


def field_texts(
    rows: Sequence[Mapping[str, Sequence[Any]]], names: Sequence[str]
) -> dict[str, list[bytes]]:
    """Rows as the `raw_fields` signature takes them: cell text per field, b"" = missing."""
    out: dict[str, list[bytes]] = {name: [] for name in names}
    for row in rows:
        for name in names:
            values = row.get(name) or []
            value = values[0] if values else b""
            out[name].append(value if isinstance(value, bytes) else str(value).encode())
    return out
