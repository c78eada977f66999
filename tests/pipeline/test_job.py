"""Integration tests: the Beam job end to end on generated and real sample data."""

from __future__ import annotations

import collections
import gzip
import json

import numpy as np
import pytest

from pipeline.dataset_info import read_dataset_info
from pipeline.features import SPLIT_NAMES
from pipeline.parse import REASONS, split_ids
from pipeline.specs import load_spec
from tests.conftest import GENERATED_ROWS, run_pipeline
from tests.pipeline.conftest import INJECTED, KDD12_EXTRA_CLICKS
from tests.pipeline.helpers import (
    as_row_counter,
    raw_rows_of,
    read_split,
    reference_vocab_sizes,
    transform_with_graph,
)

pytestmark = pytest.mark.slow


def _stats(out):
    return json.loads((out / "stats.json").read_text())


def _check_records(out, expected_fields: int) -> dict[str, dict[str, np.ndarray]]:
    """TFRecords parse, ids lie in [0, vocab_size), labels are 0/1, counts match stats.json."""
    info = read_dataset_info(out)
    assert len(info.fields) == expected_fields
    stats = _stats(out)
    data = {}
    for split in SPLIT_NAMES:
        columns = read_split(out, split, info.field_names)
        assert len(columns["label"]) == stats["splits"][split]["rows"]
        assert set(np.unique(columns["label"])) <= {0, 1}
        assert int(columns["label"].sum()) == stats["splits"][split]["positives"]
        for field in info.fields:
            ids = columns[field.name]
            assert ids.min(initial=0) >= 0 and ids.max(initial=0) < field.vocab_size, field
        data[split] = columns
    return data


class TestGeneratedCriteo:
    def test_outputs_and_ids_in_range(self, criteo_preprocessed_dir):
        data = _check_records(criteo_preprocessed_dir, 39)
        assert sum(len(d["label"]) for d in data.values()) == GENERATED_ROWS
        for name in ("transform_fn", "transformed_metadata", "metadata"):
            assert (criteo_preprocessed_dir / name).is_dir(), name
        assert not list(criteo_preprocessed_dir.parent.glob(".*partial*")), "scratch dir left behind"
        assert not list(criteo_preprocessed_dir.glob(".*")) and not list(criteo_preprocessed_dir.glob("_*"))

    def test_split_is_the_hash_split(self, criteo_preprocessed_dir, criteo_generated_file):
        lines = criteo_generated_file.read_bytes().splitlines()
        expected = np.bincount(split_ids(lines, seed=0), minlength=3)
        got = [_stats(criteo_preprocessed_dir)["splits"][s]["rows"] for s in SPLIT_NAMES]
        assert got == expected.tolist()

    def test_vocabularies_follow_the_rules(self, criteo_preprocessed_dir, criteo_generated_file):
        spec = load_spec("criteo")
        rows = raw_rows_of([criteo_generated_file], spec)
        splits = split_ids(criteo_generated_file.read_bytes().splitlines(), seed=0)
        expected = reference_vocab_sizes(rows, splits, spec, min_count=2)
        got = {f.name: f.vocab_size for f in read_dataset_info(criteo_preprocessed_dir).fields}
        assert got == expected

    def test_transform_graph_reproduces_the_records(self, criteo_preprocessed_dir, criteo_generated_file):
        """The saved graph maps raw tf.Examples to exactly the ids in the TFRecords (serving = training)."""
        names = read_dataset_info(criteo_preprocessed_dir).field_names
        spec = load_spec("criteo")
        from_graph = transform_with_graph(criteo_preprocessed_dir, raw_rows_of([criteo_generated_file], spec), spec)
        records = [read_split(criteo_preprocessed_dir, s, names) for s in SPLIT_NAMES]
        from_records = sum((as_row_counter(r, names) for r in records), collections.Counter())
        assert as_row_counter(from_graph, names) == from_records

    def test_stats_oov_and_missing_rates(self, criteo_preprocessed_dir):
        stats = _stats(criteo_preprocessed_dir)
        info = read_dataset_info(criteo_preprocessed_dir)
        valid = read_split(criteo_preprocessed_dir, "valid", info.field_names)
        for field in stats["fields"]:
            ids = valid[field["name"]]
            assert field["oov_rate"]["valid"] == pytest.approx(float((ids == 0).mean()))
            assert field["missing_rate"]["valid"] == pytest.approx(float((ids == 1).mean()))
        assert stats["fields"][0]["oov_rate"]["train"] == 0.0, "integer fields keep every training value"
        assert stats["rejected"]["total"] == 0


