"""Multi-valued fields: pooling by hand, no gradient to pads, models training on them, export."""

import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from pipeline.dataset_info import PAD_ID, STATS_FILE, read_dataset_info
from tests.trainer.synthetic import SEQ_FIELD, SEQ_VOCAB, VOCAB_SIZES
from trainer import cli
from trainer.calibration import read_calibration
from trainer.config import load_config, preset_path
from trainer.data import make_dataset
from trainer.model.embedding import FieldEmbedding, stack_ids
from trainer.model.supernet import SupernetConfig
from trainer.model_io import load_model
from trainer.zoo import ZOO

TABLE = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, -1.0], [3.0, 5.0], [10.0, 20.0], [30.0, 40.0]], "float32")
# Field a (single, vocab 2): rows 0-1; field s (multi, max_len 3, vocab 4): rows 2-5.
IDS = np.array([
    [1, 0, 2, PAD_ID],  # a=1; s = {0, 2}
    [0, 3, 3, 1],  # a=0; s = {3, 3, 1}
    [1, PAD_ID, PAD_ID, PAD_ID],  # a=1; s all pads -> zeros
], "int64")


def _embedding(pooling: str) -> FieldEmbedding:
    emb = FieldEmbedding([2, 4], emb_dim=2, max_lens=[1, 3], pooling=pooling)
    emb(tf.constant(IDS))
    emb.table.assign(TABLE)
    return emb


@pytest.mark.parametrize("pooling", ["mean", "sum"])
def test_pooling_by_hand(pooling):
    got = _embedding(pooling)(tf.constant(IDS)).numpy()
    s = TABLE[2:]  # field s's rows
    sums = [s[0] + s[2], s[3] + s[3] + s[1], np.zeros(2)]
    counts = [2, 3, 1]
    pooled = sums if pooling == "sum" else [v / c for v, c in zip(sums, counts, strict=True)]
    want = np.stack([np.concatenate([TABLE[a], p]) for a, p in zip([1, 0, 1], pooled, strict=True)])
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_pads_get_no_gradient_and_real_ids_do():
    emb = _embedding("mean")
    ids = tf.constant([[1, 1, PAD_ID, PAD_ID]], tf.int64)  # a=1; s = {1}
    with tf.GradientTape() as tape:
        out = emb(ids)
    grad = tf.convert_to_tensor(tape.gradient(out, emb.table)).numpy()
    # Only a's row 1 and s's id 1 (row 3) are read; a pad reads s's id 0 (row 2) masked out.
    np.testing.assert_array_equal(np.flatnonzero(np.abs(grad).sum(axis=1)), [1, 3])


def test_single_valued_fields_keep_the_plain_lookup():
    plain = FieldEmbedding([2, 4], emb_dim=2)
    multi = FieldEmbedding([2, 4], emb_dim=2, max_lens=[1, 1])
    ids = tf.constant([[1, 3], [0, 2]], tf.int64)
    plain(ids), multi(ids)
    plain.table.assign(TABLE)
    multi.table.assign(TABLE)
    np.testing.assert_array_equal(plain(ids).numpy(), [[1, 1, 30, 40], [0, 1, 10, 20]])
    np.testing.assert_array_equal(multi(ids).numpy(), plain(ids).numpy())


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="max_lens.*Received: \\[1\\]"):
        FieldEmbedding([2, 4], emb_dim=2, max_lens=[1])
    with pytest.raises(ValueError, match="pooling.*'max'"):
        FieldEmbedding([2, 4], emb_dim=2, pooling="max")
    with pytest.raises(ValueError, match="pooling"):
        SupernetConfig(pooling="max")


def test_stack_ids_accepts_b_and_b1_and_b_len():
    features = {"a": tf.constant([[1], [0]], tf.int64), "s": tf.constant([[0, 2, -1], [3, 3, 1]], tf.int64)}
    np.testing.assert_array_equal(stack_ids(features, ["a", "s"], [1, 3]).numpy(), [[1, 0, 2, -1], [0, 3, 3, 1]])
    for flat in ({"a": tf.constant([1, 0], tf.int64), "b": tf.constant([2, 3], tf.int64)},
                 {"a": tf.constant([[1], [0]], tf.int64), "b": tf.constant([[2], [3]], tf.int64)}):
        np.testing.assert_array_equal(stack_ids(flat, ["a", "b"], [1, 1]).numpy(), [[1, 2], [0, 3]])


