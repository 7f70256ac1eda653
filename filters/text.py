"""Text rules on the caption alone, applied before download: normalisation, contact details,
boilerplate, sensitive words, language and script.

Normalisation (``normalise_text``) is what the stored caption becomes: HTML entities decoded
(repeatedly: alt-texts are often escaped twice, "&amp;amp;"), HTML tags removed, invisible
characters removed (zero-width space, word joiner, byte-order mark, soft hyphen, control
characters), Unicode NFC, and every run of whitespace (NBSP and the ideographic space included)
made one space. Not done, on purpose: NFKC (it rewrites full-width CJK punctuation, circled digits
and units such as ㎡ in the caption a model is trained on), case folding, and removing ZWJ/ZWNJ
(they carry meaning in emoji sequences and in Persian and Indic writing).

The rules keep the contract of ``filters.base.PairRule``.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Iterable, Iterator
from importlib import resources

from altsieve.core import reasons
from altsieve.core.config import Config
from altsieve.filters.base import PairRule, Record, SettingRule, Verdict

# --- normalisation ----------------------------------------------------------------------------

_TAG = re.compile(r"</?[A-Za-z][^<>]{0,200}>")
_INVISIBLE = {0x200B: None, 0x2060: None, 0xFEFF: None, 0x00AD: None}
# C0 and C1 controls become spaces (a tab or newline separates words); the split below collapses them.
_INVISIBLE.update({cp: " " for cp in [*range(0x00, 0x20), *range(0x7F, 0xA0)]})
_HAS_INVISIBLE = re.compile("[" + "".join(re.escape(chr(cp)) for cp in sorted(_INVISIBLE)) + "]")


def normalise_text(text: str) -> str:
    """The caption as it is stored and as every rule sees it (see the module docstring for what and why)."""
    for _ in range(3):  # "&amp;amp;" needs two passes; three bounds the work on hostile input
        if "&" not in text:
            break
        unescaped = html.unescape(text)
        if unescaped == text:
            break
        text = unescaped
    if "<" in text:
        text = _TAG.sub(" ", text)
    if _HAS_INVISIBLE.search(text) is not None:  # rare: a search is cheaper than translating every caption
        text = text.translate(_INVISIBLE)
    if not text.isascii() and not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    return " ".join(text.split())


# --- contact details ----------------------------------------------------------------------------

# Python's \b counts CJK characters as word characters ("访问www.x.com"), so edges are look-arounds.
# A URL ends at a space, a quote or bracket, or the first CJK character ("访问www.x.com了解": the URL is www.x.com).
_NOT_IN_URL = r"\s<>\"'()\u3000-\u9fff\uac00-\ud7af\uff00-\uffef"
_URL = rf"(?<![A-Za-z0-9@])(?:(?:https?|ftp)://|www\.)[^{_NOT_IN_URL}]+"
_DOMAIN = (
    r"(?<![A-Za-z0-9@.])[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*"
    r"\.(?:com|net|org|cn|de|uk|jp|ru|fr|info|io|co|edu|gov|biz|top|xyz|shop|online|site|tv|me|us|ca|au|in|kr|tw|hk)"
    rf"(?![A-Za-z0-9-])(?:/[^{_NOT_IN_URL}]*)?"
)
_EMAIL = r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
_PHONE = "|".join(
    [
        r"\+\d{1,3}[\s.-]?(?:\(\d{1,4}\)[\s.-]?)?\d{1,4}(?:[\s.-]?\d{2,4}){1,4}",  # +49 30 1234567, +1 (555) 123-4567
        r"\(\d{2,4}\)[\s.-]?\d{3,4}[\s.-]?\d{3,4}",  # (555) 123-4567, (010) 1234 5678
        r"\d{3,4}[.-]\d{3,4}[.-]\d{3,4}",  # 555-123-4567, 010-1234-5678
        r"0\d{2,3}-\d{7,8}",  # 0755-12345678
        r"1[3-9]\d{9}",  # a Chinese mobile number
        r"[48]00[\s-]?\d{3}[\s-]?\d{4}",  # 400 / 800 service numbers
    ]
)
CONTACT = re.compile(rf"{_URL}|{_EMAIL}|{_DOMAIN}|(?<![\d.])(?:{_PHONE})(?![\d])", re.IGNORECASE)
_EMPTY_BRACKETS = re.compile(r"\(\s*\)|（\s*）|\[\s*\]|【\s*】|<\s*>")
# What a removal leaves dangling at either end: "Photo: www.x.com" -> "Photo".
_DANGLING = " |:;,/-–—·•@"
# A caption with none of these cannot hold a URL, an address or a number: skip the big regex.
_CONTACT_HINT = re.compile(r"[.@\d]")


def has_contact_info(text: str) -> bool:
    return _CONTACT_HINT.search(text) is not None and CONTACT.search(text) is not None


def remove_contact_info(text: str) -> str:
    if _CONTACT_HINT.search(text) is None:
        return text
    cut = CONTACT.sub("", text)
    if cut == text:
        return text
    cut = _EMPTY_BRACKETS.sub("", cut)
    return " ".join(cut.split()).strip(_DANGLING)


# --- phrase lists (boilerplate, sensitive words, names) ---------------------------------------------


def read_word_list(path: str) -> list[str]:
    """One entry a line; blank lines and lines starting with # are skipped. Local or any fsspec path."""
    import fsspec

    try:
        with fsspec.open(path, "rt", encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError as err:
        raise FileNotFoundError(f"word list {path} does not exist") from err
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _is_word_char(char: str) -> bool:
    # Letters and digits of scripts that separate words with spaces; CJK characters are their own words.
    return char.isalnum() and ord(char) < 0x2E80


class PhraseMatcher:
    """Many phrases found at once (Aho-Corasick, pyahocorasick), case-insensitively.

    A phrase that starts or ends with a Latin/Cyrillic/... letter only matches whole words ("ass"
    does not match "class"); CJK phrases match anywhere, since CJK text has no spaces.
    """

    def __init__(self, phrases: Iterable[str]) -> None:
        import ahocorasick

        self._automaton = ahocorasick.Automaton()
        count = 0
        for phrase in phrases:
            key = phrase.lower()
            if key:
                self._automaton.add_word(key, (len(key), _is_word_char(key[0]), _is_word_char(key[-1])))
                count += 1
        self.empty = count == 0
        if not self.empty:
            self._automaton.make_automaton()

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Non-overlapping (start, end) of the phrases in ``text``, longest first where they overlap."""
        found = sorted(self._whole_word_matches(text), key=lambda span: (span[0], -span[1]))
        spans: list[tuple[int, int]] = []
        for start, stop in found:
            if not spans or start >= spans[-1][1]:
                spans.append((start, stop))
        return spans

    def contains(self, text: str) -> bool:
        # The first whole-word match settles it: no list, no sort (this runs on every caption).
        return next(self._whole_word_matches(text), None) is not None

    def _whole_word_matches(self, text: str) -> Iterator[tuple[int, int]]:
        """(start, stop) of every listed phrase that stands as whole words in ``text``, case-insensitively."""
        if self.empty:
            return
        folded = text.lower()
        if len(folded) != len(text):  # rare letters whose lower case is longer: search the text as it is
            folded = text
        for end, (length, word_start, word_end) in self._automaton.iter(folded):
            start = end - length + 1
            if word_start and start > 0 and _is_word_char(folded[start - 1]):
                continue
            if word_end and end + 1 < len(folded) and _is_word_char(folded[end + 1]):
                continue
            yield start, end + 1

    def replace(self, text: str, placeholder: str) -> str:
        spans = self.spans(text)
        if not spans:
            return text
        pieces, last = [], 0
        for start, stop in spans:
            pieces += [text[last:start], placeholder]
            last = stop
        pieces.append(text[last:])
        return "".join(pieces)


_SKELETON = re.compile(r"[\W\d_]+")


_NOT_ASCII_LETTERS = bytes(b for b in range(128) if not chr(b).isalpha())
# ASCII fast path of the same: every byte that is not a letter becomes a space (bytes.translate runs in C).
_ASCII_SKELETON = bytes(b if chr(b).isalpha() else 0x20 for b in range(256))


def skeleton(text: str) -> str:
    """Lower case, digits/punctuation/space runs made one space: "图片 (1)" and "Image_3.": "图片", "image"."""
    if text.isascii():  # most captions; 4x faster than the regex
        return " ".join(text.lower().encode("ascii").translate(_ASCII_SKELETON).decode("ascii").split())
    return _SKELETON.sub(" ", text.lower()).strip()


def shipped_boilerplate() -> list[str]:
    text = resources.files("altsieve.data").joinpath("boilerplate.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


class Boilerplate:
    """Meaningless captions: a list entry once reduced to its skeleton, a ``re:`` pattern, or no letters at all."""

    def __init__(self, entries: Iterable[str]) -> None:
        phrases, patterns = set(), []
        for entry in entries:
            if entry.startswith("re:"):
                patterns.append(f"(?:{entry[3:]})")
            else:
                phrases.add(skeleton(entry))
        self._phrases = frozenset(phrases)
        # No entry has more letters than this: a longer ASCII caption is not looked up (most captions are).
        self._max_letters = max((len(phrase.replace(" ", "")) for phrase in phrases), default=0)
        self._pattern = re.compile("|".join(patterns)) if patterns else None

    def __call__(self, text: str) -> bool:
        if text.isascii():
            letters = len(text.encode("ascii").translate(None, _NOT_ASCII_LETTERS))
            if letters == 0:
                return True
            if letters <= self._max_letters and skeleton(text) in self._phrases:
                return True
        else:
            bare = skeleton(text)
            if not bare or bare in self._phrases:
                return True
        return self._pattern is not None and self._pattern.fullmatch(text.lower().strip()) is not None


# --- rules ------------------------------------------------------------------------------------


def _caption(record: Record) -> str:
    caption = record.get("caption")
    return caption if isinstance(caption, str) else ""


class ContactInfo(PairRule):
    """rules.text.contact_info: drop: a caption holding a URL, an e-mail address or a phone number."""

    stage, reasons = reasons.TEXT, (reasons.TEXT_CONTACT_INFO,)

    @classmethod
    def from_config(cls, config: Config) -> ContactInfo | None:
        return cls() if config.rules.text.contact_info == "drop" else None

    def check(self, record: Record) -> Verdict:
        return reasons.TEXT_CONTACT_INFO if has_contact_info(_caption(record)) else None


class BoilerplateCaption(PairRule):
    """rules.text.boilerplate / boilerplate_file: a meaningless caption ("image", "图片", a file name, a size)."""

    stage, reasons = reasons.TEXT, (reasons.TEXT_BOILERPLATE,)

    def __init__(self, entries: list[str]) -> None:
        self.is_boilerplate = Boilerplate(entries)

    @classmethod
    def from_config(cls, config: Config) -> BoilerplateCaption | None:
        text = config.rules.text
        if not (text.boilerplate or text.boilerplate_file):
            return None
        entries = shipped_boilerplate() if text.boilerplate else []
        if text.boilerplate_file:
            entries += read_word_list(text.boilerplate_file)
        return cls(entries)

    def check(self, record: Record) -> Verdict:
        return reasons.TEXT_BOILERPLATE if self.is_boilerplate(_caption(record)) else None


class Blacklist(PairRule):
    """rules.text.blacklist_file: a caption holding a word of the user's sensitive-word list."""

    stage, reasons = reasons.TEXT, (reasons.TEXT_BLACKLIST,)

    def __init__(self, words: list[str]) -> None:
        self.words = PhraseMatcher(words)

    @classmethod
    def from_config(cls, config: Config) -> Blacklist | None:
        path = config.rules.text.blacklist_file
        return None if path is None else cls(read_word_list(path))

    def check(self, record: Record) -> Verdict:
        return reasons.TEXT_BLACKLIST if self.words.contains(_caption(record)) else None


class RequireHan(SettingRule):
    """rules.text.require_han: not one Han character (Wukong's "Chinese text")."""

    stage, reasons, setting = reasons.TEXT, (reasons.TEXT_NO_HAN,), "rules.text.require_han"
    needs_language = True

    def check(self, record: Record) -> Verdict:
        return None if (record.get("script_shares") or {}).get("han") else reasons.TEXT_NO_HAN


class LanguageAllowList(SettingRule):
    """rules.text.languages: a language label outside the allow-list (or no label)."""

    stage, reasons, setting = reasons.TEXT, (reasons.TEXT_LANGUAGE,), "rules.text.languages"
    needs_language = True

    def check(self, record: Record) -> Verdict:
        return None if record.get("language") in self.bound else reasons.TEXT_LANGUAGE


class MinLanguageScore(SettingRule):
    """rules.text.min_language_score: the language model's confidence below this."""

    stage, reasons, setting = reasons.TEXT, (reasons.TEXT_LANGUAGE_SCORE,), "rules.text.min_language_score"
    needs_language = True

    def check(self, record: Record) -> Verdict:
        return reasons.TEXT_LANGUAGE_SCORE if float(record.get("language_score") or 0.0) < self.bound else None
