"""The WARC container, read by WARC and WAT files alike: records streamed, corrupt stretches stepped over.

A record that cannot be read (bad gzip member, bad WARC header, a header cut short) is counted as
``crawl_corrupt_record`` and skipped: the reader finds the next gzip member (or ``WARC/1.`` line in
an uncompressed file) and goes on from there. A corrupt stretch counts once.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

import fsspec
from fastwarc.warc import ArchiveIterator

from altsieve.core import reasons

log = logging.getLogger("altsieve")

_GZIP_MAGIC = b"\x1f\x8b\x08"
_WARC_MAGIC = b"WARC/1."


def _next_record_start(handle: Any, start: int, magic: bytes) -> int | None:
    """The offset of the next ``magic`` at or after ``start``: where the next record may begin."""
    handle.seek(start)
    carried = b""
    position = start
    while True:
        chunk = handle.read(1 << 20)
        if not chunk:
            return None
        window = carried + chunk
        found = window.find(magic)
        if found >= 0:
            return position - len(carried) + found
        carried = window[-(len(magic) - 1):]
        position += len(chunk)


def iter_records(
    path: str, record_types: int, parse_http: bool, counts: Counter, max_bytes: int
) -> Iterator[tuple[int, Any, bytes]]:
    """``(offset, record, payload)`` for each record, stepping over corrupt stretches.

    The payload is read here, inside the error handling, because a bad gzip member surfaces while
    reading, not only while seeking to the next record.
    """
    with fsspec.open(path, "rb") as handle:
        magic = _GZIP_MAGIC if handle.read(2) == _GZIP_MAGIC[:2] else _WARC_MAGIC
        start, counted_since_progress = 0, False
        while True:
            handle.seek(start)
            last = start
            try:
                # Every record type is asked for, and filtered here: FastWARC's own filter would drop a
                # record whose header is broken (no WARC-Type) without a word, and it would go uncounted.
                for record in ArchiveIterator(handle, parse_http=parse_http):
                    last = record.stream_pos
                    if "Content-Length" not in record.headers:
                        # A record cut short inside its header (a truncated file), or a header that is not one.
                        if not counted_since_progress:
                            counts[reasons.CRAWL_CORRUPT_RECORD] += 1
                            counted_since_progress = True
                            log.warning("%s: truncated record at offset %d skipped", path, last)
                        continue
                    counted_since_progress = False
                    if record.record_type & record_types:
                        yield last, record, record.reader.read(max_bytes)
                return
            except OSError as err:  # FastWARC raises OSError for bad gzip data and bad WARC headers alike
                if not counted_since_progress:
                    counts[reasons.CRAWL_CORRUPT_RECORD] += 1
                    counted_since_progress = True
                    log.warning("%s: corrupt record near offset %d skipped (%s)", path, last, err)
                following = _next_record_start(handle, last + 1, magic)
                if following is None:
                    return
                start = following
