"""Near-duplicate captions: MinHash (datasketch) of character shingles, LSH banding, Jaccard threshold.

Captions are normalised (Unicode NFKC, case-folded, whitespace collapsed) and cut into character
shingles of ``shingle_size`` (characters, so that Chinese and Japanese captions, which have no
spaces, shingle as well as English). datasketch computes each caption's MinHash; its
``MinHashLSH`` parameters give the bands ``b`` and rows ``r`` that suit the threshold, and each
band (``r`` hash values, hashed to 64 bits) is a band key for ``banding.BandedPairs``: the
candidates sharing a band value are checked with the MinHash Jaccard estimate (datasketch's:
the share of equal hash values), and ``resolve``'s greedy rule in key order keeps one pair of
each cluster. Identical captions have identical signatures and collapse onto their smallest key
before any pair is formed.

Shuffled per pair: once per band, the key, the partition id, the band keys up to that band and
an 8-byte identity (~80 bytes x 9 bands = ~700 bytes at the defaults: threshold 0.8 gives 9 bands
of 13 rows); then the candidates are checked against the MinHash signatures in two joins that
carry each caption (~100 bytes twice) and, per candidate pair, one 512-byte signature. Shipping the
signature with every band instead would be ~5.5 KB a pair. Then each near pair ~60 bytes per
resolution round.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from typing import Any

import apache_beam as beam
import numpy as np

from altsieve.core import reasons
from altsieve.dedup.banding import BandedPairs
from altsieve.dedup.resolve import DEFAULT_ROUNDS, drops_from_edges
from altsieve.filters.corpus import CorpusRule

_SPACES = re.compile(r"\s+")
# Band groups of captions are mostly single rows (a band agrees by chance with probability ~2**-64), so fewer
# shards than pHash's keep the element count per batch low: 9 bands x 64 shards per 8192-row batch.
CAPTION_SHARD_BITS = 6


def normalise(caption: str) -> str:
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", caption).casefold()).strip()


def shingles(caption: str, size: int) -> list[bytes]:
    """Distinct character shingles of the normalised caption (the whole caption when shorter than ``size``)."""
    text = normalise(caption)
    if len(text) <= size:
        return [text.encode("utf-8")] if text else []
    return sorted({text[i : i + size].encode("utf-8") for i in range(len(text) - size + 1)})


@functools.lru_cache(maxsize=8)
def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) datasketch's MinHashLSH picks for this threshold (equal weight on both errors)."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r


def signatures(captions: list[str], num_perm: int, shingle_size: int) -> np.ndarray:
    """[n, num_perm] MinHash values (datasketch, seed 1, its dtype: uint32 for the default scheme)."""
    from datasketch import MinHash

    hashes = MinHash.bulk([shingles(c, shingle_size) for c in captions], num_perm=num_perm, seed=1)
    if not hashes:
        return np.zeros((0, num_perm), dtype=np.uint32)
    return np.stack([m.hashvalues for m in hashes])


class MinHashScheme:
    """MinHash signatures banded for LSH; near = Jaccard estimate >= ``threshold``."""

    def __init__(self, threshold: float, num_perm: int) -> None:
        self.threshold = threshold
        self.num_perm = num_perm
        self.n_bands, self.rows = lsh_bands(threshold, num_perm)

    @staticmethod
    def _digest(block: np.ndarray) -> np.ndarray:
        return np.array(
            [int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little") for row in block],
            dtype=np.uint64,
        )

    def band_keys(self, payload: np.ndarray) -> np.ndarray:
        columns = [self._digest(np.ascontiguousarray(payload[:, b * self.rows : (b + 1) * self.rows]))
                   for b in range(self.n_bands)]
        return np.stack(columns, axis=1)

    def identity(self, payload: np.ndarray) -> np.ndarray:
        return self._digest(np.ascontiguousarray(payload))

    def close_pairs(self, payload: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(payload)
        found_i, found_j = [], []
        step = max(1, min(256, (1 << 24) // max(1, n * payload.shape[1])))  # <= 16 MB of comparisons at once
        for start in range(0, n, step):
            block = payload[start : start + step]
            # datasketch's MinHash.jaccard: the share of equal hash values.
            jaccard = (block[:, None, :] == payload[None, :, :]).mean(axis=2)
            rows, cols = np.nonzero(jaccard >= self.threshold)
            rows = rows + start
            later = cols > rows
            found_i.append(rows[later])
            found_j.append(cols[later])
        i, j = np.concatenate(found_i), np.concatenate(found_j)
        order = np.lexsort((j, i))
        return i[order].astype(np.int64), j[order].astype(np.int64)

    def near(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        return (first == second).mean(axis=1) >= self.threshold  # datasketch's MinHash.jaccard, row by row


def _attach_first(element: tuple[str, dict[str, list[Any]]], num_perm: int, shingle_size: int):
    """Candidate pairs keyed by their smaller key: its signature, computed once, rides to the larger key."""
    _, joined = element
    if not joined["edges"] or not joined["caption"]:
        return
    signature = signatures(joined["caption"][:1], num_perm, shingle_size)[0]
    for edge in joined["edges"]:
        yield edge[2], (edge, signature)


def _verify_second(element: tuple[str, dict[str, list[Any]]], num_perm: int, shingle_size: int,
                   threshold: float):
    _, joined = element
    if not joined["edges"] or not joined["caption"]:
        return
    signature = signatures(joined["caption"][:1], num_perm, shingle_size)[0]
    for edge, other in joined["edges"]:
        if (signature == other).mean() >= threshold:  # datasketch's MinHash.jaccard
            yield edge


class CaptionDuplicateFilter(CorpusRule):
    """Rows with ``caption`` -> ``duplicate_caption`` drops (Jaccard of character shingles >= threshold)."""

    columns = ("key", "partition_id", "caption")

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, shingle_size: int = 5,
                 rounds: int = DEFAULT_ROUNDS, shard_bits: int = CAPTION_SHARD_BITS) -> None:
        super().__init__()
        self.scheme = MinHashScheme(threshold, num_perm)
        self.shingle_size = shingle_size
        self.rounds = rounds  # GreedyResolve's (resolve.rounds_for)
        self.shard_bits = shard_bits  # banding.shard_bits_for

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        num_perm, shingle_size, threshold = self.scheme.num_perm, self.shingle_size, self.scheme.threshold
        to_payload = functools.partial(signatures, num_perm=num_perm, shingle_size=shingle_size)
        members = (
            rows
            | "WithCaption" >> beam.Filter(lambda row: bool(row.get("caption") and normalise(row["caption"])))
            | "Members" >> beam.Map(lambda row: (row["key"], row["partition_id"], row["caption"]))
        )
        # The band groups carry band keys only; the candidates they give are checked afterwards against the
        # signatures, recomputed from the captions (~100 bytes a row shuffled instead of 512 a row per band).
        pairs = members | "Bands" >> BandedPairs(self.scheme, to_payload, self.shard_bits, verify_in_group=False)
        captions = members | "KeyCaptions" >> beam.Map(lambda member: (member[0], member[2]))
        first = (
            {"edges": pairs.edges | "BySmaller" >> beam.Map(lambda e: (e[0], e)), "caption": captions}
            | "JoinSmaller" >> beam.CoGroupByKey()
            | "SignSmaller" >> beam.FlatMap(_attach_first, num_perm=num_perm, shingle_size=shingle_size)
        )
        edges = (
            {"edges": first, "caption": captions}
            | "JoinLarger" >> beam.CoGroupByKey()
            | "Verify" >> beam.FlatMap(_verify_second, num_perm=num_perm, shingle_size=shingle_size,
                                       threshold=threshold)
        )
        return drops_from_edges(edges, pairs.same, reasons.DUPLICATE_CAPTION, self.rounds)
