"""CaptionRules: the cheap text rules, applied to a partition's rows before anything is fetched."""

from __future__ import annotations

import apache_beam as beam

from altsieve.filters.base import first_reason
from altsieve.filters.caption import caption_rules
from altsieve.pipeline.config import CaptionRulesConfig
from altsieve.transforms.read_inputs import Partition


class _ApplyCaptionRules(beam.DoFn):
    def __init__(self, config: CaptionRulesConfig) -> None:
        self._config = config

    def setup(self) -> None:
        self._rules = caption_rules(self._config)

    def process(self, partition: Partition):
        rows = [
            row if row.get("reason") is not None else {**row, "reason": first_reason(self._rules, row)}
            for row in partition.rows
        ]
        yield Partition(partition.partition_id, partition.source, rows)


class CaptionRules(beam.PTransform):
    def __init__(self, config: CaptionRulesConfig) -> None:
        super().__init__()
        self._config = config

    def expand(self, partitions: beam.PCollection) -> beam.PCollection:
        return partitions | "Apply" >> beam.ParDo(_ApplyCaptionRules(self._config))
