"""Session fixtures of the pipeline tests: one Beam run per dataset, shared by all tests."""

from __future__ import annotations

import dataclasses
import gzip
import pathlib
import subprocess
import sys

import pytest

from pipeline.features import SPLIT_NAMES
from tests.conftest import ROOT, run_pipeline, shared_data

# Lines injected into a generated Criteo file, by the reason they must be rejected for.
INJECTED = {
    "column_count": [b"1\t2\t3", b"0" + b"\t5" * 13 + b"\tabc" * 27],
    "non_integer": [b"0\tx" + b"\t1" * 12 + b"\tab" * 26, b"1\t1.5" + b"\t1" * 12 + b"\tab" * 26],
    "bad_label": [b"2" + b"\t1" * 13 + b"\tab" * 26, b"yes" + b"\t1" * 13 + b"\tab" * 26],
    "undecodable": [b"0" + b"\t1" * 13 + b"\t\xff\xfe" * 26],
}


@dataclasses.dataclass
class Run:
    out: pathlib.Path
    inputs: list[pathlib.Path]
    stdout: str


@pytest.fixture(scope="session")
def injected_file(tmp_path_factory) -> pathlib.Path:
    """300 generated Criteo rows with INJECTED bad lines spread through them, gzipped."""
    from pipeline.generate import generate

    tmp = tmp_path_factory.mktemp("injected")
    plain = tmp / "good.tsv"
    generate(300, plain, seed=5, progress=False)
    lines = plain.read_bytes().splitlines()
    bad = [line for group in INJECTED.values() for line in group]
    for i, line in enumerate(bad):
        lines.insert(17 + 37 * i, line)
    path = tmp / "injected.tsv.gz"
    with gzip.open(path, "wb") as out:
        out.write(b"\n".join(lines) + b"\n")
    return path


@pytest.fixture(scope="session")
def criteo_mixed_run(tmp_path_factory, injected_file) -> Run:
    """One criteo job over the real raw TSV, the Kaggle CSV, a header CSV and the injected file."""
    inputs = [
        shared_data("criteo/train_head10k.tsv"),
        shared_data("criteo/kaggle_tr_rx.csv"),
        shared_data("criteo/deepctr_sample.csv"),
        injected_file,
    ]
    out = tmp_path_factory.mktemp("criteo_mixed") / "data"
    args = ["--dataset", "criteo", "--output", str(out), "--max_bad_fraction", "0.05", "--seed", "3"]
    for path in inputs:
        args += ["--input", str(path)]
    return Run(out, inputs, run_pipeline(*args).stdout)


def _dataset_run(tmp_path_factory, name: str, relative: str, *extra: str) -> Run:
    path = shared_data(relative)
    out = tmp_path_factory.mktemp(name) / "data"
    return Run(out, [path], run_pipeline(*extra, "--input", str(path), "--output", str(out)).stdout)


@pytest.fixture(scope="session")
def avazu_run(tmp_path_factory) -> Run:
    return _dataset_run(tmp_path_factory, "avazu", "avazu/train_head9k.csv", "--dataset", "avazu")


# Click counts of the synthetic KDD12 rows added to the 11-row sample: three clicked, and enough
# unclicked rows that the hashed 8:1:1 split leaves no split empty (an empty split fails the job).
KDD12_EXTRA_CLICKS = (0, 1, 4, 0, 2, *[0] * 40)


@pytest.fixture(scope="session")
def kdd12_run(tmp_path_factory) -> Run:
    """KDD12's sample has no click; synthetic rows with Click 0/1/2/4 are added as a second input."""
    extra = tmp_path_factory.mktemp("kdd12_extra") / "clicks.txt"
    rows = [[str(c), "2", str(11 + i), "22", "33", "1", "1", "44", "55", "66", "77", "88"]
            for i, c in enumerate(KDD12_EXTRA_CLICKS)]
    extra.write_text("".join("\t".join(r) + "\n" for r in rows))
    path = shared_data("kdd12/training.txt")
    out = tmp_path_factory.mktemp("kdd12") / "data"
    stdout = run_pipeline(
        "--dataset", "kdd12", "--input", str(path), "--input", str(extra), "--output", str(out)
    ).stdout
    return Run(out, [path, extra], stdout)


