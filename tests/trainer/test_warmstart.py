"""Warm start across vocabularies (trainer/warmstart.py, `trainer --init=run:PATH`).

The id mapping is checked by hand on a tiny vocabulary pair; the whole path on
two pipeline runs of different generated data: the session's Criteo retrain
(20k rows, seed 0) and a small run of seed 1, whose vocabularies differ.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from pipeline.dataset_info import read_dataset_info
from pipeline.errors import UsageError
from tests.conftest import ROOT, run_pipeline
from trainer import cli, warmstart

# Field 0, a vocabulary field: "a" keeps id 2, "b" moves 3 -> 4, "c" is dropped, "d" is new (id 3).
OLD = (np.array([10, 11, 12]), np.array([2, 3, 4]))  # keys a, b, c
NEW = (np.array([13, 11, 10]), np.array([3, 4, 2]))  # keys d, b, a


def test_field_map_follows_tokens_keeps_oov_and_missing():
    source, counts = warmstart.field_map(5, 5, OLD, NEW)
    assert source.tolist() == [0, 1, 2, -1, 3]  # new id 3 ("d") is new, new id 4 ("b") was old id 3
    assert counts == {"carried": 2, "moved": 1, "new": 1, "dropped": 1}


def test_field_map_of_a_fixed_range_field_is_positional():
    source, counts = warmstart.field_map(6, 4, None, None)
    assert source.tolist() == [0, 1, 2, 3]
    assert counts == {"carried": 2, "moved": 0, "new": 0, "dropped": 2}
    assert warmstart.field_map(3, 5, None, None)[0].tolist() == [0, 1, 2, -1, -1]


def test_field_map_refuses_ids_beyond_the_vocabulary_size():
    with pytest.raises(UsageError, match="outside"):
        warmstart.field_map(4, 5, OLD, NEW)


def test_remap_table_moves_rows_and_keeps_the_initializer_for_new_ones():
    source, _ = warmstart.field_map(5, 5, OLD, NEW)
    kept = np.flatnonzero(source >= 0)
    # Two fields: the vocabulary field above (5 rows) after a 2-row field mapped as it is.
    rows = warmstart.RowMap(old_rows=np.concatenate([[0, 1], 2 + source[kept]]),
                            new_rows=np.concatenate([[0, 1], 2 + kept]), old_total=7, new_total=7, fields={})
    old = np.arange(7, dtype="float32")[:, None] * [1.0, 10.0]
    init = -np.ones((7, 2), "float32")
    out = warmstart.remap_table(old, init, rows)
    assert out[:, 0].tolist() == [0, 1, 2, 3, 4, -1, 5]  # "d" (row 5) from the initializer, "b" from old row 5
    with pytest.raises(ValueError, match="7 and 7 rows"):
        warmstart.remap_table(old[:6], init, rows)


def test_parse_init():
    assert warmstart.parse_init("run:/x/y") == "run:/x/y"
    assert warmstart.init_run_dir("run:/x/y").as_posix() == "/x/y"
    assert warmstart.init_run_dir("search") is None
    for bad in ("run:", "warm", "Fresh"):
        with pytest.raises(Exception, match="invalid choice"):
            warmstart.parse_init(bad)


@pytest.fixture(scope="module")
def day2_dir(tmp_path_factory):
    """`pipeline --dataset criteo` on 3000 generated rows of seed 1 (other draws: tokens move, appear, drop)."""
    from pipeline.generate import generate

    tmp = tmp_path_factory.mktemp("warm_day2")
    generate(3000, tmp / "day2.tsv", seed=1, progress=False)
    run_pipeline("--dataset", "criteo", "--input", str(tmp / "day2.tsv"), "--output", str(tmp / "data"))
    return tmp / "data"


def _vocab(data_dir):
    keys, ids = warmstart.read_vocabulary(data_dir)
    return dict(zip(keys.tolist(), ids.tolist(), strict=True))


def test_loaded_rows_follow_their_tokens(criteo_run_dir, criteo_preprocessed_dir, day2_dir):
    """After load, before training: a shared token's row is the previous run's row for it, wherever its id
    went; a new token's row is the initializer's; OOV and missing rows are carried."""
    from pipeline.transform import field_of_key
    from trainer.architecture import Architecture
    from trainer.config import load_config
    from trainer.model_io import ARCH_FILE, CONFIG_FILE, build_model, load_model

    info = read_dataset_info(day2_dir)
    rows = warmstart.plan(criteo_run_dir, info)
    old_info = read_dataset_info(criteo_preprocessed_dir)
    model = build_model(load_config(criteo_run_dir / CONFIG_FILE), [vars(f) for f in info.fields], mode="soft",
                        architecture=Architecture.load(criteo_run_dir / ARCH_FILE))
    init = model.embedding_variables[0].numpy().copy()
    warmstart.apply(model, criteo_run_dir, rows)
    table = model.embedding_variables[0].numpy()
    old_table = load_model(criteo_run_dir).embedding_variables[0].numpy()

    old_vocab, new_vocab = _vocab(criteo_preprocessed_dir), _vocab(day2_dir)
    field = info.field_names.index("C3")
    old_off, new_off = sum(old_info.vocab_sizes[:field]), sum(info.vocab_sizes[:field])
    in_field = [k for k in new_vocab if field_of_key(np.int64(k)) == field]
    moved = [k for k in in_field if k in old_vocab and old_vocab[k] != new_vocab[k]]
    new = [k for k in in_field if k not in old_vocab]
    dropped = [k for k in old_vocab if field_of_key(np.int64(k)) == field and k not in new_vocab]
    assert moved and new and dropped, "the two runs should differ in C3's tokens"
    for key in moved[:5]:
        np.testing.assert_array_equal(table[new_off + new_vocab[key]], old_table[old_off + old_vocab[key]])
    for key in new[:5]:
        np.testing.assert_array_equal(table[new_off + new_vocab[key]], init[new_off + new_vocab[key]])
    np.testing.assert_array_equal(table[new_off:new_off + 2], old_table[old_off:old_off + 2])
    counts = rows.fields["C3"]
    assert (counts["carried"], counts["new"], counts["dropped"]) == (
        len(in_field) - len(new), len(new), len(dropped))
    tables = {v.path for v in model.embedding_variables}
    old_weights = {v.path: v.numpy() for v in load_model(criteo_run_dir).weights}
    dense = [v for v in model.weights if v.path not in tables]
    assert dense and set(old_weights) == {v.path for v in model.weights}
    for v in dense:  # every other weight by path
        np.testing.assert_array_equal(v.numpy(), old_weights[v.path], err_msg=v.path)


def test_cli_warm_start_trains_and_records_the_tokens(criteo_run_dir, day2_dir, tmp_path):
    """`trainer --stage=train --init=run:A` on other data: the previous design by default, run.json's counts."""
    out = tmp_path / "warm"
    result = subprocess.run(
        [sys.executable, "-m", "trainer.cli", "--stage=train", f"--init=run:{criteo_run_dir}", "--data",
         str(day2_dir), "--out", str(out), "--train.epochs=1", "--train.max_steps_per_epoch=5"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert (run["stage"], run["mode"], run["init"]) == ("train", "soft", f"run:{criteo_run_dir}")
    expected = warmstart.plan(criteo_run_dir, read_dataset_info(day2_dir)).fields
    assert run["warm_start"] == {"from": str(criteo_run_dir), "fields": expected}
    assert (out / "model.weights.h5").is_file() and json.loads((out / "metrics.json").read_text())["test_auc"] > 0


@pytest.mark.parametrize("case", ["not_a_run", "unfinished", "other_shape", "search_init_on_train"])
def test_bad_warm_start_exits_2_naming_the_problem(case, criteo_run_dir, day2_dir, tmp_path, capsys):
    import shutil

    init, extra, expected = f"run:{criteo_run_dir}", [], ""
    if case == "not_a_run":
        init, expected = f"run:{tmp_path}", "not a trainer run directory"
    elif case == "unfinished":
        shutil.copytree(criteo_run_dir, tmp_path / "copy")
        (tmp_path / "copy" / "model.weights.h5").unlink()
        init, expected = f"run:{tmp_path / 'copy'}", "did not finish"
    elif case == "other_shape":
        extra, expected = ["--model.emb_dim=8"], "embedding/table"
    else:
        init, expected = "search", "belongs to --stage=retrain"
    args = ["--stage=train", f"--init={init}", "--data", str(day2_dir), "--out", str(tmp_path / "out"), *extra]
    if case == "search_init_on_train":
        args += ["--architecture", str(criteo_run_dir / "architecture.json"), "--mode", "soft"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err, err
    assert not (tmp_path / "out" / "model.weights.h5").exists()
