"""Histograms of the audited quantities, streamed into fine bins and shown in bins the data chooses.

Each batch is counted into fixed fine bins (per outcome label: ``kept`` or a reason code), which
cost a few KB whatever the corpus size and need no second pass. The report's bins are chosen at the
end from the data: the range that holds the central 99 % of the values (widened to the run's own
thresholds), cut into about ``DISPLAY_BINS`` bins made of whole fine bins; what lies outside is
counted in two labelled bins, "below" and "at or above", so no value is hidden in an edge bin.

Geometric fine edges are powers of two with a fractional exponent (2 ** (k / n)), so that the
powers of two themselves (256 px, 1024 bytes, aspect 2) are exact edges and a value equal to one
falls in the same bin whoever computes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

DISPLAY_BINS = 40
CENTRAL_SHARE = 0.99  # the display range holds this share of the values; the rest is in the overflow bins


def _powers_of_two(low_exponent: int, high_exponent: int, per_octave: int) -> np.ndarray:
    return 2.0 ** (np.arange(low_exponent * per_octave, high_exponent * per_octave + 1) / per_octave)


def _nice_step(fine_bins: float, log_x: bool) -> int:
    """The smallest round number of fine bins per display bin at or above ``fine_bins``: 1-2-5 (powers of two on a
    log axis, whose fine grid has a power of two per octave, so that display edges fall on whole fractions of it)."""
    steps = [2**k for k in range(16)] if log_x else [m * 10**k for k in range(5) for m in (1, 2, 5)]
    return next((step for step in steps if step >= fine_bins), steps[-1])


@dataclass(frozen=True)
class HistSpec:
    name: str
    title: str
    xlabel: str
    fine_edges: np.ndarray
    log_x: bool = False
    integer: bool = False  # integer values: display edges on whole numbers
    # Published thresholds drawn on the plot: (value, label).
    markers: tuple[tuple[float, str], ...] = ()
    unit: str = ""


HIST_SPECS: list[HistSpec] = [
    HistSpec("clip_score", "CLIP score", "image-text cosine similarity", np.round(np.arange(-1.0, 1.0001, 0.005), 3),
             markers=((0.28, "LAION-5B en 0.28"), (0.3, "LAION-400M 0.30"))),
    HistSpec("width", "Image width (original)", "pixels", _powers_of_two(0, 16, 16), log_x=True, integer=True,
             markers=((200, "ALIGN/DataComp/COYO 200 px"),), unit="px"),
    HistSpec("height", "Image height (original)", "pixels", _powers_of_two(0, 16, 16), log_x=True, integer=True,
             markers=((200, "ALIGN/DataComp/COYO 200 px"),), unit="px"),
    HistSpec("aspect_ratio", "Aspect ratio (width / height)", "width / height", _powers_of_two(-7, 7, 16),
             log_x=True, markers=((1 / 3, "1/3"), (3, "3 (ALIGN, DataComp, COYO)"))),
    HistSpec("caption_chars", "Caption length", "characters", np.arange(0, 4098, dtype=float), integer=True,
             markers=((5, "LAION < 5 chars"),)),
    HistSpec("caption_words", "Caption words", "whitespace-separated words", np.arange(0, 1026, dtype=float),
             integer=True, markers=((3, "ALIGN 3..20 words"), (20, ""))),
    HistSpec("bytes", "Downloaded file size", "bytes", _powers_of_two(4, 31, 8), log_x=True, integer=True,
             markers=((5 * 1024, "LAION/COYO 5 KB"),), unit="B"),
    HistSpec("language_score", "Language-ID confidence", "the language identifier's score",
             np.round(np.arange(0.0, 1.0101, 0.01), 2)),
]
SPECS = {spec.name: spec for spec in HIST_SPECS}


class Histogram:
    """Fine-bin counts per outcome label, with exact counts below the first and at or above the last edge."""

    def __init__(self, spec: HistSpec) -> None:
        self.spec = spec
        self.nbins = len(spec.fine_edges) - 1
        # label -> [underflow, fine bins..., overflow]
        self.counts: dict[str, np.ndarray] = {}
        self.stats: dict[str, list[float]] = {}  # label -> [n, sum, min, max]

    def add(self, values: np.ndarray, codes: np.ndarray, labels: list[str]) -> None:
        """Count ``values`` (NaN: no value) under ``labels[codes[i]]``, one bincount for all labels at once."""
        valid = ~np.isnan(values)
        values, codes = values[valid], codes[valid]
        if values.size == 0:
            return
        # 0: below the first edge; 1..nbins: the fine bins; nbins + 1: at or above the last edge.
        slot = np.searchsorted(self.spec.fine_edges, values, side="right")
        slot[values >= self.spec.fine_edges[-1]] = self.nbins + 1
        width = self.nbins + 2
        combined = np.bincount(codes * width + slot, minlength=len(labels) * width).reshape(len(labels), width)
        for code in np.unique(codes):
            label = labels[int(code)]
            counts = self.counts.setdefault(label, np.zeros(width, dtype=np.int64))
            counts += combined[code]
            chosen = values[codes == code]
            n, total, low, high = self.stats.get(label, [0, 0.0, np.inf, -np.inf])
            self.stats[label] = [n + chosen.size, total + float(chosen.sum()), min(low, float(chosen.min())),
                                 max(high, float(chosen.max()))]

    def display_edges(self, thresholds: list[float]) -> np.ndarray:
        """Fine edges (a subset) spanning the central share of all values, widened to the given thresholds."""
        edges = self.spec.fine_edges
        total = sum(self.counts.values())
        cumulative = np.cumsum(total)
        n = cumulative[-1]
        tail = (1.0 - CENTRAL_SHARE) / 2 * n
        # Slot s covers [edges[s-1], edges[s]): slot index -> the fine edge at its left (clipped to the grid).
        first = int(np.searchsorted(cumulative, tail, side="right"))
        last = int(np.searchsorted(cumulative, n - tail, side="left"))
        low_index = int(np.clip(first - 1, 0, len(edges) - 1))
        high_index = int(np.clip(last, 0, len(edges) - 1))
        for value in thresholds:  # the run's own cuts are worth seeing even past the data's bulk
            position = int(np.searchsorted(edges, value, side="left"))
            low_index = min(low_index, max(position - 1, 0))
            high_index = max(high_index, min(position + 1, len(edges) - 1))
        if high_index <= low_index:
            high_index = min(low_index + 1, len(edges) - 1)
            low_index = max(high_index - 1, 0)
        step = _nice_step((high_index - low_index) / DISPLAY_BINS, self.spec.log_x)
        # Edges on whole steps of the grid (round numbers; whole octaves on a log axis), never past the grid.
        low_index -= low_index % step
        high_index = min(-(-high_index // step) * step, len(edges) - 1)
        indices = list(range(low_index, high_index, step)) + [high_index]
        return edges[np.unique(indices)]

    def to_json(self, thresholds: list[float]) -> dict[str, Any]:
        display = self.display_edges(thresholds)
        edges = self.spec.fine_edges
        # Each display bin is the sum of the fine slots between its edges.
        bounds = np.searchsorted(edges, display)  # fine edge index of each display edge
        by_label: dict[str, dict[str, Any]] = {}
        for label, counts in sorted(self.counts.items()):
            cumulative = np.concatenate([[0], np.cumsum(counts)])
            # Slot s (1-based fine bin) holds [edges[s-1], edges[s]); display edge i is fine edge bounds[i], so the
            # values below it are slots 0..bounds[i]: cumulative[bounds[i] + 1].
            below = cumulative[bounds + 1]
            by_label[label] = {
                "underflow": int(below[0]),
                "counts": np.diff(below).astype(int).tolist(),
                "overflow": int(cumulative[-1] - below[-1]),
            }
        return {
            "title": self.spec.title,
            "xlabel": self.spec.xlabel,
            "log_x": self.spec.log_x,
            "integer": self.spec.integer,
            "unit": self.spec.unit,
            "edges": [round(float(e), 6) for e in display],
            "by_label": by_label,
            "summary": {
                label: {"n": int(n), "mean": round(total / n, 4), "min": low, "max": high}
                for label, (n, total, low, high) in sorted(self.stats.items())
            },
        }


def grouped(hist: dict[str, Any], kept_label: str = "kept", all_label: str = "all") -> dict[str, dict[str, Any]]:
    """The per-label counts of a histogram's JSON summed into kept / dropped (or all, for metadata-only input)."""
    groups: dict[str, dict[str, Any]] = {}
    for label, part in hist["by_label"].items():
        group = label if label in (kept_label, all_label) else "dropped"
        into = groups.setdefault(group, {"underflow": 0, "counts": [0] * len(part["counts"]), "overflow": 0})
        into["underflow"] += part["underflow"]
        into["overflow"] += part["overflow"]
        into["counts"] = [a + b for a, b in zip(into["counts"], part["counts"], strict=True)]
    return groups