@pytest.fixture(scope="session")
def frappe_run(tmp_path_factory) -> Run:
    return _dataset_run(
        tmp_path_factory, "frappe", "frappe/frappe_valid.tsv", "--schema", str(ROOT / "schemas" / "frappe.yaml")
    )


EXAMPLE_DATA = pathlib.Path(__file__).resolve().parent / "data"
SEQUENCE_FILES = {split: EXAMPLE_DATA / "sequence_price" / f"{split}.csv" for split in SPLIT_NAMES}
SCORING_ROWS = 500


def run_pipelines(jobs: dict[str, list[str]], log_dir: pathlib.Path, check: bool = True,
                  ) -> dict[str, subprocess.CompletedProcess]:
    """Runs several `pipeline` invocations at once; the finished process per job (with `check`,
    AssertionError naming the first that failed).

    Each Beam run spends much of its minute of fixed cost in one thread
    (graph tracing, start-up), so independent runs side by side finish in far
    less wall time than one after the other on two cores.
    """
    procs = {}
    try:
        for name, args in jobs.items():
            with open(log_dir / f"{name}.out", "w") as out, open(log_dir / f"{name}.err", "w") as err:
                procs[name] = subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=ROOT,
                                               stdout=out, stderr=err, text=True)
        for name, proc in procs.items():
            if proc.wait(timeout=900) != 0 and check:
                raise AssertionError(f"pipeline {' '.join(jobs[name])} exited {proc.returncode}:\n"
                                     f"{(log_dir / f'{name}.err').read_text()[-4000:]}")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    return {name: subprocess.CompletedProcess(proc.args, proc.returncode, (log_dir / f"{name}.out").read_text(),
                                              (log_dir / f"{name}.err").read_text())
            for name, proc in procs.items()}


def _schema_args(tmp: pathlib.Path, schema: str, *args: str) -> list[str]:
    return ["--schema", str(ROOT / "schemas" / "examples" / schema), *args, "--output",
            str(tmp / pathlib.Path(schema).stem / "data")]


@pytest.fixture(scope="session")
def example_runs(tmp_path_factory) -> dict[str, Run]:
    """The three example schemas, run side by side.

    movielens: ratings with a threshold label, split by time. libfm: libFM
    lines with {-1, 1} labels, hash split. sequence: a quoted CSV with a BOM,
    a multi-valued sequence, a float price and a date-time, given split.
    """
    tmp = tmp_path_factory.mktemp("examples")
    given = [a for split, path in SEQUENCE_FILES.items() for a in ("--input", f"{split}={path}")]
    jobs = {
        "movielens": (_schema_args(tmp, "movielens.yaml", "--input", str(EXAMPLE_DATA / "movielens_ratings.csv"),
                                   "--split", "time", "--time_field", "timestamp"),
                      [EXAMPLE_DATA / "movielens_ratings.csv"]),
        "libfm": (_schema_args(tmp, "libfm.yaml", "--input", str(EXAMPLE_DATA / "libfm.txt")),
                  [EXAMPLE_DATA / "libfm.txt"]),
        "sequence": (_schema_args(tmp, "sequence_price.yaml", "--split", "given", *given),
                     list(SEQUENCE_FILES.values())),
    }
    results = run_pipelines({name: args for name, (args, _) in jobs.items()}, tmp)
    return {name: Run(pathlib.Path(args[-1]), inputs, results[name].stdout) for name, (args, inputs) in jobs.items()}


@pytest.fixture(scope="session")
def movielens_run(example_runs) -> Run:
    return example_runs["movielens"]


@pytest.fixture(scope="session")
def libfm_run(example_runs) -> Run:
    return example_runs["libfm"]


@pytest.fixture(scope="session")
def sequence_run(example_runs) -> Run:
    return example_runs["sequence"]


ML100K_SCHEMA = ROOT / "schemas" / "examples" / "movielens100k.yaml"
ML100K_SEED = 7
ML100K_VALID_FRACTION = 0.15


