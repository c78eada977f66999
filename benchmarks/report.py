"""Renders the paper-tables report: Markdown + HTML tables, Welch's t-test, figures 2 (times; 2(a) search cost,
2(b-d) inference time vs AUC) and 3.

Input: the per-run result records of `paper_tables.py` ({table, variant,
seed, test_auc, test_logloss, test_logloss_calibrated, test_ece,
test_ece_calibrated, test_reliability[_calibrated], best_epoch,
train_seconds, infer_seconds, ...}; records made before calibration and the
best-epoch record existed show "n/a" there). Kept apart
from the runner so a report can be redrawn from the records without training.

Table 3 compares every model with the best baseline (by mean test AUC) on
AUC, calibrated LogLoss and calibrated ECE, Welch's t-test each, and a
summary says where OptFusion wins, ties or loses (two-sided p < 0.05).
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
from trainer.metrics import ECE_BINS  # noqa: E402

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


OPTIONAL = {"logloss_calibrated": "test_logloss_calibrated", "ece": "test_ece", "ece_calibrated": "test_ece_calibrated",
            "reliability": "test_reliability", "reliability_calibrated": "test_reliability_calibrated",
            "best_epoch": "best_epoch"}
"""summary key -> record key of the values older records lack (None there)."""


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """table -> variant -> {auc: [...], logloss: [...], logloss_calibrated, ece, ece_calibrated,
    reliability[_calibrated], best_epoch, train_s, infer_s, seeds: [...]} (None where an older record
    lacks the value)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in sorted(records, key=lambda r: (r["table"], r["variant"], r["seed"])):
        row = out.setdefault(r["table"], {}).setdefault(
            r["variant"], {"auc": [], "logloss": [], **{k: [] for k in OPTIONAL}, "train_s": [], "infer_s": [],
                           "seeds": []})
        row["auc"].append(r["test_auc"])
        row["logloss"].append(r["test_logloss"])
        for key, record_key in OPTIONAL.items():
            row[key].append(r.get(record_key))
        row["train_s"].append(r["train_seconds"])
        row["infer_s"].append(r["infer_seconds"])
        row["seeds"].append(r["seed"])
    return out


def best_baseline(table3: dict[str, dict[str, Any]]) -> str | None:
    """The hand-designed baseline of highest mean test AUC (not OptFusion, not a NAS method)."""
    theirs = [k for k in table3 if not k.startswith("optfusion") and k not in SEARCH_COST_ROWS]
    return max(theirs, key=lambda k: statistics.fmean(table3[k]["auc"])) if theirs else None


COMPARED = {"auc": ("AUC", 1), "logloss_calibrated": ("calibrated LogLoss", -1),
            "ece_calibrated": ("calibrated ECE", -1)}
"""Metrics of the table 3 comparison: key -> (name, +1 where higher is better, -1 where lower)."""
ALPHA = 0.05


