"""Reason codes: every dropped or failed pair carries exactly one, stored in the Parquet ``reason`` column.

A pair that is kept has ``reason = None``. Codes are short stable strings so that statistics can be
grouped on them; each code belongs to one stage of ``FUNNEL``, the one declaration of the funnel that
the summary, ``stats.json`` and the audit all read. ``TRANSIENT`` lists the failures that
``--retry-failed`` fetches again (a rule's verdict is never retried).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Input rows
URL_MISSING = "url_missing"
URL_INVALID = "url_invalid"
URL_SCHEME_NOT_ALLOWED = "url_scheme_not_allowed"
# A row the input reader could not take apart (transforms/read_inputs.py); error_message names the line.
INPUT_MALFORMED_ROW = "input_malformed_row"  # unclosed quote, wrong field count, a JSON line that is no object
INPUT_UNDECODABLE = "input_undecodable"  # bytes not valid in the input's encoding (input.encoding, --encoding)

# Cheap caption rules (before download)
CAPTION_EMPTY = "caption_empty"
CAPTION_TOO_SHORT_CHARS = "caption_too_short_chars"
CAPTION_TOO_LONG_CHARS = "caption_too_long_chars"
CAPTION_TOO_FEW_WORDS = "caption_too_few_words"
CAPTION_TOO_MANY_WORDS = "caption_too_many_words"

# Text rules (before download): boilerplate, sensitive words, contact details, language, script
TEXT_BOILERPLATE = "text_boilerplate"  # meaningless caption: "image", "图片", a file name, "1920x1080"
TEXT_BLACKLIST = "text_blacklist"  # a word of the user's sensitive-word list
TEXT_CONTACT_INFO = "text_contact_info"  # URL, e-mail address or phone number (contact_info: drop)
TEXT_NO_HAN = "text_no_han"  # require_han and not one Han character
TEXT_LANGUAGE = "text_language"  # label outside the language allow-list (or no label)
TEXT_LANGUAGE_SCORE = "text_language_score"  # allowed label below min_language_score

# Download
DOWNLOAD_NOT_FOUND = "download_not_found"  # 404, 410
DOWNLOAD_HTTP_ERROR = "download_http_error"  # other 4xx
DOWNLOAD_RATE_LIMITED = "download_rate_limited"  # 429 still after retries
DOWNLOAD_SERVER_ERROR = "download_server_error"  # 5xx still after retries
DOWNLOAD_TIMEOUT = "download_timeout"
DOWNLOAD_CONNECTION_ERROR = "download_connection_error"
DOWNLOAD_TOO_LARGE = "download_too_large"
DOWNLOAD_TOO_MANY_REDIRECTS = "download_too_many_redirects"
DOWNLOAD_BLOCKED_ADDRESS = "download_blocked_address"  # private/loopback/link-local/multicast target
DOWNLOAD_ROBOTS_OPTOUT = "download_robots_optout"  # X-Robots-Tag noai / noimageai
DOWNLOAD_DNS_ERROR = "download_dns_error"
DOWNLOAD_TRUNCATED = "download_truncated"  # fewer bytes than Content-Length: the server or the network broke off
DOWNLOAD_HOST_UNAVAILABLE = "download_host_unavailable"  # the host's circuit breaker is open (repeated failures)
DOWNLOAD_UNEXPECTED_ERROR = "download_unexpected_error"  # a fetcher bug or an unforeseen server quirk: logged
DOWNLOAD_ROBOTS_TXT = "download_robots_txt"  # robots.txt disallows the URL for altsieve (or img2dataset, or *)
DOWNLOAD_TDM_RESERVED = "download_tdm_reserved"  # TDMRep: tdm-reservation header or /.well-known/tdmrep.json
# Only in audits of img2dataset outputs, whose failures are free text: what its messages map onto.
DOWNLOAD_HASH_MISMATCH = "download_hash_mismatch"  # img2dataset's --compute_hash check failed
DOWNLOAD_ERROR = "download_error"  # an img2dataset download failure whose message names no known cause

# Decode
DECODE_UNIDENTIFIED = "decode_unidentified"  # not an image at all (HTML, text, random bytes)
DECODE_ERROR = "decode_error"  # an image format, but the data is corrupt
DECODE_TRUNCATED = "decode_truncated"
DECODE_BOMB = "decode_bomb"  # declared dimensions above the decompression-bomb limit

# Image rules
IMAGE_FILE_TOO_SMALL = "image_file_too_small"
IMAGE_TOO_SMALL = "image_too_small"  # shorter side below the minimum
IMAGE_ASPECT_RATIO = "image_aspect_ratio"
IMAGE_TOO_FEW_PIXELS = "image_too_few_pixels"
IMAGE_TOO_MANY_PIXELS = "image_too_many_pixels"

# CLIP (filters/clip.py): every code starts with "clip_" so the funnel's "CLIP rules" stage groups them
CLIP_SCORE_BELOW_THRESHOLD = "clip_score_below_threshold"  # ingest: below clip.min_score (or its language bucket's)
CLIP_SCORE_BELOW_QUANTILE = "clip_score_below_quantile"  # select: outside the corpus's top clip.top_fraction
CLIP_NSFW = "clip_nsfw"  # zero-shot NSFW probability above clip.tags.drop_nsfw_above (tags only by default)
CLIP_WATERMARK = "clip_watermark"  # zero-shot watermark probability above clip.tags.drop_watermark_above

# Safety lists (safety.*): a fetched file on a user-supplied hash list. Dropped before anything is written, and
# never stored: the row keeps its key and this reason only (no URL, caption, image, hash, embedding or thumbnail).
SAFETY_HASH_LIST = "safety_hash_list"  # MD5 or SHA-256 of the fetched bytes on safety.md5_files / sha256_files
SAFETY_PHASH_LIST = "safety_phash_list"  # pHash within safety.phash_max_distance of safety.phash_files

# Image content (content.*, ingest, after Decode)
CONTENT_TEXT_AREA = "content_text_area"  # text covers more than content.text.max_ratio of the image (T-MARS)
CONTENT_FACES = "content_faces"  # more than content.faces.max_faces faces

# Heads on the CLIP image embedding (heads.*)
HEADS_AESTHETIC = "heads_aesthetic"  # aesthetic score below heads.aesthetic.min_score
HEADS_NSFW = "heads_nsfw"  # NSFW score above heads.nsfw.max_score

# Corpus-wide rules (select pass)
DUPLICATE_SHA256 = "duplicate_sha256"
# Deduplication (dedup/): every code starts with "duplicate_" so the funnel groups them; duplicate_of names the pair
# (or, for duplicate_eval_set, the "eval:{set}/{item}" evaluation item) each drop duplicates.
DUPLICATE_URL = "duplicate_url"
DUPLICATE_URL_CAPTION = "duplicate_url_caption"
DUPLICATE_PHASH = "duplicate_phash"  # 64-bit pHash within dedup.phash_max_distance bits of a kept pair
DUPLICATE_SEMANTIC = "duplicate_semantic"  # CLIP image embedding cosine >= 1 - eps with a kept pair (SemDeDup)
DUPLICATE_CAPTION = "duplicate_caption"  # caption MinHash Jaccard >= threshold with a kept pair
DUPLICATE_EVAL_SET = "duplicate_eval_set"  # pHash or CLIP embedding too close to an evaluation image
DUPLICATE_CROP = "duplicate_crop"  # a crop, resize, re-encode or overlay of a kept pair (ORB + RANSAC verified)
# MetaCLIP curation (metaclip.*) and DataComp's image-based filter (image_clusters.*), select pass
METACLIP_NO_ENTRY = "metaclip_no_entry"  # the caption contains no entry of the list
METACLIP_BALANCED = "metaclip_balanced"  # every entry it matched is over the cap t and none drew it
IMAGE_CLUSTER_FAR = "image_cluster_far"  # its k-means cluster is nobody's nearest from the reference embeddings
CORPUS_CAPTION_SHARED = "corpus_caption_shared"  # the caption is on more than N distinct images
CORPUS_IMAGE_MANY_CAPTIONS = "corpus_image_many_captions"  # the image (sha256) has more than N distinct captions
CORPUS_RARE_TOKEN = "corpus_rare_token"  # a unigram or bigram outside the corpus's top K

# Crawl extraction (``altsieve extract``, WARC/WAT inputs): why an <img> tag did not become a pair.
# These are counts in extract_stats.json, never a row's ``reason``: a skipped img tag is not a pair yet.
CRAWL_NO_SRC = "crawl_no_src"  # no src, data-src or srcset at all
CRAWL_DATA_URI = "crawl_data_uri"  # the image is inline (data:), nothing to download
CRAWL_INVALID_URL = "crawl_invalid_url"  # does not resolve to a URL with a host
CRAWL_SCHEME = "crawl_scheme"  # resolves to a non-http(s) scheme (javascript:, blob:, ftp:, ...)
CRAWL_TRACKING_PIXEL = "crawl_tracking_pixel"  # width or height attribute of 1 px or less
CRAWL_EMPTY_ALT = "crawl_empty_alt"  # no alt, or only whitespace
CRAWL_SVG = "crawl_svg"  # .svg, which the decoder cannot rasterise (``--keep-svg`` keeps them)
CRAWL_DUPLICATE = "crawl_duplicate"  # same URL and alt as a pair already kept (across the whole extraction)
CRAWL_CORRUPT_RECORD = "crawl_corrupt_record"  # a record (or stretch of records) that cannot be read: skipped
CRAWL_SKIP_REASONS: tuple[str, ...] = (
    CRAWL_NO_SRC, CRAWL_DATA_URI, CRAWL_INVALID_URL, CRAWL_SCHEME, CRAWL_TRACKING_PIXEL, CRAWL_EMPTY_ALT, CRAWL_SVG,
    CRAWL_DUPLICATE, CRAWL_CORRUPT_RECORD,
)

# An img2dataset status the audit does not know becomes "status_<status>" (never written by altsieve).
UNKNOWN_STATUS_PREFIX = "status_"

TRANSIENT: frozenset[str] = frozenset(
    {DOWNLOAD_TIMEOUT, DOWNLOAD_CONNECTION_ERROR, DOWNLOAD_SERVER_ERROR, DOWNLOAD_RATE_LIMITED, DOWNLOAD_DNS_ERROR,
     DOWNLOAD_TRUNCATED, DOWNLOAD_HOST_UNAVAILABLE, DOWNLOAD_UNEXPECTED_ERROR}
)

# img2dataset's ``status`` column, derived from the reason so that its readers work unchanged.
STATUS_SUCCESS = "success"
STATUS_FAILED_TO_DOWNLOAD = "failed_to_download"
STATUS_FAILED_TO_RESIZE = "failed_to_resize"
STATUS_FILTERED = "filtered"


def status_for(reason: str | None) -> str:
    """img2dataset-compatible status for a reason code."""
    if reason is None:
        return STATUS_SUCCESS
    if reason.startswith(("download_", "url_", "input_")):
        return STATUS_FAILED_TO_DOWNLOAD
    if reason.startswith("decode_"):
        return STATUS_FAILED_TO_RESIZE
    return STATUS_FILTERED


# --- The funnel ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One step of the funnel: the reason codes it drops pairs for, in the order the pipeline runs them.

    ``always_shown``: the step appears in the funnel even when it dropped nothing (how many pairs were
    fetched and decoded is worth seeing in every run).
    """

    name: str
    label: str
    reasons: tuple[str, ...]
    always_shown: bool = False


