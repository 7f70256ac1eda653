"""Semantic duplicates (SemDeDup, Abbas et al. 2023) on CLIP image embeddings, as Beam transforms.

1. A uniform sample of the embeddings (the ``sample_size`` keys with the smallest seeded hash,
   a bottom-k sample, so reruns draw the same one) trains spherical k-means (faiss).
2. Each partition's embeddings are assigned to their nearest centroid; a GroupByKey on the
   cluster brings each cluster to one worker.
3. Within a cluster, pairs are ordered as the paper does (farthest from the centroid first, the
   paper's choice; or smallest key first) and, as in the paper, a pair is dropped when its cosine
   with any pair before it is at least ``1 - eps``. ``duplicate_of`` names the kept pair its most
   similar earlier pair leads to (that pair, or the one it was dropped for, and so on): a kept
   pair of the same duplicate chain, which on a chain may be further than eps away. (pHash and
   captions keep both ends of a chain instead, see ``resolve``; here the paper's rule is kept so
   that its eps and removal rates carry over.)
4. With ``target_fraction``, eps is chosen first: each pair's highest cosine with an earlier pair
   of its cluster (the score step 3 compares with 1 - eps) goes into a histogram, and
   the histograms of 1 - cosine (log scale, 200 bins a decade) are summed, and eps is the highest
   bin edge with at most that share of the pairs below it. The chosen eps is written to
   ``_altsieve/semantic_dedup.json``.

Pairs without an embedding are left alone. Duplicates in different clusters are not found (as in
the paper). Shuffled per pair: the key, the partition id, the float16 embedding and a float32
(~1,050 bytes at D = 512) once, for the cluster GroupByKey; the sample (``sample_size`` x D x 4
bytes) goes to one worker to train the centroids, which every worker then reads.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np

from altsieve.core import reasons
from altsieve.dedup.embeddings import image_embeddings_for, unit_rows
from altsieve.filters.corpus import CorpusRule, Drop

log = logging.getLogger("altsieve")

# k-means wants enough points per centroid (faiss warns below 39): fewer clusters for a small sample.
MIN_POINTS_PER_CLUSTER = 40
KMEANS_ITERATIONS = 20
# The target-fraction histogram is over 1 - cosine on a log scale, 200 bins a decade from 1e-9 to 2: eps values
# that matter sit near 0 (SemDeDup: 0.00095), where equal-width bins would lump most duplicates into one bin.
_BINS_PER_DECADE = 200
_LOWEST_DECADE = -9
HISTOGRAM_BINS = int((math.log10(2.0) - _LOWEST_DECADE) * _BINS_PER_DECADE) + 1
_MAX_U64 = np.iinfo(np.uint64).max

# (partition_id, wanted keys) -> (keys found, unit float32 embeddings)
Loader = Callable[[str, list[str]], tuple[list[str], np.ndarray]]


def priorities(keys: Iterable[str], seed: int) -> np.ndarray:
    """A seeded 64-bit hash of each key: the sample is the keys with the smallest ones (uniform, rerun-stable)."""
    salt = seed.to_bytes(8, "little", signed=True)
    return np.array(
        [int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8, salt=salt).digest(), "little") for k in keys],
        dtype=np.uint64,
    )


class _BottomK(beam.CombineFn):
    """The k smallest uint64 values of the whole PCollection of arrays."""

    def __init__(self, k: int) -> None:
        self.k = k

    def create_accumulator(self) -> np.ndarray:
        return np.empty(0, dtype=np.uint64)

    def _trim(self, values: np.ndarray) -> np.ndarray:
        if len(values) > self.k:
            values = np.partition(values, self.k - 1)[: self.k]
        return values

    def add_input(self, accumulator: np.ndarray, values: np.ndarray) -> np.ndarray:
        return self._trim(np.concatenate([accumulator, values]))

    def merge_accumulators(self, accumulators: Iterable[np.ndarray]) -> np.ndarray:
        return self._trim(np.concatenate(list(accumulators)))

    def extract_output(self, accumulator: np.ndarray) -> int:
        # Every key at or below this priority is in the sample; all of them when there are fewer than k.
        return int(accumulator.max()) if len(accumulator) >= self.k else int(_MAX_U64)


class _ConcatSample(beam.CombineFn):
    """(priorities, vectors) pieces -> one sample, in priority order (so training does not depend on arrival)."""

    def create_accumulator(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return []

    def add_input(self, accumulator: list, piece: tuple[np.ndarray, np.ndarray]) -> list:
        if len(piece[0]):
            accumulator.append(piece)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[list]) -> list:
        return [piece for accumulator in accumulators for piece in accumulator]

    def extract_output(self, accumulator: list) -> np.ndarray | None:
        if not accumulator:
            return None
        prios = np.concatenate([p for p, _ in accumulator])
        vectors = np.concatenate([v for _, v in accumulator])
        return vectors[np.argsort(prios, kind="stable")]


def train_centroids(sample: np.ndarray | None, n_clusters: int, seed: int) -> np.ndarray | None:
    """Spherical k-means on the sample -> unit centroids [k, D]; k shrinks so each has >= 40 sample points."""
    if sample is None or len(sample) == 0:
        return None
    import faiss

    sample = unit_rows(sample)
    k = max(1, min(n_clusters, len(sample) // MIN_POINTS_PER_CLUSTER))
    if k == 1:
        return unit_rows(sample.mean(axis=0, keepdims=True))
    kmeans = faiss.Kmeans(sample.shape[1], k, niter=KMEANS_ITERATIONS, seed=seed, spherical=True, verbose=False)
    kmeans.train(sample)
    return unit_rows(kmeans.centroids)


def bottom_priorities(element: tuple[str, list[str]], seed: int, sample_size: int) -> np.ndarray:
    """A partition's ``sample_size`` smallest key priorities (all of them when it has fewer)."""
    values = priorities(element[1], seed)
    return np.partition(values, sample_size - 1)[:sample_size] if len(values) > sample_size else values