@pytest.mark.parametrize("name", sorted(n for n, e in ZOO.items() if e.class_path is not None))
def test_every_zoo_model_takes_a_multi_valued_field(name):
    config = SupernetConfig(n=2, emb_dim=4, pooling="sum")
    model = ZOO[name].model_class(config, ["a", "s"], [2, 4], max_lens=[1, 3])
    features = {"a": tf.constant(IDS[:, 0]), "s": tf.constant(IDS[:, 1:])}
    with tf.GradientTape() as tape:
        logits = model(features, training=True)
    assert logits.shape == (3, 1)
    table = model.embedding_variables[0]
    grad = tf.convert_to_tensor(tape.gradient(logits, table)).numpy()
    assert np.abs(grad[2:]).sum() > 0  # the multi-valued field's rows are reached
    restored = type(model).from_config(model.get_config())
    assert restored.max_lens == [1, 3] and restored(features).shape == (3, 1)


# ---- end to end: training and export on a synthetic dir with a multi-valued field ----

TINY = ["--config", str(preset_path("criteo", "cpu")), "--model.emb_dim=4", "--train.batch_size=128"]


def _seq_used(run) -> bool:
    """Whether the trained model's predictions move when the `seq` ids of a batch are shuffled between rows."""
    model = load_model(run)
    features, _ = next(iter(make_dataset(read_dataset_info(json.loads((run / "run.json").read_text())["data_dir"]),
                                         "test", 256)))
    shuffled = dict(features, seq=tf.random.shuffle(features[SEQ_FIELD], seed=1))
    return float(tf.reduce_max(tf.abs(model(features) - model(shuffled)))) > 1e-4


@pytest.mark.slow
def test_supernet_and_a_zoo_model_learn_from_the_multivalued_field(multivalued_run, multivalued_dir, tmp_path):
    dcn = json.loads((multivalued_run / "metrics.json").read_text())
    assert dcn["test_auc"] > 0.6, dcn
    run = json.loads((multivalued_run / "run.json").read_text())
    assert {"name": SEQ_FIELD, "vocab_size": SEQ_VOCAB, "max_len": 4} in run["fields"]
    assert _seq_used(multivalued_run)
    assert cli.main(["--stage=train", "--model", "deepfm", "--data", str(multivalued_dir), "--out",
                     str(tmp_path / "deepfm"), *TINY, "--train.epochs=2", "--model.pooling=sum"]) == 0
    deepfm = json.loads((tmp_path / "deepfm" / "metrics.json").read_text())
    assert deepfm["test_auc"] > 0.6, deepfm
    assert load_config(tmp_path / "deepfm" / "config.yaml").model.pooling == "sum"
    assert _seq_used(tmp_path / "deepfm")
    # The search supernet (every edge and op) takes it too.
    assert cli.main(["--stage=search", "--data", str(multivalued_dir), "--out", str(tmp_path / "search"), *TINY,
                     "--model.n=2", "--model.att_dim=8", "--train.epochs=1", "--train.max_steps_per_epoch=5"]) == 0
    assert (tmp_path / "search" / "architecture.json").is_file()