class TestRealCriteoMixedLayouts:
    def test_every_layout_is_read(self, criteo_mixed_run):
        stats = _stats(criteo_mixed_run.out)
        lines = {item["path"]: item["lines"] for item in stats["inputs"]}
        tsv, kaggle, deepctr, injected = (str(p) for p in criteo_mixed_run.inputs)
        assert lines[tsv] == 10_000 and lines[kaggle] == 1_999 and lines[deepctr] == 200
        assert lines[injected] == 300 + sum(len(v) for v in INJECTED.values())
        assert stats["rows"] == 10_000 + 1_999 + 200 + 300
        _check_records(criteo_mixed_run.out, 39)

    def test_injected_bad_rows_are_counted_and_kept_untouched(self, criteo_mixed_run):
        stats = _stats(criteo_mixed_run.out)
        by_path = {item["path"]: item["rejected"] for item in stats["inputs"]}
        expected = {reason: len(INJECTED.get(reason, [])) for reason in REASONS}
        assert by_path[str(criteo_mixed_run.inputs[3])] == expected
        assert {k: v for k, v in stats["rejected"].items() if k != "total"} == expected
        for reason, lines in INJECTED.items():
            written = b"".join(p.read_bytes() for p in (criteo_mixed_run.out / "rejected").glob(f"{reason}*"))
            assert sorted(written.splitlines()) == sorted(lines), reason
        assert f"rejected: {sum(expected.values())} " in criteo_mixed_run.stdout

    def test_same_vocabulary_as_reference(self, criteo_mixed_run):
        spec = load_spec("criteo")
        rows, splits = [], []
        for path in criteo_mixed_run.inputs:
            file_rows = raw_rows_of([path], spec)
            raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            lines = raw.splitlines()[1:] if path.suffix == ".csv" else raw.splitlines()
            bad = {line for group in INJECTED.values() for line in group}
            lines = [line for line in lines if line not in bad]
            assert len(lines) == len(file_rows)
            rows += file_rows
            splits.append(split_ids(lines, seed=3))
        expected = reference_vocab_sizes(rows, np.concatenate(splits), spec, min_count=2)
        assert {f.name: f.vocab_size for f in read_dataset_info(criteo_mixed_run.out).fields} == expected


class TestOtherDatasets:
    def test_avazu(self, avazu_run):
        data = _check_records(avazu_run.out, 24)
        sizes = {f.name: f.vocab_size for f in read_dataset_info(avazu_run.out).fields}
        assert (sizes["hour_of_day"], sizes["weekday"], sizes["is_weekend"]) == (26, 9, 4)
        # every sample row is from 2014-10-21 00h, a Tuesday: ids = value + 2
        train = data["train"]
        assert set(train["hour_of_day"]) == {2} and set(train["weekday"]) == {3} and set(train["is_weekend"]) == {2}
        assert _stats(avazu_run.out)["rows"] == 8_999

    def test_kdd12_label_is_click_positive(self, kdd12_run):
        _check_records(kdd12_run.out, 11)
        stats = _stats(kdd12_run.out)
        assert stats["rows"] == 11 + len(KDD12_EXTRA_CLICKS)
        assert sum(s["positives"] for s in stats["splits"].values()) == 3  # Click 1, 4, 2

    def test_frappe_schema(self, frappe_run):
        _check_records(frappe_run.out, 10)
        stats = _stats(frappe_run.out)
        assert stats["dataset"] == "frappe" and stats["rows"] == 57_722
        assert 0.3 < sum(s["positives"] for s in stats["splits"].values()) / stats["rows"] < 0.36


class TestBadInvocations:
    """Exit code 2, a one-line message, nothing written (these fail before Beam starts)."""

    @pytest.mark.parametrize("case", ["missing", "empty", "finished", "wrong_layout"])
    def test_exit_2(self, case, tmp_path, criteo_generated_file, criteo_preprocessed_dir):
        out = tmp_path / "out"
        inp = criteo_generated_file
        if case == "missing":
            inp = tmp_path / "nope.tsv"
        elif case == "empty":
            inp = tmp_path / "empty.tsv"
            inp.write_bytes(b"")
        elif case == "finished":
            out = criteo_preprocessed_dir
        else:
            inp = tmp_path / "three.tsv"
            inp.write_text("1\t2\t3\n")
        before = sorted(p.name for p in out.parent.iterdir())
        result = run_pipeline("--dataset", "criteo", "--input", str(inp), "--output", str(out), check=False)
        assert result.returncode == 2, result.stderr[-2000:]
        message = result.stderr.strip().splitlines()[-1]
        assert message.startswith("pipeline: error: ") and str(inp if case != "finished" else out) in message
        assert sorted(p.name for p in out.parent.iterdir()) == before


def test_too_many_bad_rows_names_the_file():
    from pipeline.job import TooManyBadRows, check_bad_fraction

    stats = {"inputs": [
        {"path": "a.tsv", "lines": 100, "rejected": {"column_count": 1, "bad_label": 0}},
        {"path": "b.tsv", "lines": 100, "rejected": {"column_count": 2, "bad_label": 1}},
    ]}
    check_bad_fraction(stats, 0.03)
    with pytest.raises(TooManyBadRows, match=r"b\.tsv: 3 of 100 rows rejected \(column_count=2, bad_label=1\)") as err:
        check_bad_fraction(stats, 0.02)
    assert "a.tsv" not in str(err.value)


def test_lost_rows_fail_the_run():
    from pipeline.job import JobIntegrityError, check_row_counts

    parsed = {"train": 8, "valid": 1, "test": 1}
    check_row_counts(parsed, dict(parsed))
    with pytest.raises(JobIntegrityError, match=r"'train': 8.*parsed but.*'train': 6.*written"):
        check_row_counts(parsed, {**parsed, "train": 6})
