"""Schema `joins:` (keyed side tables) and `--split given --valid_fraction`.

Fast tests: the schema checks, the join itself on small files, the keyed
valid cut and the usage errors (no Beam run). The slow ones share one Beam
job (tests/pipeline/conftest.py `ml100k_run`: the MovieLens 100k example
schema with u.user and u.item joined, on generated files) and carry it
through training, export and the exported model's serving_default.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import yaml

from pipeline import cli as pipeline_cli
from pipeline.errors import UsageError
from pipeline.features import MISSING_ID
from pipeline.job import RunConfig, prepare, run_spec
from pipeline.joins import JoinError, load_side_tables
from pipeline.parse import split_ids, valid_cut
from pipeline.raw_rows import iter_raw_examples, serialize_example
from pipeline.specs import SpecError, spec_from_doc, spec_from_schema
from tests.conftest import ROOT
from tests.pipeline.conftest import ML100K_SCHEMA, ML100K_SEED, ML100K_VALID_FRACTION
from tests.pipeline.example_data import ML100K_GENRES, movielens100k
from tests.pipeline.helpers import read_records, row_multiset, transform_with_graph

MAIN = {"columns": ["user", "item", "rating"], "label": "rating", "label_rule": {"threshold": 4},
        "delimiter": ","}


def _doc(tmp_path: pathlib.Path, users: str, **join) -> dict:
    """A schema with one `users` join (written to tmp_path/users.txt) bringing age and gender."""
    (tmp_path / "users.txt").write_bytes(users.encode(join.pop("file_encoding", "utf-8")))
    entry = {"path": str(tmp_path / "users.txt"), "key": "user", "columns": ["user", "age", "gender"],
             "delimiter": "|", **join}
    return {**MAIN, "joins": [entry], "fields": {"user": "categorical", "item": "categorical", "age": "integer",
                                                 "gender": "categorical"}}


def _rows(tmp_path: pathlib.Path, doc: dict, main: str) -> list[dict]:
    (tmp_path / "main.csv").write_text(main)
    spec = spec_from_doc(doc, "test.yaml", "t")
    return [features for features, _ in iter_raw_examples(str(tmp_path / "main.csv"), spec)]


# ---- the join on small files (pipeline.joins through pipeline.raw_rows) ----

def test_joined_values_land_and_a_missing_key_gives_missing_values(tmp_path):
    doc = _doc(tmp_path, "u1|31|F\nu2|45|M\n")
    rows = _rows(tmp_path, doc, "u2,i1,5\nu9,i1,1\nu1,i2,4\n,i3,2\n")
    assert [(r["user"], r["age"], r["gender"]) for r in rows] == [
        ([b"u2"], [45], [b"M"]), ([b"u9"], [], []), ([b"u1"], [31], [b"F"]), ([], [], [])]


def test_a_key_column_that_is_no_field_is_read_for_the_lookup_only(tmp_path):
    doc = _doc(tmp_path, "u1|31|F\n")
    del doc["fields"]["user"]
    rows = _rows(tmp_path, doc, "u1,i1,5\nu2,i1,1\n")
    assert [sorted(r) for r in rows] == [["age", "gender", "item"]] * 2
    assert [r["age"] for r in rows] == [[31], []]


def test_side_table_encoding_is_decoded_to_utf8(tmp_path):
    doc = _doc(tmp_path, "u1|31|Amélie\n", encoding="latin-1", file_encoding="latin-1")
    assert _rows(tmp_path, doc, "u1,i1,5\n")[0]["gender"] == ["Amélie".encode()]
    doc = _doc(tmp_path, "u0|20|M\nu1|31|Amélie\n", file_encoding="latin-1")  # latin-1 bytes read as utf-8
    with pytest.raises(JoinError, match="undecodable"):
        _rows(tmp_path, doc, "u1,i1,5\n")


@pytest.mark.parametrize("users, message", [
    ("u1|31|F\nu2|45|M\nu1|50|M\n", r"key 'u1' appears 2 times in column 'user'"),
    ("u1|31|F\n|45|M\n", r"data row 2 has an empty key column 'user'"),
    ("u1|31|F\nu2|old|M\n", r"1 rows cannot be read .* non_integer: 'u2\|old\|M'"),
    ("u1|31\n", r"first line has 2 columns"),
])
def test_a_bad_side_table_is_a_usage_error_naming_the_file(tmp_path, users, message):
    spec = spec_from_doc(_doc(tmp_path, users), "test.yaml", "t")
    with pytest.raises(SpecError if "columns" in message else JoinError, match=message) as err:
        load_side_tables(spec)
    assert str(tmp_path / "users.txt") in str(err.value)


def test_duplicate_key_ends_the_cli_with_exit_2_before_the_job(tmp_path):
    schema = tmp_path / "s.yaml"
    schema.write_text(yaml.safe_dump(_doc(tmp_path, "u1|31|F\nu2|45|M\nu2|50|M\n")))
    (tmp_path / "main.csv").write_text("u1,i1,5\n")
    result = subprocess.run([sys.executable, "-m", "pipeline", "--schema", str(schema), "--input",
                             str(tmp_path / "main.csv"), "--output", str(tmp_path / "out")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert f"{tmp_path / 'users.txt'}: key 'u2' appears 2 times" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


# ---- schema checks of `joins:` ----

@pytest.mark.parametrize("change, message", [
    (lambda d: d["joins"][0].update(on="user"), r"joins\[0\]\.on': unknown key"),
    (lambda d: d["joins"][0].update(key="nope"), r"joins\[0\]\.key': 'nope' is not a non-label column"),
    (lambda d: d["joins"][0].update(key="rating"), r"joins\[0\]\.key': 'rating' is not a non-label column"),
    (lambda d: d["joins"][0].update(table_key="id"), r"joins\[0\]\.table_key': 'id' is not among its columns"),
    (lambda d: d["joins"][0].update(columns=["user", "item", "age", "gender"]),
     r"joins\[0\]\.columns': 'item' is also among the main file's columns"),
    (lambda d: d["fields"].pop("age") and d["fields"].pop("gender"), r"joins\[0\]': brings no field"),
    (lambda d: d["fields"].update(user="integer"), r"fields\.user': is the key of joins\[0\]: it must be categorical"),
    (lambda d: d["fields"].update(zip="categorical"), r"fields\.zip': is not among the columns .* nor the joined"),
    (lambda d: d["joins"][0].update(encoding="klingon"), r"joins\[0\]\.encoding': got 'klingon'"),
    (lambda d: d["joins"][0].update(delimiter="auto"), r"joins\[0\]\.delimiter': must be given"),
    (lambda d: d["joins"][0].pop("path"), r"joins\[0\]\.path': is required"),
    (lambda d: d.update(joins={"path": "x"}), r"'joins': must be a list"),
])
def test_bad_joins_are_refused_naming_the_key(tmp_path, change, message):
    doc = _doc(tmp_path, "u1|31|F\n")
    change(doc)
    with pytest.raises(SpecError, match=message):
        spec_from_doc(doc, "test.yaml", "t")


def test_join_paths_are_relative_to_the_schema_file_and_round_trip_through_stats(tmp_path):
    spec = spec_from_schema(ML100K_SCHEMA)
    data = ROOT / "tests" / "pipeline" / "data" / "ml100k"
    assert [j.path for j in spec.joins] == [str(data / "u.user"), str(data / "u.item")]
    assert spec_from_doc(json.loads(json.dumps(spec.to_doc())), "stats.json", "x") == spec
    assert [c.name for c in spec.file_columns] == ["user_id", "item_id", "timestamp"]
    assert len(spec.raw_columns) == 3 + 4 + 2 + len(ML100K_GENRES)


# ---- --valid_fraction ----

def test_split_ids_are_unchanged_by_the_shared_hash():
    lines = [f"row {i}".encode() for i in range(2000)]
    key = (5).to_bytes(8, "little", signed=True)
    old = [int.from_bytes(hashlib.blake2b(line, digest_size=8, key=key).digest(), "little") % 10 for line in lines]
    assert split_ids(lines, 5).tolist() == [0 if b < 8 else 1 if b == 8 else 2 for b in old]


def test_valid_cut_is_keyed_deterministic_and_takes_the_fraction():
    lines = [f"{i}\t{i * 7 % 13}\t4\t{874724710 + i}".encode() for i in range(20000)]
    cut = valid_cut(lines, 3, 0.1)
    assert np.array_equal(cut, valid_cut(list(lines), 3, 0.1))  # the row's bytes and the seed only
    assert np.array_equal(cut[::-1], valid_cut(lines[::-1], 3, 0.1))  # not its position
    assert abs(cut.mean() - 0.1) < 0.01
    assert (cut != valid_cut(lines, 4, 0.1)).mean() > 0.1  # another seed, another cut
    assert np.all(valid_cut(lines, 3, 0.2) >= cut)  # a larger fraction only adds rows


def _given(tmp_path: pathlib.Path, *inputs: str, **config) -> RunConfig:
    spec = spec_from_schema(ML100K_SCHEMA)
    for name in ("a", "b"):
        (tmp_path / name).write_text("1\t2\t4\t874724710\n")
    return RunConfig(spec=spec, inputs=tuple(i.replace("@", str(tmp_path) + "/") for i in inputs),
                     output=str(tmp_path / "out"), split=config.pop("split", "given"), **config)


@pytest.mark.parametrize("inputs, config, message", [
    (("train=@a", "valid=@b", "test=@b"), {"valid_fraction": 0.1}, "either --input valid=PATH or --valid_fraction"),
    (("train=@a", "test=@b"), {}, r"no --input for the splits \['valid'\] .* or --valid_fraction F for valid"),
    (("train=@a", "test=@b"), {"valid_fraction": 1.0}, r"--valid_fraction must be in \(0, 1\)"),
    (("train=@a", "test=@b"), {"valid_fraction": 0.0}, r"--valid_fraction must be in \(0, 1\)"),
    (("@a",), {"valid_fraction": 0.1, "split": "hash"}, "--valid_fraction belongs to --split given"),
    (("train=@a",), {"valid_fraction": 0.1}, r"no --input for the splits \['test'\]"),
])
def test_valid_fraction_usage_errors(tmp_path, inputs, config, message):
    with pytest.raises(UsageError, match=message):
        prepare(_given(tmp_path, *inputs, **config))


def test_valid_fraction_with_a_valid_file_exits_2_from_the_cli(tmp_path, capsys):
    config = _given(tmp_path, "train=@a", "valid=@b", "test=@b")
    argv = ["--schema", str(ML100K_SCHEMA), "--split", "given", *(a for i in config.inputs for a in ("--input", i)),
            "--valid_fraction", "0.1", "--output", config.output]
    assert pipeline_cli._run_job(argv) == 2
    assert "give either --input valid=PATH or --valid_fraction, not both" in capsys.readouterr().err


def test_a_joined_field_cannot_be_the_time_field(tmp_path):
    config = _given(tmp_path, "@a", split="time", time_field="release_date")
    with pytest.raises(UsageError, match=r"--time_field naming .* \(got 'release_date'; candidates: \['timestamp'\]"):
        prepare(config)


def test_the_cut_is_marked_on_the_train_files_only(tmp_path):
    job = prepare(_given(tmp_path, "train=@a", "test=@b", valid_fraction=0.25))
    assert {pathlib.Path(p).name: (lay.split, lay.valid_fraction) for p, lay in job.layouts.items()} == {
        "a": ("train", 0.25), "b": ("test", 0.0)}


# ---- one joined Beam job, shared (slow) ----

def _file_rows(path: pathlib.Path, encoding: str = "utf-8") -> dict[str, list[str]]:
    return {line.split("|")[0]: line.split("|") for line in path.read_text(encoding=encoding).splitlines()}


@pytest.mark.slow
def test_valid_is_a_keyed_cut_of_train_disjoint_and_of_the_right_size(ml100k_run):
    stats = json.loads((ml100k_run.out / "stats.json").read_text())
    assert stats["split"]["valid_fraction"] == ML100K_VALID_FRACTION and stats["split"]["seed"] == ML100K_SEED
    assert stats["split"]["inputs"]["valid"] == []
    base = ml100k_run.data / "ua.base"
    lines = base.read_bytes().splitlines()
    cut = valid_cut(lines, ML100K_SEED, ML100K_VALID_FRACTION).astype(bool)
    spec = run_spec(str(ml100k_run.out))
    rows = list(iter_raw_examples(str(base), spec))
    assert len(rows) == len(lines)
    names = spec.field_names
    for split, rows_of_split in (("valid", [r for r, c in zip(rows, cut, strict=True) if c]),
                                 ("train", [r for r, c in zip(rows, cut, strict=True) if not c])):
        # the records of each split are exactly the transformed raw rows the keyed cut assigns to it
        expected = row_multiset(transform_with_graph(ml100k_run.out, rows_of_split, spec), names)
        assert row_multiset(read_records(ml100k_run.out, split), names) == expected, split
        assert stats["splits"][split]["rows"] == len(rows_of_split)
    assert abs(cut.mean() - ML100K_VALID_FRACTION) < 0.03
    assert stats["splits"]["test"]["rows"] == len((ml100k_run.data / "ua.test").read_bytes().splitlines())


@pytest.mark.slow
def test_joined_columns_hold_the_side_tables_values(ml100k_run):
    users = _file_rows(ml100k_run.data / "u.user")
    items = _file_rows(ml100k_run.data / "u.item", "latin-1")
    spec = run_spec(str(ml100k_run.out))
    rows = [features for features, _ in iter_raw_examples(str(ml100k_run.data / "ua.test"), spec)]
    unknown = 0
    for row in rows:
        user, item = row["user_id"][0].decode(), items[row["item_id"][0].decode()]
        if user in users:
            assert (row["age"], row["gender"], row["zip"]) == (
                [int(users[user][1])], [users[user][2].encode()], [users[user][4].encode()])
        else:
            unknown += 1
            assert row["age"] == row["gender"] == row["occupation"] == row["zip"] == []
        assert row["title"] == [item[1].encode("utf-8")]
        assert [row[g][0] for g in ML100K_GENRES] == [flag.encode() for flag in item[5:]]
    assert 0 < unknown < len(rows)
    assert any(b"\xc3" in row["title"][0] for row in rows)  # latin-1 titles arrive as UTF-8


@pytest.mark.slow
def test_a_rating_of_an_unknown_user_has_missing_joined_fields_in_the_records(ml100k_run):
    users = set(_file_rows(ml100k_run.data / "u.user"))
    stats = json.loads((ml100k_run.out / "stats.json").read_text())
    rates = {f["name"]: f["missing_rate"]["test"] for f in stats["fields"]}
    test_users = [line.split("\t")[0] for line in (ml100k_run.data / "ua.test").read_text().splitlines()]
    share = sum(u not in users for u in test_users) / len(test_users)
    assert rates["age"] == rates["gender"] == rates["occupation"] == pytest.approx(share) and share > 0
    assert rates["title"] == rates["action"] == 0.0
    records = read_records(ml100k_run.out, "test")
    assert (records["gender"] == MISSING_ID).mean() == pytest.approx(share)
    sizes = {f["name"]: f["vocab_size"] for f in stats["fields"]}
    assert sizes["gender"] == 2 + 2 and sizes["action"] == 2 + 2


@pytest.mark.slow
def test_joined_movielens_trains_exports_and_serves_from_the_schema_alone(ml100k_run, tmp_path):
    from serving import cli as serving_cli
    from serving import module
    from serving.session_loader import SessionModel
    from trainer import cli as trainer_cli

    run = tmp_path / "run"
    assert trainer_cli.main(["--stage=train", "--model=lr", f"--data={ml100k_run.out}", f"--out={run}",
                             "--train.epochs=1", "--train.batch_size=128"]) == 0
    base = tmp_path / "models"
    assert serving_cli.main(["export", "--run", str(run), "--data", str(ml100k_run.out), "--model_base_path",
                             str(base), "--model_name", "ml100k"]) == 0  # verified under the session loader
    # the client reads the main file with the schema: the join happens on its side too
    spec = spec_from_schema(ml100k_run.schema)
    rows = [features for features, _ in iter_raw_examples(str(ml100k_run.data / "ua.test"), spec)]
    joined = np.array([serialize_example(r, None, spec) for r in rows], dtype=object)
    unjoined = np.array([serialize_example({k: r[k] for k in ("user_id", "item_id", "timestamp")}, None, spec)
                         for r in rows], dtype=object)
    version = next((base / "ml100k").iterdir())
    with SessionModel(version) as loaded:
        probabilities = loaded.run(module.DEFAULT_SIGNATURE, {module.EXAMPLES_INPUT: joined})["probabilities"]
        without = loaded.run(module.DEFAULT_SIGNATURE, {module.EXAMPLES_INPUT: unjoined})["probabilities"]
    assert probabilities.shape == (len(rows),) and np.all((probabilities > 0) & (probabilities < 1))
    assert np.abs(probabilities - without).max() > 1e-4, "the served model ignores the joined columns"


def test_the_generated_fixture_is_the_committed_sample(tmp_path):
    movielens100k(tmp_path)
    committed = ROOT / "tests" / "pipeline" / "data" / "ml100k"
    for name in ("u.data", "ua.base", "ua.test", "u.user", "u.item"):
        assert (tmp_path / name).read_bytes() == (committed / name).read_bytes(), name
