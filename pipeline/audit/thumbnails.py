"""Gallery thumbnails: the sampled pairs' images, read from the tars that hold them, as JPEG data URIs."""

from __future__ import annotations

import base64
import io
import logging
import tarfile
from typing import Any

import fsspec

from altsieve.core import fsutil

log = logging.getLogger("altsieve.audit")
THUMB_SIZE = 160


def thumbnails(samples: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """key -> JPEG data URI, read from the tars that hold the sampled pairs' images (headers only, then stop)."""
    from PIL import Image

    wanted: dict[str, set[str]] = {}
    for rows in samples.values():
        for row in rows:
            if row.get("image_tar"):
                wanted.setdefault(row["image_tar"], set()).add(str(row["key"]))
    thumbs: dict[str, str] = {}
    for tar_path, keys in wanted.items():
        if not fsutil.exists(tar_path):
            continue
        try:
            with fsspec.open(tar_path, "rb") as handle, tarfile.open(fileobj=handle, mode="r:") as tar:
                for member in tar:
                    key, _, extension = member.name.rpartition(".")
                    if key not in keys or extension.lower() not in ("jpg", "jpeg", "png", "webp"):
                        continue
                    extracted = tar.extractfile(member)
                    if extracted is None:
                        continue
                    image = Image.open(io.BytesIO(extracted.read()))
                    image.thumbnail((THUMB_SIZE, THUMB_SIZE))
                    buffer = io.BytesIO()
                    image.convert("RGB").save(buffer, format="JPEG", quality=80)
                    thumbs[key] = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
                    keys.discard(key)
                    if not keys:
                        break
        except (OSError, tarfile.TarError) as err:
            log.warning("audit: cannot read thumbnails from %s: %s", tar_path, err)
    return thumbs