def versus_best(table3: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Every other row vs the best baseline: variant -> metric -> {diff, p, verdict} with verdict
    "win" / "lose" (better / worse at two-sided Welch p < ALPHA) or "tie"; metrics a row lacks are left out."""
    best = best_baseline(table3)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for variant, v in table3.items():
        if best is None or variant == best:
            continue
        for metric, (_, sign) in COMPARED.items():
            a, b = v[metric], table3[best][metric]
            if any(x is None for x in [*a, *b]):
                continue
            diff = statistics.fmean(a) - statistics.fmean(b)
            p = welch(a, b)[1]
            verdict = "tie" if not p < ALPHA else ("win" if diff * sign > 0 else "lose")
            out.setdefault(variant, {})[metric] = {"diff": diff, "p": p, "verdict": verdict}
    return out


def outcome_summary(table3: dict[str, dict[str, Any]]) -> list[str]:
    """Lines saying where each OptFusion variant wins, ties or loses against the best baseline."""
    best, compared = best_baseline(table3), versus_best(table3)
    lines = []
    for variant in sorted(k for k in compared if k.startswith("optfusion")):
        parts = [f"{COMPARED[m][0]} {r['verdict']} ({r['diff']:+.4f}, p = {r['p']:.3f})"
                 for m, r in compared[variant].items()]
        lines.append(f"- `{variant}` vs `{best}`: " + "; ".join(parts))
    return lines


def best_comparison(table3: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Best OptFusion variant vs best baseline by mean test AUC, with Welch's test."""
    ours = {k: v for k, v in table3.items() if k.startswith("optfusion")}
    best_theirs = best_baseline(table3)
    if not ours or best_theirs is None:
        return None
    best_ours = max(ours, key=lambda k: statistics.fmean(ours[k]["auc"]))
    t, p = welch(ours[best_ours]["auc"], table3[best_theirs]["auc"])
    diff = statistics.fmean(ours[best_ours]["auc"]) - statistics.fmean(table3[best_theirs]["auc"])
    return {"ours": best_ours, "theirs": best_theirs, "diff": diff, "t": t, "p": p}


def _rows(table: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for variant, v in table.items():
        auc, auc_sd = mean_std(v["auc"])
        ll, ll_sd = mean_std(v["logloss"])
        rows.append([variant, f"{auc:.4f} +- {auc_sd:.4f}", _mean_or_na(v["logloss_calibrated"], "{:.4f} +- {:.4f}"),
                     _mean_or_na(v["ece_calibrated"], "{:.4f} +- {:.4f}"), f"{ll:.4f} +- {ll_sd:.4f}",
                     _mean_or_na(v["ece"], "{:.4f} +- {:.4f}"), _mean_or_na(v["best_epoch"], "{:.1f}"),
                     f"{statistics.fmean(v['train_s']):.0f}", f"{statistics.fmean(v['infer_s']) * 1e3:.1f}",
                     str(len(v["seeds"]))])
    return rows


def _mean_or_na(values: Sequence[float | None], fmt: str) -> str:
    """`fmt` of (mean, stdev), or "n/a" when any record lacks the value."""
    if any(v is None for v in values):
        return "n/a"
    return fmt.format(*mean_std([float(v) for v in values if v is not None]))


HEADER = ["model", "test AUC", "test LogLoss, calibrated", "test ECE, calibrated", "test LogLoss, uncalibrated",
          "test ECE, uncalibrated", "best epoch", "train s", "inference ms / 1k rows", "seeds"]
VERSUS_HEADER = ["model", *(f"{name} - best baseline (Welch p)" for name, _ in COMPARED.values())]


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
        versus = versus_best(summary[table]) if table == "table3" else {}
        if versus:
            lines += [f"Each model vs the best baseline `{best_baseline(summary[table])}` (by mean test AUC): "
                      "difference of the means, Welch's two-sided p; win / lose = better / worse at p < "
                      f"{ALPHA}, else tie.", "", "| " + " | ".join(VERSUS_HEADER) + " |",
                      "|" + "---|" * len(VERSUS_HEADER)]
            lines += ["| " + " | ".join([variant, *(
                f"{r[m]['diff']:+.4f} ({r[m]['p']:.3f}, {r[m]['verdict']})" if m in r else "n/a" for m in COMPARED)])
                + " |" for variant, r in versus.items()]
            lines += ["", "**Where OptFusion wins, ties or loses:**", "", *outcome_summary(summary[table]), ""]
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


def pooled_reliability(diagrams: Sequence[Sequence[Sequence[float]] | None]) -> list[tuple[float, float, int]]:
    """Seeds' reliability diagrams (trainer.metrics.reliability) pooled per bin: (mean probability,
    observed rate, rows), the bin recovered from its mean probability; [] when any seed lacks one."""
    if not diagrams or any(d is None for d in diagrams):
        return []
    sums: dict[int, list[float]] = {}
    for diagram in diagrams:
        for p, observed, rows in diagram or ():
            acc = sums.setdefault(min(int(p * ECE_BINS), ECE_BINS - 1), [0.0, 0.0, 0])
            acc[0], acc[1], acc[2] = acc[0] + p * rows, acc[1] + observed * rows, acc[2] + rows
    return [(p / n, o / n, int(n)) for _, (p, o, n) in sorted(sums.items())]


def draw_reliability(table3: dict[str, dict[str, Any]], out: pathlib.Path) -> pathlib.Path | None:
    """The reliability plot (predicted vs observed CTR on test, pooled over seeds) of the best baseline
    and the best OptFusion variant, before (dashed) and after (solid) calibration; None without diagrams."""
    ours = [k for k in table3 if k.startswith("optfusion")]
    names = [n for n in (best_baseline(table3), max(ours, key=lambda k: statistics.fmean(table3[k]["auc"]))
                         if ours else None) if n is not None]
    curves = [(name, key, pooled_reliability(table3[name][key])) for name in names
              for key in ("reliability", "reliability_calibrated")]
    if not any(points for *_, points in curves):
        return None
    fig, ax = plt.subplots(figsize=(5, 4.6))
    ax.plot([0, 1], [0, 1], color="#aaa", linewidth=1)
    colors = dict(zip(names, ("#369", "#c33"), strict=False))  # the baseline blue, OptFusion red
    for name, key, points in curves:
        color = colors[name]
        if points:
            calibrated = key.endswith("calibrated")
            ax.plot([p for p, _, _ in points], [o for _, o, _ in points], marker="o", markersize=4, color=color,
                    linestyle="-" if calibrated else "--",
                    label=f"{name}, {'calibrated' if calibrated else 'uncalibrated'}")
    ax.set_xlabel(f"predicted CTR (mean per bin, {ECE_BINS} bins)")
    ax.set_ylabel("observed CTR on test")
    ax.set_title("Reliability: best baseline and best OptFusion (pooled seeds)", fontsize=9)
    ax.legend(fontsize=7)
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
