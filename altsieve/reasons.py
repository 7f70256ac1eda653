"""Reason codes: every dropped or failed pair carries exactly one, stored in the Parquet ``reason`` column.

A pair that is kept has ``reason = None``. Codes are short stable strings so that statistics can be
grouped on them; each code belongs to one stage. ``TRANSIENT`` lists the failures that
``--retry-failed`` fetches again (a rule's verdict is never retried).
"""

from __future__ import annotations

# Input rows
URL_MISSING = "url_missing"
URL_INVALID = "url_invalid"
URL_SCHEME_NOT_ALLOWED = "url_scheme_not_allowed"

# Cheap caption rules (before download)
CAPTION_EMPTY = "caption_empty"
CAPTION_TOO_SHORT_CHARS = "caption_too_short_chars"
CAPTION_TOO_LONG_CHARS = "caption_too_long_chars"
CAPTION_TOO_FEW_WORDS = "caption_too_few_words"
CAPTION_TOO_MANY_WORDS = "caption_too_many_words"

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

# Corpus-wide rules (select pass)
DUPLICATE_SHA256 = "duplicate_sha256"

TRANSIENT: frozenset[str] = frozenset(
    {DOWNLOAD_TIMEOUT, DOWNLOAD_CONNECTION_ERROR, DOWNLOAD_SERVER_ERROR, DOWNLOAD_RATE_LIMITED, DOWNLOAD_DNS_ERROR}
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
    if reason.startswith(("download_", "url_")):
        return STATUS_FAILED_TO_DOWNLOAD
    if reason.startswith("decode_"):
        return STATUS_FAILED_TO_RESIZE
    return STATUS_FILTERED