@dataclasses.dataclass
class JoinedRun(Run):
    schema: pathlib.Path  # the example schema, its join paths relative to the generated files
    data: pathlib.Path  # u.data, ua.base, ua.test, u.user, u.item


@pytest.fixture(scope="session")
def ml100k_run(tmp_path_factory) -> JoinedRun:
    """The MovieLens 100k example schema with its u.user and u.item joins, on generated files: one
    job with given train (ua.base) and test (ua.test) files and valid cut from train by --valid_fraction."""
    import yaml

    from tests.pipeline.example_data import movielens100k

    data = tmp_path_factory.mktemp("ml100k")
    movielens100k(data)
    doc = yaml.safe_load(ML100K_SCHEMA.read_text())
    for join in doc["joins"]:
        join["path"] = pathlib.Path(join["path"]).name  # relative to the schema file, as in the example
    schema = data / "movielens100k.yaml"
    schema.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = tmp_path_factory.mktemp("ml100k_run") / "data"
    inputs = [data / "ua.base", data / "ua.test"]
    stdout = run_pipeline("--schema", str(schema), "--split", "given", "--input", f"train={inputs[0]}",
                          "--input", f"test={inputs[1]}", "--valid_fraction", str(ML100K_VALID_FRACTION),
                          "--seed", str(ML100K_SEED), "--output", str(out)).stdout
    return JoinedRun(out, inputs, stdout, schema, data)


@pytest.fixture(scope="session")
def criteo_test_csv(tmp_path_factory, criteo_generated_file) -> pathlib.Path:
    """Criteo's Kaggle test layout (`Id,I1..C26`, no label) holding the first SCORING_ROWS generated rows."""
    header = ["Id", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27))]
    lines = criteo_generated_file.read_text().splitlines()[:SCORING_ROWS]
    path = tmp_path_factory.mktemp("criteo_test") / "test.csv"
    path.write_text("\n".join([",".join(header)] + [
        f"{60000000 + n}," + ",".join(line.split("\t")[1:]) for n, line in enumerate(lines)]) + "\n")
    return path


# The MovieLens sample described without its label: an unlabeled main run.
UNLABELED_SCHEMA = """\
columns: [userId, movieId, rating, timestamp]
label: null
delimiter: ","
header: true
fields: {userId: categorical, movieId: categorical, rating: {kind: float, buckets: 4}}
"""


@pytest.fixture(scope="session")
def second_runs(tmp_path_factory, sequence_run, criteo_preprocessed_dir, criteo_test_csv) -> dict[str, Run]:
    """Runs that need a finished run, side by side.

    sequence_transform: `pipeline transform` of the sequence run's own test
    file (labeled). criteo_scoring: unlabeled Criteo rows through an existing
    run's graph (the scoring path). unlabeled: a main run of a `label: null` schema.
    """
    tmp = tmp_path_factory.mktemp("second")
    schema = tmp / "unlabeled.yaml"
    schema.write_text(UNLABELED_SCHEMA)
    ratings = EXAMPLE_DATA / "movielens_ratings.csv"
    jobs = {
        "sequence_transform": (["transform", "--run", str(sequence_run.out), "--input", str(SEQUENCE_FILES["test"])],
                               [SEQUENCE_FILES["test"]]),
        "criteo_scoring": (["transform", "--run", str(criteo_preprocessed_dir), "--input", str(criteo_test_csv),
                            "--unlabeled"], [criteo_test_csv]),
        "unlabeled": (["--schema", str(schema), "--input", str(ratings)], [ratings]),
    }
    outs = {name: tmp / name / "data" for name in jobs}
    results = run_pipelines({name: [*args, "--output", str(outs[name])] for name, (args, _) in jobs.items()}, tmp)
    return {name: Run(outs[name], inputs, results[name].stdout) for name, (_, inputs) in jobs.items()}


@pytest.fixture(scope="session")
def sequence_transform(second_runs) -> Run:
    return second_runs["sequence_transform"]


@pytest.fixture(scope="session")
def criteo_scoring(second_runs) -> Run:
    return second_runs["criteo_scoring"]
