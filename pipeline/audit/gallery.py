"""The gallery: per reason a sample of pairs with their image, what the rule saw, and for a duplicate its original.

Which image a sample can show: a pair that passed ingest has one in its shard; a pair dropped after
decode (image and CLIP rules) may have a thumbnail in ingest's ``_thumbs.tar``; a pair dropped
earlier has none, and a placeholder says why. A duplicate is shown beside the kept pair it names in
``duplicate_of`` (read from that pair's shard). A safety-list match (``reasons.may_show_image``) is
never shown. Images are loaded once per (tar, key) and referred to by id, so the page inlines each once.
"""

from __future__ import annotations

from typing import Any

import fsspec
import pyarrow.parquet as pq

from altsieve.core import fsutil, reasons
from altsieve.core.config import LanguageConfig, bucket_of
from altsieve.pipeline.audit.aggregate import KEPT, Aggregator
from altsieve.pipeline.audit.sources import Source
from altsieve.pipeline.audit.thumbnails import load_images

ORIGINAL_FIELDS = ["key", "url", "caption", "reason", "clip_score", "original_width", "original_height"]


def no_image_why(reason: str | None, thumbnails_kept: int | None) -> str:
    """Why a sampled pair shows no image (the placeholder's text)."""
    if reason is None:
        return "image not found"
    if not reasons.may_show_image(reason):
        return "never shown (safety list)"
    stage = reasons.stage_of(reason).name
    if stage in (reasons.INPUT, reasons.CAPTION, reasons.TEXT):
        return "dropped before download"
    if stage == reasons.DOWNLOAD:
        return "not downloaded"
    if stage == reasons.DECODE:
        return "did not decode"
    if stage in (reasons.IMAGE, reasons.CLIP):
        if thumbnails_kept:
            return f"no thumbnail kept (ingest keeps {thumbnails_kept} a reason and partition)"
        return "no thumbnail: the run kept none (audit.thumbnails_per_reason)"
    return "no image stored"


def clip_threshold(row: dict[str, Any], config: dict[str, Any] | None) -> float | None:
    """The CLIP threshold that applied to a pair in the run (its language bucket's, else the global one)."""
    clip = (config or {}).get("clip") or {}
    if not clip.get("enabled"):
        return None
    per_language = clip.get("per_language") or {}
    if per_language:
        language = LanguageConfig(**((config or {}).get("language") or {}))
        bucket = bucket_of(row.get("language"), row.get("language_score"), language)
        if bucket in per_language:
            return (per_language[bucket] or {}).get("min_score")
    return clip.get("min_score")


class ImageIds:
    """Image requests, then ids: ``want`` during assembly, ``resolve`` once every tar was read."""

    def __init__(self) -> None:
        self.wanted: set[tuple[str, str]] = set()
        self.uris: dict[tuple[str, str], str] = {}
        self.ids: dict[tuple[str, str], str] = {}

    def want(self, tar: str | None, key: Any) -> tuple[str, str] | None:
        if tar is None or key is None:
            return None
        item = (tar, str(key))
        self.wanted.add(item)
        return item

    def resolve(self) -> None:
        self.uris = load_images(self.wanted)
        self.ids = {item: f"img{n}" for n, item in enumerate(sorted(self.uris))}

    def id_of(self, item: tuple[str, str] | None) -> str | None:
        return self.ids.get(item) if item is not None else None

    def by_id(self) -> dict[str, str]:
        return {self.ids[item]: uri for item, uri in self.uris.items()}


def _originals(source: Source, keys: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The rows of the pairs that duplicates name (key -> tar), read from their partitions' Parquet."""
    by_parquet: dict[str, list[str]] = {}
    for key, tar in keys.items():
        by_parquet.setdefault(tar.removesuffix(".tar") + ".parquet", []).append(key)
    rows: dict[str, dict[str, Any]] = {}
    for parquet, wanted in by_parquet.items():
        if not fsutil.exists(parquet):
            continue
        with fsspec.open(parquet, "rb") as handle:
            present = set(pq.read_schema(handle).names)
            handle.seek(0)
            table = pq.read_table(handle, columns=[c for c in ORIGINAL_FIELDS if c in present],
                                  filters=[("key", "in", wanted)])
        for row in table.to_pylist():
            rows[row["key"]] = row
    return rows


def build_gallery(source: Source, aggregator: Aggregator, config: dict[str, Any] | None, shown: int,
                  images: ImageIds) -> list[dict[str, Any]]:
    """The gallery JSON (image ids filled in after ``images.resolve()`` by ``fill_images``)."""
    thumbnails_kept = ((config or {}).get("audit") or {}).get("thumbnails_per_reason")
    labels = sorted(aggregator.samples.heaps,
                    key=lambda name: (name != KEPT, -aggregator.reason_counts.get(name, 0), name))
    originals: dict[str, str] = {}
    gallery = []
    for label in labels:
        rows = []
        for sample in aggregator.samples.rows(label):
            row = dict(sample)
            row["_image"] = images.want(row.pop("image_from"), row.get("key"))
            duplicate_of = row.get("duplicate_of")
            if duplicate_of and not str(duplicate_of).startswith("eval:") and reasons.may_show_image(row.get("reason")):
                tar = source.shard_of_key(str(duplicate_of))
                if tar is not None:
                    originals[str(duplicate_of)] = tar
            if reasons.stage_of(label).name == reasons.CLIP:
                row["clip_threshold"] = clip_threshold(row, config)
            row["no_image_why"] = no_image_why(row.get("reason"), thumbnails_kept) if label != "all" else \
                "metadata only"
            rows.append(row)
        count = aggregator.reason_counts.get(label, aggregator.rows)
        stage = "kept" if label == KEPT else (reasons.stage_of(label).label if label != "all" else "all pairs")
        gallery.append({"reason": label, "stage": stage, "count": count, "shown": shown, "samples": rows})
    original_rows = _originals(source, originals)
    for group in gallery:
        for row in group["samples"]:
            key = row.get("duplicate_of")
            if key in original_rows:
                original = dict(original_rows[key])
                original["_image"] = images.want(originals[key], key)
                row["original"] = original
    return gallery


def fill_images(gallery: list[dict[str, Any]], images: ImageIds) -> None:
    """Replace each row's image request by its id (None: no image), and set ``thumbnail``."""
    for group in gallery:
        for row in group["samples"]:
            row["image"] = images.id_of(row.pop("_image"))
            row["thumbnail"] = row["image"] is not None
            if row["thumbnail"]:
                row.pop("no_image_why", None)
            if "original" in row:
                row["original"]["image"] = images.id_of(row["original"].pop("_image"))
