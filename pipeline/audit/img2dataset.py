"""img2dataset writes failures as free text (``status``, ``error_message``): this maps them onto reason codes."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

from altsieve.core import reasons

# img2dataset writes failures as free text; these map it onto altsieve's reason codes.
_DOWNLOAD_PATTERNS: list[tuple[str, str]] = [
    (r"HTTP Error 40[45]|HTTP Error 410", reasons.DOWNLOAD_NOT_FOUND),
    (r"HTTP Error 429", reasons.DOWNLOAD_RATE_LIMITED),
    (r"HTTP Error 5\d\d", reasons.DOWNLOAD_SERVER_ERROR),
    (r"HTTP Error 4\d\d", reasons.DOWNLOAD_HTTP_ERROR),
    (r"redirect", reasons.DOWNLOAD_TOO_MANY_REDIRECTS),
    (r"timed out|timeout", reasons.DOWNLOAD_TIMEOUT),
    (r"Name or service not known|getaddrinfo|nodename nor servname|No address associated", reasons.DOWNLOAD_DNS_ERROR),
    (r"unknown url type|no host given|Invalid URL|URL can't contain", reasons.URL_INVALID),
    (r"[Cc]onnection|Remote end closed|reset by peer|refused", reasons.DOWNLOAD_CONNECTION_ERROR),
    (r"hash mismatch", reasons.DOWNLOAD_HASH_MISMATCH),
]
_RESIZE_PATTERNS: list[tuple[str, str]] = [
    (r"image too small", reasons.IMAGE_TOO_SMALL),
    (r"image area too large", reasons.IMAGE_TOO_MANY_PIXELS),
    (r"aspect ratio too large", reasons.IMAGE_ASPECT_RATIO),
    (r"[Dd]ecompression ?[Bb]omb", reasons.DECODE_BOMB),
    (r"truncated", reasons.DECODE_TRUNCATED),
]


def img2dataset_reason(status: str | None, message: str | None) -> str | None:
    """An img2dataset status and error message as an altsieve reason code (None: success)."""
    message = message or ""
    if status == reasons.STATUS_SUCCESS:
        return None
    if status == reasons.STATUS_FAILED_TO_DOWNLOAD:
        return next((code for pattern, code in _DOWNLOAD_PATTERNS if re.search(pattern, message)),
                    reasons.DOWNLOAD_ERROR)
    if status == reasons.STATUS_FAILED_TO_RESIZE:
        return next((code for pattern, code in _RESIZE_PATTERNS if re.search(pattern, message)),
                    reasons.DECODE_ERROR)
    return f"{reasons.UNKNOWN_STATUS_PREFIX}{status or 'missing'}"


def normalized(table: pa.Table) -> pa.Table:
    """Add ``reason`` from status + error message, classifying each distinct pair once (not each row)."""
    status = pc.fill_null(table["status"], "")
    message = pc.fill_null(table["error_message"], "") if "error_message" in table.column_names else status
    combined = pc.binary_join_element_wise(status, message, "\x00")
    distinct = pc.unique(combined)
    codes = [img2dataset_reason(*(value.split("\x00", 1))) for value in distinct.to_pylist()]
    reason = pc.take(pa.array(codes, pa.string()), pc.index_in(combined, value_set=distinct))
    table = table.append_column("reason", reason)
    if "has_image" not in table.column_names:
        table = table.append_column("has_image", pc.equal(table["status"], reasons.STATUS_SUCCESS))
    return table
