"""Dataset specs: which raw columns a file has and how each becomes a model field.

One record per field, shared by the Beam job, the raw-row reader used by
serving clients and the tests, so that the column layout of Criteo, Avazu,
KDD12 and schema-described files is written down exactly once.
"""

from __future__ import annotations

import dataclasses
import pathlib

import yaml

from pipeline.errors import UsageError
from pipeline.features import LABEL_KEY, MAX_FIELDS

# Field kinds. `integer`: log-squared discretization, every value kept.
# `categorical`: vocabulary with a min-count threshold. `hour`: Avazu's
# YYMMDDHH, expanded into hour_of_day / weekday / is_weekend.
KINDS = ("integer", "categorical", "hour")
# Label rules: `binary` accepts exactly 0/1; `positive` (KDD12) is Click > 0.
LABEL_RULES = ("binary", "positive")

HOUR_FIELDS = (("hour_of_day", 24), ("weekday", 7), ("is_weekend", 2))


class SpecError(UsageError):
    """A dataset name or schema file is unknown or malformed."""


@dataclasses.dataclass(frozen=True)
class RawColumn:
    """One column of the raw file that becomes a raw feature."""

    name: str
    kind: str  # one of KINDS

    @property
    def is_integer(self) -> bool:
        """Integer-valued raw feature (int64 in tf.Example), else a string."""
        return self.kind in ("integer", "hour")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """The raw layout of one dataset and its fields in model order.

    `columns` is the file's column order (for files without a header);
    `dropped` columns are read and ignored (Avazu `id`, Kaggle `Id`).
    """

    name: str
    columns: tuple[str, ...]
    label_column: str
    label_rule: str
    raw_columns: tuple[RawColumn, ...]
    dropped: tuple[str, ...] = ()
    delimiter: str = "\t"
    header: bool = False

    @property
    def field_names(self) -> list[str]:
        """Transformed field names in model order (what stats.json lists)."""
        names: list[str] = []
        for col in self.raw_columns:
            if col.kind == "hour":
                names.extend(name for name, _ in HOUR_FIELDS)
            else:
                names.append(col.name)
        return names

    def raw_feature_spec(self) -> dict:
        """tf.io feature spec of raw features (VarLen: empty = missing) plus the label."""
        import tensorflow as tf

        spec = {
            col.name: tf.io.VarLenFeature(tf.int64 if col.is_integer else tf.string)
            for col in self.raw_columns
        }
        spec[LABEL_KEY] = tf.io.FixedLenFeature([], tf.int64)
        return spec


def _criteo() -> DatasetSpec:
    ints = [RawColumn(f"I{i}", "integer") for i in range(1, 14)]
    cats = [RawColumn(f"C{i}", "categorical") for i in range(1, 27)]
    return DatasetSpec(
        name="criteo",
        columns=("label", *(c.name for c in ints + cats)),
        label_column="label",
        label_rule="binary",
        raw_columns=tuple(ints + cats),
    )


_AVAZU_COLUMNS = (
    "id click hour C1 banner_pos site_id site_domain site_category app_id app_domain "
    "app_category device_id device_ip device_model device_type device_conn_type "
    "C14 C15 C16 C17 C18 C19 C20 C21"
).split()


def _avazu() -> DatasetSpec:
    raw = [RawColumn("hour", "hour")] + [
        RawColumn(c, "categorical") for c in _AVAZU_COLUMNS[3:]
    ]
    return DatasetSpec(
        name="avazu",
        columns=tuple(_AVAZU_COLUMNS),
        label_column="click",
        label_rule="binary",
        raw_columns=tuple(raw),
        dropped=("id",),
        delimiter=",",
        header=True,
    )


_KDD12_COLUMNS = (
    "Click Impression DisplayURL AdID AdvertiserID Depth Position QueryID KeywordID "
    "TitleID DescriptionID UserID"
).split()


def _kdd12() -> DatasetSpec:
    return DatasetSpec(
        name="kdd12",
        columns=tuple(_KDD12_COLUMNS),
        label_column="Click",
        label_rule="positive",
        raw_columns=tuple(RawColumn(c, "categorical") for c in _KDD12_COLUMNS[1:]),
    )


BUILTIN = {"criteo": _criteo, "avazu": _avazu, "kdd12": _kdd12}
# What `--dataset` accepts (the pipeline CLI's choices come from here).
DATASET_NAMES = tuple(BUILTIN)


def spec_from_schema(path: str | pathlib.Path) -> DatasetSpec:
    """Reads a schemas/*.yaml file (see schemas/frappe.yaml for the format)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise SpecError(f"schema file {path} does not exist (see schemas/ for examples)")
    try:
        doc = yaml.safe_load(path.read_text())
        columns = tuple(str(c) for c in doc["columns"])
        label = str(doc["label"])
        fields = doc["fields"]
        raw = tuple(RawColumn(str(name), str(kind)) for name, kind in fields.items())
        spec = DatasetSpec(
            name=str(doc.get("name", path.stem)),
            columns=columns,
            label_column=label,
            label_rule=str(doc.get("label_rule", "binary")),
            raw_columns=raw,
            dropped=tuple(str(c) for c in doc.get("dropped", ())),
            delimiter=str(doc.get("delimiter", "\t")),
            header=bool(doc.get("header", False)),
        )
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as err:
        raise SpecError(f"schema file {path} is malformed: {err!r}") from err
    _validate(spec, str(path))
    return spec


def _validate(spec: DatasetSpec, where: str) -> None:
    known = set(spec.columns)
    for col in spec.raw_columns:
        if col.kind not in KINDS:
            raise SpecError(f"{where}: field {col.name} has kind {col.kind!r}; expected one of {KINDS}")
        if col.name not in known:
            raise SpecError(f"{where}: field {col.name} is not among the columns {list(spec.columns)}")
    if spec.label_column not in known:
        raise SpecError(f"{where}: label column {spec.label_column!r} is not among the columns")
    if spec.label_rule not in LABEL_RULES:
        raise SpecError(f"{where}: label_rule {spec.label_rule!r}; expected one of {LABEL_RULES}")
    if len(spec.field_names) > MAX_FIELDS:
        raise SpecError(f"{where}: at most {MAX_FIELDS} fields are supported, got {len(spec.field_names)}")


def load_spec(dataset: str | None = None, schema_path: str | None = None) -> DatasetSpec:
    """The spec of a built-in dataset or of a schema file (exactly one of both)."""
    if (dataset is None) == (schema_path is None):
        raise SpecError(f"give exactly one of --dataset {{{','.join(DATASET_NAMES)}}} or --schema FILE")
    if schema_path is not None:
        return spec_from_schema(schema_path)
    if dataset not in BUILTIN:
        raise SpecError(f"unknown dataset {dataset!r}; expected one of {list(DATASET_NAMES)} or --schema FILE")
    return BUILTIN[dataset]()
