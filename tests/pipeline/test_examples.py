"""End to end: the example schemas, the split modes and `pipeline transform` (Beam runs, shared fixtures)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from pipeline.dataset_info import PAD_ID, read_dataset_info
from pipeline.features import DATA_SPLIT, DONE_FILE, FIRST_VALUE_ID, LABEL_KEY, MISSING_ID, SPLIT_NAMES
from pipeline.raw_rows import iter_raw_examples
from pipeline.specs import SCHEMA_DIR, spec_from_schema
from tests.conftest import ROOT, run_pipeline
from tests.pipeline.conftest import EXAMPLE_DATA, SCORING_ROWS, SEQUENCE_FILES
from tests.pipeline.helpers import read_records, row_multiset, transform_with_graph

pytestmark = pytest.mark.slow

EXAMPLES = SCHEMA_DIR / "examples"


def _stats(out) -> dict:
    return json.loads((out / "stats.json").read_text())


def _check_ids(out) -> dict[str, dict[str, np.ndarray]]:
    """Every split's ids lie in [0, vocab_size) (multi-valued: or PAD_ID at the end); counts match stats.json."""
    info = read_dataset_info(out)
    stats = _stats(out)
    data = {}
    for split in info.splits:
        columns = read_records(out, split)
        assert len(columns[info.field_names[0]]) == stats["splits"][split]["rows"]
        for field in info.fields:
            ids = columns[field.name]
            real = ids[ids != PAD_ID] if field.max_len > 1 else ids
            assert real.min(initial=0) >= 0 and real.max(initial=0) < field.vocab_size, field
        if info.labeled:
            assert int(columns[LABEL_KEY].sum()) == stats["splits"][split]["positives"]
        data[split] = columns
    return data


class TestMovieLensTimeSplit:
    def test_threshold_label_and_time_cutoffs(self, movielens_run):
        stats = _stats(movielens_run.out)
        split = stats["split"]
        assert split["mode"] == "time" and split["time_field"] == "timestamp"
        with open(EXAMPLE_DATA / "movielens_ratings.csv") as handle:
            rows = [(int(r["timestamp"]), float(r["rating"])) for r in csv.DictReader(handle)]
        expected = {name: [0, 0] for name in SPLIT_NAMES}
        for stamp, rating in rows:
            name = "train" if stamp < split["valid_from"] else "valid" if stamp < split["test_from"] else "test"
            expected[name][0] += 1
            expected[name][1] += rating >= 4
        got = {name: [s["rows"], s["positives"]] for name, s in stats["splits"].items()}
        assert got == expected
        assert min(n for n, _ in expected.values()) >= 0.1 * len(rows) and expected["train"][0] >= 0.7 * len(rows)
        _check_ids(movielens_run.out)

    def test_timestamp_becomes_calendar_fields(self, movielens_run):
        sizes = {f.name: f.vocab_size for f in read_dataset_info(movielens_run.out).fields}
        assert (sizes["timestamp_hour_of_day"], sizes["timestamp_weekday"], sizes["timestamp_is_weekend"]) == (
            26, 9, 4)


class TestLibFM:
    def test_pm1_labels_positions_and_float_buckets(self, libfm_run):
        stats = _stats(libfm_run.out)
        lines = (EXAMPLE_DATA / "libfm.txt").read_text().splitlines()
        assert stats["rows"] == len(lines) and stats["split"]["mode"] == "hash"
        assert sum(s["positives"] for s in stats["splits"].values()) == sum(line.startswith("+1") for line in lines)
        sizes = {f.name: f.vocab_size for f in read_dataset_info(libfm_run.out).fields}
        assert sizes["price"] == 8 + 2 and sizes["device"] == 4 + 2
        prices = np.concatenate([d["price"] for d in _check_ids(libfm_run.out).values()])
        # quantile buckets: every bucket used, none holding more than ~2x its share
        counts = np.bincount(prices - FIRST_VALUE_ID, minlength=8)
        assert counts.min() > 0 and counts.max() < 2 * len(prices) / 8


class TestSequencePrice:
    def test_given_split_is_the_files(self, sequence_run):
        stats = _stats(sequence_run.out)
        assert stats["split"]["mode"] == "given" and stats["rejected"]["total"] == 0
        for split, path in SEQUENCE_FILES.items():
            assert stats["splits"][split]["rows"] == len(path.read_text().splitlines()) - 1

    def test_multi_valued_field_padded_at_the_end(self, sequence_run):
        info = read_dataset_info(sequence_run.out)
        (seq,) = [f for f in info.fields if f.name == "click_seq"]
        assert seq.max_len == 5
        train = read_records(sequence_run.out, "train")["click_seq"]
        assert train.shape == (1200, 5)
        padded = train == PAD_ID
        assert padded.any() and np.all(padded[:, 1:] >= padded[:, :-1]), "padding only at the end"
        with open(SEQUENCE_FILES["train"], encoding="utf-8-sig") as handle:
            cells = [r["click_seq"] for r in csv.DictReader(handle)]
        assert int((train[:, 0] == MISSING_ID).sum()) == sum(not c for c in cells)
        lengths = (~padded).sum(axis=1)
        assert sorted(lengths.tolist()) == sorted(max(1, min(5, len(c.split("^")))) if c else 1 for c in cells)

    def test_quoted_categories_and_price_buckets(self, sequence_run):
        sizes = {f.name: f.vocab_size for f in read_dataset_info(sequence_run.out).fields}
        assert sizes["category"] == 5 + 2  # "Home, Garden" and "Sports ""Outdoor""" are one value each
        assert sizes["price"] == 10 + 2
        _check_ids(sequence_run.out)

    def test_serving_path_reproduces_the_records(self, sequence_run):
        """The saved graph on raw tf.Examples (a multi field as one string) gives the records' ids."""
        spec = spec_from_schema(EXAMPLES / "sequence_price.yaml")
        rows = list(iter_raw_examples(str(SEQUENCE_FILES["test"]), spec))
        names = [*spec.field_names, LABEL_KEY]
        graph = transform_with_graph(sequence_run.out, rows, spec)
        assert row_multiset(graph, names) == row_multiset(read_records(sequence_run.out, "test"), names)


