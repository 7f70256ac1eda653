"""The Beam stage ClipScore: every kept pair scored by the model, its tags, the CLIP rules, its embeddings."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.shared import Shared

from altsieve.core import reasons
from altsieve.core.config import bucket_of
from altsieve.core.layout import Column
from altsieve.filters.base import RuleSet
from altsieve.transforms.clip.model import ClipModelError, ClipScorer, ClipSpec, spec_of
from altsieve.transforms.clip.store import IMAGE_EMBEDDING_FIELD, TEXT_EMBEDDING_FIELD
from altsieve.transforms.metrics import count_drops
from altsieve.transforms.thumbnails import set_aside

if TYPE_CHECKING:
    from altsieve.core.config import ClipConfig, Config, LanguageConfig

COLUMNS = (
    Column("clip_score", pa.float32(), "image-text cosine of the CLIP model (null: not scored)"),
    Column("nsfw_score", pa.float32(), "zero-shot probability of the NSFW prompts"),
    Column("watermark_score", pa.float32(), "zero-shot probability of the watermark prompts"),
)


def language_bucket(record: Mapping[str, Any], language: LanguageConfig) -> str:
    return bucket_of(record.get("language"), record.get("language_score"), language)


class _Models:
    """What a worker process holds once (via ``Shared``): the scorers and the tag prompts' embeddings."""

    def __init__(self, config: ClipConfig) -> None:
        self.main = ClipScorer.load(spec_of(config))
        self.by_bucket: dict[str, ClipScorer] = {}
        for bucket, override in config.per_language.items():
            if override.model is None or override.pretrained is None:
                continue  # the main model scores this bucket; only its threshold differs
            if (override.model, override.pretrained) != (config.model, config.pretrained):
                spec = ClipSpec(override.model, override.pretrained, config.precision, config.device)
                self.by_bucket[bucket] = ClipScorer.load(spec)
        tags = config.tags
        self.nsfw_prompts = self.watermark_prompts = np.zeros((0, self.main.embed_dim), dtype=np.float32)
        if tags.enabled:  # the prompts are embedded once per worker, not per batch
            self.nsfw_prompts = self.main.embed_texts([*tags.nsfw_prompts, *tags.nsfw_negative_prompts])
            self.watermark_prompts = self.main.embed_texts([*tags.watermark_prompts, *tags.watermark_negative_prompts])


def score_records(models: _Models, config: ClipConfig, language: LanguageConfig,
                  batch: list[dict[str, Any]], rules: RuleSet) -> None:
    """Score a batch in place: clip_score, tags, embeddings, and the reason of any pair a CLIP rule drops."""
    images = [r["image"] for r in batch]
    captions = [r.get("caption") or "" for r in batch]
    image = models.main.embed_images(images)
    text = models.main.embed_texts(captions)
    scores = (image * text).sum(axis=1)
    if models.by_bucket:
        buckets = [language_bucket(r, language) for r in batch]
        for bucket, scorer in models.by_bucket.items():
            rows = [i for i, b in enumerate(buckets) if b == bucket]
            if rows:  # this bucket's own model decides its score; the main model's embeddings are still saved
                own_image = scorer.embed_images([images[i] for i in rows])
                own_text = scorer.embed_texts([captions[i] for i in rows])
                scores[rows] = (own_image * own_text).sum(axis=1)
    tags = config.tags
    nsfw = watermark = None
    if tags.enabled:
        nsfw = models.main.zero_shot(image, models.nsfw_prompts, len(tags.nsfw_prompts))
        watermark = models.main.zero_shot(image, models.watermark_prompts, len(tags.watermark_prompts))
    for i, record in enumerate(batch):
        record["clip_score"] = float(np.float32(scores[i]))
        if nsfw is not None and watermark is not None:
            record["nsfw_score"] = float(np.float32(nsfw[i]))
            record["watermark_score"] = float(np.float32(watermark[i]))
        reason = rules.first_reason(record)
        if reason is not None:
            record["reason"] = reason
            # A dropped pair's image stays out of the shard, as for every other rule; the audit may show a thumbnail.
            set_aside(record, record.pop("image", None))
        elif config.save_embeddings:
            record[IMAGE_EMBEDDING_FIELD] = image[i].astype(np.float16)
            record[TEXT_EMBEDDING_FIELD] = text[i].astype(np.float16)


def _shared_key(config: ClipConfig) -> str:
    return json.dumps(config.model_dump(mode="json"), sort_keys=True)


class _ScoreBatches(beam.DoFn):
    """Buffers kept pairs into batches; a batch is scored when full or when its partition is complete.

    Flushing at the partition's end keeps WriteShards writing each partition as soon as it is
    fetched (a killed run loses only the partitions in flight); ``finish_bundle`` flushes the rest.
    """

    def __init__(self, config: Config, expected_sha256: str | None, shared: Shared) -> None:
        self._full_config, self._expected, self._shared = config, expected_sha256, shared
        self._config, self._language = config.clip, config.language
        self._scored = Metrics.counter("altsieve", "clip_pairs_scored")
        self._batches = Metrics.counter("altsieve", "clip_batches")

    def setup(self) -> None:
        if self._config.num_threads:
            import torch

            torch.set_num_threads(self._config.num_threads)
        self._models = self._shared.acquire(lambda: _Models(self._config), tag=_shared_key(self._config))
        self._rules = RuleSet.for_stages(self._full_config, reasons.CLIP)
        sha = self._models.main.identity["weights_sha256"]
        if self._expected is not None and sha != self._expected:
            raise ClipModelError(
                f"this worker loaded other weights for {self._config.model} from {self._config.pretrained!r} "
                f"(sha256 {sha[:12]}) than the launcher did ({self._expected[:12]}): make the checkpoint the same "
                "everywhere (a shared path such as gs://...)"
            )

    def start_bundle(self) -> None:
        self._buffer: list[dict[str, Any]] = []
        self._seen: dict[str, int] = {}

    def process(self, record: dict[str, Any]):
        partition_id = record.get("partition_id")
        if record.get("reason") is None and record.get("image") is not None:
            self._buffer.append(record)
        else:
            yield record
        done = False
        if partition_id is not None:
            self._seen[partition_id] = self._seen.get(partition_id, 0) + 1
            done = self._seen[partition_id] == record.get("partition_size")
            if done:
                del self._seen[partition_id]
        if done or len(self._buffer) >= self._config.batch_size:
            yield from self._flush()

    def finish_bundle(self):
        for record in self._flush():
            yield GlobalWindows.windowed_value(record)
        count_drops(self._rules)

    def _flush(self) -> list[dict[str, Any]]:
        batch, self._buffer = self._buffer, []
        for start in range(0, len(batch), self._config.batch_size):
            chunk = batch[start : start + self._config.batch_size]
            score_records(self._models, self._config, self._language, chunk, self._rules)
            self._scored.inc(len(chunk))
            self._batches.inc()
        return batch


class ClipScore(beam.PTransform):
    """``PCollection[record]`` -> the same records, each kept pair with ``clip_score``, tags and embeddings."""

    def __init__(self, config: Config, expected_sha256: str | None = None) -> None:
        super().__init__()
        self._config, self._expected = config, expected_sha256

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        if not self._config.clip.enabled:
            return records
        return records | "ScoreBatches" >> beam.ParDo(_ScoreBatches(self._config, self._expected, Shared()))
