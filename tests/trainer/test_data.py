"""tf.data input: parses, batches, shuffles reproducibly, rejects bad dirs."""

import json

import numpy as np
import pytest
import tensorflow as tf

from pipeline.dataset_info import PAD_ID, DatasetInfoError, read_dataset_info
from tests.trainer.synthetic import SEQ_FIELD, SEQ_VOCAB, SPLIT_ROWS, VOCAB_SIZES, write_synthetic_run
from trainer.data import check_data, make_dataset


def test_batches_hold_every_row_with_int64_ids(synthetic_dir):
    info = read_dataset_info(synthetic_dir)
    batches = list(make_dataset(info, "valid", batch_size=256))
    assert sum(int(labels.shape[0]) for _, labels in batches) == SPLIT_ROWS["valid"]
    features, labels = batches[0]
    assert sorted(features) == sorted(info.field_names)
    assert features["f0"].dtype.name == "int64" and features["f0"].shape == (256,)
    assert labels.dtype.name == "float32"
    for name, vocab in zip(info.field_names, VOCAB_SIZES, strict=True):
        assert 0 <= int(np.min(features[name])) and int(np.max(features[name])) < vocab


def test_file_shards_split_the_rows_between_readers(tmp_path):
    """Two readers with file_shard (2, 0) and (2, 1) of a 4-file split, after the
    same file shuffle: disjoint, and together every row (a parameter-server worker's files)."""
    info = read_dataset_info(write_synthetic_run(tmp_path, shards=4))

    def rows(shard):
        ds = make_dataset(info, "train", batch_size=512, shuffle=True, seed=3, file_shard=shard)
        return [tuple(int(features[n][i]) for n in info.field_names) + (float(labels[i]),)
                for features, labels in ds for i in range(int(labels.shape[0]))]

    first, second, every = rows((2, 0)), rows((2, 1)), rows(None)
    assert 0 < len(first) < len(every) and len(first) + len(second) == len(every) == SPLIT_ROWS["train"]
    assert sorted(first + second) == sorted(every)


def test_shuffle_is_seeded_and_changes_order(synthetic_dir):
    info = read_dataset_info(synthetic_dir)

    def first_ids(seed):
        features, _ = next(iter(make_dataset(info, "train", 64, shuffle=True, seed=seed, shuffle_buffer=1000)))
        return features["f2"].numpy()

    plain = next(iter(make_dataset(info, "train", 64)))[0]["f2"].numpy()
    np.testing.assert_array_equal(first_ids(1), first_ids(1))
    assert not np.array_equal(first_ids(1), first_ids(2))
    assert not np.array_equal(first_ids(1), plain)


def test_check_data_accepts_consistent_dir(synthetic_dir):
    check_data(read_dataset_info(synthetic_dir))


def test_check_data_rejects_field_count_and_vocab_mismatch(synthetic_dir, tmp_path):
    stats = json.loads((synthetic_dir / "stats.json").read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    for shard in synthetic_dir.glob("*.tfrecord.gz"):
        (bad / shard.name).symlink_to(shard)

    stats_fewer = dict(stats, fields=stats["fields"][:-1])
    (bad / "stats.json").write_text(json.dumps(stats_fewer))
    with pytest.raises(DatasetInfoError, match="5 fields"):
        check_data(read_dataset_info(bad))

    stats_small = dict(stats, fields=[dict(f, vocab_size=1) for f in stats["fields"]])
    (bad / "stats.json").write_text(json.dumps(stats_small))
    with pytest.raises(DatasetInfoError, match=r"not 1 id\(s\) in \[0, 1\)"):
        check_data(read_dataset_info(bad))


@pytest.fixture(scope="module")
def unlabeled_dir(tmp_path_factory):
    """A `pipeline transform`-like output: one split "data", no label, a multi-valued field."""
    return write_synthetic_run(tmp_path_factory.mktemp("unlabeled"), shards=3, seq_len=4, labeled=False,
                               splits={"data": 500})


def test_unlabeled_split_yields_features_only_in_file_order(unlabeled_dir):
    info = read_dataset_info(unlabeled_dir)
    check_data(info)
    assert info.splits == ("data",) and not info.labeled
    batches = list(make_dataset(info, "data", batch_size=128, in_file_order=True))
    assert all(isinstance(b, dict) for b in batches)  # no label, real or made up
    assert sorted(batches[0]) == sorted(info.field_names)
    seq = np.concatenate([b[SEQ_FIELD].numpy() for b in batches])
    assert seq.shape == (500, 4) and seq.min() == PAD_ID and seq.max() < SEQ_VOCAB
    # In file order: shard 0's records first (rows 0, 3, 6, ... of the writer), then shard 1's.
    first = [tf.train.Example.FromString(r.numpy()).features.feature["f0"].int64_list.value[0]
             for r in tf.data.TFRecordDataset(sorted(unlabeled_dir.glob("data-*")), compression_type="GZIP")]
    np.testing.assert_array_equal(np.concatenate([b["f0"].numpy() for b in batches]), first)
    with pytest.raises(DatasetInfoError, match=r"has no split 'test'; it holds \['data'\]"):
        make_dataset(info, "test", 128)


@pytest.mark.parametrize("seq, ok", [([PAD_ID] * 3, True), ([2, 1, PAD_ID], True), ([2, PAD_ID, 1], False),
                                     ([2, 5, PAD_ID], False), ([2, 1], False)])
def test_check_data_multivalued_rows(seq, ok, tmp_path):
    """An empty sequence (all pads) is valid; a pad before an id, an id out of range or a short row is not."""
    stats = {"dataset": "x", "label_key": "label", "fields": [{"name": "s", "vocab_size": 5, "max_len": 3}]}
    (tmp_path / "stats.json").write_text(json.dumps(stats))
    example = tf.train.Example(features=tf.train.Features(feature={
        "s": tf.train.Feature(int64_list=tf.train.Int64List(value=seq)),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))}))
    for split in SPLIT_ROWS:
        with tf.io.TFRecordWriter(str(tmp_path / f"{split}-00000-of-00001.tfrecord.gz"), options="GZIP") as writer:
            writer.write(example.SerializeToString())
    if ok:
        check_data(read_dataset_info(tmp_path))
    else:
        with pytest.raises(DatasetInfoError, match=r"field s holds .*not 3 id\(s\) in \[0, 5\) padded at the end"):
            check_data(read_dataset_info(tmp_path))
