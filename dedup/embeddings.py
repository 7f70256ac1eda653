"""Reading the CLIP embeddings the ClipScore stage writes beside each candidate shard.

File format (the ClipScore stage's): ``_candidates/{partition_id}_embeddings.npz`` with ``key``
(unicode [N]), ``image`` and ``text`` (float16 [N, D]). ``transforms.clip.store.load_partition_embeddings``
is used when it exists, so the two stages cannot drift apart; otherwise the file is read here.
"""

from __future__ import annotations

import io

import fsspec
import numpy as np

from altsieve.core import layout


def embeddings_path(output: str, partition_id: str) -> str:
    return layout.candidate_prefix(output, partition_id) + "_embeddings.npz"


def load_partition_embeddings(output: str, partition_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(keys, image, text)`` of one partition."""
    try:
        from altsieve.transforms.clip.store import load_partition_embeddings as clip_loader
    except ImportError:
        clip_loader = None
    if clip_loader is not None:
        return clip_loader(output, partition_id)
    path = embeddings_path(output, partition_id)
    try:
        with fsspec.open(path, "rb") as handle:
            data = np.load(io.BytesIO(handle.read()), allow_pickle=False)
            return data["key"], data["image"], data["text"]
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} is missing: semantic dedup and decontamination by embedding need the CLIP embeddings the "
            "ClipScore stage writes in the ingest pass; switch that stage on, or these rules off"
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
