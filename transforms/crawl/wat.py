"""One WAT file -> the pairs of its metadata records' ``IMG@/src`` links (a WAT keeps no text, no sizes).

A metadata record whose JSON does not parse, or lacks the HTML metadata, counts as ``crawl_corrupt_record``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

from fastwarc.warc import WarcRecordType

from altsieve.core import reasons
from altsieve.transforms.crawl.images import judge_image, page_base
from altsieve.transforms.crawl.listing import crawl_id_from_path
from altsieve.transforms.crawl.pairs import (
    DEFAULT_OPTIONS,
    HTML_PAGES,
    IMG_TAGS,
    RECORDS,
    ExtractOptions,
    first_language,
    make_row,
)
from altsieve.transforms.crawl.records import iter_records


def _header(headers: dict[str, Any], name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value if isinstance(value, str) else None
    return None


def iter_wat_pairs(path: str, counts: Counter, options: ExtractOptions = DEFAULT_OPTIONS) -> Iterator[dict[str, Any]]:
    """Pairs from the ``IMG@/src`` links of a WAT file's metadata records (a WAT keeps no text, no sizes)."""
    crawl_id = options.crawl_id or crawl_id_from_path(path)
    for offset, _, payload in iter_records(path, WarcRecordType.metadata, False, counts, options.max_record_bytes):
        counts[RECORDS] += 1
        if b'"IMG@' not in payload:
            continue  # requests, metadata records and pages without images: no need to parse the JSON
        try:
            envelope = json.loads(payload)["Envelope"]
            http = envelope["Payload-Metadata"]["HTTP-Response-Metadata"]
            html = http["HTML-Metadata"]
            links = html.get("Links") or []
        except (ValueError, KeyError, TypeError, AttributeError):
            counts[reasons.CRAWL_CORRUPT_RECORD] += 1
            continue
        counts[HTML_PAGES] += 1
        page_url = (envelope.get("WARC-Header-Metadata") or {}).get("WARC-Target-URI")
        head = html.get("Head") or {}
        base = page_base(page_url, head.get("Base") if isinstance(head, dict) else None)
        language = first_language(_header(http.get("Headers") or {}, "Content-Language"))
        for link in links:
            if not isinstance(link, dict) or link.get("path") != "IMG@/src":
                continue
            counts[IMG_TAGS] += 1
            verdict = judge_image(link.get("url"), link.get("alt"), base, None, None, options.keep_svg)
            if isinstance(verdict, str):
                counts[verdict] += 1
                continue
            yield make_row(verdict[0], verdict[1], page_url, language, crawl_id, path, offset, None, options)
