"""Cheap caption rules, applied before download: a pair they drop costs no bandwidth."""

from __future__ import annotations

import re

from altsieve.core import reasons
from altsieve.filters.base import Record, SettingRule, Verdict

# CJK scripts have no spaces between words: each Han, Kana or Hangul character counts as one word,
# so that a Chinese caption's "word" count is comparable with an English one's.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_WORD = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


def caption_of(record: Record) -> str:
    caption = record.get("caption")
    return caption.strip() if isinstance(caption, str) else ""


class CaptionNotEmpty(SettingRule):
    """rules.caption.drop_empty: a pair whose caption is empty (or only spaces) after normalisation."""

    stage, reasons, setting = reasons.CAPTION, (reasons.CAPTION_EMPTY,), "rules.caption.drop_empty"

    def check(self, record: Record) -> Verdict:
        return None if caption_of(record) else reasons.CAPTION_EMPTY


class CaptionMinChars(SettingRule):
    """rules.caption.min_chars: fewer characters than this (LAION: 5)."""

    stage, reasons, setting = reasons.CAPTION, (reasons.CAPTION_TOO_SHORT_CHARS,), "rules.caption.min_chars"

    def check(self, record: Record) -> Verdict:
        return reasons.CAPTION_TOO_SHORT_CHARS if len(caption_of(record)) < self.bound else None


class CaptionMaxChars(SettingRule):
    """rules.caption.max_chars: more characters than this."""

    stage, reasons, setting = reasons.CAPTION, (reasons.CAPTION_TOO_LONG_CHARS,), "rules.caption.max_chars"

    def check(self, record: Record) -> Verdict:
        return reasons.CAPTION_TOO_LONG_CHARS if len(caption_of(record)) > self.bound else None


class CaptionMinWords(SettingRule):
    """rules.caption.min_words: fewer words than this (each CJK character a word; ALIGN: 3)."""

    stage, reasons, setting = reasons.CAPTION, (reasons.CAPTION_TOO_FEW_WORDS,), "rules.caption.min_words"

    def check(self, record: Record) -> Verdict:
        return reasons.CAPTION_TOO_FEW_WORDS if count_words(caption_of(record)) < self.bound else None


class CaptionMaxWords(SettingRule):
    """rules.caption.max_words: more words than this (ALIGN: 20)."""

    stage, reasons, setting = reasons.CAPTION, (reasons.CAPTION_TOO_MANY_WORDS,), "rules.caption.max_words"

    def check(self, record: Record) -> Verdict:
        return reasons.CAPTION_TOO_MANY_WORDS if count_words(caption_of(record)) > self.bound else None
