"""Dataset specs: which raw columns a file has and how each becomes a model field.

One format for every dataset: a schema file (docs/SCHEMA.md) read and
validated here, up front, key by key. The built-in datasets are schema files
too (schemas/criteo.yaml, avazu.yaml, kdd12.yaml); `--dataset NAME` loads
schemas/NAME.yaml. The resulting DatasetSpec is shared by the Beam job, the
raw-row reader used by serving clients and the tests.
"""

from __future__ import annotations

import codecs
import dataclasses
import pathlib
from typing import Any

import yaml

from pipeline.errors import UsageError
from pipeline.features import LABEL_KEY, MAX_FIELDS
from pipeline.validate import check_thresholds

SCHEMA_DIR = pathlib.Path(__file__).resolve().parents[1] / "schemas"

# Field kinds. `integer`: log-squared discretization, every value kept.
# `categorical`: vocabulary with a min-count threshold. `hour`: Avazu's
# YYMMDDHH, expanded into hour_of_day / weekday / is_weekend. `float`: quantile
# buckets (`buckets: N`) or the integer rule on floor(value). `timestamp`: a
# strptime `format:` (or `unix` seconds), expanded like `hour`. `multi`: a list
# of categorical tokens in one cell (`separator:`, `max_len:`).
KINDS = ("categorical", "integer", "float", "hour", "timestamp", "multi")
# Keys a field may have besides `kind`, per kind.
_FIELD_KEYS = {
    "categorical": set(), "integer": set(), "hour": set(),
    "float": {"buckets"}, "timestamp": {"format"}, "multi": {"separator", "max_len"},
}
# Label rules: `binary` 0/1 (also 0.0/1.0), `positive` value > 0 (KDD12's Click),
# `pm1` -1/1 (libFM), `{threshold: T}` value >= T (ratings).
LABEL_RULES = ("binary", "positive", "pm1", "threshold")
FORMATS = ("csv", "libsvm")
AUTO = "auto"
UNIX_TIME = "unix"

HOUR_FIELDS = (("hour_of_day", 24), ("weekday", 7), ("is_weekend", 2))

_TOP_KEYS = {"name", "format", "delimiter", "header", "quoting", "columns", "label", "label_rule",
             "fields", "dropped", "joins", "validation"}
# (`on:` would be YAML 1.1's boolean true: the main file's key column is `key:`.)
_JOIN_KEYS = {"path", "key", "table_key", "columns", "delimiter", "header", "quoting", "encoding"}


class SpecError(UsageError):
    """A dataset name or schema file is unknown or malformed."""


@dataclasses.dataclass(frozen=True)
class RawColumn:
    """One column of the raw file that becomes one raw feature (and one or more model fields)."""

    name: str
    kind: str  # one of KINDS
    buckets: int | None = None  # float: quantile buckets; None = the integer rule on floor(v)
    time_format: str | None = None  # timestamp: strptime format or UNIX_TIME
    separator: str | None = None  # multi
    max_len: int = 1  # multi: ids per example

    @property
    def is_integer(self) -> bool:
        """Integer-valued raw feature (int64 in tf.Example: timestamps as Unix seconds)."""
        return self.kind in ("integer", "hour", "timestamp")

    @property
    def is_float(self) -> bool:
        return self.kind == "float"

    @property
    def output_names(self) -> list[str]:
        """Model fields this column becomes."""
        if self.kind == "hour":
            return [name for name, _ in HOUR_FIELDS]
        if self.kind == "timestamp":
            return [f"{self.name}_{name}" for name, _ in HOUR_FIELDS]
        return [self.name]

    def to_doc(self) -> str | dict[str, Any]:
        """The schema-file form of this field."""
        extra = {"buckets": self.buckets, "format": self.time_format, "separator": self.separator,
                 "max_len": self.max_len if self.kind == "multi" else None}
        extra = {k: v for k, v in extra.items() if v is not None}
        return {"kind": self.kind, **extra} if extra else self.kind


@dataclasses.dataclass(frozen=True)
class LabelRule:
    """How a label cell becomes 0/1."""

    kind: str  # one of LABEL_RULES
    threshold: float | None = None

    def to_doc(self) -> str | dict[str, float]:
        return {"threshold": self.threshold} if self.kind == "threshold" and self.threshold is not None else self.kind


