"""The deduplication rules a config switches on, in funnel order (``pipeline.select.corpus_rules`` calls this).

Order, each rule seeing what the ones before kept:

1. decontamination: an evaluation image must go whatever else it duplicates, and be counted as such;
2. exact (URL + caption, URL, image sha256): cheapest and certain, and they thin the corpus for the rest;
3. perceptual (pHash): the same picture re-encoded, resized, lightly edited;
   then crop-robust (signature neighbours verified by ORB + RANSAC): crops and overlays pHash misses;
4. semantic (CLIP embeddings): the same content in a different picture;
5. captions (MinHash): the same text on different images, last because it is the least about the image.

A drop's ``duplicate_of`` names the pair its rule kept. A later rule may drop that pair in turn (for a
reason of its own); its decision then names the next one, so the audit follows the chain to a kept pair.
"""

from __future__ import annotations

from altsieve.core.config import Config, ConfigError
from altsieve.dedup.banding import shard_bits_for
from altsieve.dedup.exact import exact_rules
from altsieve.dedup.resolve import rounds_for
from altsieve.filters.corpus import CorpusRule


def _require(module: str, setting: str) -> None:
    """Fail when the pipeline is built, not in a worker, when an optional dependency is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{setting} needs {module}, a dependency of altsieve missing here: "
                          "pip install faiss-cpu datasketch")


def _require_embeddings(output: str | None, setting: str) -> None:
    """Rules on CLIP embeddings need the ingest to have written them: say so before any worker starts."""
    if output is None:
        return
    from altsieve.core import fsutil, layout

    if not fsutil.exists(layout.meta(output, layout.CLIP_MODEL_FILE)):
        raise ConfigError(f"{setting} needs the CLIP embeddings of the ingest pass, and {output} has none: "
                          "ingest with clip.enabled=true (and clip.save_embeddings=true)")


def dedup_rules(config: Config, output: str | None, rows: int | None = None) -> list[tuple[str, CorpusRule]]:
    """``rows``: at most how many the pass reads (None: not known), which sets the near-duplicate rules' rounds and
    band shards."""
    dedup = config.dedup
    rounds, shard_bits = rounds_for(rows), shard_bits_for(rows)
    rules: list[tuple[str, CorpusRule]] = []
    decontamination = dedup.decontamination
    if decontamination.eval_sets or decontamination.eval_embeddings:
        from altsieve.dedup.decontaminate import DecontaminationFilter

        embed_spec = None
        if decontamination.embed_eval_images and config.clip.enabled and config.clip.save_embeddings:
            from altsieve.transforms.clip.model import spec_of

            embed_spec = spec_of(config.clip)  # the model whose embeddings the training pairs have
        _require("faiss", "dedup.decontamination")
        if decontamination.eval_embeddings or embed_spec is not None:
            _require_embeddings(output, "decontamination by CLIP embedding")
        try:
            rule = DecontaminationFilter(
                output, decontamination.eval_sets, decontamination.eval_embeddings,
                decontamination.phash_max_distance, decontamination.clip_min_cosine, config.image,
                embed_spec,
            )
        except FileNotFoundError as err:
            raise ConfigError(str(err)) from None
        rules.append(("Decontaminate", rule))
    rules += exact_rules(dedup.exact_sha256, dedup.exact_url, dedup.exact_url_caption)
    if dedup.perceptual:
        from altsieve.dedup.perceptual import PerceptualDuplicateFilter

        rules.append(("PerceptualDuplicates",
                      PerceptualDuplicateFilter(dedup.phash_max_distance, dedup.phash_bands, rounds, shard_bits)))
    if dedup.crop.enabled and output is not None:
        from altsieve.dedup.crop import CropDuplicateFilter

        _require("faiss", "dedup.crop.enabled")
        crop = dedup.crop
        rules.append(("CropDuplicates", CropDuplicateFilter(
            output, crop.neighbours, crop.descriptor_votes, crop.n_clusters, crop.sample_size, crop.seed, rounds)))
    if dedup.semantic.enabled:
        from altsieve.dedup.semantic import SemanticDuplicateFilter

        _require("faiss", "dedup.semantic.enabled")
        _require_embeddings(output, "dedup.semantic.enabled")
        semantic = dedup.semantic
        rules.append(("SemanticDuplicates", SemanticDuplicateFilter(
            output, semantic.eps, semantic.target_fraction, semantic.n_clusters, semantic.sample_size,
            semantic.keep, semantic.seed,
        )))
    if dedup.caption_minhash.enabled:
        from altsieve.dedup.captions import CAPTION_SHARD_BITS, CaptionDuplicateFilter

        _require("datasketch", "dedup.caption_minhash.enabled")
        minhash = dedup.caption_minhash
        rules.append(("CaptionDuplicates", CaptionDuplicateFilter(minhash.threshold, minhash.num_perm,
                                                                   minhash.shingle_size, rounds,
                                                                   shard_bits_for(rows, CAPTION_SHARD_BITS))))
    return rules
