"""DataComp's image-based filter (Gadre et al. 2023): keep the clusters of the pool nearest to a reference set.

k-means on the pool's CLIP image embeddings (spherical, faiss, trained on a seeded uniform sample as
the semantic rule trains its own: DataComp used K = 100,000 for its 12.8B pool), then for every
reference embedding (DataComp: ImageNet-1k's training images, by the same CLIP model) its nearest
centroid; a pair is kept when its own nearest centroid is one of those, else dropped with
``image_cluster_far``. Pairs without an embedding are left alone.

Shuffled per pair: ~40 bytes (the keys by partition, to read each embeddings file once); the sample
(``sample_size`` x D x 4 bytes) goes to one worker for k-means, the centroids and the kept cluster
ids to every worker.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import apache_beam as beam
import numpy as np

from altsieve.core import reasons
from altsieve.dedup.embeddings import image_embeddings_for, unit_rows
from altsieve.dedup.semantic import SampledCentroids
from altsieve.filters.corpus import CorpusRule, Drop


def load_references(paths: list[str]) -> np.ndarray:
    """Unit float32 reference embeddings from .npy [N, D] files or .npz files with an ``image`` array."""
    import io

    import fsspec

    parts = []
    for path in paths:
        with fsspec.open(path, "rb") as handle:
            data = np.load(io.BytesIO(handle.read()), allow_pickle=False)
            parts.append(np.asarray(data["image"] if isinstance(data, np.lib.npyio.NpzFile) else data))
    references = np.concatenate(parts).astype(np.float32)
    if references.ndim != 2 or not len(references):
        raise ValueError(f"reference embeddings must be a non-empty [N, D] array, got shape {references.shape}")
    return unit_rows(references)


def kept_clusters(centroids: np.ndarray | None, references: np.ndarray) -> np.ndarray:
    """Sorted ids of the clusters that are the nearest of at least one reference embedding."""
    if centroids is None:
        return np.empty(0, dtype=np.int64)
    if references.shape[1] != centroids.shape[1]:
        raise ValueError(f"reference embeddings are {references.shape[1]}-d, the pool's {centroids.shape[1]}-d: "
                         "make them with the run's CLIP model")
    return np.unique(np.argmax(references @ centroids.T, axis=1))


class ImageClusterFilter(CorpusRule):
    """Rows -> ``image_cluster_far`` drops (see the module docstring). ``record`` gets the cluster counts once."""

    columns = ("key", "partition_id")

    def __init__(self, output: str, references: np.ndarray, n_clusters: int = 1000, sample_size: int = 100_000,
                 seed: int = 0, record=None) -> None:
        super().__init__()
        self.loader = functools.partial(image_embeddings_for, output)
        self.references, self.n_clusters, self.sample_size, self.seed = references, n_clusters, sample_size, seed
        self.record = record

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        loader, seed, sample_size, references = self.loader, self.seed, self.sample_size, self.references
        by_partition = (
            rows
            | "KeyByPartition" >> beam.Map(lambda row: (row["partition_id"], row["key"]))
            | "GroupByPartition" >> beam.GroupByKey()
            | "SortKeys" >> beam.Map(lambda element: (element[0], sorted(element[1])))
        )

        centroids = by_partition | "Centroids" >> SampledCentroids(loader, self.n_clusters, sample_size, seed)
        kept = centroids | "KeptClusters" >> beam.Map(kept_clusters, references=references)
        if self.record is not None:
            record = self.record
            _ = kept | "Record" >> beam.Map(
                lambda ids, c: record(len(ids), 0 if c is None else len(c)), c=beam.pvalue.AsSingleton(centroids))

        def far(element: tuple[str, list[str]], centroids: np.ndarray | None, kept: np.ndarray) -> Iterator[Drop]:
            partition_id, keys = element
            found, vectors = loader(partition_id, keys)
            if centroids is None or not found:
                return
            nearest = np.argmax(vectors @ centroids.T, axis=1)
            for key in np.array(found)[~np.isin(nearest, kept)].tolist():
                yield partition_id, (str(key), reasons.IMAGE_CLUSTER_FAR, None)

        return by_partition | "FarClusters" >> beam.FlatMap(
            far, centroids=beam.pvalue.AsSingleton(centroids), kept=beam.pvalue.AsSingleton(kept))
