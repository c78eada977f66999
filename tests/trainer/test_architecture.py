"""Search-space topology and the Architecture file format (no TensorFlow needed)."""

import json
import math
import pathlib

import pytest

from trainer.architecture import (
    ONE_HOT_LOGIT,
    OPS,
    Architecture,
    candidate_inputs,
    components,
    connectable_components,
    fusing_components,
    level,
    num_edges,
)


def _arch(n=2, alpha=0.5, beta=None):
    """Every edge at `alpha`, every beta at `beta` (default [0, 0, 0, 0])."""
    return Architecture(
        n=n,
        alpha={c: {s: alpha for s in candidate_inputs(c, n)} for c in connectable_components(n)},
        beta={c: list(beta or [0.0] * len(OPS)) for c in fusing_components(n)},
    )


def test_components_and_levels_n3():
    assert components(3) == ["E", "S0", "S1", "D1", "S2", "D2", "S3", "D3", "H"]
    assert [level(c, 3) for c in components(3)] == [0, 1, 2, 2, 3, 3, 4, 4, 5]
    assert candidate_inputs("S0", 3) == ["E"]
    assert candidate_inputs("D2", 3) == ["E", "S0", "S1", "D1"]
    assert candidate_inputs("H", 3) == components(3)[:-1]
    assert num_edges(3) == 33  # 32 fusion edges + the reference's E -> S0 switch


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_edges_only_point_up_and_count_is_exact(n):
    for comp in connectable_components(n):
        for src in candidate_inputs(comp, n):
            assert level(src, n) < level(comp, n), (src, comp)
    # Every lower-level component is a candidate: no edge is missing either.
    for comp in connectable_components(n):
        lower = [c for c in components(n) if level(c, n) < level(comp, n)]
        assert candidate_inputs(comp, n) == lower
    assert num_edges(n) == 2 * (n + 1) ** 2 + 1


def test_bad_n_and_component_names():
    with pytest.raises(ValueError, match="Received: n=0"):
        components(0)
    with pytest.raises(ValueError, match="Unknown component"):
        level("S4", 3)
    with pytest.raises(ValueError, match="Unknown component"):
        level("D0", 3)


def test_hard_and_soft_from_given_beta():
    arch = _arch(n=1)
    arch.beta["S1"] = [0.0, 2.0, 1.0, -1.0]
    arch.beta["H"] = [math.log(1.0), math.log(2.0), math.log(3.0), math.log(4.0)]
    assert arch.hard_ops() == {"S1": "prod", "D1": "add", "H": "att"}  # ties -> first op
    assert arch.soft_weights()["H"] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert arch.soft_weights()["D1"] == pytest.approx([0.25] * 4)


def test_edges_from_alpha_sign():
    arch = _arch(n=1, alpha=-0.1)
    arch.alpha["S1"]["S0"] = 0.3
    arch.alpha["S0"]["E"] = 1e-6
    arch.alpha["H"]["S1"] = 0.0  # exactly 0 is off: STE is 1[alpha > 0]
    arch.alpha["H"]["D1"] = 2.0
    assert arch.edges() == [("E", "S0"), ("S0", "S1"), ("D1", "H")]
    assert arch.inputs("H") == ["D1"]
    assert arch.inputs("D1") == []


def test_reachable_prunes_components_without_path_to_h():
    # E -> S0 -> S1 -> H ; D1 -> S2 but S2 feeds nothing ; D2 feeds H with no input.
    arch = Architecture.from_design(
        n=2, inputs={"S0": ["E"], "S1": ["S0"], "S2": ["D1"], "D1": ["E"], "H": ["S1", "D2"]},
        ops="add",
    )
    assert arch.reachable() == {"H", "S1", "S0", "E", "D2"}
    text = arch.render()
    assert "pruned (no path to H): D1, S2" in text
    assert "D2  <- ADD((none: zero input))" in text


def test_from_design_sets_alpha_and_one_hot_beta():
    arch = Architecture.from_design(n=1, inputs={"S1": ["E"], "H": ["S1", "D1"]},
                                    ops={"S1": "concat", "H": "att"}, description="demo")
    assert arch.alpha["S1"] == {"E": 1.0, "S0": 0.0}
    assert arch.alpha["S0"] == {"E": 0.0}
    assert arch.beta["H"] == [0.0, 0.0, 0.0, ONE_HOT_LOGIT]
    assert arch.hard_ops() == {"S1": "concat", "D1": "add", "H": "att"}
    assert arch.soft_weights()["S1"][2] > 1 - 1e-8
    with pytest.raises(ValueError, match="cannot take"):
        Architecture.from_design(n=1, inputs={"S1": ["D1"]}, ops="add")  # sideways
    with pytest.raises(ValueError, match="cannot take"):
        Architecture.from_design(n=2, inputs={"S1": ["S2"]}, ops="add")  # downwards
    with pytest.raises(ValueError, match="Unknown op"):
        Architecture.from_design(n=1, inputs={}, ops="max")


