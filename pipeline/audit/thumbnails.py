"""Gallery thumbnails: the sampled pairs' images as JPEG data URIs, each tar read once.

Two kinds of tar hold them: the shards (an altsieve run's candidate tars, an img2dataset output's
tars) for pairs that passed ingest, read header by header until every wanted key is found; and the
thumbnail tars ingest writes beside them for a few pairs per reason dropped after decode
(``transforms.thumbnails``), whose JPEGs are inlined as they are.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import tarfile
from collections.abc import Iterable

import fsspec

from altsieve.core import fsutil, layout
from altsieve.transforms.imageops import ImageDecodeError, process_image
from altsieve.transforms.thumbnails import read_thumbnails, thumbnail_options

log = logging.getLogger("altsieve.audit")
THUMB_SIZE = 128
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def _uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def load_images(wanted: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """``(tar path, key) -> data URI`` for the wanted images that the tars hold."""
    by_tar: dict[str, set[str]] = {}
    for tar_path, key in wanted:
        by_tar.setdefault(tar_path, set()).add(key)
    found: dict[tuple[str, str], str] = {}
    options = thumbnail_options(THUMB_SIZE)
    for tar_path, keys in sorted(by_tar.items()):
        try:
            if tar_path.endswith(layout.THUMBNAILS_SUFFIX):
                for key, _, jpeg in read_thumbnails(tar_path):
                    if key in keys:
                        found[(tar_path, key)] = _uri(jpeg)
                continue
            if not fsutil.exists(tar_path):
                continue
            remaining = set(keys)
            # A seekable handle: tarfile reads each header and seeks past the data it does not want.
            with fsspec.open(tar_path, "rb") as handle, tarfile.open(fileobj=handle, mode="r:") as tar:
                for member in tar:
                    key, _, extension = member.name.rpartition(".")
                    if key not in remaining or extension.lower() not in IMAGE_EXTENSIONS:
                        continue
                    extracted = tar.extractfile(member)
                    if extracted is None:
                        continue
                    with contextlib.suppress(ImageDecodeError):  # a stored image that does not decode: none shown
                        found[(tar_path, key)] = _uri(process_image(extracted.read(), options).data)
                    remaining.discard(key)
                    if not remaining:
                        break
        except (OSError, tarfile.TarError) as err:
            log.warning("audit: cannot read thumbnails from %s: %s", tar_path, err)
    return found
