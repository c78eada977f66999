"""`serving predict` on the tiny model: line-aligned output, bad rows, unlabeled files, the
wrong schema, kept id columns; the `oov_fraction` output, its server metric and the
client's warning on rows that do not look like the training data.

The failing runs go through the CLI in its own process (exit code, one stderr line, no
traceback), the others through `cli.main` in process (each process loads TensorFlow:
~15 s on a busy 2-core machine); the server is the session's in-process tiny server.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import urllib.request
import warnings

import numpy as np
import pytest

from serving import cli, examples
from serving.client import ForeignRowsWarning, RestClient
from tests.conftest import ROOT
from tests.serving import tiny

# The tiny model's raw fields as a schema file: an id column, the label, I1, C1 (no header).
SCHEMA = """\
name: tiny
delimiter: "\\t"
header: false
columns: [id, label, I1, C1]
label: label
label_rule: binary
dropped: [id]
fields: {I1: integer, C1: categorical}
"""
# id, label, I1, C1: row 3 has a column too few, row 5 a label that is not 0/1 (scoring
# needs no label: it is scored), row 6 a non-integer I1.
LABELED = [b"r1\t0\t5\tabc", b"r2\t1\t\tnever-seen", b"r3\t0\t-2", b"r4\t1\t123456\tx",
           b"r5\tmaybe\t7\tseen", b"r6\t0\tseven\tx"]
BAD = {3: "column_count", 6: "non_integer"}  # line -> reason
GOOD_ROWS = [{"I1": [5], "C1": [b"abc"]}, {"I1": [], "C1": [b"never-seen"]},
             {"I1": [123456], "C1": [b"x"]}, {"I1": [7], "C1": [b"seen"]}]  # lines 1, 2, 4, 5


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, pathlib.Path]:
    tmp = tmp_path_factory.mktemp("batch_predict")
    paths = {"schema": tmp / "tiny.yaml", "labeled": tmp / "labeled.tsv", "good": tmp / "good.tsv",
             "unlabeled": tmp / "unlabeled.tsv", "frappe_like": tmp / "other.csv", "all_bad": tmp / "all_bad.tsv"}
    paths["schema"].write_text(SCHEMA)
    paths["labeled"].write_bytes(b"\n".join(LABELED) + b"\n")
    good = [line for i, line in enumerate(LABELED, 1) if i not in BAD]
    paths["good"].write_bytes(b"\n".join(good) + b"\n\n")  # a trailing blank line is no row
    # the same rows without the label column, read with the training schema
    paths["unlabeled"].write_bytes(b"\n".join(b"\t".join(line.split(b"\t")[:1] + line.split(b"\t")[2:])
                                              for line in good) + b"\n")
    paths["frappe_like"].write_text("1\t2\t3\tmorning\tmonday\n")
    paths["all_bad"].write_bytes(b"r1\t0\tone\tabc\nr2\t1\ttwo\tx\n")
    return paths


def _args(server, files, name: str, *flags: str, output: pathlib.Path | None = None) -> list[str]:
    return ["predict", "--target", f"127.0.0.1:{server.port}", "--model_name", "tiny", "--schema",
            str(files["schema"]), "--input", str(files[name]), "--batch_size", "2", *flags,
            *(["--output", str(output)] if output else [])]


def _predict(server, files, name: str, *flags: str, output: pathlib.Path | None = None):
    """The CLI in its own process."""
    return subprocess.run([sys.executable, "-m", "serving.cli", *_args(server, files, name, *flags, output=output)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def _main(capsys, *args: str, expect: int = 0):
    """The CLI in process: (stdout, stderr)."""
    capsys.readouterr()
    assert cli.main(list(args)) == expect
    return capsys.readouterr()


def _expected(tiny_base, rows) -> np.ndarray:
    return tiny.reference_probabilities(tiny_base / "tiny" / "1", rows)


def test_a_bad_row_fails_naming_its_line_and_writes_nothing(tiny_server, files, tmp_path):
    out = tmp_path / "p.tsv"
    result = _predict(tiny_server, files, "labeled", output=out)
    assert result.returncode == 2, result.stderr
    assert f"{files['labeled']}:3: cannot score this row: wrong number of columns (3, expected 4)" in result.stderr
    assert "--on_bad_row=nan" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode, marker", [("nan", "nan"), ("skip", "")])
def test_bad_rows_are_marked_and_lines_stay_aligned(tiny_server, tiny_base, files, tmp_path, mode, marker,
                                                    capsys):
    out = tmp_path / "p.tsv"
    result = _main(capsys, *_args(tiny_server, files, "labeled", f"--on_bad_row={mode}", "--keep_columns",
                                  "id,label", output=out))
    header, *lines = [line.split("\t") for line in out.read_text().splitlines()]
    assert header == ["line", "id", "label", "probability", "reason"]
    assert len(lines) == len(LABELED)  # one output line per input row, in order
    assert [line[:3] for line in lines] == [[str(i), f"r{i}", row.split(b"\t")[1].decode()]
                                            for i, row in enumerate(LABELED, 1)]
    for number, reason in BAD.items():
        assert lines[number - 1][3:] == [marker, reason]
    scored = [line for line in lines if int(line[0]) not in BAD]
    assert all(line[4] == "" for line in scored)
    np.testing.assert_allclose([float(line[3]) for line in scored], _expected(tiny_base, GOOD_ROWS), atol=1e-6)
    assert re.search(r"6 rows in, 4 scored, 2 bad \((column_count 1, non_integer 1|non_integer 1, "
                     r"column_count 1)\)", result.err), result.err


def test_unlabeled_file_scores_with_the_training_schema(tiny_server, tiny_base, files, capsys):
    """No label column, no second schema: detected from the column count; stdout, one line per row."""
    labeled = _main(capsys, *_args(tiny_server, files, "good"))
    unlabeled = _main(capsys, *_args(tiny_server, files, "unlabeled"))
    assert labeled.out == unlabeled.out
    header, *lines = [line.split("\t") for line in unlabeled.out.splitlines()]
    assert header == ["line", "probability"] and [line[0] for line in lines] == ["1", "2", "3", "4"]
    np.testing.assert_allclose([float(p) for _, p in lines], _expected(tiny_base, GOOD_ROWS), atol=1e-6)
    assert "4 rows in, 4 scored, 0 bad" in unlabeled.err
    assert "do not look like" not in unlabeled.err  # one OOV row of four


@pytest.mark.parametrize("name, flag, message", [
    ("frappe_like", "--on_bad_row=error", "first line has 5 columns, tiny without a header has 4"),
    ("all_bad", "--on_bad_row=nan", "none of its 2 rows could be scored (non_integer 2)"),
])
def test_the_wrong_schema_never_exits_0(tiny_server, files, name, flag, message):
    result = _predict(tiny_server, files, name, flag)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and result.stdout == "" and "Traceback" not in result.stderr


def test_keep_columns_names_a_missing_column(tiny_server, files, capsys):
    result = _main(capsys, *_args(tiny_server, files, "good", "--keep_columns", "Id"), expect=2)
    assert "has no column 'Id'; its columns are ['id', 'label', 'I1', 'C1']" in result.err


def _oov_counts(server) -> tuple[int, int]:
    url = f"http://127.0.0.1:{server.rest_port}/monitoring/prometheus/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    values = {name: int(re.search(rf':optfusion:serving:{name}{{model_name="tiny"}} (\d+)', text).group(1))
              for name in ("predicted_rows", "mostly_oov_rows")}
    return values["predicted_rows"], values["mostly_oov_rows"]


FOREIGN = [{"I1": [i], "C1": [f"token-{i}-{np.random.default_rng(i).integers(1 << 30)}".encode()]}
           for i in range(6)]


def test_foreign_rows_are_flagged_by_the_output_the_metric_and_the_client(tiny_server, tiny_client):
    _, oov = tiny_client.predict_scores("tiny", examples.serialize_rows(GOOD_ROWS, tiny.DTYPES))
    assert oov is not None and oov.tolist() == [0.0, 1.0, 0.0, 0.0]  # "never-seen" is OOV
    rows_before, oov_before = _oov_counts(tiny_server)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # training-like rows: no warning
        tiny_client.predict_examples("tiny", examples.serialize_rows(GOOD_ROWS, tiny.DTYPES))
    assert _oov_counts(tiny_server) == (rows_before + 4, oov_before + 1)
    with pytest.warns(ForeignRowsWarning, match="these rows do not look like the training data: 6 of 6"):
        tiny_client.predict_examples("tiny", examples.serialize_rows(FOREIGN, tiny.DTYPES))
    assert _oov_counts(tiny_server) == (rows_before + 10, oov_before + 7)


def test_rest_client_warns_on_foreign_rows_as_grpc(tiny_server):
    with RestClient("127.0.0.1", tiny_server.rest_port) as client:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            client.predict_examples("tiny", examples.serialize_rows(GOOD_ROWS, tiny.DTYPES))
        with pytest.warns(ForeignRowsWarning, match="these rows do not look like the training data: 6 of 6"):
            client.predict_examples("tiny", examples.serialize_rows(FOREIGN, tiny.DTYPES))


def test_predict_cli_warns_on_foreign_rows(tiny_server, files, tmp_path, capsys):
    foreign = tmp_path / "foreign.tsv"
    foreign.write_text("".join(f"f{i}\t0\t{row['I1'][0]}\t{row['C1'][0].decode()}\n"
                               for i, row in enumerate(FOREIGN)))
    result = _main(capsys, *_args(tiny_server, {**files, "foreign": foreign}, "foreign"))
    assert "6 rows in, 6 scored, 0 bad, 6 mostly out of vocabulary" in result.err
    assert "these rows do not look like the training data: 6 of 6 rows" in result.err