@dataclasses.dataclass(frozen=True)
class Join:
    """A keyed side table (docs/SCHEMA.md §Joins): rows of the main file look up its row by key.

    `key`: the main file's column holding the key; `table_key`: the side table's.
    Fields named among `columns` (but the key) take that row's cells; a main
    row whose key the table lacks gets them missing. `path` is absolute or a URI.
    """

    path: str
    key: str
    table_key: str
    columns: tuple[str, ...]
    delimiter: str = "\t"
    header: bool | None = None
    quoting: bool = True
    encoding: str = "utf-8"

    def to_doc(self) -> dict[str, Any]:
        return {"path": self.path, "key": self.key, "table_key": self.table_key, "columns": list(self.columns),
                "delimiter": self.delimiter, "header": AUTO if self.header is None else self.header,
                "quoting": self.quoting, "encoding": self.encoding}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """The raw layout of one dataset and its fields in model order.

    `columns` is the file's column order (for files without a header);
    `dropped` columns are read and ignored (Avazu `id`). `label_column` None:
    unlabeled data (records carry no label). `delimiter` AUTO: TAB or comma
    from the first line; `header` None: detected from the first line.
    """

    name: str
    columns: tuple[str, ...]
    label_column: str | None
    label_rule: LabelRule
    raw_columns: tuple[RawColumn, ...]
    dropped: tuple[str, ...] = ()
    delimiter: str = "\t"
    header: bool | None = False
    quoting: bool = True
    format: str = "csv"
    joins: tuple[Join, ...] = ()
    # `validation:` thresholds of `pipeline validate` (pipeline.validate.check_thresholds' form), None: defaults.
    validation: dict[str, Any] | None = dataclasses.field(default=None, hash=False)

    @property
    def labeled(self) -> bool:
        return self.label_column is not None

    def joined_columns(self, join: Join) -> tuple[RawColumn, ...]:
        """The fields whose cells come from `join`'s side table."""
        return tuple(col for col in self.raw_columns if col.name in join.columns and col.name != join.table_key)

    @property
    def file_columns(self) -> tuple[RawColumn, ...]:
        """The fields read from the main file itself (all of them without joins)."""
        joined = {col.name for join in self.joins for col in self.joined_columns(join)}
        return tuple(col for col in self.raw_columns if col.name not in joined)

    @property
    def field_names(self) -> list[str]:
        """Transformed field names in model order (what stats.json lists)."""
        return [name for col in self.raw_columns for name in col.output_names]

    @property
    def max_lens(self) -> dict[str, int]:
        """Ids per example of every model field (1 but for multi-valued fields)."""
        return {name: col.max_len for col in self.raw_columns for name in col.output_names}

    def column(self, name: str) -> RawColumn:
        return next(col for col in self.raw_columns if col.name == name)

    def raw_feature_spec(self) -> dict:
        """tf.io feature spec of raw features (VarLen: empty = missing) plus the label if labeled."""
        import tensorflow as tf

        def dtype(col: RawColumn):
            return tf.int64 if col.is_integer else tf.float32 if col.is_float else tf.string

        spec = {col.name: tf.io.VarLenFeature(dtype(col)) for col in self.raw_columns}
        if self.labeled:
            spec[LABEL_KEY] = tf.io.FixedLenFeature([], tf.int64)
        return spec

    def without_label(self) -> DatasetSpec:
        """The same spec for files that lack the label column (scoring logs, a test set)."""
        if not self.labeled:
            return self
        return dataclasses.replace(
            self, columns=tuple(c for c in self.columns if c != self.label_column), label_column=None
        )

    def to_doc(self) -> dict[str, Any]:
        """The schema-file form (recorded in stats.json so that `pipeline transform` rebuilds the spec)."""
        csv_keys = {} if self.format == "libsvm" else {
            "delimiter": self.delimiter, "header": AUTO if self.header is None else self.header,
            "quoting": self.quoting, "dropped": list(self.dropped),
        }
        return {
            "name": self.name, "format": self.format, **csv_keys,
            "columns": list(self.columns), "label": self.label_column,
            **({"label_rule": self.label_rule.to_doc()} if self.labeled else {}),
            "fields": {col.name: col.to_doc() for col in self.raw_columns},
            **({"joins": [join.to_doc() for join in self.joins]} if self.joins else {}),
            **({"validation": self.validation} if self.validation is not None else {}),
        }


