"""Image-content rules (ingest, after Decode): on what the ImageContent stage measured of the picture.

The measures are set only when their part of ``content`` is enabled, so each rule is a no-op otherwise.
"""

from __future__ import annotations

from altsieve.core import reasons
from altsieve.filters.base import Record, SettingRule, Verdict


class MaxTextArea(SettingRule):
    """content.text.max_ratio: text covers more of the image than this (T-MARS drops text-dominated images)."""

    stage, reasons, setting = reasons.CONTENT, (reasons.CONTENT_TEXT_AREA,), "content.text.max_ratio"

    def check(self, record: Record) -> Verdict:
        ratio = record.get("text_area_ratio")
        return reasons.CONTENT_TEXT_AREA if ratio is not None and float(ratio) > self.bound else None


class MaxFaces(SettingRule):
    """content.faces.max_faces: more faces than this in the image."""

    stage, reasons, setting = reasons.CONTENT, (reasons.CONTENT_FACES,), "content.faces.max_faces"

    def check(self, record: Record) -> Verdict:
        count = record.get("face_count")
        return reasons.CONTENT_FACES if count is not None and int(count) > self.bound else None
