"""The three-day daily loop (issue 21, item 6): scripts/daily_demo.py end to end in its own process.

Day 1 pushes v1; day 2 pushes v2 under a live request stream with zero failed requests; day 3's
drifted C3 stops the day at validation with C3 named, and v2 is still the served version."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

DEMO_TIMEOUT_S = 1500


@pytest.mark.dist  # a pipeline job per day, two trainings and a server process: `make test-dist`
def test_daily_demo_three_days(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "daily_demo.py"), "--workdir", str(tmp_path / "daily"),
         "--rows", "20000", "--drift", "C3"],
        cwd=ROOT, capture_output=True, text=True, timeout=DEMO_TIMEOUT_S, check=False)
    shown = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-4000:]}"
    assert result.returncode == 0, shown
    lines = result.stdout.splitlines()
    assert "day 1 push: v1 pushed" in lines, shown
    assert "day 2 push: v2 pushed" in lines, shown
    stream = [line for line in lines if line.startswith("day 2 serve: v2 served")]
    assert stream and stream[0].endswith(" 0 failed requests"), shown
    assert int(stream[0].split(", ")[1].split()[0]) > 0, shown  # requests were really sent
    stopped = [line for line in lines if line.startswith("day 3 pipeline: stopped: anomalies in ")]
    assert stopped and "C3" in stopped[0].split(" in ", 1)[1].split(" (")[0].split(", "), shown
    assert any(line.startswith("day 3 serve: v2 still served") for line in lines), shown
    assert not any(line.startswith("day 3 train") or line.startswith("day 3 push") for line in lines), shown
