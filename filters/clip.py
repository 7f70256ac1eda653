"""The CLIP rules: per-pair thresholds on what ClipScore wrote, and the corpus's top fraction by CLIP score.

Per pair (``PairRule``, run right after scoring): ``clip.min_score`` (or a language bucket's own
threshold), ``clip.tags.drop_nsfw_above`` and ``clip.tags.drop_watermark_above``.

Keep the top fraction of the corpus by CLIP score (DataComp's CLIP-score filter): a select-pass corpus rule.

The cut is the exact k-th largest score, k = ceil(fraction x scored pairs), found without any worker
holding the corpus: float32 scores map to order-preserving 32-bit keys; one global combine counts
the keys' high 16 bits (65,536 bins), which names the bin holding the k-th largest, and a second
counts the low 16 bits inside that bin alone. Two arrays of 65,536 counts cross the shuffle, not
the scores. Every pair scoring at or above the cut is kept (ties at the cut are all kept), so the
result does not depend on the order the runner sees the pairs in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np

from altsieve.core import reasons
from altsieve.core.config import Config, LanguageConfig, bucket_of
from altsieve.filters.base import PairRule, Record, SettingRule, Verdict
from altsieve.filters.corpus import CorpusRule, Drop

# --- per pair --------------------------------------------------------------------------------------


class ClipMinScore(PairRule):
    """clip.min_score, or clip.per_language.<bucket>.min_score for a bucket that sets one (LAION-5B: en 0.28,
    other languages 0.26 with a multilingual model): a pair whose clip_score is below it."""

    stage, reasons = reasons.CLIP, (reasons.CLIP_SCORE_BELOW_THRESHOLD,)

    def __init__(self, min_score: float | None, per_bucket: dict[str, float | None], language: LanguageConfig) -> None:
        self.min_score, self.per_bucket, self.language = min_score, per_bucket, language

    @classmethod
    def from_config(cls, config: Config) -> ClipMinScore | None:
        clip = config.clip
        per_bucket = {bucket: override.min_score for bucket, override in clip.per_language.items()}
        if not clip.enabled or (clip.min_score is None and not any(v is not None for v in per_bucket.values())):
            return None
        return cls(clip.min_score, per_bucket, config.language)

    def check(self, record: Record) -> Verdict:
        score = record.get("clip_score")
        if score is None:
            return None
        threshold = self.min_score
        if self.per_bucket:  # a bucket listed in per_language has its own threshold (None: never dropped)
            bucket = bucket_of(record.get("language"), record.get("language_score"), self.language)
            threshold = self.per_bucket.get(bucket, self.min_score)
        return reasons.CLIP_SCORE_BELOW_THRESHOLD if threshold is not None and score < threshold else None


class _TagAbove(SettingRule):
    """A zero-shot tag's probability (``score_field``) above its clip.tags bound; off unless CLIP and tags run."""

    score_field: str

    @classmethod
    def from_config(cls, config: Config) -> SettingRule | None:
        return super().from_config(config) if config.clip.enabled and config.clip.tags.enabled else None

    def check(self, record: Record) -> Verdict:
        score = record.get(self.score_field)
        return self.reasons[0] if score is not None and float(score) > self.bound else None


class ClipNsfw(_TagAbove):
    """clip.tags.drop_nsfw_above: the zero-shot NSFW probability above it (LAION tagged only: off by default)."""

    stage, reasons, setting = reasons.CLIP, (reasons.CLIP_NSFW,), "clip.tags.drop_nsfw_above"
    score_field = "nsfw_score"


class ClipWatermark(_TagAbove):
    """clip.tags.drop_watermark_above: the zero-shot watermark probability above it (off by default)."""

    stage, reasons, setting = reasons.CLIP, (reasons.CLIP_WATERMARK,), "clip.tags.drop_watermark_above"
    score_field = "watermark_score"


# --- corpus-wide: the top fraction -----------------------------------------------------------------

_BINS = 1 << 16


def order_key(score: float) -> int:
    """A float32 score as an unsigned 32-bit integer with the same order (larger score, larger key)."""
    bits = int(np.array([score + 0.0], dtype=np.float32).view(np.uint32)[0])  # + 0.0: -0.0 becomes 0.0, its equal
    return (~bits) & 0xFFFFFFFF if bits & 0x80000000 else bits | 0x80000000


