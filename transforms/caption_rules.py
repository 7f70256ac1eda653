"""CaptionRules: the cheap text rules, applied to a partition's rows before anything is fetched.

Normalises each caption (and cuts contact details out when the recipe says so), then applies the
caption rules (empty, length in characters and words) and the text rules that need no language
label (contact details, boilerplate, sensitive words). See ``transforms.text_rules``.
"""

from __future__ import annotations

import apache_beam as beam

from altsieve.pipeline.config import CaptionRulesConfig, LanguageConfig, TextRulesConfig
from altsieve.transforms.text_rules import RowStage


class CaptionRules(beam.PTransform):
    def __init__(self, config: CaptionRulesConfig, text: TextRulesConfig | None = None) -> None:
        super().__init__()
        self._config, self._text = config, text or TextRulesConfig()

    def expand(self, partitions: beam.PCollection) -> beam.PCollection:
        # The language config is not used by this stage: its rows are tagged by LanguageTag afterwards.
        return partitions | "Apply" >> beam.ParDo(RowStage("caption_stage", self._config, self._text, LanguageConfig()))
