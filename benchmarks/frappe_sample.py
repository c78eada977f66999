"""The Frappe sample as a pipeline run, shared by the Frappe benchmarks (calibration, EDCN bridge, Hard rule)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "frappe" / "frappe_valid.tsv"
SCHEMA = ROOT / "schemas" / "frappe.yaml"


def frappe_run(data: pathlib.Path | None, work: pathlib.Path) -> pathlib.Path:
    """`data` (a finished pipeline run) if given, else WORK/data, made from the sample (8:1:1 split) unless
    finished there before; exits 2 naming the sample when it is absent."""
    if data is not None:
        return data
    data = work / "data"
    if not (data / "DONE.json").is_file():
        if not SAMPLE.is_file():
            sys.exit(f"{SAMPLE} is absent (../shared/data): pass --data DIR, a finished pipeline run of Frappe")
        subprocess.run([sys.executable, "-m", "pipeline", "--schema", str(SCHEMA), "--input", str(SAMPLE),
                        "--output", str(data)], check=True, cwd=ROOT)
    return data
