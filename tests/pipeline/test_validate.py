"""Data validation: distributions.json of a run, `pipeline validate`, `--validate_against`, `generate --drift`."""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from pipeline.distributions import OTHER_BIN, TOP_K, id_histograms
from pipeline.features import DISTRIBUTIONS_FILE, DONE_FILE
from pipeline.generate import Drift, generate
from pipeline.specs import SCHEMA_DIR, SpecError, load_spec, spec_from_doc
from pipeline.validate import (
    ANOMALIES_FILE,
    DEFAULT_THRESHOLDS,
    EXIT_ANOMALIES,
    ThresholdsError,
    check_thresholds,
    js_divergence,
    linf_distance,
    resolve,
)
from tests.conftest import GENERATED_ROWS, GENERATED_SEED, ROOT, run_pipeline

DRIFTED_FIELD = "C3"


# --- measures, thresholds and histograms on hand-computed cases


def test_linf_distance_over_the_union_of_values():
    # a: x .75, y .25; b: x .25, y .25, z .5 -> |.75 - .25| = |0 - .5| = .5, first key in order: x.
    assert linf_distance({"x": 3, "y": 1}, {"x": 1, "y": 1, "z": 2}) == (0.5, "x")
    assert linf_distance({"x": 2, "y": 2}, {"y": 5, "x": 5}) == (0.0, "x")
    assert linf_distance({"x": 1}, {"y": 7}) == (1.0, "x")  # disjoint values: all mass moved
    assert linf_distance({}, {"y": 7}) == (1.0, None) and linf_distance({}, {}) == (0.0, None)


def test_js_divergence_log2_bounded():
    assert js_divergence({"a": 1, "b": 1}, {"b": 4, "a": 4}) == 0.0
    assert js_divergence({"a": 1}, {"b": 1}) == pytest.approx(1.0)
    # p = (.5, .5), q = (1, 0), m = (.75, .25)
    expected = (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25) + math.log2(1 / 0.75)) / 2
    assert js_divergence({"a": 1, "b": 1}, {"a": 3}) == pytest.approx(expected)
    assert expected == pytest.approx(0.311278, abs=1e-6)
    assert js_divergence({}, {"a": 1}) == 1.0


def test_id_histograms_bins():
    ids = np.array([0, 1, 1, 2, 2, 2, 3, TOP_K + 1, TOP_K + 2, 10_000, -1, -1])
    hist = id_histograms({"f": ids})["f"]
    assert len(hist) == OTHER_BIN + 1 == TOP_K + 3
    assert (hist[0], hist[1], hist[2], hist[3], hist[TOP_K + 1], hist[OTHER_BIN]) == (1, 2, 3, 1, 1, 2)
    assert hist.sum() == 10  # padding (-1) left out


def test_thresholds_layers_later_wins_field_beats_default():
    schema = check_thresholds({"default": {"linf": 0.3}, "fields": {"C3": {"linf": None, "js": 0.5}},
                               "label_rate": 0.4}, "validation", ["C3", "C4"])
    assert resolve([], "linf", "C4") == DEFAULT_THRESHOLDS["linf"]
    assert resolve([schema], "linf", "C4") == 0.3
    assert resolve([schema], "linf", "C3") is None  # null: not checked
    assert resolve([schema], "label_rate") == 0.4
    file = check_thresholds({"default": {"linf": 0.05}}, "--thresholds f")
    assert resolve([schema, file], "linf", "C3") == 0.05  # a later layer's default beats an earlier field entry
    assert resolve([schema, file], "js", "C3") == 0.5


@pytest.mark.parametrize("block, message", [
    ({"fields": {"C99": {"linf": 1}}}, "'C99' is not a model field"),
    ({"default": {"l_inf": 0.1}}, "unknown check 'l_inf'"),
    ({"label_rate": -1}, "validation.label_rate: must be a number >= 0"),
    ({"thresholds": {}}, "unknown key 'thresholds'"),
    ([0.1], "must be a mapping"),
])
def test_schema_validation_block_is_checked(block, message):
    doc = load_spec("criteo").to_doc()
    doc["validation"] = block
    with pytest.raises(SpecError, match=message):
        spec_from_doc(doc, "s.yaml", "criteo")
    with pytest.raises(ThresholdsError):
        check_thresholds(block, "validation", load_spec("criteo").field_names)


def test_schema_validation_block_round_trips():
    doc = load_spec("criteo").to_doc()
    doc["validation"] = {"label_rate": None, "fields": {"C5": {"linf": 0.5}}}
    spec = spec_from_doc(doc, "s.yaml", "criteo")
    assert spec_from_doc(spec.to_doc(), "stats.json", "criteo").validation == spec.validation == {
        "label_rate": None, "fields": {"C5": {"linf": 0.5}}}


