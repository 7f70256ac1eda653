"""Histograms of the audited quantities: fixed bins, filled one batch at a time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class HistSpec:
    name: str
    title: str
    xlabel: str
    edges: np.ndarray
    log_x: bool = False
    # Published thresholds drawn on the plot: (value, label).
    markers: tuple[tuple[float, str], ...] = ()


HIST_SPECS: list[HistSpec] = [
    HistSpec("clip_score", "CLIP score", "image-text cosine similarity", np.round(np.arange(-0.1, 0.5001, 0.01), 3),
             markers=((0.28, "LAION-5B en 0.28"), (0.3, "LAION-400M 0.30"))),
    HistSpec("width", "Image width (original)", "pixels", np.geomspace(8, 16384, 45), log_x=True,
             markers=((200, "ALIGN/DataComp/COYO 200 px"),)),
    HistSpec("height", "Image height (original)", "pixels", np.geomspace(8, 16384, 45), log_x=True,
             markers=((200, "ALIGN/DataComp/COYO 200 px"),)),
    HistSpec("aspect_ratio", "Aspect ratio (width / height)", "width / height", np.geomspace(1 / 16, 16, 41),
             log_x=True, markers=((1 / 3, "1/3"), (3, "3 (ALIGN, DataComp, COYO)"))),
    HistSpec("caption_chars", "Caption length", "characters (last bin: 300 or more)", np.arange(0, 305, 5),
             markers=((5, "LAION < 5 chars"),)),
    HistSpec("caption_words", "Caption words", "whitespace-separated words (last bin: 64 or more)",
             np.arange(0, 65, 1), markers=((3, "ALIGN 3..20 words"), (20, ""))),
    HistSpec("bytes", "Downloaded file size", "bytes", np.geomspace(256, 64 * 2**20, 37), log_x=True,
             markers=((5 * 1024, "LAION/COYO 5 KB"),)),
]


class Histogram:
    """Fixed bins; values below the first edge fall in the first bin, above the last in the last one."""

    def __init__(self, spec: HistSpec) -> None:
        self.spec = spec
        self.counts: dict[str, np.ndarray] = {}
        self.stats: dict[str, list[float]] = {}  # group -> [n, sum, min, max]

    def add(self, group: str, values: np.ndarray) -> None:
        values = values[~np.isnan(values)]
        if values.size == 0:
            return
        nbins = len(self.spec.edges) - 1
        index = np.clip(np.searchsorted(self.spec.edges, values, side="right") - 1, 0, nbins - 1)
        counts = self.counts.setdefault(group, np.zeros(nbins, dtype=np.int64))
        counts += np.bincount(index, minlength=nbins)
        n, total, low, high = self.stats.get(group, [0, 0.0, np.inf, -np.inf])
        self.stats[group] = [n + values.size, total + float(values.sum()), min(low, float(values.min())),
                             max(high, float(values.max()))]

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.spec.title,
            "xlabel": self.spec.xlabel,
            "log_x": self.spec.log_x,
            "edges": [round(float(e), 6) for e in self.spec.edges],
            "markers": [list(m) for m in self.spec.markers],
            "counts": {group: counts.tolist() for group, counts in self.counts.items()},
            "summary": {
                group: {"n": int(n), "mean": round(total / n, 4), "min": low, "max": high}
                for group, (n, total, low, high) in self.stats.items()
            },
        }
