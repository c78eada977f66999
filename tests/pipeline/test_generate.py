"""The synthetic Criteo generator: format, determinism, realism and an interaction signal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipeline.generate import CAT_MISSING, INT_MISSING, generate, generate_chunk, main


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return pa.concat_tables([generate_chunk(0, k, 100_000) for k in range(3)]).to_pandas()


def _interaction_strength(df: pd.DataFrame, a: str, b: str, top: int = 4) -> float:
    """Std of the two-way interaction residual of logit(CTR) over the top values of a and b."""
    sub = df[df[a].isin(df[a].value_counts().index[:top]) & df[b].isin(df[b].value_counts().index[:top])]
    ctr = sub.groupby([a, b])["label"].mean().unstack().to_numpy().clip(0.01, 0.99)
    logit = np.log(ctr / (1 - ctr))
    residual = logit - logit.mean(0, keepdims=True) - logit.mean(1, keepdims=True) + logit.mean()
    return float(residual.std())


def test_file_format_and_determinism(tmp_path):
    a, b, c = tmp_path / "a.tsv", tmp_path / "b.tsv", tmp_path / "c.tsv"
    generate(1000, a, seed=4, progress=False)
    generate(1000, b, seed=4, progress=False)
    generate(1000, c, seed=5, progress=False)
    assert a.read_bytes() == b.read_bytes() and a.read_bytes() != c.read_bytes()
    lines = a.read_text().splitlines()
    assert len(lines) == 1000 and all(line.count("\t") == 39 for line in lines)
    assert {line.split("\t")[0] for line in lines} == {"0", "1"}
    assert not list(tmp_path.glob(".*")), "temp file left behind"


def test_realistic_marginals(frame):
    assert 0.15 < frame["label"].mean() < 0.35
    for i, rate in enumerate(INT_MISSING):
        assert frame[f"I{i + 1}"].isna().mean() == pytest.approx(rate, abs=0.01)
    for j, rate in enumerate(CAT_MISSING):
        assert frame[f"C{j + 1}"].isna().mean() == pytest.approx(rate, abs=0.01)
    assert 0.05 < (frame["I2"] < 0).mean() < 0.12 and (frame["I1"] < 0).sum() == 0
    assert frame["C1"].str.fullmatch(r"[0-9a-f]{8}").all()


def test_heavy_tailed_categories(frame):
    counts = frame["C1"].value_counts()
    assert (counts == 1).mean() > 0.5, "most distinct values are seen once"
    assert counts.iloc[0] > 0.05 * len(frame), "and a few values are very frequent"


def test_label_depends_on_interactions(frame):
    # C1 x C2 and C4 x C5 (x C6) carry interaction terms; C1 x C10 and C2 x C9 do not.
    assert _interaction_strength(frame, "C1", "C2") > 0.3
    assert _interaction_strength(frame, "C4", "C5") > 0.15
    assert _interaction_strength(frame, "C1", "C10") < 0.1
    assert _interaction_strength(frame, "C2", "C9") < 0.1


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    assert main(["--rows", "0", "--output", str(tmp_path / "x.tsv")]) == 2
    assert main(["--rows", "5", "--output", str(tmp_path / "no" / "x.tsv")]) == 2
    assert "does not exist" in capsys.readouterr().err
