"""Image-content rules (ingest, after Decode): on what the ImageContent stage measured of the picture."""

from __future__ import annotations

from altsieve.core import reasons
from altsieve.core.config import Config
from altsieve.filters.base import PairRule, Record, Verdict


class MaxTextArea(PairRule):
    """content.text.max_ratio: text covers more of the image than this (T-MARS drops text-dominated images)."""

    stage, reasons = reasons.CONTENT, (reasons.CONTENT_TEXT_AREA,)

    def __init__(self, max_ratio: float) -> None:
        self.max_ratio = max_ratio

    @classmethod
    def from_config(cls, config: Config) -> MaxTextArea | None:
        text = config.content.text
        return cls(text.max_ratio) if text.enabled and text.max_ratio is not None else None

    def check(self, record: Record) -> Verdict:
        ratio = record.get("text_area_ratio")
        return reasons.CONTENT_TEXT_AREA if ratio is not None and float(ratio) > self.max_ratio else None


class MaxFaces(PairRule):
    """content.faces.max_faces: more faces than this in the image."""

    stage, reasons = reasons.CONTENT, (reasons.CONTENT_FACES,)

    def __init__(self, max_faces: int) -> None:
        self.max_faces = max_faces

    @classmethod
    def from_config(cls, config: Config) -> MaxFaces | None:
        faces = config.content.faces
        return cls(faces.max_faces) if faces.enabled and faces.max_faces is not None else None

    def check(self, record: Record) -> Verdict:
        count = record.get("face_count")
        return reasons.CONTENT_FACES if count is not None and int(count) > self.max_faces else None
