"""The CLIs are quiet by default (no TensorFlow C++ log line on stderr) and --verbose shows them.

Each command loads TensorFlow (pipeline/quiet.py imports it before the job) and then fails on a
missing input with exit 2, so the check costs one TF import per run."""

import os
import re
import subprocess
import sys

import pytest

# A TF/absl C++ log line ("I0000 00:00:17965.8130   12962 port.cc:153] ...", "E1206 ... cuda_platform.cc:52] ...").
CPP_LOG = re.compile(r"^[IWEF]\d{4} |\.cc:\d+\]", re.MULTILINE)
COMMANDS = {
    "trainer": ["trainer.cli", "evaluate", "--data", "{tmp}/none", "--run_dir", "{tmp}/run"],
    "serving": ["serving.cli", "export", "--run", "{tmp}/run", "--data", "{tmp}/none", "--model_base_path",
                "{tmp}/models", "--model_name", "m"],
    "pipeline": ["pipeline.cli", "transform", "--run", "{tmp}/none", "--input", "{tmp}/x.tsv", "--output",
                 "{tmp}/out"],
}


def _run(cli: str, tmp_path, *flags: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # the CLI's own default
    args = [a.format(tmp=tmp_path) for a in COMMANDS[cli]]
    return subprocess.run([sys.executable, "-m", *args, *flags], capture_output=True, text=True, env=env,
                          timeout=180)


@pytest.mark.parametrize("cli", COMMANDS)
def test_no_tensorflow_log_line_by_default(cli, tmp_path):
    result = _run(cli, tmp_path)
    assert result.returncode == 2, result.stderr
    assert not CPP_LOG.findall(result.stderr), result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"{cli}: error: ")


def test_verbose_shows_them(tmp_path):
    result = _run("trainer", tmp_path, "--verbose")
    assert result.returncode == 2 and CPP_LOG.search(result.stderr), result.stderr
