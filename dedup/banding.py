"""Candidate pairs by banding a signature (multi-index hashing for pHash, LSH for MinHash), as Beam transforms.

Each pair's signature is cut into ``n_bands`` bands; two pairs are candidates when one band is equal,
and a scheme's ``close_pairs`` then keeps the candidates that really are near (Hamming distance,
Jaccard estimate). Grouping on a band value is a GroupByKey; to keep Beam's per-element cost
(~15 us per shuffled element on the DirectRunner) off the 1M-pair path, rows travel in batches:
each batch of rows becomes, per band, one element per *shard* (a hash of the band value cut to
``shard_bits`` bits) holding numpy arrays, and each shard group is sorted on the band value so
that equal values form runs, which are the band-value groups. The bytes shuffled are the same as
one element per row and band; the element count falls from ``rows x bands`` to about
``batches x bands x 2**shard_bits``.

Within a run, rows with an identical signature collapse onto their smallest key (the
*representative*): they are near each other and have the same neighbours, so only
representatives enter the pair graph (see ``resolve.follow_representatives``), and a thousand
copies of one image cost a thousand rows, not half a million pairs. A pair near in several bands
is emitted only from the first band it agrees on, so every edge exists once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import apache_beam as beam
import numpy as np
from apache_beam import pvalue

DEFAULT_SHARD_BITS = 8
# Rows a shard is sized to hold, so that small inputs get few shards: a shard group costs Beam ~0.3 ms whatever
# its size, and 256 of them per band were most of a small select (bench/bench_web.py's 4,565 pairs: 2.30-2.72 s
# with 256 shards, 1.62-1.89 s with 1 and 4, the same decisions). 4,096 gives the 256 of DEFAULT_SHARD_BITS at 1M rows.
ROWS_PER_SHARD = 4096
# Rows per batch before sharding: ~8k rows amortise Beam's per-element cost; a batch's arrays stay a few MB.
BATCH_SIZE = 8192
# Runs of at most this many representatives in a band group are paired and checked all at once (near()); larger
# ones run by run (close_pairs), as their pairs grow as the square.
_VECTOR_RUN = 64


def shard_bits_for(rows: int | None, most: int = DEFAULT_SHARD_BITS) -> int:
    """Shard bits for a pass over at most ``rows`` rows (None: not known, ``most``): about ROWS_PER_SHARD a shard."""
    if rows is None:
        return most
    return max(0, min(most, math.ceil(math.log2(max(rows, 1) / ROWS_PER_SHARD))))


class BandScheme(Protocol):
    """What a signature is, how it is banded, and when two signatures are near."""

    n_bands: int

    def band_keys(self, payload: np.ndarray) -> np.ndarray:
        """uint64 [n, n_bands]: equal values in a column = the band agrees."""
        ...

    def identity(self, payload: np.ndarray) -> np.ndarray:
        """uint64 [n]: equal = identical signatures."""
        ...

    def close_pairs(self, payload: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index pairs ``(i, j)``, ``i < j``, of rows of ``payload`` that are near."""
        ...

    def near(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """bool [n]: row k of ``first`` is near row k of ``second``."""
        ...


def splitmix64(values: np.ndarray) -> np.ndarray:
    """A 64-bit mixer (SplitMix64's finaliser): spreads band values over shards evenly, whatever their bits."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


# A batch as it travels: keys and partition ids (UTF-8 bytes: a quarter of numpy's 4-byte unicode), signatures
# (None when the group does not verify), band keys up to the group's band, identities; numpy arrays, row-aligned.
Batch = tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]


def _utf8(values: list[str]) -> np.ndarray:
    # UTF-8 byte order is code point order, so sorting these sorts the strings.
    return np.array([v.encode("utf-8") for v in values], dtype=bytes)


def _shard_batch(
    rows: list[tuple[str, str, Any]], scheme: BandScheme, shard_bits: int,
    to_payload: Callable[[list[Any]], np.ndarray], ship_payload: bool,
) -> Iterator[tuple[tuple[int, int], Batch]]:
    keys = _utf8([r[0] for r in rows])
    partitions = _utf8([r[1] for r in rows])
    payload = to_payload([r[2] for r in rows])
    bands = scheme.band_keys(payload)
    identity = scheme.identity(payload)
    for band in range(scheme.n_bands):
        shards = (splitmix64(bands[:, band]) >> np.uint64(64 - shard_bits)).astype(np.int64)
        order = np.argsort(shards, kind="stable")
        cuts = np.flatnonzero(np.diff(shards[order])) + 1
        for chunk in np.split(order, cuts):
            # Only this band and the earlier ones travel: the group needs no later band.
            yield (band, int(shards[chunk[0]])), (
                keys[chunk], partitions[chunk], payload[chunk] if ship_payload else None,
                bands[chunk, : band + 1], identity[chunk],
            )


def _all_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    i, j = np.triu_indices(n, k=1)
    return i.astype(np.int64), j.astype(np.int64)


class _PairsInShard(beam.DoFn):
    """One (band, shard) group -> edges between near representatives (candidates only, when the group does not
    verify), and rows identical to a representative (from band 0 only, so each once)."""

    def __init__(self, scheme: BandScheme, verify: bool) -> None:
        self.scheme = scheme
        self.verify = verify

    def process(self, element: tuple[tuple[int, int], list[Batch]]):
        (band, _), parts = element
        parts = list(parts)
        keys = np.concatenate([p[0] for p in parts])
        partitions = np.concatenate([p[1] for p in parts])
        payload = np.concatenate([p[2] for p in parts]) if self.verify else None
        bands = np.concatenate([p[3] for p in parts])
        identity = np.concatenate([p[4] for p in parts])
        order = np.lexsort((keys, identity, bands[:, band]))
        keys, partitions, bands, identity = keys[order], partitions[order], bands[order], identity[order]
        if payload is not None:
            payload = payload[order]
        if len(keys) < 2:
            return
        values = bands[:, band]
        run_start = np.concatenate(([True], values[1:] != values[:-1]))  # runs of one band value
        # A representative: the first row of its identity within its run (rows are in (value, identity, key) order).
        first = run_start | np.concatenate(([True], identity[1:] != identity[:-1]))
        if band == 0 and not first.all():
            # Rows identical to the one before them: their representative is the first row of their identity run.
            rep_of = np.maximum.accumulate(np.where(first, np.arange(len(first)), 0))
            for row in np.flatnonzero(~first).tolist():
                yield pvalue.TaggedOutput("same", (keys[row].decode(), partitions[row].decode(),
                                                   keys[rep_of[row]].decode()))
        reps = np.flatnonzero(first)
        a, b = self._near_representatives(reps, (np.cumsum(run_start) - 1)[reps], payload)
        if band > 0 and len(a):
            # Emitted by the first band the two agree on, so each edge exists once.
            earlier = (bands[a, :band] == bands[b, :band]).any(axis=1)
            a, b = a[~earlier], b[~earlier]
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            kx, ky = keys[x].decode(), keys[y].decode()
            if kx < ky:
                yield kx, partitions[x].decode(), ky, partitions[y].decode()
            else:
                yield ky, partitions[y].decode(), kx, partitions[x].decode()

    def _near_representatives(self, reps: np.ndarray, run_of_rep: np.ndarray,
                              payload: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Row pairs ``(a, b)`` of representatives in one run: the near ones (by ``payload``), or every candidate
        pair when the group does not verify (``payload`` None).

        Runs of up to ``_VECTOR_RUN`` representatives are paired all at once (most runs hold two or three: a
        scheme's ``close_pairs`` per run cost ~50 us each, 5,337 runs of bench/bench_web.py's 4,565 pairs); the
        larger ones, whose pairs grow as the square, one by one (faiss for the largest).
        """
        empty = np.empty(0, dtype=np.int64)
        if len(reps) < 2:
            return empty, empty
        group_start = np.flatnonzero(np.concatenate(([True], run_of_rep[1:] != run_of_rep[:-1])))
        sizes = np.diff(np.concatenate((group_start, [len(reps)])))
        group_of = np.repeat(np.arange(len(sizes)), sizes)
        # Each representative of a small run is paired with the later ones of its run: (i, i + 1 ... end - 1).
        later = np.where(sizes[group_of] <= _VECTOR_RUN, sizes[group_of] - 1 - (np.arange(len(reps)) -
                                                                                 group_start[group_of]), 0)
        i = np.repeat(np.arange(len(reps)), later)
        j = i + 1 + np.arange(len(i)) - np.repeat(np.cumsum(later) - later, later)
        if payload is not None and len(i):
            near = self.scheme.near(payload[reps[i]], payload[reps[j]])
            i, j = i[near], j[near]
        found_a, found_b = [reps[i]], [reps[j]]
        for start, size in zip(group_start[sizes > _VECTOR_RUN].tolist(), sizes[sizes > _VECTOR_RUN].tolist(),
                               strict=True):
            members = reps[start : start + size]
            gi, gj = self.scheme.close_pairs(payload[members]) if payload is not None else _all_pairs(size)
            found_a.append(members[gi])
            found_b.append(members[gj])
        return np.concatenate(found_a).astype(np.int64), np.concatenate(found_b).astype(np.int64)


class BandedPairs(beam.PTransform):
    """``(key, partition_id, signature value)`` tuples -> ``edges`` and ``same`` (tagged outputs).

    ``to_payload`` turns a list of signature values into the scheme's numpy payload (row per value). With
    ``verify_in_group`` the payload travels with every band and the groups emit only near pairs; without it only
    the band keys travel and the groups emit every candidate pair (for big signatures, verified afterwards).
    """

    def __init__(self, scheme: BandScheme, to_payload: Callable[[list[Any]], np.ndarray],
                 shard_bits: int = DEFAULT_SHARD_BITS, verify_in_group: bool = True) -> None:
        super().__init__()
        self.scheme = scheme
        self.to_payload = to_payload
        self.shard_bits = shard_bits
        self.verify_in_group = verify_in_group

    def expand(self, members: beam.PCollection) -> pvalue.DoOutputsTuple:
        scheme, shard_bits, to_payload, verify = self.scheme, self.shard_bits, self.to_payload, self.verify_in_group
        return (
            members
            | "Batch" >> beam.BatchElements(min_batch_size=1024, max_batch_size=BATCH_SIZE)
            | "ShardByBand" >> beam.FlatMap(lambda rows: _shard_batch(rows, scheme, shard_bits, to_payload, verify))
            | "GroupByBandShard" >> beam.GroupByKey()
            | "PairsInShard" >> beam.ParDo(_PairsInShard(scheme, verify)).with_outputs("same", main="edges")
        )
