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