def sample_piece(element: tuple[str, list[str]], limit: int, seed: int,
                 loader: Loader) -> tuple[np.ndarray, np.ndarray]:
    """A partition's sampled keys (priority at or below ``limit``): their priorities and unit embeddings."""
    partition_id, keys = element
    prios = priorities(keys, seed)
    chosen = [key for key, prio in zip(keys, prios.tolist(), strict=True) if prio <= limit]
    found, vectors = loader(partition_id, chosen) if chosen else ([], None)
    if not found:
        return np.empty(0, dtype=np.uint64), np.empty((0, 0), dtype=np.float32)
    return priorities(found, seed), vectors


class SampledCentroids(beam.PTransform):
    """``(partition_id, sorted keys)`` -> one element: spherical k-means centroids of a seeded uniform sample of
    the partitions' embeddings (the ``sample_size`` smallest key priorities overall), or None for no embedding."""

    def __init__(self, loader: Loader, n_clusters: int, sample_size: int, seed: int) -> None:
        super().__init__()
        self.loader, self.n_clusters, self.sample_size, self.seed = loader, n_clusters, sample_size, seed

    def expand(self, by_partition: beam.PCollection) -> beam.PCollection:
        seed, sample_size = self.seed, self.sample_size
        threshold = (
            by_partition
            | "Priorities" >> beam.Map(bottom_priorities, seed=seed, sample_size=sample_size)
            | "SampleThreshold" >> beam.CombineGlobally(_BottomK(sample_size))
        )
        return (
            by_partition
            | "SamplePieces" >> beam.Map(sample_piece, limit=beam.pvalue.AsSingleton(threshold), seed=seed,
                                         loader=self.loader)
            | "Sample" >> beam.CombineGlobally(_ConcatSample())
            | "KMeans" >> beam.Map(train_centroids, n_clusters=self.n_clusters, seed=seed)
        )


def _assign(
    element: tuple[str, list[str]], centroids: np.ndarray | None, loader: Loader
) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]]:
    """One partition -> per cluster: (keys, partition ids, float16 embeddings, cosine to the centroid)."""
    partition_id, wanted = element
    if centroids is None:
        return
    keys, vectors = loader(partition_id, wanted)
    if not keys:
        return
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids)
    similarity, nearest = index.search(vectors, 1)
    clusters, cosines = nearest[:, 0], similarity[:, 0]
    keys_array = np.array(keys)
    order = np.argsort(clusters, kind="stable")
    cuts = np.flatnonzero(np.diff(clusters[order])) + 1
    for chunk in np.split(order, cuts):
        yield int(clusters[chunk[0]]), (
            keys_array[chunk],
            np.full(len(chunk), partition_id),
            vectors[chunk].astype(np.float16),
            cosines[chunk].astype(np.float32),
        )


