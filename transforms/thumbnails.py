"""Thumbnails of dropped pairs, so that the audit can show what each rule removed.

A pair dropped after its image was fetched (the file-size rule, the image rules on the decoded
dimensions, the CLIP rules) leaves no image in the candidate shard. The stage that drops it sets its
image bytes aside on the record (``set_aside``); ``WriteShards`` offers each partition's set-aside
images to a ``ThumbnailSample``, which keeps, per reason, the ones with the smallest CRC32 of the key
(the audit samples by the same hash, so its gallery finds them) and drops the rest as they arrive.
Only those few are thumbnailed and written to ``_candidates/{partition}_thumbs.tar`` (``{key}.jpg``
and ``{key}.json``), before the partition's marker. Memory: at most ``per_reason`` images per reason
per partition in flight; a thumbnail is a JPEG of at most ``size`` px, a few KB.

A pair whose reason is one of ``reasons.NEVER_SHOWN`` (safety-list matches) is never set aside.
"""

from __future__ import annotations

import heapq
import json
import zlib
from collections.abc import Iterator
from typing import Any

import fsspec

from altsieve.core import fsutil, reasons
from altsieve.core.config import ImageConfig
from altsieve.transforms.imageops import ImageDecodeError, process_image

# The record field that carries a dropped pair's image bytes from the stage that dropped it to WriteShards.
SET_ASIDE_FIELD = "dropped_image"
# A before-decode drop sets aside the fetched file itself; larger files are not worth a thumbnail's decode.
MAX_SET_ASIDE_BYTES = 2**20
THUMBNAIL_QUALITY = 70


def set_aside(record: dict[str, Any], data: bytes | None) -> None:
    """Keep a dropped pair's image bytes on its record for the partition's thumbnail sample."""
    if data is not None and len(data) <= MAX_SET_ASIDE_BYTES and reasons.may_show_image(record.get("reason")):
        record[SET_ASIDE_FIELD] = data


def sample_hash(key: str) -> int:
    """The hash the sample is taken by (the smallest first): the audit's gallery uses the same one."""
    return zlib.crc32(str(key).encode())


def thumbnail_options(size: int) -> ImageConfig:
    # The longer side at most ``size``, aspect kept, never enlarged: a 20x20 image stays 20x20, a strip stays a strip.
    return ImageConfig(image_size=size, resize_mode="keep_ratio_largest", resize_only_if_bigger=True,
                        encode_format="jpg", encode_quality=THUMBNAIL_QUALITY, extract_exif=False)


class ThumbnailSample:
    """One partition's sample: per reason, the ``per_reason`` set-aside images with the smallest key hash."""

    def __init__(self, per_reason: int, size: int) -> None:
        self.per_reason = per_reason
        self.size = size
        # reason -> heap of (-hash, key, bytes, already a thumbnail): the root is the largest hash kept.
        self._heaps: dict[str, list[tuple[int, str, bytes, bool]]] = {}

    def offer_record(self, record: dict[str, Any]) -> None:
        """Take the record's set-aside image (the field is removed either way)."""
        data = record.pop(SET_ASIDE_FIELD, None)
        if data is not None and record.get("reason") is not None:
            self.offer(record["key"], record["reason"], data)

    def offer(self, key: str, reason: str, data: bytes, is_thumbnail: bool = False) -> None:
        if self.per_reason <= 0 or not reasons.may_show_image(reason):
            return
        heap = self._heaps.setdefault(reason, [])
        item = (-sample_hash(key), key, data, is_thumbnail)
        if len(heap) < self.per_reason:
            heapq.heappush(heap, item)
        elif item[:2] > heap[0][:2]:
            heapq.heapreplace(heap, item)

    def __len__(self) -> int:
        return sum(len(heap) for heap in self._heaps.values())

    def thumbnails(self) -> Iterator[tuple[str, str, bytes]]:
        """``(key, reason, JPEG)`` in key order; an image that does not decode is left out."""
        options = thumbnail_options(self.size)
        items = sorted((key, reason, data, ready) for reason, heap in self._heaps.items()
                       for _, key, data, ready in heap)
        for key, reason, data, ready in items:
            if ready:
                yield key, reason, data
                continue
            try:
                yield key, reason, process_image(data, options).data
            except ImageDecodeError:
                continue

    def write(self, path: str) -> int:
        """Write the sample's tar atomically (nothing when the sample is empty); returns how many thumbnails."""
        members = list(self.thumbnails())
        if not members:
            return 0

        def write_tar(handle: Any) -> None:
            with fsutil.TarWriter(handle) as tar:
                for key, reason, jpeg in members:
                    tar.add(f"{key}.jpg", jpeg)
                    tar.add(f"{key}.json", json.dumps({"key": key, "reason": reason}).encode())

        fsutil.write_atomic(path, write_tar)
        return len(members)


def read_thumbnails(path: str) -> Iterator[tuple[str, str, bytes]]:
    """``(key, reason, JPEG)`` of a partition's thumbnail tar (none when it has no such file)."""
    if not fsutil.exists(path):
        return
    pending: dict[str, dict[str, bytes]] = {}
    with fsspec.open(path, "rb") as handle:
        for name, payload in fsutil.iter_tar_files(handle, path):
            key, _, extension = name.rpartition(".")
            if extension not in ("jpg", "json"):
                continue
            parts = pending.setdefault(key, {})
            parts[extension] = payload
            if len(parts) == 2:
                del pending[key]
                reason = json.loads(parts["json"])["reason"]
                if reasons.may_show_image(reason):
                    yield key, reason, parts["jpg"]