def _fail(where: str, key: str, problem: str) -> SpecError:
    return SpecError(f"{where}: key {key!r}: {problem} (see docs/SCHEMA.md)")


def _unknown_keys(doc: dict, allowed: set[str], where: str, key: str) -> None:
    unknown = sorted(str(k) for k in doc if k not in allowed)
    if unknown:
        raise _fail(where, f"{key}{unknown[0]}", f"unknown key; allowed: {sorted(allowed)}")


def _name_list(value: Any, where: str, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
        raise _fail(where, key, f"must be a list of column names, got {value!r}")
    names = tuple(str(v) for v in value)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise _fail(where, key, f"names {dupes} appear more than once")
    return names


def _positive_int(value: Any, where: str, key: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise _fail(where, key, f"must be an integer >= {least}, got {value!r}")
    return value


def _label_rule(value: Any, where: str) -> LabelRule:
    if isinstance(value, dict):
        _unknown_keys(value, {"threshold"}, where, "label_rule.")
        threshold = value.get("threshold")
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise _fail(where, "label_rule.threshold", f"must be a number, got {threshold!r}")
        return LabelRule("threshold", float(threshold))
    if value not in LABEL_RULES or value == "threshold":
        raise _fail(where, "label_rule", f"got {value!r}; expected binary, positive, pm1 or {{threshold: T}}")
    return LabelRule(str(value))


def _field(name: str, value: Any, where: str, delimiter: str) -> RawColumn:
    key = f"fields.{name}"
    doc = {"kind": value} if isinstance(value, str) else value
    if not isinstance(doc, dict) or "kind" not in doc:
        raise _fail(where, key, f"must be a kind ({', '.join(KINDS)}) or a mapping with `kind:`, got {value!r}")
    kind = doc["kind"]
    if kind not in KINDS:
        raise _fail(where, key, f"has kind {kind!r}; expected one of {KINDS}")
    _unknown_keys(doc, {"kind"} | _FIELD_KEYS[kind], where, f"{key}.")
    if kind == "float":
        buckets = doc.get("buckets")
        if buckets is not None:
            _positive_int(buckets, where, f"{key}.buckets", 2)
        return RawColumn(name, kind, buckets=buckets)
    if kind == "timestamp":
        fmt = doc.get("format")
        if not isinstance(fmt, str) or (fmt != UNIX_TIME and "%" not in fmt):
            raise _fail(where, f"{key}.format",
                        f"a timestamp needs a strptime format such as '%Y-%m-%d %H:%M:%S' or 'unix', got {fmt!r}")
        return RawColumn(name, kind, time_format=fmt)
    if kind == "multi":
        separator = doc.get("separator")
        if not isinstance(separator, str) or not separator:
            raise _fail(where, f"{key}.separator", f"must be a non-empty string such as '^', got {separator!r}")
        if separator == delimiter:
            raise _fail(where, f"{key}.separator", "must differ from the file's delimiter")
        max_len = _positive_int(doc.get("max_len"), where, f"{key}.max_len", 2)
        return RawColumn(name, kind, separator=separator, max_len=max_len)
    return RawColumn(name, kind)


def _csv_keys(doc: dict, where: str, prefix: str) -> tuple[str, bool | None, bool]:
    """`delimiter`, `header` (None: auto) and `quoting` of a file (the main one, or a join's under `prefix`)."""
    delimiter = doc.get("delimiter", "\t")
    if not isinstance(delimiter, str) or (delimiter != AUTO and len(delimiter) != 1) or delimiter in "\"\r\n":
        raise _fail(where, f"{prefix}delimiter",
                    f"got {delimiter!r}; use one character (\"\\t\", \",\", \";\", \"|\") or auto "
                    "(multi-character delimiters are not supported: convert the file, e.g. sed 's/::/\\t/g')")
    header = doc.get("header", AUTO)
    if header != AUTO and not isinstance(header, bool):
        raise _fail(where, f"{prefix}header", f"got {header!r}; expected true, false or auto")
    quoting = doc.get("quoting", True)
    if not isinstance(quoting, bool):
        raise _fail(where, f"{prefix}quoting", f"got {quoting!r}; expected true or false")
    return delimiter, None if header == AUTO else bool(header), quoting


def _join(doc: Any, index: int, where: str, columns: tuple[str, ...], label: str | None,
          base_dir: pathlib.Path | None) -> Join:
    """One entry of `joins:`, checked key by key; a relative `path` is taken from `base_dir`."""
    key = f"joins[{index}]."
    if not isinstance(doc, dict):
        raise _fail(where, key[:-1], f"must be a mapping with path, key and columns, got {doc!r}")
    _unknown_keys(doc, _JOIN_KEYS, where, key)
    for required in ("path", "key", "columns"):
        if required not in doc:
            raise _fail(where, key + required, "is required")
    path = doc["path"]
    if not isinstance(path, str) or not path:
        raise _fail(where, key + "path", f"must be a file path or URI, got {path!r}")
    if "://" not in path:
        path = str(((base_dir or pathlib.Path.cwd()) / path).resolve())
    side_columns = _name_list(doc["columns"], where, key + "columns")
    main_key = str(doc["key"])
    if main_key not in columns or main_key == label:
        raise _fail(where, key + "key", f"{main_key!r} is not a non-label column of columns {list(columns)}")
    table_key = str(doc.get("table_key", main_key))
    if table_key not in side_columns:
        raise _fail(where, key + "table_key", f"{table_key!r} is not among its columns {list(side_columns)}")
    delimiter, header, quoting = _csv_keys(doc, where, key)
    if delimiter == AUTO:
        raise _fail(where, key + "delimiter", "must be given for a side table (auto applies to the main file)")
    encoding = doc.get("encoding", "utf-8")
    try:
        encoding = codecs.lookup(encoding).name
    except (LookupError, TypeError) as err:
        raise _fail(where, key + "encoding",
                    f"got {encoding!r}; expected a Python codec such as utf-8 or latin-1") from err
    return Join(path, main_key, table_key, side_columns, delimiter, header, quoting, encoding)


def _field_sources(joins: tuple[Join, ...], columns: tuple[str, ...], fields: set[str], where: str) -> dict[str, int]:
    """Field taken from a side table -> index of its join; SpecError where a field's name is ambiguous."""
    sources: dict[str, int] = {}
    for i, join in enumerate(joins):
        for name in join.columns:
            if name == join.table_key or name not in fields:
                continue
            if name in sources or name in columns:
                other = f"joins[{sources[name]}]" if name in sources else "the main file's columns"
                raise _fail(where, f"joins[{i}].columns",
                            f"{name!r} is also among {other}: rename one of them (a field name must be unique)")
            sources[name] = i
    return sources


def spec_from_doc(doc: Any, where: str, default_name: str, base_dir: pathlib.Path | None = None) -> DatasetSpec:
    """Validates a parsed schema document key by key; SpecError naming the key and `where`.

    `base_dir`: where relative `joins:` paths start (the schema file's folder; None: the working directory).
    """
    if not isinstance(doc, dict):
        raise SpecError(f"{where}: a schema file is a YAML mapping of keys (see docs/SCHEMA.md)")
    _unknown_keys(doc, _TOP_KEYS, where, "")
    for required in ("columns", "label", "fields"):
        if required not in doc:
            raise _fail(where, required, "is required" + (" (null for unlabeled data)" if required == "label" else ""))
    fmt = doc.get("format", "csv")
    if fmt not in FORMATS:
        raise _fail(where, "format", f"got {fmt!r}; expected one of {FORMATS}")
    if fmt == "libsvm":
        for key in ("delimiter", "header", "quoting", "dropped"):
            if key in doc:
                raise _fail(where, key, "does not apply to format: libsvm (space-separated `idx:val` tokens)")
    delimiter, header, quoting = _csv_keys(doc, where, "")
    columns = _name_list(doc["columns"], where, "columns")
    if not columns:
        raise _fail(where, "columns", "must list the file's columns")
    label = doc["label"]
    if label is not None and (not isinstance(label, str | int) or str(label) not in columns):
        raise _fail(where, "label", f"{label!r} is not among the columns {list(columns)} (null for unlabeled data)")
    label = None if label is None else str(label)
    if label is None and "label_rule" in doc:
        raise _fail(where, "label_rule", "given but label is null")
    rule = _label_rule(doc.get("label_rule", "binary"), where)
    fields = doc["fields"]
    if not isinstance(fields, dict) or not fields:
        raise _fail(where, "fields", "must map at least one column to its kind (an empty run has no model input)")
    join_docs = doc.get("joins", [])
    if not isinstance(join_docs, list):
        raise _fail(where, "joins", f"must be a list of side tables, got {join_docs!r}")
    if join_docs and fmt == "libsvm":
        raise _fail(where, "joins", "does not apply to format: libsvm")
    joins = tuple(_join(j, i, where, columns, label, base_dir) for i, j in enumerate(join_docs))
    sources = _field_sources(joins, columns, {str(name) for name in fields}, where)
    raw = tuple(_field(str(name), value, where,
                       joins[sources[str(name)]].delimiter if str(name) in sources else delimiter)
                for name, value in fields.items())
    dropped = _name_list(doc.get("dropped", []), where, "dropped")
    for i, join in enumerate(joins):
        if not any(col.name in sources and sources[col.name] == i for col in raw):
            raise _fail(where, f"joins[{i}]", f"brings no field: list some of its columns {list(join.columns)} "
                        "under fields, or drop the join")
        key_field = next((col for col in raw if col.name == join.key), None)
        if key_field is not None and key_field.kind != "categorical":
            raise _fail(where, f"fields.{key_field.name}", f"is the key of joins[{i}]: it must be categorical")
    for col in raw:
        if col.name in sources:
            continue
        if col.name not in columns:
            joined = sorted(sources)
            raise _fail(where, f"fields.{col.name}", f"is not among the columns {list(columns)}"
                        + (f" nor the joined columns {joined}" if joined else ""))
        if col.name == label:
            raise _fail(where, f"fields.{col.name}", "is the label column; a field cannot be the label")
        if col.name in dropped:
            raise _fail(where, f"fields.{col.name}", "is also listed in dropped")
        if fmt == "libsvm" and col.kind not in ("categorical", "integer", "float"):
            raise _fail(where, f"fields.{col.name}", "format: libsvm fields are categorical, integer or float")
    for name in dropped:
        if name not in columns or name == label:
            raise _fail(where, "dropped", f"{name!r} is not a non-label column of columns")
    spec = DatasetSpec(
        name=str(doc.get("name", default_name)),
        columns=columns,
        label_column=label,
        label_rule=rule,
        raw_columns=raw,
        dropped=dropped,
        delimiter=" " if fmt == "libsvm" else delimiter,
        header=False if fmt == "libsvm" else header,
        quoting=quoting and fmt == "csv",
        format=fmt,
        joins=joins,
    )
    names = spec.field_names
    clash = sorted({n for n in names if names.count(n) > 1} | ({LABEL_KEY} & set(names) if label else set()))
    if clash:
        raise _fail(where, "fields", f"model field names {clash} clash (an expanded hour/timestamp or the label)")
    if len(names) > MAX_FIELDS:
        raise _fail(where, "fields", f"at most {MAX_FIELDS} fields are supported, got {len(names)}")
    if "validation" in doc:
        try:
            validation = check_thresholds(doc["validation"], "validation", names)
        except UsageError as err:
            raise SpecError(f"{where}: key {err} (see docs/SCHEMA.md)") from None
        spec = dataclasses.replace(spec, validation=validation)
    return spec


def spec_from_schema(path: str | pathlib.Path) -> DatasetSpec:
    """Reads and validates a schema file (docs/SCHEMA.md)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise SpecError(f"schema file {path} does not exist (see schemas/ and docs/SCHEMA.md)")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise SpecError(f"schema file {path} cannot be read as YAML: {err}") from err
    return spec_from_doc(doc, str(path), path.stem, path.resolve().parent)


# What `--dataset` accepts: the built-in schema files (the pipeline CLI's choices come from here).
DATASET_NAMES = ("criteo", "avazu", "kdd12")
BUILTIN = {name: SCHEMA_DIR / f"{name}.yaml" for name in DATASET_NAMES}


def load_spec(dataset: str | None = None, schema_path: str | None = None) -> DatasetSpec:
    """The spec of a built-in dataset (schemas/NAME.yaml) or of a schema file (exactly one of both)."""
    if (dataset is None) == (schema_path is None):
        raise SpecError(f"give exactly one of --dataset {{{','.join(DATASET_NAMES)}}} or --schema FILE")
    if schema_path is not None:
        return spec_from_schema(schema_path)
    if dataset not in BUILTIN:
        raise SpecError(f"unknown dataset {dataset!r}; expected one of {list(DATASET_NAMES)} or --schema FILE")
    return spec_from_schema(BUILTIN[dataset])
