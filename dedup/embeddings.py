"""The CLIP embeddings the ClipScore stage writes beside each candidate shard, as the dedup rules read them.

``transforms.clip.store`` reads and checks the files (``_candidates/{partition_id}_embeddings.npz``), so
the writer and the readers cannot drift apart.
"""

from __future__ import annotations

import numpy as np

from altsieve.core import layout
from altsieve.transforms.clip import store as clip_store


def load_partition_embeddings(output: str, partition_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(keys, image, text)`` of one partition; a missing file says which stage makes it."""
    try:
        return clip_store.load_partition_embeddings(output, partition_id)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{layout.embeddings_path(output, partition_id)} is missing: semantic dedup and decontamination by "
            "embedding need the CLIP embeddings the ClipScore stage writes in the ingest pass; switch that stage on, "
            "or these rules off"
        ) from None


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """float32 rows scaled to length 1 (a zero row stays zero), so inner products are cosines."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def image_embeddings_for(output: str, partition_id: str, wanted: list[str]) -> tuple[list[str], np.ndarray]:
    """The unit image embeddings of the ``wanted`` keys of a partition that have one, in ``wanted`` order."""
    keys, image, _ = load_partition_embeddings(output, partition_id)
    position = {str(key): index for index, key in enumerate(keys.tolist())}
    found = [key for key in wanted if key in position]
    rows = np.fromiter((position[key] for key in found), dtype=np.int64, count=len(found))
    return found, unit_rows(image[rows]) if len(found) else np.zeros((0, image.shape[1]), dtype=np.float32)
