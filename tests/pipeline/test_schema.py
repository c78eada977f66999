"""The schema format (docs/SCHEMA.md): validation up front, each kind, each label rule, layouts (no Beam run)."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from pipeline.features import MISSING_ID, SPLIT_NAMES
from pipeline.file_layout import detect_layout
from pipeline.parse import parse_lines
from pipeline.sources import FileRange, first_line, read_line_batches
from pipeline.specs import SCHEMA_DIR, SpecError, load_spec, spec_from_doc, spec_from_schema

EXAMPLES = SCHEMA_DIR / "examples"
BASE = "columns: [y, a, b]\nlabel: y\nfields: {a: categorical, b: integer}\n"


def _schema(tmp_path: pathlib.Path, text: str) -> pathlib.Path:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


def _spec(**doc):
    return spec_from_doc({"columns": ["y", "a", "b"], "label": "y", "fields": {"a": "categorical"}, **doc},
                         "t.yaml", "t")


def _parse(spec, lines: list[str], **kwargs):
    layout = detect_layout(lines[0], spec, "t")
    body = lines[1:] if layout.header else lines
    return parse_lines([line.encode() for line in body], layout, spec, seed=0, **kwargs)


def _reasons(parsed) -> dict[str, list[bytes]]:
    got: dict[str, list[bytes]] = {}
    for reason, line in parsed.rejected:
        got.setdefault(reason, []).append(line)
    return got


class TestValidation:
    """Every key is checked before anything runs; the error names the key and the file."""

    @pytest.mark.parametrize(
        "text, key",
        [
            (BASE + "labels: y\n", "'labels'"),
            (BASE.replace("a: categorical", "a: {kind: categorical, buckets: 3}"), "'fields.a.buckets'"),
            (BASE.replace("a: categorical", "a: fancy"), "'fields.a'"),
            ("columns: [y, a]\nlabel: y\nfields: {}\n", "'fields'"),
            (BASE.replace("label: y", "label: z"), "'label'"),
            (BASE + "delimiter: '::'\n", "'delimiter'"),
            (BASE + "header: yes please\n", "'header'"),
            (BASE + "label_rule: above\n", "'label_rule'"),
            (BASE + "label_rule: {threshold: four}\n", "'label_rule.threshold'"),
            (BASE + "label_rule: {threshold: 4, strict: true}\n", "'label_rule.strict'"),
            (BASE.replace("a: categorical", "a: timestamp"), "'fields.a.format'"),
            (BASE.replace("a: categorical", "a: {kind: multi, separator: '^'}"), "'fields.a.max_len'"),
            (BASE.replace("a: categorical", "a: {kind: multi, separator: ',', max_len: 3}") + "delimiter: ','\n",
             "'fields.a.separator'"),
            (BASE.replace("a: categorical", "a: {kind: float, buckets: 1}"), "'fields.a.buckets'"),
            (BASE + "format: libsvm\ndelimiter: ','\n", "'delimiter'"),
            (BASE + "format: parquet\n", "'format'"),
            (BASE.replace("a: categorical", "y: categorical"), "'fields.y'"),
            (BASE + "dropped: [q]\n", "'dropped'"),
            (BASE + "quoting: sometimes\n", "'quoting'"),
            ("columns: [y, a, a_hour_of_day]\nlabel: y\nfields: {a: {kind: timestamp, format: unix}, "
             "a_hour_of_day: categorical}\n", "'fields'"),
            ("label: y\nfields: {a: categorical}\n", "'columns'"),
            ("columns: [y, a]\nlabel: null\nlabel_rule: binary\nfields: {a: categorical}\n", "'label_rule'"),
            ("- just\n- a list\n", "YAML mapping"),
        ],
    )
    def test_refused_with_key_and_file(self, tmp_path, text, key):
        path = _schema(tmp_path, text)
        with pytest.raises(SpecError) as err:
            spec_from_schema(path)
        assert key in str(err.value) and str(path) in str(err.value)

    def test_builtin_datasets_are_schema_files(self):
        for name, fields in (("criteo", 39), ("avazu", 24), ("kdd12", 11)):
            spec = load_spec(name)
            assert spec == spec_from_schema(SCHEMA_DIR / f"{name}.yaml") and len(spec.field_names) == fields

    def test_examples_and_their_round_trip(self):
        """Every shipped schema validates, and its recorded form (stats.json "schema") rebuilds it."""
        for path in [*SCHEMA_DIR.glob("*.yaml"), *EXAMPLES.glob("*.yaml")]:
            spec = spec_from_schema(path)
            assert spec_from_doc(spec.to_doc(), "stats.json", "x") == spec, path

    def test_unlabeled_spec(self):
        spec = _spec(label=None)
        assert not spec.labeled and "label" not in spec.raw_feature_spec()
        criteo = load_spec("criteo").without_label()
        assert not criteo.labeled and criteo.columns[0] == "I1" and len(criteo.columns) == 39


class TestLabelRules:
    @pytest.mark.parametrize(
        "rule, cells, labels, bad",
        [
            ("binary", ["1", "0", "1.0", "0.0", " 1"], [1, 0, 1, 0, 1], ["2", "yes", "", "-1"]),
            ("positive", ["0", "1", "4", "0.5", "-2"], [0, 1, 1, 1, 0], ["x", ""]),
            ("pm1", ["-1", "1", "+1", "-1.0", "1.0"], [0, 1, 1, 0, 1], ["0", "2", ""]),
            ({"threshold": 4}, ["3.5", "4", "4.0", "5", "0.5"], [0, 1, 1, 1, 0], ["four", ""]),
        ],
    )
    def test_rule(self, rule, cells, labels, bad):
        spec = _spec(label_rule=rule, delimiter=",", header=False)
        lines = [f"{cell},x,1" for cell in cells + bad]
        parsed = _parse(spec, lines)
        assert [r[0] for r in parsed.rows.column("label").to_pylist()] == labels
        assert _reasons(parsed) == {"bad_label": [f"{cell},x,1".encode() for cell in bad]}

    def test_unlabeled_rows_carry_no_label(self):
        spec = spec_from_doc({"columns": ["a", "b"], "label": None, "fields": {"a": "categorical"}}, "t", "t")
        parsed = _parse(spec, ["x\t1", "y\t2"])
        assert parsed.rows.schema.names == ["a"] and parsed.rows.num_rows == 2


class TestKinds:
    def test_float_values_and_rejects(self):
        spec = _spec(fields={"a": "categorical", "b": {"kind": "float", "buckets": 4}}, delimiter=",", header=False)
        parsed = _parse(spec, ["1,x,2.5", "0,x,", "1,x,-1e3", "0,x,abc", "1,x,inf", "0,x, 7 "])
        assert parsed.rows.column("b").to_pylist() == [[2.5], [], [-1000.0], [7.0]]
        assert _reasons(parsed) == {"non_numeric": [b"0,x,abc", b"1,x,inf"]}

    def test_timestamp_formats(self):
        spec = _spec(fields={"a": {"kind": "timestamp", "format": "%Y-%m-%d %H:%M"}, "b": {
            "kind": "timestamp", "format": "unix"}}, delimiter=",", header=False)
        parsed = _parse(spec, ["1,2024-05-01 13:45,1714571100", "0,,", "1,May 1st,5", "0,2024-05-01 00:00,x"])
        assert parsed.rows.column("a").to_pylist() == [[1714571100], []]
        assert parsed.rows.column("b").to_pylist() == [[1714571100], []]
        assert _reasons(parsed) == {"bad_timestamp": [b"1,May 1st,5", b"0,2024-05-01 00:00,x"]}

    def test_time_split_rejects_rows_without_time(self):
        spec = _spec(fields={"a": "categorical", "b": "integer"}, delimiter=",", header=False)
        parsed = _parse(spec, ["1,x,5", "0,x,"], time_field="b")
        assert parsed.rows.num_rows == 1 and _reasons(parsed) == {"missing_time": [b"0,x,"]}

    def test_multi_cell_stays_one_string(self):
        spec = _spec(fields={"a": {"kind": "multi", "separator": "^", "max_len": 3}}, delimiter=",", header=False)
        parsed = _parse(spec, ["1,a^b^c^d,1", "0,,1"])
        assert parsed.rows.column("a").to_pylist() == [[b"a^b^c^d"], []]

    def test_multi_tokens_truncated_and_padded(self):
        import tensorflow as tf

        from pipeline.transform import _multi_tokens

        tokens, present = _multi_tokens(tf.constant(["a^b^c^d", "x^^y", "", "z"]), "^", 3)
        assert tokens.numpy().tolist() == [[b"a", b"b", b"c"], [b"x", b"y", b""], [b""] * 3, [b"z", b"", b""]]
        assert present.numpy().sum(axis=1).tolist() == [3, 2, 0, 1]

    def test_time_fields_from_unix_seconds(self):
        import tensorflow as tf

        from pipeline.features import FIRST_VALUE_ID
        from pipeline.transform import _time_fields

        # 2024-05-04 23:59:59 UTC was a Saturday; 1969-12-31 23:00 a Wednesday (negative seconds).
        ids = _time_fields(tf.constant([1714867199, -3600, 0], tf.int64), tf.constant([True, True, False]))
        got = [[int(t.numpy()[i]) for t in ids] for i in range(3)]
        assert got[0] == [23 + FIRST_VALUE_ID, 5 + FIRST_VALUE_ID, 1 + FIRST_VALUE_ID]
        assert got[1] == [23 + FIRST_VALUE_ID, 2 + FIRST_VALUE_ID, 0 + FIRST_VALUE_ID]
        assert got[2] == [MISSING_ID] * 3

    def test_float_log_rule(self):
        import tensorflow as tf

        from pipeline.transform import discretize_float

        # v > 2: floor(ln(v)^2) (ln(7.5)^2 = 4.06); else floor(v).
        values = tf.constant([0.5, 1.99, 2.0, 7.5, -1.5, 1e30], tf.float32)
        assert discretize_float(values).numpy().tolist()[:5] == [0, 1, 2, 4, -2]


class TestLayout:
    def test_header_without_label_is_refused_not_read_by_position(self):
        """Criteo's Kaggle test CSV: `Id,I1..C26` has as many columns as label + 39 fields."""
        header = "Id," + ",".join(f"I{i}" for i in range(1, 14)) + "," + ",".join(f"C{i}" for i in range(1, 27))
        with pytest.raises(SpecError, match="header lacks the label column 'label'.*--unlabeled"):
            detect_layout(header, load_spec("criteo"), "test.csv")
        layout = detect_layout(header, load_spec("criteo").without_label(), "test.csv")
        assert layout.header and layout.names[:2] == (None, "I1")

    def test_file_without_the_label_column_points_to_unlabeled(self):
        """No header, one column short of the schema: the message names the fix."""
        with pytest.raises(SpecError, match="has 2 columns, t without a header has 3.*lacks the label column "
                                            "'y'.*--unlabeled"):
            detect_layout("x\t2", _spec(header=False), "f.tsv")
        with pytest.raises(SpecError, match="has 4 columns") as err:
            detect_layout("1\tx\t2\t3", _spec(header=False), "f.tsv")
        assert "--unlabeled" not in str(err.value)

    def test_numbered_rows_for_scoring(self, tmp_path):
        """Every row with its line number, bad ones with their reason; the label column is found or not,
        never read; blank lines are no rows but keep their numbers."""
        from pipeline.raw_rows import iter_numbered_rows, scoring_layout

        spec = _spec(delimiter=",", header=True, fields={"a": "categorical", "b": "integer"})
        labeled = tmp_path / "labeled.csv"
        labeled.write_bytes(b"id,y,a,b\r\nk1,1,x,2\r\n\nk2,maybe,x,3\nk3,0,x\nk4,1,z,four\nk3,0,x\n")
        unlabeled = tmp_path / "unlabeled.csv"
        unlabeled.write_bytes(b"b,a,id\n2,x,k1\n")
        where = scoring_layout(str(labeled), spec)
        assert where.labeled and where.column_names == ("id", "y", "a", "b")
        rows = list(iter_numbered_rows(where, spec))
        assert [(r.line, r.reason) for r in rows] == [(2, None), (4, None), (5, "column_count"), (6, "non_integer"),
                                                      (7, "column_count")]
        assert rows[0].features == {"a": [b"x"], "b": [2]} and rows[1].features == {"a": [b"x"], "b": [3]}
        assert [where.cells(r.text)[where.column_index("id")] for r in rows] == ["k1", "k2", "k3", "k4", "k3"]
        where = scoring_layout(str(unlabeled), spec)
        assert not where.labeled
        assert [(r.line, r.features) for r in iter_numbered_rows(where, spec)] == [(2, {"a": [b"x"], "b": [2]})]
        with pytest.raises(SpecError, match="header lacks the label column 'y'"):
            scoring_layout(str(unlabeled), spec, unlabeled=False)
        with pytest.raises(SpecError, match="has no column 'Id'; its columns are \\['b', 'a', 'id'\\]"):
            where.column_index("Id")

    def test_header_and_delimiter_are_enforced(self):
        with pytest.raises(SpecError, match="header: false"):
            detect_layout("y\ta\tb", _spec(header=False), "f.tsv")
        with pytest.raises(SpecError, match="lacks the columns \\['a'\\]"):
            detect_layout("y\tq\tb", _spec(header=True), "f.tsv")
        with pytest.raises(SpecError, match="no ';', the schema's delimiter"):
            detect_layout("1,x,2", _spec(delimiter=";"), "f.csv")
        layout = detect_layout("B;A;Y", _spec(delimiter=";", header=True), "f.csv")
        assert layout.names == ("b", "a", "y") and layout.delimiter == ";"

    def test_rfc4180_quotes(self):
        spec = _spec(delimiter=",", header=True)
        lines = ['y,a,b', '1,"Home, Garden",3', '0,"say ""hi""",4', '1,plain,5', '0,"open,6']
        parsed = _parse(spec, lines)
        assert parsed.rows.column("a").to_pylist() == [[b"Home, Garden"], [b'say "hi"'], [b"plain"]]
        assert _reasons(parsed) == {"column_count": [b'0,"open,6']}

    def test_utf8_bom_is_not_data(self, tmp_path):
        path = tmp_path / "bom.csv"
        path.write_bytes("\ufeffy,a,b\n1,x,2\n".encode())
        assert first_line(str(path)) == b"y,a,b\n"
        layout = detect_layout(first_line(str(path)).decode(), _spec(delimiter=",", header=True), str(path))
        assert [line for b in read_line_batches(FileRange(str(path), 0, None), layout.header, 10) for line in b] == [
            b"1,x,2"]

    def test_libsvm_positions_are_fields(self):
        spec = spec_from_schema(EXAMPLES / "libfm.yaml")
        lines = ["+1 3:1 105:1 402:1 411:1 415:12.5", "-1  7:1 101:1 401:1 412:1 415:3", "1 3:1 105:1"]
        parsed = _parse(spec, lines)
        rows = parsed.rows.to_pylist()
        assert [r["label"] for r in rows] == [[1], [0]]
        assert rows[0]["user"] == [b"3"] and rows[1]["item"] == [b"101"] and rows[0]["price"] == [12.5]
        assert _reasons(parsed) == {"column_count": [b"1 3:1 105:1"]}


