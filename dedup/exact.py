"""Exact duplicates across the whole corpus: image sha256, URL, URL + caption.

Each group of equal values keeps its smallest key, so reruns and other runners keep the same pair;
the others are dropped with the rule's reason and the kept key in ``duplicate_of``. Shuffled per
pair: the group value and the 15-character key. sha256 groups on its 64 hex characters (~100
bytes a pair); URL and URL + caption group on a 16-byte BLAKE2b digest of the text instead of
the text itself (URLs run to 2,000 characters), ~50 bytes a pair, a collision chance of 2**-128.
In the select pass (``drops_and_survivors``) the groups carry the whole rows instead, and the rule
hands on the rows it keeps: that shuffle replaces the join of every row on key that would otherwise
follow the rule, which moves the same rows once more.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam

from altsieve.core import reasons
from altsieve.filters.corpus import CorpusRule, Drop


def drop_all_but_smallest(members: Iterable[tuple[str, str]], reason: str) -> Iterator[Drop]:
    """``members`` are ``(key, partition_id)`` sharing one value: all but the smallest key are dropped."""
    ordered = sorted(members)
    keeper = ordered[0][0]
    for key, partition_id in ordered[1:]:
        yield partition_id, (key, reason, keeper)


def _text_digest(values: tuple[str, ...]) -> bytes:
    # A separator that cannot occur in either text keeps ("ab", "c") and ("a", "bc") apart.
    return hashlib.blake2b("\x00".join(values).encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _group_value(row: dict[str, Any], fields: tuple[str, ...], digest: bool) -> Any:
    """What ``row`` is grouped on; None when a field is missing (None): such a row is nobody's duplicate."""
    values = tuple(row.get(name) for name in fields)
    if any(value is None for value in values):
        return None
    return _text_digest(values) if digest else (values[0] if len(values) == 1 else values)


class ExactDuplicateFilter(CorpusRule):
    """Rows with ``fields`` -> the drops of every exact duplicate but the smallest key.

    A row with any of the fields missing (None) is nobody's duplicate. ``digest`` groups on a
    16-byte digest of the values instead of the values (for long texts).
    """

    def __init__(self, fields: tuple[str, ...] = ("sha256",), reason: str = reasons.DUPLICATE_SHA256,
                 digest: bool = False) -> None:
        super().__init__()
        self.fields = tuple(fields)
        self.reason = reason
        self.digest = digest
        self.columns = ("key", "partition_id", *self.fields)

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        fields, reason, digest = self.fields, self.reason, self.digest

        def members(row: dict[str, Any]) -> Iterator[tuple[Any, tuple[str, str]]]:
            value = _group_value(row, fields, digest)
            if value is not None:
                yield value, (row["key"], row["partition_id"])

        return (
            rows
            | "KeyByValue" >> beam.FlatMap(members)
            | "GroupByValue" >> beam.GroupByKey()
            | "KeepSmallestKey" >> beam.FlatMap(lambda element: drop_all_but_smallest(element[1], reason))
        )

    def drops_and_survivors(self, rows: beam.PCollection,
                            label: str) -> tuple[beam.PCollection, beam.PCollection | None]:
        # The groups carry whole rows here, so the kept row of each group (and every row with a field missing)
        # comes out beside the drops: the select pass then needs no join on key (a CoGroupByKey of every row)
        # after this rule. Select of the web benchmark's 4,565 pairs (two exact rules, then pHash), interleaved
        # three times: 3.00-3.60 s with the joins, 2.60-3.18 s without.
        return rows | label >> _ExactSplit(self.fields, self.reason, self.digest)


_KEPT = "kept"


class _ExactSplit(beam.PTransform):
    """ExactDuplicateFilter's grouping with whole rows: ``(drops, kept rows)``."""

    def __init__(self, fields: tuple[str, ...], reason: str, digest: bool) -> None:
        super().__init__()
        self.fields, self.reason, self.digest = fields, reason, digest

    def expand(self, rows: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        fields, reason, digest = self.fields, self.reason, self.digest

        def by_value(row: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            value = _group_value(row, fields, digest)
            # A row with a field missing is nobody's duplicate: a group of its own (no digest or field value is a
            # tuple starting with None). So every kept row leaves the one grouping, and the next rule's steps fuse
            # with it: a Flatten of these rows with the kept ones was a stage of its own, each row written and read
            # once more (select of the web benchmark's 4,565 pairs: two such stages, 36-66 ms each).
            return (None, row["key"], row["partition_id"]) if value is None else value, row

        def keep_smallest(element: tuple[Any, Iterable[dict[str, Any]]]) -> Iterator[Any]:
            group = list(element[1])
            yield beam.pvalue.TaggedOutput(_KEPT, min(group, key=lambda row: (row["key"], row["partition_id"])))
            yield from drop_all_but_smallest(((row["key"], row["partition_id"]) for row in group), reason)

        split = (
            rows
            | "KeyByValue" >> beam.Map(by_value)
            | "GroupByValue" >> beam.GroupByKey()
            | "KeepSmallestKey" >> beam.FlatMap(keep_smallest).with_outputs(_KEPT, main="drops")
        )
        return split.drops, split[_KEPT]


def exact_rules(sha256: bool, url: bool, url_caption: bool) -> list[tuple[str, CorpusRule]]:
    """The exact rules switched on, most specific first: the same pair twice, the same URL, the same bytes."""
    rules: list[tuple[str, CorpusRule]] = []
    if url_caption:
        rules.append(("ExactUrlCaption", ExactDuplicateFilter(("url", "caption"), reasons.DUPLICATE_URL_CAPTION,
                                                              digest=True)))
    if url:
        rules.append(("ExactUrl", ExactDuplicateFilter(("url",), reasons.DUPLICATE_URL, digest=True)))
    if sha256:
        rules.append(("ExactDuplicates", ExactDuplicateFilter()))
    return rules
