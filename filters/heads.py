"""Rules on the scores of the heads on the CLIP image embedding (transforms/heads.py).

The scores are set only when their head is enabled, so each rule is a no-op otherwise.
"""

from __future__ import annotations

from altsieve.core import reasons
from altsieve.filters.base import Record, SettingRule, Verdict


class MinAesthetic(SettingRule):
    """heads.aesthetic.min_score: a predicted aesthetic score below it (LAION-Aesthetics: subsets >= 4.5, 5, 6, 6.5)."""

    stage, reasons, setting = reasons.HEADS, (reasons.HEADS_AESTHETIC,), "heads.aesthetic.min_score"

    def check(self, record: Record) -> Verdict:
        score = record.get("aesthetic_score")
        return reasons.HEADS_AESTHETIC if score is not None and float(score) < self.bound else None


class MaxNsfw(SettingRule):
    """heads.nsfw.max_score: the NSFW detector's score above it (DataComp: image NSFW > 0.1 removed)."""

    stage, reasons, setting = reasons.HEADS, (reasons.HEADS_NSFW,), "heads.nsfw.max_score"

    def check(self, record: Record) -> Verdict:
        score = record.get("nsfw_detector_score")
        return reasons.HEADS_NSFW if score is not None and float(score) > self.bound else None
