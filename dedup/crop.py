"""Crop-robust near duplicates: signature neighbours verified by ORB + RANSAC, resolved as pHash is.

The ingest pass keeps each kept image's signature and local features in
``_candidates/{partition}_crop.npz`` (transforms/crop_features.py). Here:

1. each partition's file is read once, for the keys still in the corpus (a GroupByKey of the keys
   by partition, as the semantic rule reads its embeddings);
2. spherical k-means (faiss) trained on a seeded uniform sample of the signatures (semantic.py's
   bottom-k sample) gives clusters; each image goes to its nearest centroid, and a GroupByKey on
   the cluster brings each cluster to one worker;
3. within a cluster, each image's ``neighbours`` nearest by signature cosine are its candidates
   (both directions: a pair is a candidate when either is among the other's nearest), and each
   candidate is verified by ``crop_features.verify``; only verified pairs become edges;
4. the edges are resolved by the greedy rule of ``resolve`` in key order (a pair is dropped when
   it is near a kept pair with a smaller key), so ``duplicate_of`` names a kept pair it was
   verified against.

Cost: candidates are ``neighbours`` per image whatever the corpus size (a cluster of n images costs
n^2 signature products, n x neighbours verifications of ~0.3 ms), so the work grows linearly with
the corpus when ``n_clusters`` grows with it. Shuffled per pair: ~40 bytes to read the files, then
once, for the cluster GroupByKey, the key, partition id, float16 signature and the local features
(~5 KB: 96 ORB keypoints of 36 bytes and a ~1.5 KB thumbnail); then ~60 bytes per verified pair
per resolution round. Pairs in different clusters are not compared (as in SemDeDup).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np

from altsieve.core import reasons
from altsieve.dedup.embeddings import unit_rows
from altsieve.dedup.resolve import DEFAULT_ROUNDS, drops_from_edges
from altsieve.dedup.semantic import _BottomK, _ConcatSample, priorities, train_centroids
from altsieve.filters.corpus import CorpusRule
from altsieve.transforms import crop_features
from altsieve.transforms.crop_features import CropFeatures

# Sample points per cluster: a cluster is one worker's group, and ~1,000 sampled points (1 % of a 100,000 sample:
# ~10,000 images at 1M) keep the boundaries few, where pairs split across clusters are missed.
SAMPLE_PER_CLUSTER = 1000

# Descriptor votes: each ORB descriptor's nearest neighbours (within this many bits of 256; true correspondences
# measured at median 12, p90 26) count for their images. faiss's exact search up to this many descriptors, HNSW above.
_VOTE_NEIGHBOURS = 4
_VOTE_MAX_BITS = 40
# Only each image's strongest descriptors vote and are voted for (extract() stores them strongest first): 3x fewer
# than all 96, for the same candidate recall on the test corpus.
_VOTE_DESCRIPTORS = 32
_FLAT_MAX_DESCRIPTORS = 20_000

# One member of a cluster group: key, partition id, its features (signature included).
Member = tuple[str, str, CropFeatures]


def read_members(output: str, partition_id: str, wanted: Iterable[str]) -> list[Member]:
    """The wanted keys of a partition that have crop features (others were ingested without them)."""
    path = crop_features.crop_path(output, partition_id)
    from altsieve.core import fsutil

    if not fsutil.exists(path):
        return []
    arrays = crop_features.load_arrays(path)
    position = {str(key): row for row, key in enumerate(arrays["key"].tolist())}
    return [(key, partition_id, crop_features.unpack(arrays, position[key])) for key in sorted(wanted)
            if key in position]


def candidate_pairs(signatures: np.ndarray, neighbours: int) -> np.ndarray:
    """Index pairs ``[m, 2]`` (i < j) where j is among i's ``neighbours`` nearest by cosine or i among j's."""
    n = len(signatures)
    if n < 2:
        return np.empty((0, 2), dtype=np.int64)
    k = min(neighbours, n - 1)
    found = []
    step = max(16, min(1024, (1 << 22) // n))  # similarity blocks of <= 16 MB
    for start in range(0, n, step):
        block = signatures[start : start + step] @ signatures.T
        rows = np.arange(block.shape[0])
        block[rows, rows + start] = -np.inf  # not itself
        nearest = np.argpartition(-block, k - 1, axis=1)[:, :k]
        i = np.repeat(np.arange(start, start + block.shape[0]), k)
        found.append(np.stack([i, nearest.ravel()], axis=1))
    pairs = np.sort(np.concatenate(found), axis=1)
    return np.unique(pairs, axis=0)


def vote_pairs(descriptors: list[np.ndarray], top: int) -> np.ndarray:
    """Index pairs ``[m, 2]`` (i < j) where j is among the ``top`` images sharing most ORB descriptors with i, or
    i among j's: each descriptor votes for the images of its ``_VOTE_NEIGHBOURS`` nearest descriptors within
    ``_VOTE_MAX_BITS`` (faiss; HNSW for large groups). Finds the heavy crops the signature ranks low."""
    import faiss

    counts = np.array([len(d) for d in descriptors])
    n = len(descriptors)
    if n < 2 or top < 1 or counts.sum() == 0:
        return np.empty((0, 2), dtype=np.int64)
    owner = np.repeat(np.arange(n), counts)
    codes = np.ascontiguousarray(np.concatenate([d for d in descriptors if len(d)]))
    faiss.omp_set_num_threads(1)  # the HNSW graph, and so the candidates, must not depend on thread timing
    if len(codes) > _FLAT_MAX_DESCRIPTORS:
        index: Any = faiss.IndexBinaryHNSW(256, 16)
    else:
        index = faiss.IndexBinaryFlat(256)
    index.add(codes)
    distance, nearest = index.search(codes, _VOTE_NEIGHBOURS + 1)
    voter = np.repeat(owner, nearest.shape[1])
    valid = (nearest.ravel() >= 0) & (distance.ravel() <= _VOTE_MAX_BITS)
    target = np.where(valid, owner[np.clip(nearest.ravel(), 0, None)], -1)
    valid &= target != voter
    query = np.repeat(np.arange(len(codes)), nearest.shape[1])
    # One vote per (descriptor, image), then votes per image pair.
    per_query = np.unique(np.stack([query[valid], voter[valid], target[valid]], axis=1), axis=0)
    low, high = np.minimum(per_query[:, 1], per_query[:, 2]), np.maximum(per_query[:, 1], per_query[:, 2])
    pairs, votes = np.unique(np.stack([low, high], axis=1), axis=0, return_counts=True)
    if not len(pairs):
        return np.empty((0, 2), dtype=np.int64)
    # Each image's `top` pairs by votes (ties by index, so the choice is deterministic).
    ends = np.concatenate([pairs[:, 0], pairs[:, 1]])
    others = np.concatenate([pairs[:, 1], pairs[:, 0]])
    both = np.concatenate([votes, votes])
    order = np.lexsort((others, -both, ends))
    ends, others = ends[order], others[order]
    rank = np.arange(len(ends)) - np.searchsorted(ends, ends, side="left")
    chosen = rank < top
    chosen_pairs = np.sort(np.stack([ends[chosen], others[chosen]], axis=1), axis=1)
    return np.unique(chosen_pairs, axis=0)


def verified_edges(members: list[Member], neighbours: int, votes: int = 0) -> Iterator[tuple[str, str, str, str]]:
    """Edges ``(smaller key, its partition, larger key, its partition)`` between verified copies of one group."""
    members = sorted(members, key=lambda m: m[0])  # arrival order never matters
    signatures = unit_rows(np.stack([m[2].signature for m in members]).astype(np.float32)) if members else None
    if signatures is None:
        return
    candidates = candidate_pairs(signatures, neighbours)
    if votes:
        strongest = [m[2].descriptors[:_VOTE_DESCRIPTORS] for m in members]
        candidates = np.unique(np.concatenate([candidates, vote_pairs(strongest, votes)]), axis=0)
    for i, j in candidates.tolist():
        (ki, pi, fi), (kj, pj, fj) = members[i], members[j]  # i < j: ki < kj
        if crop_features.verify(fi, fj) or crop_features.verify(fj, fi):
            yield ki, pi, kj, pj


class CropDuplicateFilter(CorpusRule):
    """Rows -> ``duplicate_crop`` drops, from the crop features the ingest pass wrote (see the module docstring)."""

    columns = ("key", "partition_id")

    def __init__(self, output: str, neighbours: int = 8, votes: int = 4, n_clusters: int = 1000,
                 sample_size: int = 100_000, seed: int = 0, rounds: int = DEFAULT_ROUNDS) -> None:
        super().__init__()
        self.output, self.neighbours, self.votes = output, neighbours, votes
        self.n_clusters, self.sample_size, self.seed = n_clusters, sample_size, seed
        self.rounds = rounds  # GreedyResolve's (resolve.rounds_for)

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        output, seed, sample_size, neighbours = self.output, self.seed, self.sample_size, self.neighbours
        n_clusters, votes = self.n_clusters, self.votes
        partitions = (
            rows
            | "KeyByPartition" >> beam.Map(lambda row: (row["partition_id"], row["key"]))
            | "GroupByPartition" >> beam.GroupByKey()
            | "ReadFeatures" >> beam.Map(lambda element: read_members(output, element[0], element[1]))
        )

        # The sample: the sample_size smallest seeded key hashes overall, their signatures, then k-means.
        def bottom_priorities(members: list[Member]) -> np.ndarray:
            values = priorities([m[0] for m in members], seed)
            return np.partition(values, sample_size - 1)[:sample_size] if len(values) > sample_size else values

        threshold = (
            partitions
            | "Priorities" >> beam.Map(bottom_priorities)
            | "SampleThreshold" >> beam.CombineGlobally(_BottomK(sample_size))
        )

        def sample_piece(members: list[Member], limit: int) -> tuple[np.ndarray, np.ndarray]:
            prios = priorities([m[0] for m in members], seed)
            chosen = np.flatnonzero(prios <= np.uint64(limit))
            if not len(chosen):
                return np.empty(0, dtype=np.uint64), np.empty((0, 0), dtype=np.float32)
            vectors = np.stack([members[i][2].signature for i in chosen.tolist()]).astype(np.float32)
            return prios[chosen], vectors

        centroids = (
            partitions
            | "SamplePieces" >> beam.Map(sample_piece, limit=beam.pvalue.AsSingleton(threshold))
            | "Sample" >> beam.CombineGlobally(_ConcatSample())
            | "KMeans" >> beam.Map(lambda sample: train_centroids(
                sample, min(n_clusters, max(1, len(sample) // SAMPLE_PER_CLUSTER)) if sample is not None else 1, seed))
        )

        def assign(members: list[Member], centroids: np.ndarray | None) -> Iterator[tuple[int, list[Member]]]:
            if centroids is None or not members:
                return
            vectors = unit_rows(np.stack([m[2].signature for m in members]).astype(np.float32))
            clusters = np.argmax(vectors @ centroids.T, axis=1)
            for cluster in np.unique(clusters).tolist():
                yield cluster, [members[i] for i in np.flatnonzero(clusters == cluster).tolist()]

        def edges_in_cluster(element: tuple[int, Iterable[list[Member]]]) -> Iterator[tuple[str, str, str, str]]:
            yield from verified_edges([m for piece in element[1] for m in piece], neighbours, votes)

        edges = (
            partitions
            | "Assign" >> beam.FlatMap(assign, centroids=beam.pvalue.AsSingleton(centroids))
            | "GroupByCluster" >> beam.GroupByKey()
            | "VerifiedEdges" >> beam.FlatMap(edges_in_cluster)
        )
        same: Any = rows.pipeline | "NoIdentical" >> beam.Create([])  # identical bytes went to the sha256 rule
        return drops_from_edges(edges, same, reasons.DUPLICATE_CROP, self.rounds)
