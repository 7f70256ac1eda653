"""Decode: validate and decode the fetched bytes, apply the image rules, resize, re-encode, hash.

The file-size rule runs before decoding (it needs only the byte count); the dimension rules run
on the upright original, so a pair dropped for its size still records its dimensions.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from altsieve.filters.base import Rule, first_reason
from altsieve.filters.image import file_size_rules, image_rules
from altsieve.pipeline.config import ImageConfig, ImageRulesConfig
from altsieve.transforms.imageops import ImageDecodeError, ImageOptions, phash_to_int64, process_image


def image_options(config: ImageConfig) -> ImageOptions:
    return ImageOptions(
        image_size=config.image_size,
        resize_mode=config.resize_mode,
        resize_only_if_bigger=config.resize_only_if_bigger,
        encode_format=config.encode_format,
        encode_quality=config.encode_quality,
        max_image_pixels=config.max_image_pixels,
    )


def decode_record(
    record: dict[str, Any], options: ImageOptions, before: list[Rule], after: list[Rule]
) -> dict[str, Any]:
    """Fill the image fields of a fetched record, or its reason; the fetched bytes are released."""
    body = record.pop("body", None)
    if record.get("reason") is not None or body is None:
        return record
    reason = first_reason(before, record)
    if reason is not None:
        record["reason"] = reason
        return record
    try:
        processed = process_image(body, options)
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
    reason = first_reason(after, record)
    if reason is not None:
        record["reason"] = reason
        return record
    record.update(image=processed.data, width=processed.width, height=processed.height)
    return record


class _DecodeRecord(beam.DoFn):
    def __init__(self, image: ImageConfig, rules: ImageRulesConfig) -> None:
        self._image, self._rules = image, rules
        self._decoded = Metrics.counter("altsieve", "pairs_decoded")

    def setup(self) -> None:
        self._options = image_options(self._image)
        self._before = file_size_rules(self._rules)
        self._after = image_rules(self._rules)

    def process(self, record: dict[str, Any]):
        fetched = record.get("body") is not None and record.get("reason") is None
        record = decode_record(record, self._options, self._before, self._after)
        if fetched and record.get("image") is not None:
            self._decoded.inc()
        yield record


class Decode(beam.PTransform):
    """``PCollection[record]`` -> ``PCollection[record]`` with image fields or a decode/image reason."""

    def __init__(self, image: ImageConfig, rules: ImageRulesConfig) -> None:
        super().__init__()
        self._image, self._rules = image, rules

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        return records | "DecodeResizeHash" >> beam.ParDo(_DecodeRecord(self._image, self._rules))
