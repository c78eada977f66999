"""Renders the paper-tables report: Markdown + HTML tables, Welch's t-test, figures 2 (times; 2(a) search cost,
2(b-d) inference time vs AUC) and 3.

Input: the per-run result records of `paper_tables.py` ({table, variant,
seed, test_auc, test_logloss, test_logloss_calibrated, best_epoch,
train_seconds, infer_seconds, ...}; records made before calibration and the
best-epoch record existed show "n/a" there). Kept apart
from the runner so a report can be redrawn from the records without training.
"""

from __future__ import annotations

import html
import pathlib
import statistics
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from scipy import stats  # noqa: E402

from benchmarks.paper_tables import HARD_ROWS  # noqa: E402
from trainer.architecture import Architecture, components, level  # noqa: E402
from trainer.config import SearchConfig  # noqa: E402

TABLE_TITLES = {
    "table3": "Table 3: overall performance (test AUC / LogLoss, mean +- stdev over seeds)",
    "table4": "Table 4: fixed fusion operation on the searched connections",
    "table5": "Table 5: sequential vs one-shot selection",
    "table6": "Table 6: shallow component",
    "table7": "Table 7: number of cells n",
}

# The default design appears in tables 3, 5, 6 and 7: one set of runs, not four.
DEFAULT_HARD_ROW = HARD_ROWS.get(SearchConfig.hard_select)
SHARED_ROW = ("`{row}` is table 3's `" + str(DEFAULT_HARD_ROW) + "` runs (one-shot search, CrossNet, n = 3, "
              f"Hard rule {SearchConfig.hard_select}: the default design), not a separate run.")
SHARED_ROWS = {"table5": "one-shot", "table6": "crossnet", "table7": "n=3"}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def welch(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Two-sided Welch's t-test: (t, p); (nan, nan) with fewer than two values a side."""
    if len(a) < 2 or len(b) < 2:
        return float("nan"), float("nan")
    result = stats.ttest_ind(a, b, equal_var=False)
    return float(result.statistic), float(result.pvalue)


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Mean of a - b over pairs (the same seed, the same search) with the two-sided paired t-test and
    Wilcoxon signed-rank p-values: nan with fewer than two pairs, 1 when every pair is equal."""
    diff = [x - y for x, y in zip(a, b, strict=True)]
    if len(diff) < 2:
        return {"diff": statistics.fmean(diff) if diff else float("nan"), "t_p": float("nan"), "w_p": float("nan"),
                "n": len(diff)}
    if all(d == 0 for d in diff):
        return {"diff": 0.0, "t_p": 1.0, "w_p": 1.0, "n": len(diff)}
    return {"diff": statistics.fmean(diff), "t_p": float(stats.ttest_rel(a, b).pvalue),
            "w_p": float(stats.wilcoxon(a, b).pvalue), "n": len(diff)}


def rule_comparison(table3: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]] | None:
    """Each Hard rule variant of table 3 minus argmax(beta)'s row, paired by seed (both retrain the
    same search): metric ("auc", "logloss") -> `paired`; None without both rows."""
    base = table3.get(HARD_ROWS["beta"])
    out: dict[str, dict[str, float]] = {}
    for rule, row in HARD_ROWS.items():
        if rule == "beta" or base is None or row not in table3:
            continue
        other = table3[row]
        seeds = sorted(set(base["seeds"]) & set(other["seeds"]))
        for metric in ("auc", "logloss"):
            a = [other[metric][other["seeds"].index(s)] for s in seeds]
            b = [base[metric][base["seeds"].index(s)] for s in seeds]
            out[f"{row} {metric}"] = paired(a, b)
    return out or None


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """table -> variant -> {auc: [...], logloss: [...], logloss_calibrated: [...], best_epoch: [...],
    train_s: [...], infer_s: [...], seeds: [...]} (None where an older record lacks the value)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in sorted(records, key=lambda r: (r["table"], r["variant"], r["seed"])):
        row = out.setdefault(r["table"], {}).setdefault(
            r["variant"], {"auc": [], "logloss": [], "logloss_calibrated": [], "best_epoch": [], "train_s": [],
                           "infer_s": [], "seeds": []})
        row["auc"].append(r["test_auc"])
        row["logloss"].append(r["test_logloss"])
        row["logloss_calibrated"].append(r.get("test_logloss_calibrated"))
        row["best_epoch"].append(r.get("best_epoch"))
        row["train_s"].append(r["train_seconds"])
        row["infer_s"].append(r["infer_seconds"])
        row["seeds"].append(r["seed"])
    return out


