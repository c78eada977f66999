"""One home per fact: names and defaults several modules share are written once, in a TF-free module.

Read from the source with `ast` (like tests/test_imports.py): a copy of a name
list (a tuple, list, set or `Literal[...]` holding all of its names) anywhere in
the code outside its home fails, and so does a second assignment of a shared
constant. The homes import no TensorFlow, so that the CLIs that read them
(`--help`, flag choices and defaults) stay fast.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

from pipeline.features import SPLIT_NAMES
from serving import limits
from tests.conftest import ROOT
from trainer import strategies
from trainer.architecture import OPS

# Code that must import these facts (tests may spell them out to check them).
CODE = ("pipeline", "trainer", "serving", "benchmarks")
# Name lists: what, the names, their home.
NAME_LISTS = {
    "split names": (SPLIT_NAMES, "pipeline/features.py"),
    "op names": (OPS, "trainer/architecture.py"),
    "strategy names": (strategies.STRATEGIES, "trainer/strategies.py"),
}
# Shared constants and their home: no other module assigns the name.
CONSTANTS = {
    "DEFAULT_MAX_ROWS": "serving/limits.py",
    "CALLER_THREAD_ROWS": "serving/limits.py",
    "PS_MIN_SHARD_BYTES": "trainer/strategies.py",
}
HOMES = ("pipeline.features", "trainer.architecture", "trainer.strategies", "serving.limits")


def _code_files() -> list[pathlib.Path]:
    return sorted(p for package in CODE for p in (ROOT / package).rglob("*.py"))


def name_list_copies(tree: ast.AST, names: tuple[str, ...]) -> list[int]:
    """Lines of the tuples, lists, sets and Literal[...]s whose string constants include all `names`."""
    return sorted(
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, (ast.Tuple, ast.List, ast.Set))
        and set(names) <= {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
    )


def constant_assignments(tree: ast.Module, names: set[str]) -> list[tuple[str, int]]:
    """(name, line) of every module-level or class-level assignment to one of `names`."""
    bodies = [tree.body] + [n.body for n in tree.body if isinstance(n, ast.ClassDef)]
    found = []
    for body in bodies:
        for node in body:
            targets = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, ast.AnnAssign) else [])
            found += [(t.id, node.lineno) for t in targets if isinstance(t, ast.Name) and t.id in names]
    return found


def test_the_scanner_finds_copies():
    source = (
        'from typing import Literal\n'
        'a = ("add", "prod", "concat", "att")\n'
        'p.add_argument("--op", choices=["att", "concat", "prod", "add"])\n'
        'b: Literal["default", "mirrored", "multi_worker", "parameter_server"] | None = None\n'
        'c = (OPTFUSION, "add", "prod", "concat", "att")\n'
        'd = ("add", "prod")\n'
        'DEFAULT_MAX_ROWS = 8192\n'
        'class K:\n    CALLER_THREAD_ROWS: int = 4\n'
    )
    tree = ast.parse(source)
    assert name_list_copies(tree, OPS) == [2, 3, 5]
    assert name_list_copies(tree, strategies.STRATEGIES) == [4]
    assert constant_assignments(tree, set(CONSTANTS)) == [("DEFAULT_MAX_ROWS", 7), ("CALLER_THREAD_ROWS", 9)]


@pytest.mark.parametrize("fact", sorted(NAME_LISTS))
def test_name_lists_are_written_only_in_their_home(fact):
    names, home = NAME_LISTS[fact]
    assert name_list_copies(ast.parse((ROOT / home).read_text()), names), f"{home} no longer defines the {fact}"
    found = {
        str(path.relative_to(ROOT)): lines
        for path in _code_files()
        if path != ROOT / home and (lines := name_list_copies(ast.parse(path.read_text(), str(path)), names))
    }
    assert found == {}, f"the {fact} are written out again: import them from {home}"


def test_shared_constants_are_assigned_only_in_their_home():
    found = {
        (name, str(path.relative_to(ROOT)), line)
        for path in _code_files()
        for name, line in constant_assignments(ast.parse(path.read_text(), str(path)), set(CONSTANTS))
        if path != ROOT / CONSTANTS[name]
    }
    assert found == set(), "import these constants from their home: " + str(CONSTANTS)
    assert (limits.DEFAULT_MAX_ROWS, limits.CALLER_THREAD_ROWS) == (8192, 4)


def test_the_users_see_the_home_values():
    """The CLI flags and the config types are the homes' lists, not equal copies."""
    from serving.cli import build_parser
    from trainer.cli import _parser as trainer_parser
    from trainer.config import CONFIG_DIR, ConfigError, TrainConfig, load_config

    actions = {a.dest: a for stage in trainer_parser()._stage_parsers.values() for a in stage._actions}
    assert actions["fixed_op"].choices is OPS and actions["strategy"].choices is strategies.STRATEGIES
    args = build_parser().parse_args(["serve", "--model_config_file", "m"])
    assert (args.max_rows_per_request, args.caller_thread_max_rows) == (limits.DEFAULT_MAX_ROWS,
                                                                         limits.CALLER_THREAD_ROWS)
    assert TrainConfig().ps_min_shard_bytes == strategies.PS_MIN_SHARD_BYTES
    base = CONFIG_DIR / "cpu.yaml"
    for op in OPS:
        assert load_config(base, [f"search.fixed_op={op}"]).search.fixed_op == op
    for name in strategies.STRATEGIES:
        assert load_config(base, [f"train.strategy={name}"]).train.strategy == name
    with pytest.raises(ConfigError, match="must be one of"):
        load_config(base, ["search.fixed_op=mul"])


def test_the_homes_import_no_tensorflow():
    code = (f"import sys; import {', '.join(HOMES)}; "
            "heavy = sorted(m for m in ('tensorflow', 'keras') if m in sys.modules); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
