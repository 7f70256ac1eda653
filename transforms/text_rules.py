"""The per-pair text stages in pipeline order, as plain code and as Beam transforms.

``TextCuration`` does to one row what ingest does before any fetch:

1. ``caption_stage`` (Beam stage CaptionRules, below): normalise the caption, remove contact details (when
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

from altsieve.core import reasons
from altsieve.core.config import Config
from altsieve.filters.base import PairRule, RuleSet
from altsieve.filters.text import normalise_text, remove_contact_info
from altsieve.transforms.language import LanguageTagger, script_shares, tag_row
from altsieve.transforms.metrics import count_drops
from altsieve.transforms.read_inputs import Partition

Row = dict[str, Any]


def _before_tagging(rule: type[PairRule]) -> bool:
    return not rule.needs_language


def _after_tagging(rule: type[PairRule]) -> bool:
    return rule.needs_language


class TextCuration:
    """Build once per worker; the language model and jieba load on first use, by the stage that needs them."""

    def __init__(self, config: Config) -> None:
        text, language = config.rules.text, config.language
        self._text, self._language = text, language
        self.caption_rules = RuleSet.for_stages(config, reasons.CAPTION, reasons.TEXT, when=_before_tagging)
        self.label_rules = RuleSet.for_stages(config, reasons.TEXT, when=_after_tagging)
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
        reason = self.caption_rules.first_reason(row)
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
        reason = self.label_rules.first_reason(row)
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
    """Applies one stage of ``TextCuration`` to every row of a partition; counts what its rules drop."""

    def __init__(self, stage: str, config: Config) -> None:
        self._stage, self._config = stage, config

    def setup(self) -> None:
        self._curation = TextCuration(self._config)
        self._apply: Callable[[Row], Row] = getattr(self._curation, self._stage)

    def process(self, partition: Partition) -> Iterator[Partition]:
        yield Partition(partition.partition_id, partition.source, [self._apply(row) for row in partition.rows])

    def finish_bundle(self) -> None:
        for rules in (self._curation.caption_rules, self._curation.label_rules):
            count_drops(rules)


class _TextStage(beam.PTransform):
    """One stage of ``TextCuration`` (``curation_stage``) as a Beam transform over partitions."""

    curation_stage: str

    def __init__(self, config: Config) -> None:
        super().__init__()
        self._config = config

    def expand(self, partitions: beam.PCollection) -> beam.PCollection:
        return partitions | "Apply" >> beam.ParDo(RowStage(self.curation_stage, self._config))


class CaptionRules(_TextStage):
    """Normalisation, then the caption rules and the text rules that need no language label: before LanguageTag."""

    curation_stage = "caption_stage"


class TextRules(_TextStage):
    """Language allow-list, Han required, minimum confidence, then person names: after LanguageTag."""

    curation_stage = "text_stage"
