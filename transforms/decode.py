"""Decode: validate and decode the fetched bytes, apply the image rules, resize, re-encode, hash.

The file-size rule runs before decoding (it needs only the byte count); the dimension rules run
on the upright original, so a pair dropped for its size still records its dimensions.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics

from altsieve.core import reasons
from altsieve.core.config import Config, ImageConfig
from altsieve.core.layout import Column
from altsieve.filters.base import PairRule, RuleSet
from altsieve.filters.safety import scrub
from altsieve.transforms.imageops import ImageDecodeError, phash_to_int64, process_image
from altsieve.transforms.metrics import count_drops
from altsieve.transforms.thumbnails import set_aside

COLUMNS = (
    Column("width", pa.int32(), "the stored image's width"),
    Column("height", pa.int32(), "the stored image's height"),
    Column("original_width", pa.int32(), "width of the upright original (after EXIF orientation)"),
    Column("original_height", pa.int32(), "height of the upright original"),
    Column("exif", pa.string(), "the original's EXIF tags as JSON"),
    Column("sha256", pa.string(), "sha256 of the fetched bytes"),
    Column("phash", pa.int64(), "64-bit perceptual hash of the upright original"),
    Column("original_format", pa.string(), "the fetched file's image format (JPEG, PNG, ...)"),
)


def needs_pixels(config: Config) -> bool:
    """Whether a stage after Decode looks at the picture (transforms/image_content.py)."""
    return config.dedup.crop.enabled or config.content.text.enabled or config.content.faces.enabled


def _before_decode(rule: type[PairRule]) -> bool:
    return rule.before_decode


def _after_decode(rule: type[PairRule]) -> bool:
    return not rule.before_decode


def image_rule_sets(config: Config) -> tuple[RuleSet, RuleSet]:
    """The image rules on the byte count (before decoding) and those on the decoded dimensions."""
    return (RuleSet.for_stages(config, reasons.IMAGE, when=_before_decode),
            RuleSet.for_stages(config, reasons.IMAGE, when=_after_decode))


def safety_rule_sets(config: Config) -> tuple[RuleSet, RuleSet]:
    """The safety lists on the fetched bytes (MD5, SHA-256) and on the pHash (filters/safety.py)."""
    return (RuleSet.for_stages(config, reasons.SAFETY, when=_before_decode),
            RuleSet.for_stages(config, reasons.SAFETY, when=_after_decode))


# The record field carrying the resized upright pixels to the image-content stage after Decode (never a column).
PIXELS_FIELD = "pixels"


def decode_record(
    record: dict[str, Any], options: ImageConfig, before: RuleSet, after: RuleSet,
    safety: tuple[RuleSet, RuleSet] | None = None, keep_content: bool = False,
) -> dict[str, Any]:
    """Fill the image fields of a fetched record, or its reason; the fetched bytes are released.

    ``safety`` (on the bytes, on the pHash): a listed file leaves only its key and reason (filters/safety.py).
    """
    body = record.pop("body", None)
    if record.get("reason") is not None or body is None:
        return record
    if safety is not None and safety[0]:
        reason = safety[0].first_reason({**record, "body": body})
        if reason is not None:
            return scrub(record, reason)
    reason = before.first_reason(record)
    if reason is not None:
        record["reason"] = reason
        set_aside(record, body)  # the fetched file: the audit's thumbnail sample may show it
        return record
    try:
        processed = process_image(body, options, keep_content)
    except ImageDecodeError as err:
        record["reason"], record["error_message"] = err.reason, err.message
        return record
    record.update(
        original_width=processed.original_width,
        original_height=processed.original_height,
        original_format=processed.original_format,
        exif=processed.exif,
        sha256=processed.sha256,
        phash=phash_to_int64(processed.phash),
    )
    if safety is not None and safety[1]:
        reason = safety[1].first_reason(record)
        if reason is not None:
            return scrub(record, reason)
    reason = after.first_reason(record)
    if reason is not None:
        record["reason"] = reason
        set_aside(record, processed.data)  # for the audit's thumbnail sample; never stored in the shard
        return record
    record.update(image=processed.data, width=processed.width, height=processed.height)
    if processed.content is not None:
        record[PIXELS_FIELD] = processed.content
    return record


class _DecodeRecord(beam.DoFn):
    def __init__(self, config: Config) -> None:
        self._config = config
        self._decoded = Metrics.counter("altsieve", "pairs_decoded")

    def setup(self) -> None:
        self._options, self._keep_content = self._config.image, needs_pixels(self._config)
        self._before, self._after = image_rule_sets(self._config)
        self._safety = safety_rule_sets(self._config)

    def process(self, record: dict[str, Any]):
        fetched = record.get("body") is not None and record.get("reason") is None
        record = decode_record(record, self._options, self._before, self._after, self._safety, self._keep_content)
        if fetched and record.get("image") is not None:
            self._decoded.inc()
        yield record

    def finish_bundle(self) -> None:
        count_drops(self._before)
        count_drops(self._after)
        for rules in self._safety:
            count_drops(rules)


class Decode(beam.PTransform):
    """``PCollection[record]`` -> ``PCollection[record]`` with image fields or a decode/image reason."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self._config = config

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        return records | "DecodeResizeHash" >> beam.ParDo(_DecodeRecord(self._config))