class TestTransformRun:
    def test_same_ids_as_the_run(self, sequence_run, sequence_transform):
        info = read_dataset_info(sequence_transform.out)
        assert info.splits == (DATA_SPLIT,) and info.labeled
        assert info.fields == read_dataset_info(sequence_run.out).fields
        stats = _stats(sequence_transform.out)
        assert stats["transform_run"] == str(sequence_run.out.resolve())
        assert stats["fingerprint"] == _stats(sequence_run.out)["fingerprint"]  # the source run's graph
        assert (sequence_transform.out / DONE_FILE).is_file()
        names = [*info.field_names, LABEL_KEY]
        assert row_multiset(read_records(sequence_transform.out, DATA_SPLIT), names) == row_multiset(
            read_records(sequence_run.out, "test"), names)
        import tensorflow_transform as tft

        output = tft.TFTransformOutput(str(info.transform_output_dir))
        assert output.num_buckets_for_transformed_feature("item_id") == dict(
            (f.name, f.vocab_size) for f in info.fields)["item_id"]

    def test_unlabeled_criteo_scored_with_the_runs_graph(self, criteo_scoring, criteo_preprocessed_dir,
                                                         criteo_generated_file):
        import tensorflow as tf

        info = read_dataset_info(criteo_scoring.out)
        assert not info.labeled and info.splits == (DATA_SPLIT,)
        stats = _stats(criteo_scoring.out)
        assert stats["rows"] == SCORING_ROWS and stats["splits"][DATA_SPLIT]["positives"] is None
        (record,) = tf.data.TFRecordDataset(info.split_pattern(DATA_SPLIT).replace("*", "00000-of-00001"),
                                            compression_type="GZIP").take(1)
        features = tf.train.Example.FromString(record.numpy()).features.feature
        assert LABEL_KEY not in features and set(features) == set(info.field_names)
        spec = spec_from_schema(SCHEMA_DIR / "criteo.yaml")
        head = criteo_generated_file.read_text().splitlines()[:SCORING_ROWS]
        labeled = [row for row in iter_raw_examples(str(criteo_generated_file), spec)][:SCORING_ROWS]
        assert len(labeled) == len(head)
        expected = transform_with_graph(criteo_preprocessed_dir, labeled, spec)
        names = info.field_names
        assert row_multiset(read_records(criteo_scoring.out, DATA_SPLIT), names) == row_multiset(expected, names)


def test_unlabeled_schema_run(second_runs):
    """`label: null`: a full run (vocabularies, buckets, three splits) whose records carry no label."""
    out = second_runs["unlabeled"].out
    info = read_dataset_info(out)
    assert not info.labeled and info.splits == SPLIT_NAMES
    stats = _stats(out)
    assert stats["rows"] == 1500 and all(s["positives"] is None for s in stats["splits"].values())
    assert stats["warnings"] == [] and stats["schema"]["label"] is None
    data = _check_ids(out)
    assert LABEL_KEY not in data["train"] and len(np.unique(data["train"]["rating"])) == 4


class TestRefusals:
    """Exit 2 with a message naming the problem, before any Beam work, nothing written."""

    @pytest.mark.parametrize("case", ["header_without_label", "bad_schema", "given_missing_split", "not_a_run"])
    def test_exit_2(self, case, tmp_path, criteo_test_csv):
        out = tmp_path / "out"
        if case == "header_without_label":
            args, expect = ["--dataset", "criteo", "--input", str(criteo_test_csv)], "lacks the label column"
        elif case == "bad_schema":
            schema = tmp_path / "bad.yaml"
            schema.write_text("columns: [y, a]\nlabel: y\ndelimiter: '::'\nfields: {a: categorical}\n")
            args, expect = ["--schema", str(schema), "--input", str(criteo_test_csv)], "key 'delimiter'"
        elif case == "given_missing_split":
            args = ["--schema", str(EXAMPLES / "sequence_price.yaml"), "--split", "given",
                    "--input", f"train={SEQUENCE_FILES['train']}"]
            expect = "no --input for the splits ['valid', 'test']"
        else:
            args, expect = ["transform", "--run", str(tmp_path), "--input", str(criteo_test_csv)], "transform_fn"
        before = sorted(p.name for p in tmp_path.iterdir())
        result = run_pipeline(*args, "--output", str(out), check=False)
        assert result.returncode == 2, result.stderr[-2000:]
        message = result.stderr.strip().splitlines()[-1]
        assert message.startswith("pipeline: error: ") and expect in message, message
        assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_committed_sample_files_are_the_generators(tmp_path):
    """tests/pipeline/data is what tests/pipeline/example_data.py writes (regenerate, never hand-edit)."""
    from tests.pipeline.example_data import write_all

    write_all(tmp_path)
    for path in sorted(EXAMPLE_DATA.rglob("*.*")):
        assert (tmp_path / path.relative_to(EXAMPLE_DATA)).read_bytes() == path.read_bytes(), path
    assert ROOT in EXAMPLE_DATA.parents
