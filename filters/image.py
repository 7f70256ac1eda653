"""Image rules on the upright original (after EXIF orientation, before resizing)."""

from __future__ import annotations

from altsieve import reasons
from altsieve.filters.base import Record, Rule
from altsieve.pipeline.config import ImageRulesConfig


def _dims(record: Record) -> tuple[int, int]:
    return int(record.get("original_width") or 0), int(record.get("original_height") or 0)


def file_size_rules(config: ImageRulesConfig) -> list[Rule]:
    """Rules on the fetched bytes alone: checked before decoding, which costs far more."""
    if config.min_file_bytes is None:
        return []
    low = config.min_file_bytes
    return [Rule("min_file_bytes", lambda r: reasons.IMAGE_FILE_TOO_SMALL if int(r.get("bytes") or 0) < low else None)]


def image_rules(config: ImageRulesConfig) -> list[Rule]:
    """Rules on the decoded image's dimensions."""
    rules: list[Rule] = []
    if config.min_side is not None:
        side = config.min_side
        rules.append(Rule("min_side", lambda r: reasons.IMAGE_TOO_SMALL if min(_dims(r)) < side else None))
    if config.max_aspect_ratio is not None:
        ratio = config.max_aspect_ratio

        def aspect(record: Record) -> str | None:
            width, height = _dims(record)
            if min(width, height) <= 0:
                return reasons.IMAGE_ASPECT_RATIO
            return reasons.IMAGE_ASPECT_RATIO if max(width, height) / min(width, height) > ratio else None

        rules.append(Rule("max_aspect_ratio", aspect))
    if config.min_pixels is not None:
        low = config.min_pixels
        rules.append(Rule("min_pixels", lambda r: reasons.IMAGE_TOO_FEW_PIXELS if _area(r) < low else None))
    if config.max_pixels is not None:
        high = config.max_pixels
        rules.append(Rule("max_pixels", lambda r: reasons.IMAGE_TOO_MANY_PIXELS if _area(r) > high else None))
    return rules


def _area(record: Record) -> int:
    width, height = _dims(record)
    return width * height