INPUT, CAPTION, TEXT, DOWNLOAD, DECODE, IMAGE, CLIP, CORPUS, DEDUP = (
    "input", "caption", "text", "download", "decode", "image", "clip", "corpus", "dedup")
SAFETY, CONTENT, HEADS, BALANCE = "safety", "content", "heads", "balance"

FUNNEL: tuple[Stage, ...] = (
    Stage(INPUT, "valid input row", (INPUT_MALFORMED_ROW, INPUT_UNDECODABLE, URL_MISSING, URL_INVALID,
                                     URL_SCHEME_NOT_ALLOWED), always_shown=True),
    Stage(CAPTION, "caption rules", (CAPTION_EMPTY, CAPTION_TOO_SHORT_CHARS, CAPTION_TOO_LONG_CHARS,
                                     CAPTION_TOO_FEW_WORDS, CAPTION_TOO_MANY_WORDS)),
    # Before download: a caption needs no image, and every pair dropped here costs no request.
    Stage(TEXT, "language and text rules", (TEXT_CONTACT_INFO, TEXT_BOILERPLATE, TEXT_BLACKLIST, TEXT_NO_HAN,
                                            TEXT_LANGUAGE, TEXT_LANGUAGE_SCORE)),
    Stage(DOWNLOAD, "fetched", (
        DOWNLOAD_NOT_FOUND, DOWNLOAD_HTTP_ERROR, DOWNLOAD_RATE_LIMITED, DOWNLOAD_SERVER_ERROR, DOWNLOAD_TIMEOUT,
        DOWNLOAD_CONNECTION_ERROR, DOWNLOAD_TOO_LARGE, DOWNLOAD_TOO_MANY_REDIRECTS, DOWNLOAD_BLOCKED_ADDRESS,
        DOWNLOAD_ROBOTS_OPTOUT, DOWNLOAD_DNS_ERROR, DOWNLOAD_HASH_MISMATCH, DOWNLOAD_ERROR,
        DOWNLOAD_TRUNCATED, DOWNLOAD_HOST_UNAVAILABLE, DOWNLOAD_UNEXPECTED_ERROR, DOWNLOAD_ROBOTS_TXT,
        DOWNLOAD_TDM_RESERVED,
    ), always_shown=True),
    # Checked on the fetched bytes (MD5, SHA-256) and right after hashing (pHash), before anything is kept.
    Stage(SAFETY, "safety lists", (SAFETY_HASH_LIST, SAFETY_PHASH_LIST)),
    Stage(DECODE, "decoded", (DECODE_UNIDENTIFIED, DECODE_ERROR, DECODE_TRUNCATED, DECODE_BOMB), always_shown=True),
    Stage(IMAGE, "image rules", (IMAGE_FILE_TOO_SMALL, IMAGE_TOO_SMALL, IMAGE_ASPECT_RATIO, IMAGE_TOO_FEW_PIXELS,
                                 IMAGE_TOO_MANY_PIXELS)),
    Stage(CONTENT, "image content", (CONTENT_TEXT_AREA, CONTENT_FACES)),
    Stage(CLIP, "CLIP rules", (CLIP_SCORE_BELOW_THRESHOLD, CLIP_NSFW, CLIP_WATERMARK, CLIP_SCORE_BELOW_QUANTILE)),
    Stage(HEADS, "embedding heads", (HEADS_AESTHETIC, HEADS_NSFW)),
    # The select pass: corpus-wide text rules, then deduplication.
    Stage(CORPUS, "corpus-wide text rules", (CORPUS_CAPTION_SHARED, CORPUS_IMAGE_MANY_CAPTIONS, CORPUS_RARE_TOKEN)),
    Stage(DEDUP, "deduplicated", (DUPLICATE_EVAL_SET, DUPLICATE_URL_CAPTION, DUPLICATE_URL, DUPLICATE_SHA256,
                                  DUPLICATE_PHASH, DUPLICATE_CROP, DUPLICATE_SEMANTIC, DUPLICATE_CAPTION)),
    # After deduplication (a copy would count twice for its entries, or weigh twice in its cluster).
    Stage(BALANCE, "MetaCLIP and image-based curation", (METACLIP_NO_ENTRY, METACLIP_BALANCED, IMAGE_CLUSTER_FAR)),
)
OTHER_STAGE = Stage("other", "other rules", ())
_STAGE_OF: dict[str, Stage] = {code: stage for stage in FUNNEL for code in stage.reasons}
STAGES: dict[str, Stage] = {stage.name: stage for stage in FUNNEL}


