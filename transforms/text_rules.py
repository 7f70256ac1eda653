"""The per-pair text stages in pipeline order, as plain code and as Beam transforms.

``TextCuration`` does to one row what ingest does before any fetch:

1. ``caption_stage`` (Beam stage CaptionRules): normalise the caption, remove contact details (when
   ``contact_info: remove``), then the caption rules (empty, length in characters and in words) and
   the text rules that need no label (contact details when ``drop``, boilerplate, sensitive words).
2. ``tag_stage`` (LanguageTag): label, confidence, backend, script shares.
3. ``text_stage`` (TextRules): Han required, language allow-list, minimum confidence; then person
   names replaced on the pairs still kept (jieba is the dearest step, so it runs on the fewest).

Each stage leaves a row that an earlier rule dropped as it is. The benchmark runs the same object.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import apache_beam as beam

from altsieve.filters.base import first_reason
from altsieve.filters.caption import caption_rules
from altsieve.filters.text import language_rules, normalise_text, remove_contact_info, text_rules
from altsieve.pipeline.config import CaptionRulesConfig, LanguageConfig, TextRulesConfig
from altsieve.transforms.language import LanguageTagger, script_shares, tag_row
from altsieve.transforms.read_inputs import Partition

Row = dict[str, Any]


class TextCuration:
    """Build once per worker; the language model and jieba load on first use, by the stage that needs them."""

    def __init__(self, caption: CaptionRulesConfig, text: TextRulesConfig, language: LanguageConfig) -> None:
        self._text, self._language = text, language
        self._caption_rules = caption_rules(caption) + text_rules(text)
        self._label_rules = language_rules(text)
        # Plain attributes, read once per caption: this code runs 50k times a second.
        self._normalise, self._remove_contact = text.normalise, text.contact_info == "remove"
        self._tagging, self._shares_needed = language.enabled, text.require_han
        self._scrub = text.scrub_person_names or text.person_names_file is not None
        self._tagger: LanguageTagger | None = None
        self._scrubber: Any = None

    def caption_stage(self, row: Row) -> Row:
        if row.get("reason") is not None:
            return row
        caption = row.get("caption") or ""
        if self._normalise:
            caption = normalise_text(caption)
        if self._remove_contact:
            caption = remove_contact_info(caption)
        row = {**row, "caption": caption}
        reason = first_reason(self._caption_rules, row)
        if reason is not None:
            row["reason"] = reason  # the copy made just above: the input row is untouched
        return row

    def tag_stage(self, row: Row) -> Row:
        if row.get("reason") is not None or not self._tagging:
            return row
        if self._tagger is None:
            self._tagger = LanguageTagger(self._language)
        return tag_row(self._tagger, row)

    def text_stage(self, row: Row) -> Row:
        if row.get("reason") is not None:
            return row
        if self._shares_needed and "script_shares" not in row:  # language tagging is off
            row = {**row, "script_shares": script_shares(row.get("caption") or "")}
        reason = first_reason(self._label_rules, row)
        if reason is not None:
            return {**row, "reason": reason}
        if self._scrub:
            if self._scrubber is None:
                from altsieve.transforms.names import NameScrubber

                self._scrubber = NameScrubber(self._text)
            caption = row.get("caption") or ""
            scrubbed = self._scrubber.scrub(caption)
            if scrubbed is not caption:
                row = {**row, "caption": scrubbed}
        return row

    def __call__(self, row: Row) -> Row:
        return self.text_stage(self.tag_stage(self.caption_stage(row)))


class RowStage(beam.DoFn):
    """Applies one stage of ``TextCuration`` to every row of a partition."""

    def __init__(self, stage: str, caption: CaptionRulesConfig, text: TextRulesConfig,
                 language: LanguageConfig) -> None:
        self._stage, self._configs = stage, (caption, text, language)

    def setup(self) -> None:
        self._apply: Callable[[Row], Row] = getattr(TextCuration(*self._configs), self._stage)

    def process(self, partition: Partition) -> Iterator[Partition]:
        yield Partition(partition.partition_id, partition.source, [self._apply(row) for row in partition.rows])


class TextRules(beam.PTransform):
    """Language allow-list, Han required, minimum confidence, then person names: after LanguageTag."""

    def __init__(self, caption: CaptionRulesConfig, text: TextRulesConfig, language: LanguageConfig) -> None:
        super().__init__()
        self._configs = (caption, text, language)

    def expand(self, partitions: beam.PCollection) -> beam.PCollection:
        return partitions | "Apply" >> beam.ParDo(RowStage("text_stage", *self._configs))

