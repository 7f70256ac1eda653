"""Image rules: the file size before decoding (it needs only the byte count), then the dimensions of the
upright original (after EXIF orientation, before resizing)."""

from __future__ import annotations

from altsieve.core import reasons
from altsieve.filters.base import Record, SettingRule, Verdict


def dimensions(record: Record) -> tuple[int, int]:
    return int(record.get("original_width") or 0), int(record.get("original_height") or 0)


class MinFileBytes(SettingRule):
    """rules.image.min_file_bytes: a fetched file smaller than this (LAION, COYO: 5 KB). Checked before decoding."""

    stage, reasons, setting = reasons.IMAGE, (reasons.IMAGE_FILE_TOO_SMALL,), "rules.image.min_file_bytes"
    before_decode = True  # the byte count alone: a small file costs no decoding

    def check(self, record: Record) -> Verdict:
        return reasons.IMAGE_FILE_TOO_SMALL if int(record.get("bytes") or 0) < self.bound else None


class MinSide(SettingRule):
    """rules.image.min_side: the shorter side below this many pixels (ALIGN, DataComp, COYO: 200)."""

    stage, reasons, setting = reasons.IMAGE, (reasons.IMAGE_TOO_SMALL,), "rules.image.min_side"

    def check(self, record: Record) -> Verdict:
        return reasons.IMAGE_TOO_SMALL if min(dimensions(record)) < self.bound else None


class MaxAspectRatio(SettingRule):
    """rules.image.max_aspect_ratio: the longer side over the shorter above this (ALIGN, DataComp, COYO: 3)."""

    stage, reasons, setting = reasons.IMAGE, (reasons.IMAGE_ASPECT_RATIO,), "rules.image.max_aspect_ratio"

    def check(self, record: Record) -> Verdict:
        width, height = dimensions(record)
        if min(width, height) <= 0:
            return reasons.IMAGE_ASPECT_RATIO
        return reasons.IMAGE_ASPECT_RATIO if max(width, height) / min(width, height) > self.bound else None


class MinPixels(SettingRule):
    """rules.image.min_pixels: width x height below this."""

    stage, reasons, setting = reasons.IMAGE, (reasons.IMAGE_TOO_FEW_PIXELS,), "rules.image.min_pixels"

    def check(self, record: Record) -> Verdict:
        width, height = dimensions(record)
        return reasons.IMAGE_TOO_FEW_PIXELS if width * height < self.bound else None


class MaxPixels(SettingRule):
    """rules.image.max_pixels: width x height above this."""

    stage, reasons, setting = reasons.IMAGE, (reasons.IMAGE_TOO_MANY_PIXELS,), "rules.image.max_pixels"

    def check(self, record: Record) -> Verdict:
        width, height = dimensions(record)
        return reasons.IMAGE_TOO_MANY_PIXELS if width * height > self.bound else None