def stage_of(reason: str) -> Stage:
    """The funnel stage of a reason code; codes no stage declares (a newer or foreign run's) are "other rules"."""
    return _STAGE_OF.get(reason, OTHER_STAGE)


def _percent(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0


def funnel(reason_counts: Mapping[str, int]) -> dict[str, Any]:
    """Input pairs -> each stage -> kept, from the count of every reason code (``kept`` for the kept pairs).

    Each stage lists its reasons with their counts, as shares of the input and of what entered the stage.
    """
    total = sum(reason_counts.values())
    dropped = {code: count for code, count in reason_counts.items() if code != "kept" and count}
    stages: list[dict[str, Any]] = [{"stage": "input pairs", "remaining": total, "dropped": 0,
                                     "percent_of_input": _percent(total, total), "reasons": []}]
    remaining = total
    for stage in (*FUNNEL, OTHER_STAGE):
        here = {code: count for code, count in dropped.items() if stage_of(code) is stage}
        if not here and not stage.always_shown:
            continue
        entering, lost = remaining, sum(here.values())
        remaining -= lost
        stages.append({
            "stage": stage.label,
            "remaining": remaining,
            "dropped": lost,
            "percent_of_input": _percent(remaining, total),
            "drop_percent_of_stage_input": _percent(lost, entering),
            "reasons": [{"reason": code, "count": count, "percent_of_input": _percent(count, total),
                         "percent_of_stage_input": _percent(count, entering)}
                        for code, count in sorted(here.items(), key=lambda item: (-item[1], item[0]))],
        })
    stages.append({"stage": "kept", "remaining": remaining, "dropped": 0,
                   "percent_of_input": _percent(remaining, total), "reasons": []})
    return {"input_pairs": total, "kept": remaining, "kept_percent": _percent(remaining, total), "stages": stages}


# --- Reasons whose pairs are never shown ----------------------------------------------------------
# Ingest keeps a few thumbnails of the pairs dropped after decode, and the audit shows sampled pairs' images, so that
# a reader sees what each rule removed. A pair dropped for one of these reasons is never turned into a thumbnail nor
# shown in a gallery, whatever stage dropped it: matches of a safety list (CSAM hash lists and the like) must not be
# copied or displayed. A safety rule declares its codes with the prefix, or adds them to NEVER_SHOWN.
NEVER_SHOWN_PREFIXES: tuple[str, ...] = ("safety_",)
NEVER_SHOWN: frozenset[str] = frozenset()


def may_show_image(reason: str | None) -> bool:
    """Whether a pair with this reason (None: kept) may have its image thumbnailed or shown."""
    return reason is None or (reason not in NEVER_SHOWN and not reason.startswith(NEVER_SHOWN_PREFIXES))
