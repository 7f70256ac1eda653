"""The contract of corpus-wide rules (select pass): metadata rows in, the pairs a rule drops out.

A corpus rule sees only the pairs that survived ingest and every earlier corpus rule, so the
funnel counts each drop once, under the first rule that removed it. It is a Beam ``PTransform``
(no worker may hold the whole corpus): ``rows`` are dicts of the Parquet columns the rule names
in ``columns``; the output is ``(partition_id, (key, reason, duplicate_of or None))`` per dropped
pair.
"""

from __future__ import annotations

import apache_beam as beam
import pyarrow as pa

from altsieve.core.layout import Column

# The select pass's field beside ``reason``: the kept pair (or "eval:{set}/{item}") a dropped pair duplicates.
COLUMNS = (Column("duplicate_of", pa.string(), "the pair a duplicate_* drop duplicates"),)

# (partition_id, (key, reason, duplicate_of))
Drop = tuple[str, tuple[str, str, str | None]]


class CorpusRule(beam.PTransform):
    """Base class: subclasses set ``columns`` and implement ``expand(rows) -> PCollection[Drop]``."""

    columns: tuple[str, ...] = ("key", "partition_id")

    def drops_and_survivors(self, rows: beam.PCollection,
                            label: str) -> tuple[beam.PCollection, beam.PCollection | None]:
        """The rule applied to ``rows`` as ``label``: its drops, and the rows it keeps where it has them at no
        extra cost (None: the select pass joins ``rows`` with the drops to find them)."""
        return rows | label >> self, None


class Intersection(CorpusRule):
    """Rules that all see the same rows, a pair kept only when every one keeps it (DataComp-1B: image-based and
    the top 30 % by CLIP score, each computed on the same pool). A pair dropped by several is counted once, for
    the first rule that drops it."""

    def __init__(self, rules: list[tuple[str, CorpusRule]]) -> None:
        super().__init__()
        self.rules = rules
        self.columns = tuple(dict.fromkeys(c for _, rule in rules for c in rule.columns))

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        tagged = [
            rows | f"{name}" >> rule | f"{name}Rank" >> beam.Map(lambda drop, rank=rank: (drop[1][0], (rank, drop)))
            for rank, (name, rule) in enumerate(self.rules)
        ]
        return (
            tagged
            | "AllDrops" >> beam.Flatten()
            | "ByKey" >> beam.GroupByKey()
            | "FirstRule" >> beam.Map(lambda element: min(element[1], key=lambda item: item[0])[1])
        )
