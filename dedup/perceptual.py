"""Perceptual duplicates: 64-bit pHash within ``max_distance`` bits of a kept pair with a smaller key.

Candidates come from multi-index hashing: the hash is cut into ``bands`` bands (default
``max_distance + 1``), and by pigeonhole two hashes within ``max_distance`` bits agree exactly on at
least one band, so grouping on each band value finds every such pair (no pair is missed; the
band groups only add candidates that the distance check then rejects). Within a band group the
Hamming distances are computed by numpy popcount for small groups and a faiss ``IndexBinaryFlat``
range search for large ones. Which pair of a cluster is kept is ``resolve``'s greedy rule in key
order, so ``duplicate_of`` always names a kept pair within the distance.

Shuffled per pair: the band groups see each row once per band (the key and partition id as UTF-8
bytes, the 8-byte hash, the band values up to that band: ~80 bytes pickled, times ``bands``: ~400
bytes at d = 4), then each near pair ~60 bytes per resolution round.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import numpy as np

from altsieve.core import reasons
from altsieve.dedup.banding import DEFAULT_SHARD_BITS, BandedPairs
from altsieve.dedup.resolve import DEFAULT_ROUNDS, drops_from_edges
from altsieve.filters.corpus import CorpusRule
from altsieve.filters.hashing import band_layout

# Above this many hashes in one band group, faiss's binary range search replaces the n x n numpy matrix.
_NUMPY_MAX_GROUP = 1024


def hamming_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``(i, j)``, ``i < j``, of uint64 hashes within ``max_distance`` bits, in (i, j) order."""
    n = len(hashes)
    if n < 2:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    if n <= _NUMPY_MAX_GROUP:
        distances = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
        i, j = np.nonzero(np.triu(distances <= max_distance, k=1))
        return i.astype(np.int64), j.astype(np.int64)
    try:
        import faiss
    except ImportError:  # the `dedup` extra is not installed: the same pairs, by numpy in row blocks
        found_i, found_j = [], []
        for start in range(0, n, _NUMPY_MAX_GROUP):
            block = np.bitwise_count(hashes[start : start + _NUMPY_MAX_GROUP, None] ^ hashes[None, :])
            rows, cols = np.nonzero(block <= max_distance)
            rows = rows + start
            found_i.append(rows[cols > rows])
            found_j.append(cols[cols > rows])
        return np.concatenate(found_i).astype(np.int64), np.concatenate(found_j).astype(np.int64)
    codes = np.ascontiguousarray(hashes.astype(np.uint64)).view(np.uint8).reshape(n, 8)
    index = faiss.IndexBinaryFlat(64)
    index.add(codes)
    limits, _, found = index.range_search(codes, max_distance + 1)  # faiss: distance < radius
    i = np.repeat(np.arange(n, dtype=np.int64), np.diff(limits).astype(np.int64))
    j = found.astype(np.int64)
    keep = i < j
    i, j = i[keep], j[keep]
    order = np.lexsort((j, i))
    return i[order], j[order]


class PHashScheme:
    """64-bit hashes (uint64), banded for multi-index hashing; near = within ``max_distance`` bits."""

    def __init__(self, max_distance: int, n_bands: int | None = None) -> None:
        self.max_distance = max_distance
        self.n_bands = n_bands if n_bands is not None else max_distance + 1
        if self.n_bands <= max_distance:
            raise ValueError(f"{self.n_bands} bands cannot guarantee pairs within {max_distance} bits share one")
        self.layout = band_layout(self.n_bands)

    def band_keys(self, payload: np.ndarray) -> np.ndarray:
        hashes = payload.astype(np.uint64)
        columns = [(hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1) for shift, width in self.layout]
        return np.stack(columns, axis=1)

    def identity(self, payload: np.ndarray) -> np.ndarray:
        return payload.astype(np.uint64)

    def close_pairs(self, payload: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return hamming_pairs(payload.astype(np.uint64), self.max_distance)

    def near(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        return np.bitwise_count(first.astype(np.uint64) ^ second.astype(np.uint64)) <= self.max_distance


def phash_payload(values: list[Any]) -> np.ndarray:
    """Parquet's signed int64 pHash values -> the uint64 hashes (same bits)."""
    return np.array(values, dtype=np.int64).view(np.uint64)


class PerceptualDuplicateFilter(CorpusRule):
    """Rows with ``phash`` (int64) -> drops ``duplicate_phash`` with the kept pair each is near."""

    columns = ("key", "partition_id", "phash")

    def __init__(self, max_distance: int = 4, bands: int | None = None, rounds: int = DEFAULT_ROUNDS,
                 shard_bits: int = DEFAULT_SHARD_BITS) -> None:
        super().__init__()
        self.scheme = PHashScheme(max_distance, bands)
        self.rounds = rounds  # GreedyResolve's (resolve.rounds_for)
        self.shard_bits = shard_bits  # banding.shard_bits_for

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        pairs = (
            rows
            | "WithHash" >> beam.Filter(lambda row: row.get("phash") is not None)
            | "Members" >> beam.Map(lambda row: (row["key"], row["partition_id"], row["phash"]))
            | "Bands" >> BandedPairs(self.scheme, phash_payload, self.shard_bits)
        )
        return drops_from_edges(pairs.edges, pairs.same, reasons.DUPLICATE_PHASH, self.rounds)
