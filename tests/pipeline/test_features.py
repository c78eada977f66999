"""The shared facts of pipeline.features line up with every place that uses them."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import features
from pipeline.dataset_info import DatasetInfo, DatasetInfoError, FieldInfo
from pipeline.specs import BUILTIN, DATASET_NAMES, SpecError, load_spec


def test_dataset_names_are_the_cli_choices():
    from pipeline.cli import _job_parser

    (dataset,) = [a for a in _job_parser()._actions if a.dest == "dataset"]
    assert tuple(dataset.choices) == DATASET_NAMES == tuple(BUILTIN)
    for name in DATASET_NAMES:
        assert load_spec(name).name == name


def test_split_names_are_the_readers_splits(tmp_path):
    info = DatasetInfo(tmp_path, "x", features.LABEL_KEY, (FieldInfo("f", 3),))
    for split in features.SPLIT_NAMES:
        assert info.split_pattern(split).endswith(f"{split}-*.tfrecord.gz")
    with pytest.raises(DatasetInfoError, match="has no split .eval."):
        info.split_pattern("eval")


def test_split_ids_index_split_names():
    from pipeline.parse import split_ids

    ids = split_ids([str(i).encode() for i in range(2000)], seed=0)
    assert set(np.unique(ids).tolist()) == set(range(len(features.SPLIT_NAMES)))


def test_id_layout_is_ordered_and_recorded():
    assert features.OOV_ID < features.MISSING_ID < features.FIRST_VALUE_ID
    assert features.id_layout() == {"oov": 0, "missing": 1, "first_value": 2}


def test_field_limit_is_what_the_key_encoding_holds():
    """The last field's largest string and integer keys stay in int64 and decode to their field."""
    from pipeline import transform

    last = features.MAX_FIELDS - 1
    string_key = transform._STRING_FLAG + (last << transform._FIELD_SHIFT) + (1 << transform._FIELD_SHIFT) - 1
    int_key = (last << transform._FIELD_SHIFT) + 2 * transform._INT_OFFSET - 1
    keys = np.array([string_key, int_key, transform._STRING_FLAG], dtype=np.int64)  # overflows if too large
    assert transform.field_of_key(keys).tolist() == [last, last, 0]
    assert int_key < transform._STRING_FLAG


def test_too_many_fields_is_a_spec_error(tmp_path):
    names = [f"c{i}" for i in range(features.MAX_FIELDS + 1)]
    schema = tmp_path / "wide.yaml"
    schema.write_text(
        "columns: [label, " + ", ".join(names) + "]\nlabel: label\nfields:\n"
        + "".join(f"  {n}: categorical\n" for n in names)
    )
    with pytest.raises(SpecError, match=f"at most {features.MAX_FIELDS} fields"):
        load_spec(schema_path=str(schema))
