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

COLORS = {"kept": "#2e7d32", "dropped": "#c62828", "all": "#1565c0"}


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)  # layout="constrained" fits the labels: one draw, not two
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def plot_histogram(hist: dict[str, Any]) -> str:
    fig, ax = plt.subplots(layout="constrained", figsize=(6.4, 3.0))
    edges = hist["edges"]
    for group in ("all", "kept", "dropped"):
        counts = hist["counts"].get(group)
        if counts is None:
            continue
        color = COLORS[group]
        ax.stairs(counts, edges, fill=True, alpha=0.25, color=color)
        ax.stairs(counts, edges, color=color, linewidth=1.4, label=f"{group} ({sum(counts):,})")
    if hist["log_x"]:
        ax.set_xscale("log")
    for value, label in hist["markers"]:  # published thresholds, named in the legend
        ax.axvline(value, color="#555", linestyle="--", linewidth=0.9, label=label or None)
    ax.set_xlim(edges[0], edges[-1])
    ax.set_title(hist["title"], fontsize=10)
    ax.set_xlabel(hist["xlabel"], fontsize=8)
    ax.set_ylabel("pairs", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, frameon=False)
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


def plot_published(rows: list[dict[str, Any]]) -> str | None:
    shown = [r for r in rows if r.get("kept_percent") is not None]
    if not shown:
        return None
    fig, ax = plt.subplots(layout="constrained", figsize=(6.4, 0.45 * len(shown) + 0.9))
    names = [r["corpus"] for r in shown][::-1]
    values = [r["kept_percent"] for r in shown][::-1]
    colors = ["#2e7d32" if r["source"] == "this audit" else "#90a4ae" for r in shown][::-1]
    bars = ax.barh(names, values, color=colors)
    for bar, value in zip(bars, values, strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:.1f} %", va="center", fontsize=8)
    ax.set_xlim(0, 110)
    ax.set_xlabel("kept, % of input pairs", fontsize=8)
    ax.tick_params(labelsize=8)
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
