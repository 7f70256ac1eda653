"""Image rules: the file size before decoding (it needs only the byte count), then the dimensions of the
upright original (after EXIF orientation, before resizing)."""

from __future__ import annotations

from altsieve.core import reasons
from altsieve.core.config import Config
from altsieve.filters.base import PairRule, Record, Verdict


def dimensions(record: Record) -> tuple[int, int]:
    return int(record.get("original_width") or 0), int(record.get("original_height") or 0)


class MinFileBytes(PairRule):
    """rules.image.min_file_bytes: a fetched file smaller than this (LAION, COYO: 5 KB). Checked before decoding."""

    stage, reasons = reasons.IMAGE, (reasons.IMAGE_FILE_TOO_SMALL,)
    before_decode = True  # the byte count alone: a small file costs no decoding

    def __init__(self, min_bytes: int) -> None:
        self.min_bytes = min_bytes

    @classmethod
    def from_config(cls, config: Config) -> MinFileBytes | None:
        bound = config.rules.image.min_file_bytes
        return None if bound is None else cls(bound)

    def check(self, record: Record) -> Verdict:
        return reasons.IMAGE_FILE_TOO_SMALL if int(record.get("bytes") or 0) < self.min_bytes else None


class MinSide(PairRule):
    """rules.image.min_side: the shorter side below this many pixels (ALIGN, DataComp, COYO: 200)."""

    stage, reasons = reasons.IMAGE, (reasons.IMAGE_TOO_SMALL,)

    def __init__(self, min_side: int) -> None:
        self.min_side = min_side

    @classmethod
    def from_config(cls, config: Config) -> MinSide | None:
        bound = config.rules.image.min_side
        return None if bound is None else cls(bound)

    def check(self, record: Record) -> Verdict:
        return reasons.IMAGE_TOO_SMALL if min(dimensions(record)) < self.min_side else None


class MaxAspectRatio(PairRule):
    """rules.image.max_aspect_ratio: the longer side over the shorter above this (ALIGN, DataComp, COYO: 3)."""

    stage, reasons = reasons.IMAGE, (reasons.IMAGE_ASPECT_RATIO,)

    def __init__(self, max_ratio: float) -> None:
        self.max_ratio = max_ratio

    @classmethod
    def from_config(cls, config: Config) -> MaxAspectRatio | None:
        bound = config.rules.image.max_aspect_ratio
        return None if bound is None else cls(bound)

    def check(self, record: Record) -> Verdict:
        width, height = dimensions(record)
        if min(width, height) <= 0:
            return reasons.IMAGE_ASPECT_RATIO
        return reasons.IMAGE_ASPECT_RATIO if max(width, height) / min(width, height) > self.max_ratio else None


class MinPixels(PairRule):
    """rules.image.min_pixels: width x height below this."""

    stage, reasons = reasons.IMAGE, (reasons.IMAGE_TOO_FEW_PIXELS,)

    def __init__(self, min_pixels: int) -> None:
        self.min_pixels = min_pixels

    @classmethod
    def from_config(cls, config: Config) -> MinPixels | None:
        bound = config.rules.image.min_pixels
        return None if bound is None else cls(bound)

    def check(self, record: Record) -> Verdict:
        width, height = dimensions(record)
        return reasons.IMAGE_TOO_FEW_PIXELS if width * height < self.min_pixels else None


class MaxPixels(PairRule):
    """rules.image.max_pixels: width x height above this."""

    stage, reasons = reasons.IMAGE, (reasons.IMAGE_TOO_MANY_PIXELS,)

    def __init__(self, max_pixels: int) -> None:
        self.max_pixels = max_pixels

    @classmethod
    def from_config(cls, config: Config) -> MaxPixels | None:
        bound = config.rules.image.max_pixels
        return None if bound is None else cls(bound)

    def check(self, record: Record) -> Verdict:
        width, height = dimensions(record)
        return reasons.IMAGE_TOO_MANY_PIXELS if width * height > self.max_pixels else None
