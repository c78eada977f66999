"""Unit tests of the preprocessing rules, parsing, splitting and reading (no Beam run)."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest

from pipeline.features import SPLIT_NAMES
from pipeline.file_layout import detect_layout
from pipeline.parse import parse_lines, split_ids
from pipeline.sources import FileRange, plan_ranges, read_line_batches
from pipeline.specs import SpecError, load_spec

CRITEO = load_spec("criteo")


def _criteo_line(label="0", ints=None, cats=None) -> bytes:
    ints = ints if ints is not None else [str(i) for i in range(13)]
    cats = cats if cats is not None else [f"{j:08x}" for j in range(26)]
    return "\t".join([label, *ints, *cats]).encode()


class TestDiscretize:
    def test_log_squared_values(self):
        import tensorflow as tf

        from pipeline.transform import discretize

        values = [0, 1, 2, 3, 7, 8, 10**9, -1, -3]
        # v > 2: floor(ln(v)^2): ln(3)^2 = 1.21, ln(7)^2 = 3.79, ln(8)^2 = 4.32, ln(1e9)^2 = 429.46
        expected = [0, 1, 2, 1, 3, 4, 429, -1, -3]
        assert discretize(tf.constant(values, tf.int64)).numpy().tolist() == expected
        assert expected[6] == math.floor(math.log(1e9) ** 2)

    def test_missing_is_its_own_id(self):
        import tensorflow as tf

        from pipeline.transform import _first_values

        sparse = tf.SparseTensor(indices=[[0, 0], [2, 0]], values=tf.constant([5, 7], tf.int64), dense_shape=[3, 1])
        values, present = _first_values(sparse, 0)
        assert values.numpy().tolist() == [5, 0, 7]
        assert present.numpy().tolist() == [True, False, True]
        empty = tf.SparseTensor(tf.zeros([0, 2], tf.int64), tf.constant([], tf.string), dense_shape=[2, 0])
        values, present = _first_values(empty, "")
        assert values.numpy().tolist() == [b"", b""] and not present.numpy().any()

    def test_first_values_of_several_features_by_hand(self):
        import tensorflow as tf

        from pipeline.transform import _first_values_stacked

        def sparse(cells, width):  # {(row, position): value} of 3 rows
            keys = sorted(cells)
            return tf.SparseTensor(tf.constant(keys, tf.int64, [len(keys), 2]),
                                   tf.constant([cells[k] for k in keys], tf.int64), [3, width])

        features = [
            sparse({(0, 0): 5, (2, 0): 7}, 1),
            sparse({(0, 0): 1, (0, 1): 2, (1, 0): 3, (1, 1): 4, (1, 2): 6}, 3),  # several values: the first counts
            sparse({}, 0),  # missing in every row of the batch
            sparse({(1, 0): 9}, 1),
        ]
        values, present = _first_values_stacked(features, -1)
        assert values.numpy().tolist() == [[5, 1, -1, -1], [-1, 3, -1, 9], [7, -1, -1, -1]]
        assert present.numpy().tolist() == [[True, True, False, False], [False, True, False, True],
                                            [True, False, False, False]]


class TestVocabulary:
    def test_oov_by_count_and_frequency_order(self):
        from pipeline.transform import _FIELD_SHIFT, assign_ids

        f0, f1 = 0, 1 << _FIELD_SHIFT
        keys = np.array([f0 + 5, f0 + 6, f0 + 7, f1 + 1, f1 + 2, f1 + 3], dtype=np.int64)
        counts = np.array([1, 4, 2, 1, 3, 3], dtype=np.int64)
        # field 0 (min count 2): 6 (4x) -> 2, 7 (2x) -> 3, 5 (1x) -> OOV.
        # field 1 (min count 1): ties broken by key: 2 -> 2, 3 -> 3, then 1 -> 4.
        ids = assign_ids(keys, counts, {0: 2, 1: 1})
        assert ids.tolist() == [-1, 2, 3, 4, 2, 3]

    def test_assets_hold_kept_keys_and_sizes_per_field(self, tmp_path):
        from pipeline.transform import _FIELD_SHIFT, write_vocabulary

        f0, f2 = 0, 2 << _FIELD_SHIFT
        keys = np.array([f0 + 5, f0 + 6, f2 + 1], dtype=np.int64)
        counts = np.array([1, 4, 3], dtype=np.int64)
        # Fields 0 and 2 have vocabularies (min count 2 and 1); field 1 has none (an Avazu hour field).
        vocab, sizes = write_vocabulary((keys, counts), {0: 2, 2: 1}, str(tmp_path))
        lines = open(vocab).read().splitlines()
        assert lines == [f"{f0 + 6}\t2", f"{f2 + 1}\t2"]
        assert open(sizes).read().splitlines() == ["1", "1"]

    def test_merge_counts_sums_across_batches(self):
        from pipeline.transform import MergeCountsFn, _count_batch

        fn = MergeCountsFn()
        acc = fn.create_accumulator()
        acc = fn.add_input(acc, _count_batch((np.array([[3, -1], [3, 4]]),)))
        other = fn.add_input(fn.create_accumulator(), _count_batch((np.array([[4, 4]]),)))
        keys, counts = fn.extract_output(fn.merge_accumulators([acc, other]))
        assert keys.tolist() == [3, 4] and counts.tolist() == [2, 3]


class TestAvazuHour:
    @pytest.mark.parametrize(
        "hour, expected",
        [
            (14102100, (0, 1, 0)),  # 2014-10-21 00h, a Tuesday
            (14102523, (23, 5, 1)),  # 2014-10-25 23h, a Saturday
            (14102607, (7, 6, 1)),  # 2014-10-26 07h, a Sunday
            (14103012, (12, 3, 0)),  # 2014-10-30 12h, a Thursday
        ],
    )
    def test_hour_weekday_weekend(self, hour, expected):
        import tensorflow as tf

        from pipeline.features import FIRST_VALUE_ID
        from pipeline.transform import _hour_fields

        ids = _hour_fields(tf.constant([hour], tf.int64), tf.constant([True]))
        assert tuple(int(t.numpy()[0]) - FIRST_VALUE_ID for t in ids) == expected

    def test_missing_and_invalid_hour(self):
        import tensorflow as tf

        from pipeline.features import MISSING_ID, OOV_ID
        from pipeline.transform import _hour_fields

        ids = _hour_fields(tf.constant([0, 14102199], tf.int64), tf.constant([False, True]))
        assert [int(t.numpy()[0]) for t in ids] == [MISSING_ID] * 3
        assert [int(t.numpy()[1]) for t in ids] == [OOV_ID] * 3

    def test_avazu_has_24_fields(self):
        names = load_spec("avazu").field_names
        assert len(names) == 24 and names[:3] == ["hour_of_day", "weekday", "is_weekend"] and "id" not in names


class TestSplit:
    def test_proportions_and_determinism(self):
        rng = np.random.default_rng(1)
        lines = [rng.bytes(20) for _ in range(50_000)]
        splits = split_ids(lines, seed=7)
        fractions = np.bincount(splits, minlength=3) / len(lines)
        assert np.allclose(fractions, [0.8, 0.1, 0.1], atol=0.01)
        order = rng.permutation(len(lines))
        shuffled = split_ids([lines[i] for i in order], seed=7)
        assert np.array_equal(shuffled, splits[order]), "split must depend on the row, not its position"
        assert not np.array_equal(split_ids(lines, seed=8), splits)


class TestParse:
    def test_bad_rows_get_their_reason_and_stay_untouched(self):
        layout = detect_layout(_criteo_line().decode(), CRITEO, "t")
        good = [_criteo_line(label=str(i % 2)) for i in range(5)]
        bad = {
            "column_count": [b"0\t1\t2", _criteo_line() + b"\textra"],
            "non_integer": [
                _criteo_line(ints=["x1", *map(str, range(12))]),
                _criteo_line(ints=["1.5", *map(str, range(12))]),
            ],
            "bad_label": [_criteo_line(label="2"), _criteo_line(label="")],
            "undecodable": [_criteo_line().replace(b"00000001", b"0000\xff\xfe01")],
        }
        lines = good + [line for group in bad.values() for line in group]
        parsed = parse_lines(lines, layout, CRITEO, seed=0)
        assert parsed.rows.num_rows == 5 and parsed.lines == len(lines)
        got: dict[str, list[bytes]] = {}
        for reason, line in parsed.rejected:
            got.setdefault(reason, []).append(line)
        assert got == bad

    def test_missing_values_are_empty_lists_and_floats_like_260_0_are_ints(self):
        ints = ["", "-3", "260.0", *map(str, range(10))]
        cats = ["", *(f"{j:08x}" for j in range(25))]
        layout = detect_layout(_criteo_line().decode(), CRITEO, "t")
        row = parse_lines([_criteo_line(label="1", ints=ints, cats=cats)], layout, CRITEO, 0).rows.to_pylist()[0]
        assert row["I1"] == [] and row["I2"] == [-3] and row["I3"] == [260]
        assert row["C1"] == [] and row["C2"] == [b"00000000"] and row["label"] == [1]

    def test_kdd12_label_is_click_positive(self):
        kdd = load_spec("kdd12")
        lines = ["\t".join([str(click), "1", *["7"] * 10]).encode() for click in (0, 1, 3)]
        layout = detect_layout(lines[0].decode(), kdd, "t")
        parsed = parse_lines(lines, layout, kdd, 0)
        assert [r[0] for r in parsed.rows.column("label").to_pylist()] == [0, 1, 1]
        assert len(kdd.field_names) == 11 and "Click" not in kdd.field_names

    def test_split_of_parsed_rows_matches_split_ids(self):
        layout = detect_layout(_criteo_line().decode(), CRITEO, "t")
        lines = [_criteo_line(ints=[str(i + k) for i in range(13)]) for k in range(200)]
        parsed = parse_lines(lines, layout, CRITEO, seed=3)
        assert np.array_equal(parsed.splits, split_ids(lines, 3))
        assert sum(b.num_rows for b in parsed.by_split().values()) == 200
        assert set(parsed.by_split()) == set(SPLIT_NAMES)


class TestLayout:
    def test_raw_tsv_and_kaggle_csv(self):
        raw = detect_layout(_criteo_line().decode(), CRITEO, "a")
        assert raw.delimiter == "\t" and not raw.header and raw.names[0] == "label"
        header = "Id,Label," + ",".join(f"I{i}" for i in range(1, 14)) + "," + ",".join(f"C{i}" for i in range(1, 27))
        kaggle = detect_layout(header, CRITEO, "b")
        assert kaggle.delimiter == "," and kaggle.header and kaggle.names[:2] == (None, "label")

    def test_wrong_layout_is_a_readable_error(self):
        with pytest.raises(SpecError, match="first line has 3 columns"):
            detect_layout("1\t2\t3", CRITEO, "x.tsv")
        with pytest.raises(SpecError, match="lacks the columns"):
            detect_layout("label,I1,C1", CRITEO, "x.csv")

    def test_unknown_dataset_and_schema(self, tmp_path):
        with pytest.raises(SpecError, match="unknown dataset"):
            load_spec("movielens")
        bad = tmp_path / "bad.yaml"
        bad.write_text("columns: [a, b]\nlabel: a\nfields: {b: fancy}\n")
        with pytest.raises(SpecError, match="kind 'fancy'"):
            load_spec(schema_path=str(bad))


class TestSources:
    @pytest.mark.parametrize("header", [False, True])
    def test_ranges_cover_every_line_once(self, tmp_path, header):
        lines = [f"{i}\t{'x' * (i % 37)}".encode() for i in range(3000)]
        data = (b"h\tead\n" if header else b"") + b"\n".join(lines)  # no final newline
        path = tmp_path / "f.tsv"
        path.write_bytes(data)
        ranges = plan_ranges([(str(path), len(data))], range_bytes=997)
        assert len(ranges) > 10
        got = [line for r in ranges for batch in read_line_batches(r, header, 100) for line in batch]
        assert got == lines

    def test_gzip_is_one_range(self, tmp_path):
        path = tmp_path / "f.tsv.gz"
        with gzip.open(path, "wb") as out:
            out.write(b"a\nb\nc\n")
        (rng,) = plan_ranges([(str(path), path.stat().st_size)], range_bytes=1)
        assert rng == FileRange(str(path), 0, None)
        assert [line for b in read_line_batches(rng, False, 2) for line in b] == [b"a", b"b", b"c"]


def test_tfrecord_sink_round_trip(tmp_path):
    import tensorflow as tf

    from pipeline.tfrecord_sink import GzipTFRecordSink

    records = [b"", b"a", bytes(range(256)) * 20]
    path = tmp_path / "x.tfrecord.gz"
    with open(path, "wb") as handle:
        sink = GzipTFRecordSink()
        sink.open(handle)
        sink.write(records[:1])
        sink.write(records[1:])
        sink.flush()
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(path), compression_type="GZIP")] == records


def test_write_shards_streams_batches_into_named_gzip_shards(tmp_path):
    """Every record once, in `prefix-0000k-of-0000n` files of concatenated gzip members, no part left."""
    import apache_beam as beam
    import tensorflow as tf

    from pipeline.tfrecord_sink import SHARD_TEMP_DIR, WriteShards, shard_name

    batches = [[f"{b}-{i}".encode() for i in range(b + 1)] for b in range(7)]
    with beam.Pipeline(argv=["--direct_running_mode=in_memory", "--direct_num_workers=1"]) as p:
        _ = p | beam.Create(batches) | WriteShards(str(tmp_path), "train", 3)
    files = sorted(path.name for path in tmp_path.glob("*.tfrecord.gz"))
    assert files == [shard_name("train", k, len(files)) for k in range(len(files))] and len(files) <= 3
    read = [r.numpy() for f in files for r in tf.data.TFRecordDataset(str(tmp_path / f), compression_type="GZIP")]
    assert sorted(read) == sorted(r for batch in batches for r in batch)
    assert not list((tmp_path / SHARD_TEMP_DIR).glob("*"))


class TestOutputProtocol:
    def test_existing_output_needs_overwrite(self, tmp_path):
        from pipeline.errors import UsageError
        from pipeline.job import _check_output

        out = tmp_path / "out"
        _check_output(out, overwrite=False)  # absent: fine
        out.mkdir()
        _check_output(out, overwrite=False)  # empty: fine
        (out / "stats.json").write_text("{}")
        with pytest.raises(UsageError, match="holds a finished run; pass --overwrite"):
            _check_output(out, overwrite=False)
        _check_output(out, overwrite=True)
        (tmp_path / "file").write_text("x")
        with pytest.raises(UsageError, match="not a directory"):
            _check_output(tmp_path / "file", overwrite=True)

    def test_publish_replaces_atomically(self, tmp_path):
        from pipeline.scratch import _publish

        old, new = tmp_path / "out", tmp_path / ".out.partial-1"
        old.mkdir()
        (old / "stats.json").write_text("old")
        new.mkdir()
        (new / "stats.json").write_text("new")
        _publish(new, old)
        assert (old / "stats.json").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_raw_rows_of_one_split_follow_the_jobs_split(criteo_generated_file):
    """iter_raw_examples(split=...) partitions the rows exactly as the job's seeded hash does."""
    from pipeline.raw_rows import iter_raw_examples

    spec = load_spec(dataset="criteo")
    every = [f for f, _ in iter_raw_examples(str(criteo_generated_file), spec)]
    per_split = {
        name: [f for f, _ in iter_raw_examples(str(criteo_generated_file), spec, split=name, seed=3)]
        for name in SPLIT_NAMES
    }
    assert sum(len(rows) for rows in per_split.values()) == len(every)
    assert 0.07 < len(per_split["test"]) / len(every) < 0.13
    key = lambda f: tuple(tuple(v) for v in f.values())  # noqa: E731
    assert not {key(f) for f in per_split["test"]} & {key(f) for f in per_split["train"]}
    other_seed = [f for f, _ in iter_raw_examples(str(criteo_generated_file), spec, split="test", seed=4)]
    assert [key(f) for f in other_seed] != [key(f) for f in per_split["test"]]


class TestAtomicPath:
    def test_renamed_on_success_with_the_targets_suffix(self, tmp_path):
        from pipeline.atomic import atomic_path

        target = tmp_path / "sub" / "model.weights.h5"
        with atomic_path(target) as tmp:
            assert tmp.parent == target.parent and tmp.name.endswith(".weights.h5") and tmp != target
            tmp.write_bytes(b"new")
        assert target.read_bytes() == b"new"
        assert oct(target.stat().st_mode & 0o777) == "0o644"
        assert [p.name for p in target.parent.iterdir()] == [target.name]

    def test_failure_leaves_the_target_and_no_temp(self, tmp_path):
        from pipeline.atomic import atomic_path

        target = tmp_path / "stats.json"
        target.write_text("old")
        with pytest.raises(RuntimeError), atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
        assert target.read_text() == "old"
        assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]