def best_comparison(table3: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Best OptFusion variant vs best baseline by mean test AUC, with Welch's test."""
    ours = {k: v for k, v in table3.items() if k.startswith("optfusion")}
    theirs = {k: v for k, v in table3.items() if not k.startswith("optfusion")}
    if not ours or not theirs:
        return None
    best_ours = max(ours, key=lambda k: statistics.fmean(ours[k]["auc"]))
    best_theirs = max(theirs, key=lambda k: statistics.fmean(theirs[k]["auc"]))
    t, p = welch(ours[best_ours]["auc"], theirs[best_theirs]["auc"])
    diff = statistics.fmean(ours[best_ours]["auc"]) - statistics.fmean(theirs[best_theirs]["auc"])
    return {"ours": best_ours, "theirs": best_theirs, "diff": diff, "t": t, "p": p}


def _rows(table: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for variant, v in table.items():
        auc, auc_sd = mean_std(v["auc"])
        ll, ll_sd = mean_std(v["logloss"])
        rows.append([variant, f"{auc:.4f} +- {auc_sd:.4f}", f"{ll:.4f} +- {ll_sd:.4f}",
                     _mean_or_na(v["logloss_calibrated"], "{:.4f} +- {:.4f}"), _mean_or_na(v["best_epoch"], "{:.1f}"),
                     f"{statistics.fmean(v['train_s']):.0f}", f"{statistics.fmean(v['infer_s']) * 1e3:.1f}",
                     str(len(v["seeds"]))])
    return rows


def _mean_or_na(values: Sequence[float | None], fmt: str) -> str:
    """`fmt` of (mean, stdev), or "n/a" when any record lacks the value."""
    if any(v is None for v in values):
        return "n/a"
    return fmt.format(*mean_std([float(v) for v in values if v is not None]))


HEADER = ["model", "test AUC", "test LogLoss", "calibrated LogLoss (T on valid)", "best epoch", "train s",
          "inference ms / 1k rows", "seeds"]


def markdown(title: str, setup: str, summary: dict[str, dict[str, dict[str, Any]]],
             comparison: dict[str, Any] | None, figures: Sequence[str]) -> str:
    lines = [f"# {title}", "", setup.strip(), ""]
    for table, name in TABLE_TITLES.items():
        if table not in summary:
            continue
        lines += [f"## {name}", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(row) + " |" for row in _rows(summary[table])]
        lines.append("")
        if SHARED_ROWS.get(table) in summary[table]:
            lines += [SHARED_ROW.format(row=SHARED_ROWS[table]), ""]
        rules = rule_comparison(summary[table]) if table == "table3" else None
        if rules:
            lines += [f"Hard rules paired on the same searches (`{HARD_ROWS['beta']}` is argmax(beta), the "
                      "paper's rule): " + "; ".join(
                          f"`{key.split()[0]}` - `{HARD_ROWS['beta']}` {key.split()[1]} {t['diff']:+.4f} over "
                          f"{t['n']} seeds (paired t p = {t['t_p']:.3f}, Wilcoxon p = {t['w_p']:.3f})"
                          for key, t in rules.items()) + ".", ""]
        if table == "table3" and comparison:
            c = comparison
            lines += [f"Best OptFusion variant `{c['ours']}` vs best baseline `{c['theirs']}`: "
                      f"AUC difference {c['diff']:+.4f}, Welch's t = {c['t']:.2f}, two-sided p = {c['p']:.3f}.", ""]
    lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def to_html(md: str) -> str:
    """The Markdown above as a standalone HTML page (tables, headings, images, paragraphs)."""
    body, table_open = [], False
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            if set("".join(cells)) <= {"-"}:
                continue
            tag = "th" if not table_open else "td"
            if not table_open:
                body.append("<table>")
                table_open = True
            body.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
            continue
        if table_open:
            body.append("</table>")
            table_open = False
        if line.startswith("!["):
            src = line[line.index("(") + 1:-1]
            body.append(f'<p><img src="{html.escape(src)}" alt="{html.escape(src)}"></p>')
        elif line.startswith("#"):
            depth = len(line) - len(line.lstrip("#"))
            body.append(f"<h{depth}>{html.escape(line[depth:].strip())}</h{depth}>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    if table_open:
        body.append("</table>")
    style = "body{font-family:sans-serif;max-width:60em}td,th{padding:2px 8px;border-bottom:1px solid #ccc}"
    return f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style></head><body>" \
           + "\n".join(body) + "</body></html>\n"


def draw_architecture(arch: Architecture, title: str, out_base: pathlib.Path) -> list[pathlib.Path]:
    """Figure 3: components as nodes by level, kept edges, each labelled with its Hard op."""
    n, kept = arch.n, arch.reachable()
    ops = arch.hard_ops()
    names = [c for c in components(n) if c in kept]
    by_level: dict[int, list[str]] = {}
    for c in names:
        by_level.setdefault(level(c, n), []).append(c)
    pos = {c: (lvl, i - (len(cs) - 1) / 2) for lvl, cs in by_level.items() for i, c in enumerate(cs)}
    fig, ax = plt.subplots(figsize=(1.6 * (n + 3), 3.2))
    for src, dst in arch.edges():
        if src in pos and dst in pos:
            span = pos[dst][0] - pos[src][0]  # edges that skip levels curve around the nodes between
            ax.annotate("", xy=pos[dst], xytext=pos[src], arrowprops={
                "arrowstyle": "->", "color": "#777", "shrinkA": 14, "shrinkB": 14,
                "connectionstyle": f"arc3,rad={0.0 if span <= 1 else 0.15 + 0.05 * span}"})
    for c, (x, y) in pos.items():
        label = c if c not in ops else f"{c}\n{ops[c]}"
        color = "#cde" if c.startswith("S") else "#edc" if c.startswith("D") else "#ddd"
        ax.text(x, y, label, ha="center", va="center", fontsize=9,
                bbox={"boxstyle": "round", "facecolor": color, "edgecolor": "#555"})
    ax.set_xlim(-0.6, n + 2.6)
    ax.set_ylim(-1.5, 1.5)
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    paths = [out_base.with_suffix(".png"), out_base.with_suffix(".svg")]
    for path in paths:
        fig.savefig(path, bbox_inches="tight", dpi=120)
    plt.close(fig)
    return paths


def _save(fig: Any, out: pathlib.Path) -> pathlib.Path:
    """Writes a figure of the report as a PNG at `out` and frees it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def draw_times(table3: dict[str, dict[str, Any]], out: pathlib.Path) -> pathlib.Path:
    """Figure 2: training time (search + retrain for OptFusion) and inference time per model."""
    names = list(table3)
    train = [statistics.fmean(table3[k]["train_s"]) for k in names]
    infer = [statistics.fmean(table3[k]["infer_s"]) * 1e3 for k in names]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    left.barh(names, train, color="#69c")
    left.set_xlabel("training seconds (search + retrain for OptFusion)")
    right.barh(names, infer, color="#c96")
    right.set_xlabel("inference ms per 1,000 test rows")
    right.set_yticklabels([])
    return _save(fig, out)


SEARCH_COST_ROWS = {"optfusion_hard": "OptFusion", "autoctr": "AutoCTR", "nasrec": "NASRec"}
"""Figure 2(a)'s methods: table 3 variant -> label (train s of each is its search + retrain)."""


def draw_search_cost(table3: dict[str, dict[str, Any]], out: pathlib.Path) -> pathlib.Path | None:
    """Figure 2(a): total search + retrain wall seconds per method (mean over seeds, stdev as error bars);
    None unless table 3 holds OptFusion and at least one NAS method."""
    rows = [k for k in SEARCH_COST_ROWS if k in table3]
    if "optfusion_hard" not in rows or len(rows) < 2:
        return None
    stats_ = [mean_std(table3[k]["train_s"]) for k in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.bar([SEARCH_COST_ROWS[k] for k in rows], [m for m, _ in stats_], yerr=[s for _, s in stats_],
           color=["#69c" if k == "optfusion_hard" else "#c96" for k in rows], capsize=4)
    ax.set_ylabel("search + retrain seconds")
    ax.set_title("Figure 2(a): search cost (same machine, same run)", fontsize=10)
    return _save(fig, out)


def draw_speed_vs_auc(table3: dict[str, dict[str, Any]], out: pathlib.Path) -> pathlib.Path | None:
    """Figure 2(b-d): one point per model of table 3, inference ms per 1,000 test rows vs mean test AUC."""
    if not table3:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, v in table3.items():
        x, y = statistics.fmean(v["infer_s"]) * 1e3, statistics.fmean(v["auc"])
        searched = name.startswith("optfusion") or name in SEARCH_COST_ROWS
        ax.scatter([x], [y], color="#c33" if searched else "#369", marker="*" if searched else "o", s=60)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("inference ms per 1,000 test rows")
    ax.set_ylabel("test AUC (mean over seeds)")
    ax.set_title("Figure 2(b-d): inference time vs AUC", fontsize=10)
    return _save(fig, out)
