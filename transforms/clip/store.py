"""The CLIP model's identity and the embeddings on disk, beside each candidate shard.

The main model's image and text embeddings of every kept pair are written beside its candidate
shard (``_candidates/{partition}_embeddings.npz``: ``key``, ``image`` and ``text`` float16, in key
order, plus ``weights_sha256``) and the model's identity (name, pretrained source, sha256 of the
loaded weights, embedding width) in ``_altsieve/clip_model.json`` and the manifest.
``load_partition_embeddings`` reads them and refuses embeddings of another model.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from altsieve.core import fsutil, layout
from altsieve.transforms.clip.model import ClipModelError

# What must agree for two sets of embeddings to be comparable. The pretrained source is where the
# weights came from (a path may differ between a laptop and a cluster), so it is recorded, not compared.
IDENTITY_KEYS = ("model", "weights_sha256", "embed_dim")
# Record fields that ride from ClipScore to WriteShards and never reach Parquet or the sample .json.
IMAGE_EMBEDDING_FIELD = "clip_image_embedding"
TEXT_EMBEDDING_FIELD = "clip_text_embedding"


def identity_path(output: str) -> str:
    return layout.meta(output, layout.CLIP_MODEL_FILE)


def same_model(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether embeddings of identities ``a`` and ``b`` are comparable; only the keys both give are compared."""
    return all(a[key] == b[key] for key in IDENTITY_KEYS if key in a and key in b)


def _describe(identity: Mapping[str, Any]) -> str:
    sha = str(identity.get("weights_sha256", "?"))[:12]
    model, pretrained, dim = (identity.get(k, "?") for k in ("model", "pretrained", "embed_dim"))
    return f"{model} ({pretrained}, weights {sha}, dim {dim})"


def record_model_identity(output: str, identity: Mapping[str, Any]) -> None:
    """Write ``_altsieve/clip_model.json``, or refuse when the output holds embeddings of another model."""
    path = identity_path(output)
    if fsutil.exists(path):
        saved = fsutil.read_json(path)
        if not same_model(saved, identity):
            raise ClipModelError(
                f"{output} holds CLIP embeddings of {_describe(saved)}; this run's model is {_describe(identity)}. "
                "Mixing them would make the embeddings incomparable: use a new --output folder, or the same model."
            )
    fsutil.write_json(path, dict(identity))


def read_model_identity(output: str) -> dict[str, Any]:
    path = identity_path(output)
    if not fsutil.exists(path):
        raise ClipModelError(f"{output} has no CLIP embeddings ({path} is missing): ingest with clip.enabled=true")
    return dict(fsutil.read_json(path))


def check_model(output: str, expected: Mapping[str, Any] | None) -> dict[str, Any]:
    """The output's model identity; a clear error when ``expected`` names another model."""
    saved = read_model_identity(output)
    if expected is not None and not same_model(saved, expected):
        raise ClipModelError(
            f"the CLIP embeddings in {output} are from {_describe(saved)}, not from {_describe(expected)}: "
            "embeddings of different models are not comparable. Recompute them with one model, or compare with "
            "embeddings made by the same model."
        )
    return saved


def load_partition_embeddings(
    output: str, partition_id: str, expected: Mapping[str, Any] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(keys, image, text)`` of a partition's kept pairs: keys (str) in key order, float16 [N, D] each.

    The rows are the partition's pairs kept by ingest (those with an image in its candidate tar), in
    key order. ``expected`` (a model identity, e.g. ``model_identity(config)`` or ``{"weights_sha256":
    ...}``) makes a different model a ``ClipModelError`` instead of silently mixed embeddings.
    """
    import fsspec

    saved = check_model(output, expected)
    path = layout.embeddings_path(output, partition_id)
    with fsspec.open(path, "rb") as handle, np.load(io.BytesIO(handle.read()), allow_pickle=False) as data:
        keys, image, text = data["key"], data["image"], data["text"]
        sha = str(data["weights_sha256"]) if "weights_sha256" in data else None
    if sha is not None and sha != saved["weights_sha256"]:
        raise ClipModelError(f"{path} was written by weights {sha[:12]}, not by {_describe(saved)}")
    return keys, image, text


def partition_embeddings(
    records: Iterable[dict[str, Any]], embed_dim: int, previous: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The embeddings of the kept records in key order; those of records merged from an earlier attempt
    (``--retry-failed``) come from the earlier file ``previous``."""
    import fsspec

    kept = sorted((r for r in records if r.get("reason") is None and r.get("image") is not None),
                  key=lambda r: r["key"])
    old: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if previous is not None and any(r.get(IMAGE_EMBEDDING_FIELD) is None for r in kept) and fsutil.exists(previous):
        with fsspec.open(previous, "rb") as handle, np.load(io.BytesIO(handle.read()), allow_pickle=False) as data:
            old = {str(k): (i, t) for k, i, t in zip(data["key"], data["image"], data["text"], strict=True)}
    image = np.zeros((len(kept), embed_dim), dtype=np.float16)
    text = np.zeros((len(kept), embed_dim), dtype=np.float16)
    for row, record in enumerate(kept):
        pair = (record.get(IMAGE_EMBEDDING_FIELD), record.get(TEXT_EMBEDDING_FIELD))
        if pair[0] is None:
            if record["key"] not in old:
                raise RuntimeError(f"kept pair {record['key']} has no CLIP embedding (ClipScore did not see it)")
            pair = old[record["key"]]
        image[row], text[row] = pair
    return np.array([r["key"] for r in kept], dtype=str), image, text


def write_partition_embeddings(
    path: str, keys: np.ndarray, image: np.ndarray, text: np.ndarray, sha256: str
) -> None:
    """Atomically: a killed run leaves the old file or the new one (the marker is written after it)."""
    buffer = io.BytesIO()
    np.savez(buffer, key=keys, image=image, text=text, weights_sha256=np.array(sha256))
    fsutil.write_atomic(path, lambda handle: handle.write(buffer.getvalue()))