class TestSplitsAndWarnings:
    def test_time_cutoffs_keep_ties_together(self):
        from pipeline.beam_graph import time_cutoffs

        keys = np.arange(10, dtype=np.int64) * 100
        assert time_cutoffs((keys, np.ones(10, np.int64))) == {"valid_from": 800, "test_from": 900}
        # 30% of the rows share the last time: all of them are test, valid gets the time before.
        counts = np.array([1] * 7 + [3], np.int64)
        assert time_cutoffs((keys[:8], counts)) == {"valid_from": 600, "test_from": 700}
        # One time value only: everything is test, valid and train are empty (the job warns).
        assert time_cutoffs((keys[:1], np.array([5]))) == {"valid_from": 0, "test_from": 0}

    def test_given_split_inputs(self):
        from pipeline.errors import UsageError
        from pipeline.job import RunConfig, _inputs_per_split

        spec = load_spec("kdd12")
        config = RunConfig(spec=spec, inputs=("train=a", "valid=b", "test=c", "train=d"), output="o", split="given")
        assert _inputs_per_split(config) == [("train", "a"), ("valid", "b"), ("test", "c"), ("train", "d")]
        for inputs, message in ((("a.csv",), "SPLIT=PATH"), (("train=a", "valid=b"), r"\['test'\]"),
                                (("eval=a",), "SPLIT=PATH")):
            with pytest.raises(UsageError, match=message):
                _inputs_per_split(RunConfig(spec=spec, inputs=inputs, output="o", split="given"))

    def test_time_field_must_be_a_time_kind(self):
        from pipeline.errors import UsageError
        from pipeline.job import RunConfig, _check_time_field

        spec = spec_from_schema(EXAMPLES / "movielens.yaml")
        _check_time_field(RunConfig(spec=spec, inputs=(), output="o", split="time", time_field="timestamp"))
        for split, field in (("time", "userId"), ("time", None), ("hash", "timestamp")):
            with pytest.raises(UsageError, match="time_field"):
                _check_time_field(RunConfig(spec=spec, inputs=(), output="o", split=split, time_field=field))

    def test_label_warnings(self):
        from pipeline.job import label_warnings

        def splits(*pairs):
            return {s: {"rows": r, "positives": p} for s, (r, p) in zip(SPLIT_NAMES, pairs, strict=True)}

        assert label_warnings(splits((80, 10), (10, 1), (10, 2)), True) == []
        (single,) = label_warnings(splits((80, 80), (10, 10), (10, 10)), True)
        assert "all 100 rows are positive" in single
        assert label_warnings(splits((80, 10), (10, 0), (0, 0)), True) == [  # empty: job.check_splits
            "split valid has no positive rows (AUC is undefined on it)"]
        assert label_warnings({"data": {"rows": 5, "positives": None}}, False) == []


def test_summary_prints_warnings_and_unlabeled_splits(capsys):
    from pipeline.cli import _print_summary

    stats = {
        "dataset": "d", "rows": 5, "wall_seconds": 1.0, "rows_per_second": 5.0,
        "splits": {"data": {"rows": 5, "positives": None, "positive_ratio": None}},
        "rejected": {"bad_label": 0, "total": 0}, "fingerprint": "f1" * 32,
        "fields": [{"name": "a", "vocab_size": 3, "oov_rate": {"data": 0.2}, "missing_rate": {"data": 0.0}}],
        "warnings": ["split data has no positive rows (AUC is undefined on it)"],
    }
    _print_summary(stats, "out")
    out = capsys.readouterr().out
    assert "data            5         -" in out and "oov(data)" in out
    assert f"transform fingerprint: {'f1' * 32}" in out
    assert out.rstrip().endswith("warning: split data has no positive rows (AUC is undefined on it)")
