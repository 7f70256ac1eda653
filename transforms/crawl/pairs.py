"""A crawl pair row: its columns, the options that shape it, and the volume counters every reader keeps.

The bottom of the crawl package: ``html``, ``warc``, ``wat`` and ``extract`` all build rows and count
volumes with what is here, so it imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

# Counters besides the skip reasons (all go to extract_stats.json).
FILES = "crawl_files"
FILES_FAILED = "crawl_files_failed"  # could not be opened at all
RECORDS = "crawl_records"  # response (WARC) or metadata (WAT) records read
RECORDS_NOT_HTML = "crawl_records_not_html"  # responses that are not a 2xx HTML page
HTML_PAGES = "crawl_html_pages"
IMG_TAGS = "crawl_img_tags"
PAIRS_FOUND = "crawl_pairs_found"  # before URL + alt dedup
PAIRS = "crawl_pairs"  # written, after dedup


@dataclass(frozen=True)
class ExtractOptions:
    """What the readers keep; the defaults are those of ``altsieve extract``."""

    surrounding_text: bool = False
    keep_svg: bool = False
    crawl_id: str | None = None  # overrides the one read from warcinfo or the path
    max_record_bytes: int = 5 << 20  # Common Crawl truncates payloads at 1 MiB; other crawls may not

    def columns(self) -> list[str]:
        return [name for name, _ in output_schema(self)]


DEFAULT_OPTIONS = ExtractOptions()


def output_schema(options: ExtractOptions) -> list[tuple[str, pa.DataType]]:
    columns = [
        ("url", pa.string()), ("caption", pa.string()), ("page_url", pa.string()), ("page_language", pa.string()),
        ("crawl_id", pa.string()), ("source_file", pa.string()), ("record_offset", pa.int64()),
    ]
    if options.surrounding_text:
        columns.append(("surrounding_text", pa.string()))
    return columns


def make_row(url: str, caption: str, page_url: str | None, language: str | None, crawl_id: str | None, path: str,
             offset: int, around: str | None, options: ExtractOptions) -> dict[str, Any]:
    row = {"url": url, "caption": caption, "page_url": page_url, "page_language": language, "crawl_id": crawl_id,
           "source_file": path, "record_offset": offset}
    if options.surrounding_text:
        row["surrounding_text"] = around
    return row


def first_language(header: str | None) -> str | None:
    """The first language of a ``Content-Language`` header, lower-cased."""
    if not header:
        return None
    first = header.split(",", 1)[0].strip().lower()
    return first or None
