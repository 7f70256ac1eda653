"""Exact duplicates of the fetched image bytes, grouped by sha256 across the whole corpus.

Each group keeps its smallest key, so reruns and other runners keep the same pair; the others are
dropped with ``duplicate_sha256`` and the key they duplicate. Shuffled per pair: the 64-character
hash and the 15-character key, about 100 bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import apache_beam as beam

from altsieve import reasons

# (partition_id, (key, reason or None, duplicate_of or None))
Decision = tuple[str, tuple[str, str | None, str | None]]


def decide_group(members: Iterable[tuple[str, str]]) -> Iterator[Decision]:
    """``members`` are ``(key, partition_id)`` sharing one hash: the smallest key stays."""
    ordered = sorted(members)
    keeper = ordered[0][0]
    yield ordered[0][1], (keeper, None, None)
    for key, partition_id in ordered[1:]:
        yield partition_id, (key, reasons.DUPLICATE_SHA256, keeper)


class ExactDuplicateFilter(beam.PTransform):
    """``PCollection[row with key, partition_id, sha256]`` -> decisions keyed by partition."""

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        return (
            rows
            | "KeyBySha256" >> beam.Map(lambda row: (row["sha256"], (row["key"], row["partition_id"])))
            | "GroupBySha256" >> beam.GroupByKey()
            | "KeepSmallestKey" >> beam.FlatMap(lambda element: decide_group(element[1]))
        )