def score_of(key: int) -> float:
    bits = key & 0x7FFFFFFF if key & 0x80000000 else (~key) & 0xFFFFFFFF
    return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])


class _Histogram(beam.CombineFn):
    """Counts of the 16 bits of each key at ``shift`` (16: the high half, 0: the low half)."""

    def __init__(self, shift: int) -> None:
        self._shift = shift

    def create_accumulator(self) -> np.ndarray:
        return np.zeros(_BINS, dtype=np.int64)

    def add_input(self, accumulator: np.ndarray, key: int) -> np.ndarray:
        accumulator[(key >> self._shift) & 0xFFFF] += 1
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[np.ndarray]) -> np.ndarray:
        total = self.create_accumulator()
        for accumulator in accumulators:
            total += accumulator
        return total

    def extract_output(self, accumulator: np.ndarray) -> np.ndarray:
        return accumulator


def _kth_from_top(counts: np.ndarray, k: int) -> tuple[int, int]:
    """The bin holding the k-th largest element (1-based) and how many of the bin's elements reach it."""
    from_top = np.cumsum(counts[::-1])
    if k < 1 or k > from_top[-1]:
        raise ValueError(f"rank {k} outside 1..{int(from_top[-1])}")
    position = int(np.searchsorted(from_top, k))  # the first bin (from the top) whose running count reaches k
    index = _BINS - 1 - position
    above = int(from_top[position] - counts[index])
    return index, k - above


def needed(fraction: float, total: int) -> int:
    """How many pairs the top fraction keeps (at least one of a non-empty corpus)."""
    return max(1, math.ceil(fraction * total - 1e-9)) if total else 0


def high_bin(counts: np.ndarray, fraction: float) -> tuple[int, int] | None:
    k = needed(fraction, int(counts.sum()))
    return _kth_from_top(counts, k) if k else None


def cut_key(low_counts: np.ndarray, high: tuple[int, int] | None) -> int | None:
    """The key of the k-th largest score: the high bin's index joined to the low bits that reach rank k."""
    if high is None:
        return None
    bin_index, rank_in_bin = high
    low, _ = _kth_from_top(low_counts, rank_in_bin)
    return (bin_index << 16) | low


class ClipTopFraction(CorpusRule):
    """Rows with ``clip_score`` -> drops of the pairs below the corpus's top ``fraction`` (clip_score_below_quantile).

    ``record`` (a callable taking ``(cut score, scored pairs)``) is called once with the cut, to report it.
    """

    columns = ("key", "partition_id", "clip_score")

    def __init__(self, fraction: float, record: Any = None) -> None:
        super().__init__()
        self._fraction, self._record = fraction, record

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        fraction = self._fraction
        keyed = (
            rows
            | "Scored" >> beam.Filter(lambda row: row.get("clip_score") is not None)
            | "OrderKey" >> beam.Map(lambda row: (order_key(row["clip_score"]), row["key"], row["partition_id"]))
        )
        high_counts = keyed | "HighKeys" >> beam.Map(lambda item: item[0]) | "HighHistogram" >> beam.CombineGlobally(
            _Histogram(16))
        high = high_counts | "HighBin" >> beam.Map(lambda counts: high_bin(counts, fraction))
        low_counts = (
            keyed
            | "InHighBin" >> beam.Filter(lambda item, hb: hb is not None and item[0] >> 16 == hb[0],
                                         hb=beam.pvalue.AsSingleton(high))
            | "LowKeys" >> beam.Map(lambda item: item[0])
            | "LowHistogram" >> beam.CombineGlobally(_Histogram(0))
        )
        cut = low_counts | "Cut" >> beam.Map(lambda counts, hb: cut_key(counts, hb), hb=beam.pvalue.AsSingleton(high))
        if self._record is not None:
            record = self._record
            _ = cut | "RecordCut" >> beam.Map(
                lambda key, counts: record(None if key is None else score_of(key), int(counts.sum())),
                counts=beam.pvalue.AsSingleton(high_counts),
            )
        return keyed | "BelowCut" >> beam.FlatMap(_drops_below, cut=beam.pvalue.AsSingleton(cut))


def _drops_below(item: tuple[int, str, str], cut: int | None) -> Iterator[Drop]:
    key, pair_key, partition_id = item
    if cut is not None and key < cut:
        yield partition_id, (pair_key, reasons.CLIP_SCORE_BELOW_QUANTILE, None)
