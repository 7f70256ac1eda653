"""Exact duplicates of the fetched image bytes, grouped by sha256 across the whole corpus.

Each group keeps its smallest key, so reruns and other runners keep the same pair; the others are
dropped with ``duplicate_sha256`` and the key they duplicate. Shuffled per pair: the 64-character
hash and the 15-character key, about 100 bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import apache_beam as beam

from altsieve import reasons
from altsieve.filters.corpus import CorpusRule, Drop


def drop_all_but_smallest(members: Iterable[tuple[str, str]], reason: str) -> Iterator[Drop]:
    """``members`` are ``(key, partition_id)`` sharing one value: all but the smallest key are dropped."""
    ordered = sorted(members)
    keeper = ordered[0][0]
    for key, partition_id in ordered[1:]:
        yield partition_id, (key, reason, keeper)


class ExactDuplicateFilter(CorpusRule):
    """Rows with ``sha256`` -> the drops of every exact duplicate but the smallest key."""

    columns = ("key", "partition_id", "sha256")

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        return (
            rows
            | "KeyBySha256" >> beam.Map(lambda row: (row["sha256"], (row["key"], row["partition_id"])))
            | "GroupBySha256" >> beam.GroupByKey()
            | "KeepSmallestKey" >> beam.FlatMap(
                lambda element: drop_all_but_smallest(element[1], reasons.DUPLICATE_SHA256)
            )
        )
