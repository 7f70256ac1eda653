"""Rules on the scores of the heads on the CLIP image embedding (transforms/heads.py)."""

from __future__ import annotations

from altsieve.core import reasons
from altsieve.core.config import Config
from altsieve.filters.base import PairRule, Record, Verdict


class MinAesthetic(PairRule):
    """heads.aesthetic.min_score: a predicted aesthetic score below it (LAION-Aesthetics: subsets >= 4.5, 5, 6, 6.5)."""

    stage, reasons = reasons.HEADS, (reasons.HEADS_AESTHETIC,)

    def __init__(self, bound: float) -> None:
        self.bound = bound

    @classmethod
    def from_config(cls, config: Config) -> MinAesthetic | None:
        head = config.heads.aesthetic
        return cls(head.min_score) if head.enabled and head.min_score is not None else None

    def check(self, record: Record) -> Verdict:
        score = record.get("aesthetic_score")
        return reasons.HEADS_AESTHETIC if score is not None and float(score) < self.bound else None


class MaxNsfw(PairRule):
    """heads.nsfw.max_score: the NSFW detector's score above it (DataComp: image NSFW > 0.1 removed)."""

    stage, reasons = reasons.HEADS, (reasons.HEADS_NSFW,)

    def __init__(self, bound: float) -> None:
        self.bound = bound

    @classmethod
    def from_config(cls, config: Config) -> MaxNsfw | None:
        head = config.heads.nsfw
        return cls(head.max_score) if head.enabled and head.max_score is not None else None

    def check(self, record: Record) -> Verdict:
        score = record.get("nsfw_detector_score")
        return reasons.HEADS_NSFW if score is not None and float(score) > self.bound else None
