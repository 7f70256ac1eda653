"""Cheap caption rules, applied before download: a pair they drop costs no bandwidth."""

from __future__ import annotations

import re

from altsieve.core import reasons
from altsieve.core.config import Config
from altsieve.filters.base import PairRule, Record, Verdict

# CJK scripts have no spaces between words: each Han, Kana or Hangul character counts as one word,
# so that a Chinese caption's "word" count is comparable with an English one's.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_WORD = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


def caption_of(record: Record) -> str:
    caption = record.get("caption")
    return caption.strip() if isinstance(caption, str) else ""


class CaptionNotEmpty(PairRule):
    """rules.caption.drop_empty: a pair whose caption is empty (or only spaces) after normalisation."""

    stage, reasons = reasons.CAPTION, (reasons.CAPTION_EMPTY,)

    @classmethod
    def from_config(cls, config: Config) -> CaptionNotEmpty | None:
        return cls() if config.rules.caption.drop_empty else None

    def check(self, record: Record) -> Verdict:
        return None if caption_of(record) else reasons.CAPTION_EMPTY


class CaptionMinChars(PairRule):
    """rules.caption.min_chars: fewer characters than this (LAION: 5)."""

    stage, reasons = reasons.CAPTION, (reasons.CAPTION_TOO_SHORT_CHARS,)

    def __init__(self, min_chars: int) -> None:
        self.min_chars = min_chars

    @classmethod
    def from_config(cls, config: Config) -> CaptionMinChars | None:
        bound = config.rules.caption.min_chars
        return None if bound is None else cls(bound)

    def check(self, record: Record) -> Verdict:
        return reasons.CAPTION_TOO_SHORT_CHARS if len(caption_of(record)) < self.min_chars else None


class CaptionMaxChars(PairRule):
    """rules.caption.max_chars: more characters than this."""

    stage, reasons = reasons.CAPTION, (reasons.CAPTION_TOO_LONG_CHARS,)

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars

    @classmethod
    def from_config(cls, config: Config) -> CaptionMaxChars | None:
        bound = config.rules.caption.max_chars
        return None if bound is None else cls(bound)

    def check(self, record: Record) -> Verdict:
        return reasons.CAPTION_TOO_LONG_CHARS if len(caption_of(record)) > self.max_chars else None


class CaptionMinWords(PairRule):
    """rules.caption.min_words: fewer words than this (each CJK character a word; ALIGN: 3)."""

    stage, reasons = reasons.CAPTION, (reasons.CAPTION_TOO_FEW_WORDS,)

    def __init__(self, min_words: int) -> None:
        self.min_words = min_words

    @classmethod
    def from_config(cls, config: Config) -> CaptionMinWords | None:
        bound = config.rules.caption.min_words
        return None if bound is None else cls(bound)

    def check(self, record: Record) -> Verdict:
        return reasons.CAPTION_TOO_FEW_WORDS if count_words(caption_of(record)) < self.min_words else None


class CaptionMaxWords(PairRule):
    """rules.caption.max_words: more words than this (ALIGN: 20)."""

    stage, reasons = reasons.CAPTION, (reasons.CAPTION_TOO_MANY_WORDS,)

    def __init__(self, max_words: int) -> None:
        self.max_words = max_words

    @classmethod
    def from_config(cls, config: Config) -> CaptionMaxWords | None:
        bound = config.rules.caption.max_words
        return None if bound is None else cls(bound)

    def check(self, record: Record) -> Verdict:
        return reasons.CAPTION_TOO_MANY_WORDS if count_words(caption_of(record)) > self.max_words else None