def _cluster_arrays(parts: Iterable[tuple[np.ndarray, ...]], keep: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate a cluster's pieces, in the order of preference: (keys, partition ids, unit vectors)."""
    parts = list(parts)
    keys = np.concatenate([p[0] for p in parts])
    partitions = np.concatenate([p[1] for p in parts])
    vectors = np.concatenate([p[2] for p in parts])
    cosines = np.concatenate([p[3] for p in parts])
    # Farthest from the centroid = lowest cosine first; key order breaks ties, so arrival order never matters.
    order = np.lexsort((keys, cosines)) if keep == "farthest_from_centroid" else np.argsort(keys, kind="stable")
    return keys[order], partitions[order], unit_rows(vectors[order])


def _block_rows(n: int) -> int:
    # Similarity blocks of at most ~64 MB of float32.
    return max(16, min(512, (1 << 24) // max(n, 1)))


def drops_in_order(keys: np.ndarray, partitions: np.ndarray, vectors: np.ndarray,
                   cos_min: float, reason: str) -> Iterator[Drop]:
    """SemDeDup within one cluster, rows in the order of preference: drop a row whose cosine with any earlier row
    is >= ``cos_min``; ``duplicate_of`` is the kept row its most similar earlier row leads to."""
    n = len(keys)
    best, parent = max_earlier_similarity(vectors, with_argmax=True)
    representative = np.arange(n)
    for i in np.flatnonzero(best >= cos_min).tolist():  # ascending: a parent's representative is already known
        representative[i] = representative[parent[i]]
        yield str(partitions[i]), (str(keys[i]), reason, str(keys[representative[i]]))


def max_earlier_similarity(vectors: np.ndarray, with_argmax: bool = False) -> Any:
    """Each row's highest cosine with a row before it (the paper's per-pair score; -1 for the first row), and with
    ``with_argmax`` also which row that is."""
    n = len(vectors)
    best = np.full(n, -1.0, dtype=np.float32)
    which = np.zeros(n, dtype=np.int64)
    step = _block_rows(n)
    for start in range(1, n, step):
        end = min(n, start + step)
        similarity = vectors[start:end] @ vectors[:end].T
        # Only rows before each row count: column < row.
        similarity[np.arange(end - start)[:, None] <= np.arange(end)[None, :] - start] = -np.inf
        which[start:end] = similarity.argmax(axis=1)
        best[start:end] = similarity[np.arange(end - start), which[start:end]]
    return (best, which) if with_argmax else best


def histogram(best: np.ndarray) -> np.ndarray:
    """Counts of ``1 - best`` (each pair's distance to its most similar earlier pair) in the log-scale bins."""
    distance = np.clip(1.0 - best.astype(np.float64), 10.0**_LOWEST_DECADE, 2.0)
    bins = np.floor((np.log10(distance) - _LOWEST_DECADE) * _BINS_PER_DECADE).astype(np.int64)
    return np.bincount(np.clip(bins, 0, HISTOGRAM_BINS - 1), minlength=HISTOGRAM_BINS)


def threshold_for_fraction(counts: np.ndarray, target_fraction: float) -> float:
    """The smallest eps (a bin edge) below which as many pairs' distances lie as ``target_fraction`` allows.

    Pairs with ``1 - cosine < eps`` are the ones dropped; 0 when even the first bin holds too many.
    """
    allowed = target_fraction * int(counts.sum())
    cumulative = np.cumsum(counts)  # pairs in bins 0..k
    within = np.flatnonzero(cumulative <= allowed)
    if len(within) == 0 or cumulative[within[-1]] == 0:
        return 0.0
    # The tightest eps that drops that many: the upper edge of the first bin reaching the count.
    first = int(np.argmax(cumulative == cumulative[within[-1]]))
    return float(10.0 ** ((first + 1) / _BINS_PER_DECADE + _LOWEST_DECADE))


class _SumHistograms(beam.CombineFn):
    def create_accumulator(self) -> np.ndarray:
        return np.zeros(HISTOGRAM_BINS, dtype=np.int64)

    def add_input(self, accumulator: np.ndarray, counts: np.ndarray) -> np.ndarray:
        accumulator += counts
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[np.ndarray]) -> np.ndarray:
        return np.sum(list(accumulators), axis=0)

    def extract_output(self, accumulator: np.ndarray) -> np.ndarray:
        return accumulator


def _write_choice(output: str, record: dict[str, Any]) -> None:
    from altsieve.core import fsutil, layout

    fsutil.write_json(layout.meta(output, "semantic_dedup.json"), record)


class SemanticDuplicateFilter(CorpusRule):
    """Rows -> ``duplicate_semantic`` drops, from the partitions' CLIP image embeddings (see the module docstring):
    the ClipScore stage's ``_embeddings.npz`` beside each candidate shard of ``output``."""

    columns = ("key", "partition_id")

    def __init__(self, output: str, eps: float = 0.00095, target_fraction: float | None = None,
                 n_clusters: int = 1000, sample_size: int = 100_000, keep: str = "farthest_from_centroid",
                 seed: int = 0) -> None:
        super().__init__()
        if keep not in ("farthest_from_centroid", "smallest_key"):
            raise ValueError(f"keep must be farthest_from_centroid or smallest_key, got {keep!r}")
        self.output = output
        self.eps, self.target_fraction = eps, target_fraction
        self.n_clusters, self.sample_size, self.keep, self.seed = n_clusters, sample_size, keep, seed
        self.loader: Loader = functools.partial(image_embeddings_for, output)

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        loader, seed, sample_size, keep = self.loader, self.seed, self.sample_size, self.keep
        n_clusters, output, target, eps = self.n_clusters, self.output, self.target_fraction, self.eps
        reason = reasons.DUPLICATE_SEMANTIC
        by_partition = (
            rows
            | "KeyByPartition" >> beam.Map(lambda row: (row["partition_id"], row["key"]))
            | "GroupByPartition" >> beam.GroupByKey()
            | "SortKeys" >> beam.Map(lambda element: (element[0], sorted(element[1])))
        )

        # 1. The sample: the sample_size smallest priorities overall, then their embeddings, then k-means.
        centroids = by_partition | "Centroids" >> SampledCentroids(loader, n_clusters, sample_size, seed)

        # 2. Clusters.
        clusters = (
            by_partition
            | "Assign" >> beam.FlatMap(_assign, centroids=beam.pvalue.AsSingleton(centroids), loader=loader)
            | "GroupByCluster" >> beam.GroupByKey()
        )

        # 3./4. The threshold (given, or chosen for the target share), then the drops of each cluster.
        if target is not None:
            def cluster_histogram(element: tuple[int, Iterable[tuple[np.ndarray, ...]]]) -> np.ndarray:
                _, _, vectors = _cluster_arrays(element[1], keep)
                return histogram(max_earlier_similarity(vectors))

            def choose(counts: np.ndarray) -> float:
                chosen = threshold_for_fraction(counts, target)
                # Drop when 1 - cosine < eps, i.e. cosine > 1 - eps: the next float up keeps the bin edge out.
                cos_min = float(np.nextafter(np.float32(1.0 - chosen), np.float32(2.0))) if chosen else 2.0
                record = {"target_fraction": target, "eps": chosen, "cos_min": 1.0 - chosen,
                          "pairs_considered": int(counts.sum())}
                log.info("semantic dedup: %s", json.dumps(record))
                _write_choice(output, record)
                return cos_min

            cos_min: Any = beam.pvalue.AsSingleton(
                clusters
                | "ClusterHistograms" >> beam.Map(cluster_histogram)
                | "SumHistograms" >> beam.CombineGlobally(_SumHistograms())
                | "ChooseEps" >> beam.Map(choose)
            )
        else:
            cos_min = 1.0 - eps

        def drops_in_cluster(element: tuple[int, Iterable[tuple[np.ndarray, ...]]], cos_min: float) -> Iterator[Drop]:
            keys, partitions, vectors = _cluster_arrays(element[1], keep)
            yield from drops_in_order(keys, partitions, vectors, cos_min, reason)

        return clusters | "DropsInCluster" >> beam.FlatMap(drops_in_cluster, cos_min=cos_min)
