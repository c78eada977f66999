"""AutoCTR / NASRec designs on the real chain: pipeline output -> search -> retrain -> serving export ->
the session loader (the path tensorflow_model_server takes), as tests/serving/test_contract.py does for OptFusion."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from serving import cli as serving_cli
from serving import examples, session_loader
from trainer import cli
from trainer.config import preset_path
from trainer.nas.space import Block, NasArchitecture

pytestmark = [pytest.mark.slow, pytest.mark.dist]  # ~40 s a case on 2 loaded cores: make test-dist
TINY = ["--model.emb_dim=4", "--train.batch_size=256", "--train.epochs=1", "--train.max_steps_per_epoch=5",
        "--nas.blocks=2", "--nas.dense_dim=8"]
EVERY_OP = NasArchitecture("autoctr", (  # each op of the block set once, every node on a path to the head
    Block("mlp", "efc", (0,), (0,)),
    Block("gating", "attention", (0, 1), (1,)),
    Block("crossnet", "cin", (2,), (2,)),
    Block("fm", "efc", (0,), (3,)),
    Block("dot", "identity", (3, 4), (4,)),
), "every op of trainer/nas/space.py")


@pytest.fixture(scope="module")
def raw_rows(criteo_generated_file) -> list[dict]:
    from pipeline.raw_rows import iter_raw_examples, load_spec

    rows = [f for f, _ in itertools.islice(iter_raw_examples(str(criteo_generated_file),
                                                             load_spec(dataset="criteo")), 40)]
    unseen = {k: ([b"never-seen-" + k.encode()] if k.startswith("C") else v) for k, v in rows[0].items()}
    return rows + [unseen, {k: [] for k in rows[0]}]


def _run(criteo_preprocessed_dir, tmp_path, case: str):
    data = str(criteo_preprocessed_dir)
    if case == "every_op":
        design = tmp_path / "every_op.json"
        EVERY_OP.save(design)
        stage = ["train", "--architecture", str(design), "--config", str(preset_path("criteo", "cpu"))]
    else:
        search = tmp_path / "search"
        assert cli.main(["search", "--method=nasrec", "--data", data, "--out", str(search), *TINY,
                         "--nas.population=3", "--nas.cycles=1", "--nas.sample_size=2"]) == 0
        stage = ["retrain", "--architecture", str(search / "architecture.json")]
    run = tmp_path / "run"
    assert cli.main([*stage, "--data", data, "--out", str(run), *TINY]) == 0
    return run


@pytest.mark.parametrize("case", ["nasrec", "every_op"])
def test_a_nas_design_exports_and_runs_under_the_session_loader(case, criteo_preprocessed_dir, raw_rows, tmp_path):
    import tensorflow_transform as tft

    from pipeline.dataset_info import read_dataset_info
    from serving.export import _keras_reference
    from trainer.calibration import read_calibration
    from trainer.model_io import load_model

    run = _run(criteo_preprocessed_dir, tmp_path, case)
    base = tmp_path / "models"
    assert serving_cli.main(["export", "--run", str(run), "--data", str(criteo_preprocessed_dir),
                             "--model_base_path", str(base), "--model_name", "ctr"]) == 0
    info = read_dataset_info(criteo_preprocessed_dir)
    tft_output = tft.TFTransformOutput(str(info.transform_output_dir))
    raw_spec = {k: v for k, v in tft_output.raw_feature_spec().items() if k != info.label_key}
    serialized = examples.serialize_rows(raw_rows)
    expected = _keras_reference(load_model(run), tft_output.transform_features_layer(), raw_spec, info.field_names,
                                serialized, calibration=read_calibration(run))[0]
    texts = examples.field_texts(raw_rows, list(raw_rows[0]))
    feeds = {"serving_default": {"examples": np.array(serialized, dtype=object)},
             "raw_fields": {k: np.array(v, dtype=object) for k, v in texts.items()},
             "classification": {"inputs": np.array(serialized, dtype=object)}}
    out = session_loader.run_signatures(base / "ctr" / "1", feeds)
    for got in (out["serving_default"]["probabilities"], out["raw_fields"]["probabilities"],
                out["classification"]["scores"][:, 1]):
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert len(set(np.round(expected, 6))) > 1  # the rows get distinct answers
