"""The Beam stage ClipScore, on Beam's RunInference: every kept pair scored, tagged, judged by the CLIP rules.

``ClipScore`` is ``RunInference`` with ``ClipModelHandler`` (transforms/clip/inference.py): Beam loads
the models once per worker process and shares them between its threads (``load_model``, behind
RunInference's ``Shared``), and ``run_inference`` scores a batch of records. The batches are cut by
the ingest's rule for model stages (transforms/batching.py): ``clip.batch_size`` pairs to score, or
fewer when a partition is complete, so that WriteShards writes each partition as soon as its last
pair is scored (a killed run loses only the partitions in flight). RunInference's own batching
(``BatchElements``) cannot cut a batch there: it emits one only when full or at the bundle's end,
so a finished partition would wait for up to ``clip.batch_size - 1`` pairs of the next ones. So
``PartitionBatchesFor`` cuts the batches, and RunInference runs ``with_no_batching()``.

WriteShards writes a partition when all its records arrived in one bundle: nothing between Download
and WriteShards may move a record to another bundle. The batching DoFn buffers within the bundle
(the rest leaves in ``finish_bundle``), and ``run_inference`` returns the records themselves, a
dropped or image-less one untouched, so no shuffle, state or flatten stands in between.

Per batch: the main model's image and text embeddings, their cosine as ``clip_score`` (or, in a
language bucket with a model of its own, that model's), the zero-shot ``nsfw_score`` and
``watermark_score``, then the CLIP ``PairRule``s (filters/clip.py); a dropped pair's image is set
aside (thumbnails), a kept one carries its float16 embeddings to WriteShards. Counters:
``clip_pairs_scored``, ``clip_batches`` and ``dropped.<reason>`` (RunInference's own go to its
``RunInference`` namespace).

Overhead against the hand-written DoFn it replaced, measured side by side (``bench/bench_clip.py
--model altsieve-tiny-clip --pretrained builtin --paths beam,beam-dofn --n 256 --beam-rounds 5``, a
whole DirectRunner pipeline with model load each run, on the shared 2-core machine): median 11.7 CPU s
against 11.9 (x0.99, ranges 10.2-13.2 and 8.7-15.2), no overhead the machine's noise lets one see.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import apache_beam as beam
import numpy as np
import pyarrow as pa

from altsieve.core.config import bucket_of
from altsieve.core.layout import Column
from altsieve.filters.base import RuleSet
from altsieve.transforms.batching import PartitionBatchesFor
from altsieve.transforms.clip.model import ClipScorer, ClipSpec, spec_of
from altsieve.transforms.clip.store import IMAGE_EMBEDDING_FIELD, TEXT_EMBEDDING_FIELD
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


class ClipModels:
    """What a worker process holds once (RunInference's ``load_model``): the scorers and the tag prompts' embeddings."""

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


def score_records(models: ClipModels, config: ClipConfig, language: LanguageConfig,
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


def to_score(record: Mapping[str, Any]) -> bool:
    """Whether ClipScore scores a record: no rule dropped it and it has an image."""
    return record.get("reason") is None and record.get("image") is not None


class ClipScore(beam.PTransform):
    """``PCollection[record]`` -> the same records, each kept pair with ``clip_score``, tags and embeddings."""

    def __init__(self, config: Config, expected_sha256: str | None = None) -> None:
        super().__init__()
        self._config, self._expected = config, expected_sha256

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        if not self._config.clip.enabled:
            return records
        # Beam's RunInference module imports torch (2.4 s): only a run that scores pays for it.
        from altsieve.transforms.clip.inference import ClipModelHandler, RunInference

        handler = ClipModelHandler(self._config, self._expected).with_no_batching()
        return (
            records
            | "Batch" >> beam.ParDo(PartitionBatchesFor(self._config.clip.batch_size, to_score))
            | "RunInference" >> RunInference(handler)
        )
