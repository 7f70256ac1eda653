"""One WARC file -> the pairs of its HTML responses (2xx, an HTML content type), in file order."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

from fastwarc.warc import WarcRecordType

from altsieve.core import reasons
from altsieve.transforms.crawl.html import decode_html, extract_images
from altsieve.transforms.crawl.listing import crawl_id_from_path
from altsieve.transforms.crawl.pairs import (
    DEFAULT_OPTIONS,
    HTML_PAGES,
    RECORDS,
    RECORDS_NOT_HTML,
    ExtractOptions,
    first_language,
    make_row,
)
from altsieve.transforms.crawl.records import iter_records

log = logging.getLogger("altsieve")


def _is_html_response(record: Any) -> bool:
    status = record.http_headers.status_code if record.http_headers is not None else None
    if status is None or not 200 <= status < 300:
        return False
    content_type = (record.http_content_type or "").lower()
    identified = record.headers.get("WARC-Identified-Payload-Type", "").lower()
    return "html" in content_type or "html" in identified


def iter_warc_pairs(path: str, counts: Counter, options: ExtractOptions = DEFAULT_OPTIONS) -> Iterator[dict[str, Any]]:
    """Pairs from the HTML responses of a WARC file, in file order."""
    crawl_id = options.crawl_id or crawl_id_from_path(path)
    record_types = WarcRecordType.warcinfo | WarcRecordType.response
    for offset, record, payload in iter_records(path, record_types, True, counts, options.max_record_bytes):
        if record.record_type == WarcRecordType.warcinfo:
            found = re.search(rb"isPartOf:\s*(\S+)", payload)
            if found and not options.crawl_id:  # the file's own word beats a guess from its path
                crawl_id = found.group(1).decode("utf-8", "replace")
            continue
        counts[RECORDS] += 1
        if not _is_html_response(record):
            counts[RECORDS_NOT_HTML] += 1
            continue
        counts[HTML_PAGES] += 1
        page_url = record.headers.get("WARC-Target-URI")
        try:
            html = decode_html(payload, record.http_charset)
            language, images = extract_images(html, page_url, counts, options,
                                              first_language(record.http_headers.get("Content-Language")))
        except Exception as err:  # a parser failure on one page must not end the file
            counts[reasons.CRAWL_CORRUPT_RECORD] += 1
            log.warning("%s: page at offset %d skipped (%s: %s)", path, offset, type(err).__name__, err)
            continue
        for url, caption, around in images:
            yield make_row(url, caption, page_url, language, crawl_id, path, offset, around, options)
