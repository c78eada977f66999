"""tf.data input: parses, batches, shuffles reproducibly, rejects bad dirs."""

import json

import numpy as np
import pytest

from pipeline.dataset_info import DatasetInfoError, read_dataset_info
from tests.trainer.synthetic import SPLIT_ROWS, VOCAB_SIZES
from trainer.data import check_data, make_dataset


def test_batches_hold_every_row_with_int64_ids(synthetic_dir):
    info = read_dataset_info(synthetic_dir)
    batches = list(make_dataset(info, "valid", batch_size=256))
    assert sum(int(labels.shape[0]) for _, labels in batches) == SPLIT_ROWS["valid"]
    features, labels = batches[0]
    assert sorted(features) == sorted(info.field_names)
    assert features["f0"].dtype.name == "int64" and features["f0"].shape == (256,)
    assert labels.dtype.name == "float32"
    for name, vocab in zip(info.field_names, VOCAB_SIZES):
        assert 0 <= int(np.min(features[name])) and int(np.max(features[name])) < vocab


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
