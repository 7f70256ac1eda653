"""The report's plots: matplotlib figures rendered to PNG data URIs.

matplotlib: the plotting library every Python user already has, with a headless backend (Agg) that
needs no display and no browser, and PNG output small enough to inline.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on workers and CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import font_manager  # noqa: E402

COLORS = {"kept": "#2e7d32", "dropped": "#c62828", "all": "#1565c0"}
RUN_COLOR = "#ef6c00"  # the run's own thresholds
PUBLISHED_COLOR = "#546e7a"  # published thresholds
# Fallback fonts for labels in CJK scripts (a domain, a language name): the first one installed is used after
# matplotlib's own DejaVu Sans, which has no CJK glyphs.
CJK_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Source Han Sans", "WenQuanYi Zen Hei", "Droid Sans Fallback")


def _configure_fonts() -> None:
    installed = {font.name for font in font_manager.fontManager.ttflist}
    fallback = [name for name in CJK_FONTS if name in installed]
    plt.rcParams["font.family"] = "sans-serif"
    plt.rcParams["font.sans-serif"] = ["DejaVu Sans", *fallback]


_configure_fonts()


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)  # layout="constrained" fits the labels: one draw, not two
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _fmt(value: float, integer: bool) -> str:
    if integer:
        return f"{round(value):,}"
    return f"{value:.3g}"


def plot_histogram(hist: dict[str, Any], groups: dict[str, dict[str, Any]]) -> str:
    """Kept and dropped (or all) as steps over the data's bins, with the overflow bins drawn apart and labelled.

    The bins below the first edge and at or above the last are bars of their own outside the axis range
    of the regular bins, hatched and annotated ("< 22 px: 5"), so a long tail is counted, not squashed into
    an edge bin. Thresholds: the run's own (solid, orange) and the published ones (dashed, grey).
    """
    fig, ax = plt.subplots(layout="constrained", figsize=(6.4, 3.1))
    edges = hist["edges"]
    log_x = hist["log_x"]
    integer = hist.get("integer", False)
    if log_x:
        ratio = edges[1] / edges[0] if len(edges) > 1 else 2.0
        under = (edges[0] / ratio, edges[0])
        over = (edges[-1], edges[-1] * ratio)
    else:
        width = edges[1] - edges[0] if len(edges) > 1 else 1.0
        under = (edges[0] - width, edges[0])
        over = (edges[-1], edges[-1] + width)
    top = 1
    for group in ("all", "kept", "dropped"):
        part = groups.get(group)
        if part is None:
            continue
        color = COLORS[group]
        counts = part["counts"]
        total = part["underflow"] + sum(counts) + part["overflow"]
        ax.stairs(counts, edges, fill=True, alpha=0.22, color=color)
        ax.stairs(counts, edges, color=color, linewidth=1.4, label=f"{group} ({total:,})")
        for (left, right), count in ((under, part["underflow"]), (over, part["overflow"])):
            if count:
                ax.bar(left, count, width=right - left, align="edge", color=color, alpha=0.3, hatch="///",
                       edgecolor=color, linewidth=0.8)
        top = max(top, max(counts, default=0), part["underflow"], part["overflow"])
    for (left, right), text, key in ((under, f"< {_fmt(edges[0], integer)}", "underflow"),
                                     (over, f"≥ {_fmt(edges[-1], integer)}", "overflow")):
        counts = [groups[g][key] for g in groups if groups[g][key]]
        if counts:
            middle = (left * right) ** 0.5 if log_x else (left + right) / 2
            ax.text(middle, max(counts), f"{text}\n{sum(counts):,}", ha="center", va="bottom", fontsize=6.5,
                    color="#37474f")
    if log_x:
        ax.set_xscale("log")
    low, high = under[0], over[1]
    off_chart = []
    for markers, color, style in ((hist.get("run_markers", []), RUN_COLOR, "-"),
                                  (hist.get("markers", []), PUBLISHED_COLOR, "--")):
        for value, label in markers:
            if low <= value <= high:
                ax.axvline(value, color=color, linestyle=style, linewidth=1.1, label=label or None)
            elif label:
                off_chart.append(f"{label} (off the chart)")
    ax.set_xlim(low, high)
    ax.set_ylim(0, top * 1.25)
    ax.set_title(hist["title"], fontsize=10)
    xlabel = hist["xlabel"]
    if off_chart:
        xlabel += "\n" + "; ".join(off_chart)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("pairs", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6.5, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def plot_funnel(funnel: dict[str, Any]) -> str:
    stages = funnel["stages"]
    fig, ax = plt.subplots(layout="constrained", figsize=(7.5, 0.42 * len(stages) + 0.8))
    names = [s["stage"] for s in stages][::-1]
    remaining = [s["remaining"] for s in stages][::-1]
    colors = ["#2e7d32" if name == "kept" else "#1565c0" for name in names]
    bars = ax.barh(names, remaining, color=colors, alpha=0.85)
    total = funnel["input_pairs"] or 1
    for bar, value in zip(bars, remaining, strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:,} ({100 * value / total:.1f} %)",
                va="center", fontsize=8)
    ax.set_xlim(0, total * 1.3)
    ax.set_xlabel("pairs remaining", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def plot_published(funnels: list[dict[str, Any]]) -> str | None:
    """Every corpus's funnel as nested bars: each stage it reports, as a share of its first stage.

    ``funnels``: ``{"corpus", "ours", "stages": [{"stage", "percent"}]}``, first stage 100 %.
    """
    if not funnels:
        return None
    fig, ax = plt.subplots(layout="constrained", figsize=(8.4, 0.55 * len(funnels) + 1.0))
    shades = ["#cfd8dc", "#90a4ae", "#546e7a", "#37474f"]
    for row, funnel in enumerate(reversed(funnels)):
        stages = [s for s in funnel["stages"] if s["percent"] is not None]
        for index, stage in enumerate(stages):
            color = "#2e7d32" if funnel["ours"] and index == len(stages) - 1 else shades[min(index, len(shades) - 1)]
            ax.barh(row, stage["percent"], height=0.62 - 0.12 * index, color=color, zorder=index)
        # The stages in words at the right, where they cannot overlap the bars or each other.
        words = " → ".join(f"{s['stage']} {s['percent']:.1f} %" for s in stages[1:]) or "(one stage only)"
        ax.text(103, row, words, va="center", fontsize=7, color="#212121")
    ax.set_yticks(range(len(funnels)), [f["corpus"] for f in reversed(funnels)], fontsize=8)
    ax.set_xlim(0, 200)
    ax.set_xticks([0, 20, 40, 60, 80, 100])
    ax.set_xlabel("share of the corpus's first stage (its input), %", fontsize=8, loc="left")
    ax.tick_params(labelsize=7)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def plot_bars(labels: list[str], series: dict[str, list[int]], title: str, xlabel: str, log: bool = False) -> str:
    """Horizontal stacked bars, one row per label (top first)."""
    fig, ax = plt.subplots(layout="constrained", figsize=(6.4, 0.3 * len(labels) + 1.0))
    left = [0] * len(labels)
    for group, values in series.items():
        ax.barh(labels[::-1], values[::-1], left=left[::-1], color=COLORS.get(group, "#1565c0"), label=group,
                alpha=0.85)
        left = [a + b for a, b in zip(left, values, strict=True)]
    if log:
        ax.set_xscale("log")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(labelsize=7)
    if len(series) > 1:
        ax.legend(fontsize=7, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def plot_clusters(sizes: list[dict[str, int]]) -> str:
    fig, ax = plt.subplots(layout="constrained", figsize=(6.4, 3.0))
    counts = [s["clusters"] for s in sizes]
    ax.bar([str(s["size"]) for s in sizes], counts, color="#6a1b9a", alpha=0.85, width=0.6)
    if max(counts) >= 100:  # a long tail of sizes: only a log scale shows the big clusters beside the pairs
        ax.set_yscale("log")
    ax.set_title("Duplicate cluster sizes", fontsize=10)
    ax.set_xlabel("pairs in the cluster", fontsize=8)
    ax.set_ylabel("clusters", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def plot_compare_funnels(stages: list[str], a: list[int], b: list[int], names: tuple[str, str]) -> str:
    """Two funnels side by side: pairs remaining after each stage, A above B."""
    fig, ax = plt.subplots(layout="constrained", figsize=(7.5, 0.55 * len(stages) + 0.9))
    rows = list(range(len(stages)))[::-1]
    height = 0.38
    ax.barh([r + height / 2 for r in rows], a, height=height, color="#1565c0", label=names[0])
    ax.barh([r - height / 2 for r in rows], b, height=height, color="#ef6c00", label=names[1])
    total = max(max(a, default=0), max(b, default=0), 1)
    for r, va, vb in zip(rows, a, b, strict=True):
        ax.text(va, r + height / 2, f" {va:,}", va="center", fontsize=7)
        ax.text(vb, r - height / 2, f" {vb:,}", va="center", fontsize=7)
    ax.set_yticks(rows, stages, fontsize=8)
    ax.set_xlim(0, total * 1.2)
    ax.set_xlabel("pairs remaining", fontsize=8)
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    ax.tick_params(labelsize=7)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)