def test_generate_drift_changes_one_field_and_the_label_rate(tmp_path):
    import pyarrow as pa

    from pipeline.generate import generate_chunk

    base = generate_chunk(0, 0, 20_000)
    drifted = generate_chunk(0, 0, 20_000, Drift((DRIFTED_FIELD,), 2.0))
    assert base.column("C4").equals(drifted.column("C4")) and base.column("I3").equals(drifted.column("I3"))
    base_c3 = set(base.column(DRIFTED_FIELD).drop_null().to_pylist())
    assert not base_c3 & set(drifted.column(DRIFTED_FIELD).drop_null().to_pylist())
    assert base.column(DRIFTED_FIELD).null_count == drifted.column(DRIFTED_FIELD).null_count
    rates = [pa.compute.mean(t.column("label")).as_py() for t in (base, drifted)]
    assert 1.6 < rates[1] / rates[0] < 2.1
    assert generate_chunk(0, 0, 500).equals(generate_chunk(0, 0, 500, Drift()))  # no drift: the same rows


def test_generate_drift_cli_rejects_unknown_changes(tmp_path):
    from pipeline.generate import main

    assert main(["--rows", "5", "--output", str(tmp_path / "x.tsv"), "--drift", "I3"]) == 2
    assert main(["--rows", "5", "--output", str(tmp_path / "x.tsv"), "--drift", "label=0"]) == 2


# --- a run's distributions and the validation of whole runs


def _validate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", "validate", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


@dataclasses.dataclass
class DriftRun:
    out: pathlib.Path
    result: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def drift_run(tmp_path_factory, criteo_preprocessed_dir) -> DriftRun:
    """The generated Criteo day with C3's values all changed and the label rate doubled, run with a schema whose
    `validation:` block turns the label-rate check off, and `--validate_against` the undrifted run."""
    tmp = tmp_path_factory.mktemp("drift")
    generate(GENERATED_ROWS, tmp / "day2.tsv", seed=GENERATED_SEED, progress=False,
             drift=Drift((DRIFTED_FIELD,), 2.0))
    doc = yaml.safe_load((SCHEMA_DIR / "criteo.yaml").read_text())
    doc["validation"] = {"label_rate": None}
    (tmp / "criteo.yaml").write_text(yaml.safe_dump(doc))
    out = tmp / "data"
    result = run_pipeline("--schema", str(tmp / "criteo.yaml"), "--input", str(tmp / "day2.tsv"), "--output",
                          str(out), "--validate_against", str(criteo_preprocessed_dir), check=False)
    return DriftRun(out, result)


def test_distributions_recorded_with_run_independent_keys(criteo_preprocessed_dir, criteo_generated_file):
    import tensorflow as tf

    stats = json.loads((criteo_preprocessed_dir / "stats.json").read_text())
    doc = json.loads((criteo_preprocessed_dir / DISTRIBUTIONS_FILE).read_text())
    assert doc["top_k"] == TOP_K and list(doc["fields"]) == [f["name"] for f in stats["fields"]]
    for record in stats["fields"]:
        field = doc["fields"][record["name"]]
        assert field["measure"] == ("linf" if record["name"].startswith("C") else "js")
        for split, s in field["splits"].items():
            rows = stats["splits"][split]["rows"]
            assert s["present"] + s["missing"] == rows
            assert s["missing"] / rows == pytest.approx(record["missing_rate"][split])
            assert s["oov"] / rows == pytest.approx(record["oov_rate"][split])
            assert s["oov"] + s["other"] + sum(c for _, c in s["top"]) == s["present"]
        top = [count for _, count in field["splits"]["train"]["top"]]
        assert top == sorted(top, reverse=True) and len(top) <= TOP_K
        valid_keys = {key for key, _ in field["splits"]["valid"]["top"]}
        assert valid_keys <= {key for key, _ in field["splits"]["train"]["top"]}
    # The most frequent C1 token of the file is the train split's top C1 value, named by its fingerprint.
    tokens = collections.Counter(line.split("\t")[14] for line in criteo_generated_file.read_text().splitlines())
    token = max((t for t in tokens if t), key=tokens.__getitem__)
    fingerprint = int(tf.strings.to_hash_bucket_fast([token], 1 << 54).numpy()[0])
    assert doc["fields"]["C1"]["splits"]["train"]["top"][0][0] == f"#{fingerprint:014x}"
    assert all(key.lstrip("-").isdigit() for key, _ in doc["fields"]["I5"]["splits"]["train"]["top"])