def _hash_transform_dir(data_dir: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """`data_dir` plus a TFT transform graph (written without Beam): each raw field is one string
    cell, hashed into its vocabulary; `seq` holds "a^b^c", split and padded to [B, 4] with PAD_ID."""
    import tensorflow_transform as tft
    from tensorflow_transform import impl_helper
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io

    info = read_dataset_info(data_dir)
    raw = {name: tf.io.VarLenFeature(tf.string) for name in info.field_names}

    def cell(sparse):
        return tf.reshape(tft.sparse_tensor_to_dense_with_shape(sparse, [None, 1], default_value=""), [-1])

    def preprocessing_fn(inputs):
        out = {f.name: tf.strings.to_hash_bucket_fast(cell(inputs[f.name]), f.vocab_size)
               for f in info.fields if f.max_len == 1}
        tokens = tf.strings.split(cell(inputs[SEQ_FIELD]), "^")
        tokens = tf.ragged.boolean_mask(tokens, tf.strings.length(tokens) > 0)
        out[SEQ_FIELD] = tf.strings.to_hash_bucket_fast(tokens, SEQ_VOCAB).to_tensor(PAD_ID, shape=[None, 4])
        return out

    out.mkdir()
    for path in data_dir.iterdir():
        if path.name != STATS_FILE:
            (out / path.name).symlink_to(path)
    # The schema the export reads for its oov_fraction output (which fields are categorical), as a
    # pipeline run records it: every single-valued field categorical, `seq` multi-valued.
    stats = json.loads((data_dir / STATS_FILE).read_text())
    stats["schema"] = {
        "columns": ["label", *info.field_names], "label": "label", "label_rule": "binary",
        "fields": {f.name: {"kind": "multi", "separator": "^", "max_len": f.max_len} if f.max_len > 1
                   else "categorical" for f in info.fields},
    }
    (out / STATS_FILE).write_text(json.dumps(stats))
    impl_helper.trace_and_write_v2_saved_model(
        str(out / "transform_fn"), preprocessing_fn, impl_helper.get_type_specs_from_feature_specs(raw),
        None, {}, None, None, None)
    metadata_io.write_metadata(dataset_metadata.DatasetMetadata.from_feature_spec(raw), str(out / "metadata"))
    transformed = {f.name: tf.io.FixedLenFeature([f.max_len] if f.max_len > 1 else [], tf.int64) for f in info.fields}
    metadata_io.write_metadata(dataset_metadata.DatasetMetadata.from_feature_spec(transformed),
                               str(out / "transformed_metadata"))
    return out


@pytest.mark.slow
def test_export_serves_raw_multivalued_cells(multivalued_run, multivalued_dir, tmp_path):
    from serving import export, module

    data = _hash_transform_dir(multivalued_dir, tmp_path / "data")
    result = export.export(str(multivalued_run), str(data), str(tmp_path / "models"), "mv", verify_rows=64)
    assert result.verification.max_abs_diff <= 1e-5 and result.verification.fields_max_abs_diff <= 1e-5
    fields = tf.saved_model.load(str(result.version_dir)).signatures[module.FIELDS_SIGNATURE]
    singles = [f"f{i}" for i in range(len(VOCAB_SIZES))]
    cells = ["3^7^1", "7^1^3", "3", "3^3", "", "1^2^3^4^5"]
    texts = {n: tf.constant(["x", "x", "x", "x", "", "z"]) for n in singles}  # rows 0-3 differ in seq only
    got = fields(**texts, **{SEQ_FIELD: tf.constant(cells)})["probabilities"].numpy()

    def ids(cell):  # by hand: hash each token, pad to 4 with PAD_ID, keep the first 4
        tokens = [t for t in cell.split("^") if t]
        hashed = tf.strings.to_hash_bucket_fast(tokens, SEQ_VOCAB).numpy().tolist() if tokens else []
        return (hashed + [PAD_ID] * 4)[:4]

    features = {n: tf.strings.to_hash_bucket_fast(texts[n], v) for n, v in zip(singles, VOCAB_SIZES, strict=True)}
    features[SEQ_FIELD] = tf.constant([ids(c) for c in cells], tf.int64)
    calibration = read_calibration(multivalued_run)  # the export serves the calibrated probability
    want = tf.sigmoid(calibration.apply_tf(tf.reshape(load_model(multivalued_run)(features), [-1]))).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert got[0] == pytest.approx(got[1], abs=1e-6)  # mean pooling: the order of the ids does not matter
    assert got[2] == pytest.approx(got[3], abs=1e-6)  # mean of one id repeated is that id
    assert abs(got[0] - got[2]) > 1e-6
