"""Corpus-wide text rules of the select pass (ALIGN's): shared captions, images with many captions, rare tokens.

Each is a ``CorpusRule`` (see ``filters.corpus``): Beam combines keyed by a hash, so no worker
holds the corpus, only one key's partial count at a time.

* Shared caption: per caption (a 16-byte BLAKE2b digest of it, lower-cased), the number of
  distinct images (sha256); a caption on more than N images is dropped from all of them.
  ALIGN: N = 10 ("1920x1080", "alt_img").
* Image with many captions: per image (sha256), the number of distinct captions; an image with
  more than N is dropped with all its captions. ALIGN: N = 1000.
* Rare tokens: unigrams and bigrams (lower case; CJK characters are each a unigram) counted over
  this run's corpus; the K most frequent are kept and a caption with any other token is dropped.
  ALIGN: K = 100M at 1.8B pairs. Ties: the vocabulary is every token whose count is at least the
  count c of the K-th most frequent; when that would exceed K tokens, the tokens of count c are
  left out too, so the vocabulary never holds more than K tokens and does not depend on the order
  in which the workers saw them.

Both distinct counts stop at N + 1 (the accumulator is a set of at most N + 1 hashes): a caption
on a million images costs a worker N + 1 entries, not a million.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam

from altsieve.core import reasons
from altsieve.core.config import CorpusRulesConfig
from altsieve.filters.corpus import CorpusRule, Drop


def caption_digest(caption: str | None) -> bytes:
    """Captions that differ only in case or spacing are the same caption ("Click here" / "click  here")."""
    text = " ".join((caption or "").lower().split())
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class CappedDistinctCount(beam.CombineFn):
    """How many distinct values, counted up to ``cap`` (beyond it, only "more than cap - 1" matters)."""

    def __init__(self, cap: int) -> None:
        self._cap = cap

    def create_accumulator(self) -> set[Any]:
        return set()

    def add_input(self, accumulator: set[Any], value: Any) -> set[Any]:
        if len(accumulator) < self._cap:
            accumulator.add(value)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[set[Any]]) -> set[Any]:
        merged: set[Any] = set()
        for accumulator in accumulators:
            for value in accumulator:
                if len(merged) >= self._cap:
                    return merged
                merged.add(value)
        return merged

    def extract_output(self, accumulator: set[Any]) -> int:
        return len(accumulator)


def _drops_over_limit(element: tuple[Any, dict[str, list[Any]]], reason: str) -> Iterator[Drop]:
    _, joined = element
    if joined["over"]:
        for key, partition_id in joined["members"]:
            yield partition_id, (key, reason, None)


class _DistinctLimitRule(CorpusRule):
    """Rows grouped by ``group_of(row)``: a group with more than ``limit`` distinct ``value_of(row)`` is dropped."""

    reason = ""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    @staticmethod
    def group_of(row: dict[str, Any]) -> Any:
        raise NotImplementedError

    @staticmethod
    def value_of(row: dict[str, Any]) -> Any:
        raise NotImplementedError

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        limit, reason = self.limit, self.reason
        group_of, value_of = self.group_of, self.value_of
        over = (
            rows
            | "GroupValue" >> beam.Map(lambda row: (group_of(row), value_of(row)))
            | "CountDistinct" >> beam.CombinePerKey(CappedDistinctCount(limit + 1))
            | "OverLimit" >> beam.Filter(lambda element: element[1] > limit)
        )
        members = rows | "GroupMembers" >> beam.Map(lambda row: (group_of(row), (row["key"], row["partition_id"])))
        return (
            {"over": over, "members": members}
            | "Join" >> beam.CoGroupByKey()
            | "Drops" >> beam.FlatMap(_drops_over_limit, reason)
        )


class SharedCaptionRule(_DistinctLimitRule):
    """A caption on more than ``limit`` distinct images (sha256) is dropped from all of them."""

    columns = ("key", "partition_id", "caption", "sha256")
    reason = reasons.CORPUS_CAPTION_SHARED

    @staticmethod
    def group_of(row: dict[str, Any]) -> Any:
        return caption_digest(row.get("caption"))

    @staticmethod
    def value_of(row: dict[str, Any]) -> Any:
        return row.get("sha256") or row["key"]  # no hash (should not happen after ingest): the pair is its own image


class ManyCaptionsImageRule(_DistinctLimitRule):
    """An image (sha256) with more than ``limit`` distinct captions is dropped, with every caption."""

    columns = ("key", "partition_id", "caption", "sha256")
    reason = reasons.CORPUS_IMAGE_MANY_CAPTIONS

    @staticmethod
    def group_of(row: dict[str, Any]) -> Any:
        return row.get("sha256") or row["key"]

    @staticmethod
    def value_of(row: dict[str, Any]) -> Any:
        return caption_digest(row.get("caption"))


# Unigrams: a run of letters/digits, or one CJK character (CJK has no spaces between words).
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_UNIGRAM = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")


def caption_tokens(caption: str | None) -> list[str]:
    """Unigrams then bigrams ("a b"), lower case, in order and with repeats (for counting)."""
    words = _UNIGRAM.findall((caption or "").lower())
    return words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]


def token_hash(token: str) -> int:
    # 8 bytes: at ALIGN's 100M-token vocabulary two tokens share a hash with a chance of about 3e-4.
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


def count_threshold(count_of_counts: dict[int, int], top_k: int) -> int:
    """The smallest count a token needs to be in the vocabulary of at most ``top_k`` tokens (0: all are in)."""
    kept = 0
    for count in sorted(count_of_counts, reverse=True):
        if kept + count_of_counts[count] > top_k:
            return count + 1  # the tokens of this count do not all fit: none of them is in (order-independent)
        kept += count_of_counts[count]
    return 0


class RareTokenRule(CorpusRule):
    """Drops captions holding a unigram or bigram outside the corpus's ``top_k`` most frequent."""

    columns = ("key", "partition_id", "caption")

    def __init__(self, top_k: int) -> None:
        super().__init__()
        self.top_k = top_k

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        top_k = self.top_k
        counts = (
            rows
            | "TokenOccurrences" >> beam.FlatMap(
                lambda row: Counter(token_hash(t) for t in caption_tokens(row.get("caption"))).items()
            )
            | "CountTokens" >> beam.CombinePerKey(sum)
        )
        threshold = (
            counts
            | "Counts" >> beam.Values()
            | "CountOfCounts" >> beam.combiners.Count.PerElement()
            | "Histogram" >> beam.combiners.ToDict()
            | "Threshold" >> beam.Map(count_threshold, top_k)
        )
        rare = counts | "Rare" >> beam.Filter(
            lambda element, low: element[1] < low, low=beam.pvalue.AsSingleton(threshold)
        )
        members = rows | "TokenMembers" >> beam.FlatMap(
            lambda row: ((h, (row["key"], row["partition_id"])) for h in {
                token_hash(t) for t in caption_tokens(row.get("caption"))
            })
        )
        return (
            {"over": rare, "members": members}
            | "Join" >> beam.CoGroupByKey()
            | "PairsWithRareToken" >> beam.FlatMap(_drops_over_limit, reasons.CORPUS_RARE_TOKEN)
            | "OncePerPair" >> beam.Distinct()
        )


def corpus_text_rules(config: CorpusRulesConfig) -> list[tuple[str, CorpusRule]]:
    """The rules switched on, in the order they see the corpus: before deduplication, since ALIGN counted the
    raw corpus (and after sha256 deduplication no image would have more than one caption left to count)."""
    rules: list[tuple[str, CorpusRule]] = []
    if config.max_images_per_caption is not None:
        rules.append(("SharedCaptions", SharedCaptionRule(config.max_images_per_caption)))
    if config.max_captions_per_image is not None:
        rules.append(("ManyCaptionsImages", ManyCaptionsImageRule(config.max_captions_per_image)))
    if config.rare_token_top_k is not None:
        rules.append(("RareTokens", RareTokenRule(config.rare_token_top_k)))
    return rules
