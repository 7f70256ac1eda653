"""Samples that do not depend on the order of files and batches: bottom-k by a hash of the key.

The hash is the one ingest's thumbnail sample uses (``transforms.thumbnails.sample_hash``), so the
pairs a gallery samples are the ones whose thumbnails ingest kept.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

import numpy as np

from altsieve.transforms.thumbnails import sample_hash


def key_hashes(keys: list[Any]) -> np.ndarray:
    """The hash every sample is taken by: the one ingest's thumbnail sample uses, so the gallery finds them."""
    return np.fromiter((sample_hash(k) for k in keys), dtype=np.int64, count=len(keys))


class BottomK:
    """Per label, the ``k`` rows with the smallest hash: a sample that does not depend on the order of the rows."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.heaps: dict[str, list[tuple[int, str, dict[str, Any]]]] = {}  # -hash, key, row: root = largest kept

    def add(self, label: str, rows: np.ndarray, hashes: np.ndarray, keys: list[Any],
            make: Callable[[int], dict[str, Any]]) -> None:
        if self.k <= 0 or rows.size == 0:
            return
        if rows.size > self.k:
            rows = rows[np.argpartition(hashes[rows], self.k - 1)[: self.k]]
        heap = self.heaps.setdefault(label, [])
        for row in rows.tolist():
            item = (-int(hashes[row]), str(keys[row]))
            if len(heap) == self.k and item <= heap[0][:2]:
                continue
            entry = (*item, make(row))
            if len(heap) < self.k:
                heapq.heappush(heap, entry)
            else:
                heapq.heapreplace(heap, entry)

    def rows(self, label: str) -> list[dict[str, Any]]:
        """The label's sample, smallest hash first."""
        return [row for _, _, row in sorted(self.heaps.get(label, []), key=lambda item: (-item[0], item[1]))]