def test_s0_switch_defaults_to_on():
    data = _arch(n=1, alpha=-1.0).to_dict()
    del data["alpha"]["S0"]
    del data["edges"], data["reachable"]
    assert Architecture.from_dict(data).alpha["S0"] == {"E": 1.0}


def test_validation_rejects_wrong_shape():
    good = _arch(n=1).to_dict()
    bad_alpha = json.loads(json.dumps(good))
    bad_alpha["alpha"]["S1"]["D1"] = 1.0  # sideways edge has no parameter
    with pytest.raises(ValueError, match="only lower levels"):
        Architecture.from_dict(bad_alpha)
    bad_beta = json.loads(json.dumps(good))
    bad_beta["beta"]["H"] = [0.0, 1.0]
    with pytest.raises(ValueError, match="4 logits"):
        Architecture.from_dict(bad_beta)
    missing = json.loads(json.dumps(good))
    del missing["beta"]["D1"]
    with pytest.raises(ValueError, match="exactly the components"):
        Architecture.from_dict(missing)
    nan = json.loads(json.dumps(good))
    nan["alpha"]["H"]["E"] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        Architecture.from_dict(nan)


def test_json_round_trip_and_derived_fields(tmp_path):
    arch = _arch(n=2, alpha=0.5, beta=[0.1, -0.2, 0.3, 0.05])
    arch.alpha["H"]["D2"] = -0.7
    arch.description = "round trip"
    data = json.loads(arch.to_json())
    assert data["edges"][0] == ["E", "S0"]
    assert ["D2", "H"] not in data["edges"]
    assert data["hard_ops"]["H"] == "concat"
    assert data["reachable"][0] == "E" and data["reachable"][-1] == "H"
    path = tmp_path / "sub" / "architecture.json"
    arch.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["architecture.json"]  # temp renamed away
    assert Architecture.load(path) == arch
    assert Architecture.from_json(arch.to_json()) == arch


def test_hand_edited_derived_field_is_rejected(tmp_path):
    data = _arch(n=1).to_dict()
    data["hard_ops"]["H"] = "prod"  # beta says add
    path = tmp_path / "a.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"a\.json.*hard_ops.*derived"):
        Architecture.load(path)
    with pytest.raises(ValueError, match="does not exist"):
        Architecture.load(tmp_path / "missing.json")


def test_render_fits_one_screen():
    text = _arch(n=3, beta=[0.0, 0.0, 1.0, 0.0]).render()
    lines = text.splitlines()
    assert len(lines) <= 24 and max(map(len, lines)) <= 100
    assert lines[0].startswith("OptFusion architecture, n=3: 33 of 33 edges on")
    assert "H   <- CONCAT(E, S0, S1, D1, S2, D2, S3, D3)" in text


SHIPPED = pathlib.Path(__file__).resolve().parents[2] / "trainer" / "architectures"


@pytest.mark.parametrize(
    "name, edges, hard_h",
    [
        ("parallel_dcn", [("E", "S1"), ("E", "D1"), ("S1", "S2"), ("D1", "D2"), ("S2", "S3"),
                          ("D2", "D3"), ("S3", "H"), ("D3", "H")], "concat"),
        ("stacked_dcnv2", [("E", "S0"), ("S0", "S1"), ("S1", "S2"), ("S2", "D3"), ("D3", "D4"), ("D4", "D5"),
                           ("D5", "H")], "add"),
        ("fnn", [("E", "D1"), ("D1", "D2"), ("D2", "D3"), ("D3", "H")], "add"),
    ],
)
def test_shipped_designs(name, edges, hard_h):
    path = SHIPPED / f"{name}.json"
    arch = Architecture.load(path)
    assert arch.edges() == edges
    assert arch.hard_ops()["H"] == hard_h
    assert arch.description
    assert path.read_text() == arch.to_json()  # files are exactly what save() writes


def test_stacked_dcnv2_is_as_deep_as_the_parallel_design():
    # Issue 19: stacked had 2 cross + 2 deep layers, parallel 3 + 3.
    def depth(name: str) -> tuple[int, int]:
        kept = Architecture.load(SHIPPED / f"{name}.json").reachable()
        return sum(c.startswith("S") for c in kept), sum(c.startswith("D") for c in kept)

    assert depth("stacked_dcnv2") == depth("parallel_dcn") == (3, 3)
