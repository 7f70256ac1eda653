"""Cheap caption rules, applied before download: a pair they drop costs no bandwidth."""

from __future__ import annotations

import re

from altsieve import reasons
from altsieve.filters.base import Record, Rule
from altsieve.pipeline.config import CaptionRulesConfig

# CJK scripts have no spaces between words: each Han, Kana or Hangul character counts as one word,
# so that a Chinese caption's "word" count is comparable with an English one's.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_WORD = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


def _caption(record: Record) -> str:
    caption = record.get("caption")
    return caption.strip() if isinstance(caption, str) else ""


def caption_rules(config: CaptionRulesConfig) -> list[Rule]:
    """The caption rules a recipe switches on, cheapest first."""
    rules: list[Rule] = []
    if config.drop_empty:
        rules.append(Rule("caption_empty", lambda r: reasons.CAPTION_EMPTY if not _caption(r) else None))
    if config.min_chars is not None:
        low = config.min_chars
        rules.append(
            Rule("caption_min_chars", lambda r: reasons.CAPTION_TOO_SHORT_CHARS if len(_caption(r)) < low else None)
        )
    if config.max_chars is not None:
        high = config.max_chars
        rules.append(
            Rule("caption_max_chars", lambda r: reasons.CAPTION_TOO_LONG_CHARS if len(_caption(r)) > high else None)
        )
    if config.min_words is not None:
        low_words = config.min_words
        rules.append(
            Rule(
                "caption_min_words",
                lambda r: reasons.CAPTION_TOO_FEW_WORDS if count_words(_caption(r)) < low_words else None,
            )
        )
    if config.max_words is not None:
        high_words = config.max_words
        rules.append(
            Rule(
                "caption_max_words",
                lambda r: reasons.CAPTION_TOO_MANY_WORDS if count_words(_caption(r)) > high_words else None,
            )
        )
    return rules