def test_run_against_itself_has_no_anomaly(criteo_preprocessed_dir, tmp_path):
    result = _validate("--reference", str(criteo_preprocessed_dir), "--run", str(criteo_preprocessed_dir),
                       "--output", str(tmp_path / "a.json"))
    assert result.returncode == 0, result.stderr
    assert "0 anomalies" in result.stdout
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["anomalies"] == [] and len(report["checks"]) > 100
    assert not (criteo_preprocessed_dir / ANOMALIES_FILE).exists()


def test_validate_against_stops_the_day_and_keeps_the_run(drift_run, criteo_preprocessed_dir):
    assert drift_run.result.returncode == EXIT_ANOMALIES, drift_run.result.stderr[-3000:]
    assert (drift_run.out / DONE_FILE).is_file()  # published, then validated
    report = json.loads((drift_run.out / ANOMALIES_FILE).read_text())
    assert report["reference"] == str(criteo_preprocessed_dir)
    # The schema's validation block turned the label-rate check off: only C3 is over its threshold.
    assert [(a["field"], a["check"]) for a in report["anomalies"]] == [(DRIFTED_FIELD, "linf")]
    label = next(c for c in report["checks"] if c["check"] == "label_rate")
    assert label["threshold"] is None and label["value"] > 0.6
    assert f"ANOMALY {DRIFTED_FIELD}: linf" in drift_run.result.stdout


def test_thresholds_file_overrides_the_schema(drift_run, criteo_preprocessed_dir, tmp_path):
    (tmp_path / "t.yaml").write_text(f"label_rate: 0.2\nfields:\n  {DRIFTED_FIELD}: {{linf: 0.99}}\n")
    result = _validate("--reference", str(criteo_preprocessed_dir), "--run", str(drift_run.out), "--thresholds",
                       str(tmp_path / "t.yaml"), "--output", str(tmp_path / "a.json"))
    assert result.returncode == EXIT_ANOMALIES, result.stderr
    report = json.loads((tmp_path / "a.json").read_text())
    assert [(a["field"], a["check"]) for a in report["anomalies"]] == [(None, "label_rate")]
    assert "ANOMALY (dataset): label_rate" in result.stdout


def test_usage_errors_exit_2(criteo_preprocessed_dir, tmp_path):
    ref = str(criteo_preprocessed_dir)
    partial = tmp_path / "partial"
    partial.mkdir()
    old = tmp_path / "old"
    old.mkdir()
    for name in ("stats.json", DONE_FILE):
        shutil.copy(criteo_preprocessed_dir / name, old / name)
    (tmp_path / "bad.yaml").write_text("fields: {C99: {linf: 1}}\n")
    cases = [
        (["--run", str(tmp_path / "absent")], "not a finished pipeline output"),
        (["--run", str(partial)], "not a finished pipeline output"),
        (["--run", str(old)], f"has no {DISTRIBUTIONS_FILE}"),
        (["--run", ref, "--split", "data"], "has no split 'data'"),
        (["--run", ref, "--thresholds", str(tmp_path / "bad.yaml")], "C99"),
    ]
    for args, message in cases:
        result = _validate("--reference", ref, *args, "--output", str(tmp_path / "a.json"))
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "a.json").exists()
    bad_ref = run_pipeline("--dataset", "criteo", "--input", str(tmp_path / "x.tsv"), "--output",
                           str(tmp_path / "out"), "--validate_against", str(old), check=False)
    assert bad_ref.returncode == 2 and DISTRIBUTIONS_FILE in bad_ref.stderr


def test_distributions_of_every_field_kind(movielens_run, sequence_run, sequence_transform):
    """Calendar fields by value, multi-valued tokens by fingerprint, quantile buckets not compared, and a
    `pipeline transform` output's one split counted on the run's own top values."""
    movielens = json.loads((movielens_run.out / DISTRIBUTIONS_FILE).read_text())["fields"]
    weekday = movielens["timestamp_weekday"]
    assert weekday["measure"] == "js" and all(0 <= int(k) < 7 for k, _ in weekday["splits"]["train"]["top"])
    sequence = json.loads((sequence_run.out / DISTRIBUTIONS_FILE).read_text())["fields"]
    kinds = {name: (f["kind"], f["measure"]) for name, f in sequence.items()}
    multi = next(name for name, (kind, _) in kinds.items() if kind == "multi")
    assert kinds[multi][1] == "linf" and all(k.startswith("#") for k, _ in sequence[multi]["splits"]["train"]["top"])
    assert ("float", None) in kinds.values()  # the bucketized price
    data = json.loads((sequence_transform.out / DISTRIBUTIONS_FILE).read_text())["fields"]
    for name, field in data.items():
        assert set(field["splits"]) == {"data"}
        if field["measure"] == "linf":  # the same vocabulary: the same keys
            train = {k for k, _ in sequence[name]["splits"]["train"]["top"]}
            assert {k for k, _ in field["splits"]["data"]["top"]} <= train
