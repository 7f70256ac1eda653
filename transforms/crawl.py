"""Crawl to pairs: image URL + alt text from Common Crawl WARC (HTML responses) and WAT (link metadata) files.

Plain readers first (``iter_crawl_pairs`` and the functions under it: one file in, pairs out, skip
reasons counted in a ``Counter``), then the Beam transform ``ExtractCrawlPairs`` that runs them one
file per element, deduplicates on URL + alt across the whole extraction and writes Parquet URL lists.

Libraries, measured with ``bench/bench_crawl.py`` (10,000 generated pages, ~50 KB of HTML and ~20 img
tags each; CPU seconds of one process on the shared 2-core development machine):

- WARC/WAT records: FastWARC, 885 MB/s of payload against warcio's 300 MB/s on the same gzip-per-record
  file, and it reports each record's offset in the compressed file (``stream_pos``), which a pair carries.
- HTML: selectolax (Lexbor, a spec-following HTML5 parser in C): 3,230 pages/s (57k pairs/s) with the
  rules below, against lxml's 1,470 (libxml2, whose HTML parser predates HTML5 and nests malformed
  markup differently from browsers) and Resiliparse's DOM's 680 (the same Lexbor engine, but walking
  its img nodes from Python costs more than the parse). Resiliparse is used for its charset detection.
- Character set: the HTTP ``Content-Type`` charset when the response has one, else Resiliparse's
  ``detect_encoding`` (``<meta charset>``, then uchardet), then ``bytes_to_str`` with its fallbacks,
  so a non-UTF-8 page gives readable alt text and a wrong declaration does not abort the page.

Which URL an ``<img>`` gives: a lazy-loading attribute (``data-src``, ``data-lazy-src``,
``data-original``, ``data-lazy``) when it holds a URL (the page's script would swap it in), else
``src``, else the largest candidate of ``srcset`` / ``data-srcset``. It is resolved against the page's
``<base href>`` (itself resolved against the page URL) or the page URL. The alt text has its
whitespace collapsed; entities are decoded by the parser.

Why an img tag gives no pair, checked in this order, each counted under its reason code
(``altsieve.core.reasons.CRAWL_*``): no URL at all, a ``data:`` URI, a URL that does not resolve to one with
a host, a non-http(s) scheme, a width or height attribute of 1 px or less (tracking pixels), an empty
or missing alt, an ``.svg`` (unless ``keep_svg``), and in the Beam pipeline a URL + alt already seen.
These counts go to ``extract_stats.json``; they are not row reasons, because a skipped tag never
becomes a row. A record that cannot be read (bad gzip member, bad WARC header, JSON that does not
parse) is counted as ``crawl_corrupt_record`` and skipped: the reader finds the next gzip member (or
``WARC/1.`` line in an uncompressed file) and goes on from there. A corrupt stretch counts once.

Memory stays bounded: records are streamed, and at most ``max_record_bytes`` of one payload is read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import urljoin, urlsplit

import apache_beam as beam
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics
from fastwarc.warc import ArchiveIterator, WarcRecordType
from resiliparse.parse.encoding import bytes_to_str, detect_encoding
from selectolax.lexbor import LexborHTMLParser

from altsieve.core import fsutil, reasons
from altsieve.transforms.progress import ProgressWriter
from altsieve.transforms.read_inputs import InputError

log = logging.getLogger("altsieve")

DEFAULT_CC_BASE_URL = "https://data.commoncrawl.org/"
METRICS_NAMESPACE = "altsieve"
LAZY_SRC_ATTRIBUTES = ("data-src", "data-lazy-src", "data-original", "data-lazy")
SRCSET_ATTRIBUTES = ("srcset", "data-srcset")
SURROUNDING_TEXT_CHARS = 300
# Output files hold the pairs of one stretch of one input file, so that no worker holds a whole
# file's pairs at once (32 MiB of a Common Crawl WARC is ~1,000 pages, some 10-20k pairs) and each
# output file is the same on every rerun.
CHUNK_BYTES = 32 << 20
_CRAWL_ID = re.compile(r"CC-MAIN-\d{4}-\d{2}")
_GZIP_MAGIC = b"\x1f\x8b\x08"
_WARC_MAGIC = b"WARC/1."
_URL_NOISE = str.maketrans("", "", "\t\n\r")  # browsers drop these anywhere in a URL

# Counters besides the skip reasons (all go to extract_stats.json).
FILES = "crawl_files"
FILES_FAILED = "crawl_files_failed"  # could not be opened at all
RECORDS = "crawl_records"  # response (WARC) or metadata (WAT) records read
RECORDS_NOT_HTML = "crawl_records_not_html"  # responses that are not a 2xx HTML page
HTML_PAGES = "crawl_html_pages"
IMG_TAGS = "crawl_img_tags"
PAIRS_FOUND = "crawl_pairs_found"  # before URL + alt dedup
PAIRS = "crawl_pairs"  # written, after dedup


class CrawlInputError(InputError):
    """A crawl input that cannot be used; the message names it (the CLI prints it like any input error)."""


@dataclass(frozen=True)
class ExtractOptions:
    """What the readers keep; the defaults are those of ``altsieve extract``."""

    surrounding_text: bool = False
    keep_svg: bool = False
    crawl_id: str | None = None  # overrides the one read from warcinfo or the path
    max_record_bytes: int = 5 << 20  # Common Crawl truncates payloads at 1 MiB; other crawls may not

    def columns(self) -> list[str]:
        return [name for name, _ in output_schema(self)]


class CrawlFile(NamedTuple):
    index: int
    path: str
    kind: str  # "warc" or "wat"


def output_schema(options: ExtractOptions) -> list[tuple[str, pa.DataType]]:
    columns = [
        ("url", pa.string()), ("caption", pa.string()), ("page_url", pa.string()), ("page_language", pa.string()),
        ("crawl_id", pa.string()), ("source_file", pa.string()), ("record_offset", pa.int64()),
    ]
    if options.surrounding_text:
        columns.append(("surrounding_text", pa.string()))
    return columns


# --- Inputs -----------------------------------------------------------------------------------


def crawl_kind(path: str) -> str | None:
    """``warc``, ``wat`` or ``paths`` (a listing) from the name; None for anything else."""
    name = path.rstrip("/").lower().removesuffix(".gz")
    if name.endswith(".wat"):
        return "wat"
    if name.endswith(".warc"):
        return "warc"
    if name.endswith(".paths"):
        return "paths"
    if name.endswith(".wet"):
        raise CrawlInputError(f"input {path}: a WET file holds extracted text only, no img tags: give its WARC or WAT")
    return None


def is_crawl_spec(spec: str) -> bool:
    """Whether an input (file, glob or folder) names crawl files rather than URL lists."""
    if crawl_kind(spec) is not None:
        return True
    if any(ch in spec for ch in "*?["):
        return False  # a glob with another suffix: a URL list's
    try:
        fs, resolved = fsutil.filesystem(spec)
        if fs.isdir(resolved):
            kinds = {_safe_kind(p) for p in fs.find(resolved) if not p.rsplit("/", 1)[-1].startswith((".", "_"))}
            return bool(kinds) and kinds <= {"warc", "wat", "paths"}
    except (OSError, ValueError):
        return False
    return False


def _safe_kind(path: str) -> str | None:
    try:
        return crawl_kind(path)
    except CrawlInputError:
        return "wet"


def resolve_listing_entry(entry: str, cc_base_url: str) -> str:
    """A line of a ``*.paths.gz`` listing (``crawl-data/CC-MAIN-.../x.warc.gz``) as a path fsspec opens."""
    if "://" in entry or entry.startswith("/"):
        return entry
    return cc_base_url.rstrip("/") + "/" + entry.lstrip("/")


def read_listing(listing: str, cc_base_url: str) -> list[str]:
    try:
        with fsspec.open(listing, "rt", compression="infer", encoding="utf-8") as handle:
            return [resolve_listing_entry(line.strip(), cc_base_url) for line in handle if line.strip()]
    except (OSError, EOFError, UnicodeError) as err:
        raise CrawlInputError(f"input {listing}: cannot read the paths listing ({type(err).__name__}: {err})") from err


def list_crawl_files(
    inputs: list[str], cc_base_url: str = DEFAULT_CC_BASE_URL, limit: int | None = None
) -> list[CrawlFile]:
    """Files, globs, folders and paths listings -> the crawl files to read, in order, at most ``limit``.

    A listing keeps its own order (``--limit 10`` takes its first ten files); globs and folders are
    sorted. Files named by a listing are not checked here: that would be one request per file.
    """
    found: list[str] = []
    for spec in inputs:
        if crawl_kind(spec) == "paths" and not any(ch in spec for ch in "*?["):
            found.extend(read_listing(spec, cc_base_url))
            continue
        fs, _, paths = fsspec.get_fs_token_paths(spec)

        if not paths:
            raise CrawlInputError(f"input {spec}: no file matches")
        for path in sorted(paths):
            if fs.isdir(path):
                inside = sorted(p for p in fs.find(path) if not p.rsplit("/", 1)[-1].startswith((".", "_")))
                found.extend(fsutil.qualified(fs, p) for p in inside if _safe_kind(p) in ("warc", "wat"))
            elif not fs.exists(path):
                raise CrawlInputError(f"input {spec}: no such file")
            elif crawl_kind(path) == "paths":
                found.extend(read_listing(fsutil.qualified(fs, path), cc_base_url))
            else:
                found.append(fsutil.qualified(fs, path))
    unique = list(dict.fromkeys(found))
    if limit is not None:
        unique = unique[:limit]
    files = []
    for index, path in enumerate(unique):
        kind = crawl_kind(path)
        if kind not in ("warc", "wat"):
            raise CrawlInputError(f"input {path}: not a WARC or WAT file (name it .warc.gz or .wat.gz)")
        files.append(CrawlFile(index, path, kind))
    if not files:
        raise CrawlInputError(f"inputs {', '.join(inputs)}: no WARC or WAT file found")
    return files


def crawl_id_from_path(path: str) -> str | None:
    match = _CRAWL_ID.search(path)
    return match.group(0) if match else None


# --- Records ----------------------------------------------------------------------------------


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


# --- HTML -------------------------------------------------------------------------------------


def parse_srcset(srcset: str) -> list[tuple[str, float, float]]:
    """``(url, width, density)`` candidates, tokenised as the HTML standard says.

    A URL is a run of non-space characters (it may hold commas; trailing ones end the candidate);
    its descriptors run to the next comma.
    """
    candidates: list[tuple[str, float, float]] = []
    position, length = 0, len(srcset)
    while position < length:
        while position < length and (srcset[position].isspace() or srcset[position] == ","):
            position += 1
        start = position
        while position < length and not srcset[position].isspace():
            position += 1
        url = srcset[start:position]
        descriptors: list[str] = []
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            end = srcset.find(",", position)
            end = length if end < 0 else end
            descriptors = srcset[position:end].split()
            position = end + 1
        width, density = 0.0, 1.0
        for descriptor in descriptors:
            try:
                if descriptor.endswith("w"):
                    width = float(descriptor[:-1])
                elif descriptor.endswith("x"):
                    density = float(descriptor[:-1])
            except ValueError:
                continue  # a malformed descriptor leaves the default
        if url:
            candidates.append((url, width, density))
    return candidates


def best_srcset_candidate(srcset: str) -> str | None:
    """The largest candidate of a ``srcset``: by width descriptor, else by pixel density."""
    candidates = parse_srcset(srcset)
    return max(candidates, key=lambda c: (c[1], c[2]))[0] if candidates else None


def _is_data_uri(url: str) -> bool:
    return url[:5].lower() == "data:"


def choose_image_url(attributes: dict[str, str | None]) -> str | None:
    """The URL an img tag shows, lazy-loading attributes first (see the module docstring)."""
    for name in LAZY_SRC_ATTRIBUTES:
        value = attributes.get(name)
        if value and value.strip() and not _is_data_uri(value.strip()):
            return value
    src = attributes.get("src")
    if src and src.strip() and not _is_data_uri(src.strip()):
        return src
    for name in SRCSET_ATTRIBUTES:
        value = attributes.get(name)
        if value:
            best = best_srcset_candidate(value)
            if best and not _is_data_uri(best):
                return best
    return src  # None, empty, or a data: URI: judged as such


def _pixels(value: str | None) -> float | None:
    if value is None:
        return None
    text = value.strip().lower().removesuffix("px").strip()
    try:
        return float(text)
    except ValueError:
        return None  # "100%", "auto": not a pixel size


class BaseUrl(NamedTuple):
    """What relative img URLs of one page resolve against: the URL, its scheme, and ``scheme://host``."""

    url: str
    scheme: str
    origin: str


def resolve_url(raw: str, base: BaseUrl) -> str | None:
    """``raw`` made absolute against ``base``; None when it cannot be.

    The common shapes (absolute, protocol-relative, root-relative without dot segments) are joined by
    hand, as ``urljoin`` would (it was 40% of the extraction time when used for all of them).
    """
    url = raw.strip(" \t\n\r\f")
    if "\n" in url or "\t" in url or "\r" in url:
        url = url.translate(_URL_NOISE)
    lowered = url[:8].lower()
    if lowered.startswith("https://"):
        # Schemes are case-insensitive: one spelling, so that URL + alt dedup sees one URL.
        return url if url.startswith("https://") else "https://" + url[8:]
    if lowered.startswith("http://"):
        return url if url.startswith("http://") else "http://" + url[7:]
    if url.startswith("//"):
        return f"{base.scheme}:{url}" if base.scheme else None
    if url.startswith("/") and base.origin and "/." not in url and "\\" not in url:
        return base.origin + url
    try:
        return urljoin(base.url, url)
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        return None


_HOST_END = re.compile(r"[/?#]")
_BAD_HOST_CHARACTERS = frozenset(' <>"{}|\\^`\x00')


def _valid_host(after_slashes: str) -> bool:
    """Whether the authority of a URL (what follows ``scheme://``) names a host a downloader could reach."""
    authority = _HOST_END.split(after_slashes, maxsplit=1)[0]
    if not authority or not _BAD_HOST_CHARACTERS.isdisjoint(authority):
        return False
    if "[" in authority or "]" in authority:  # an IPv6 literal: let urlsplit judge the brackets
        try:
            urlsplit("http://" + authority)
        except ValueError:
            return False
    return True


def judge_image(raw_url: str | None, alt: str | None, base: BaseUrl, width: str | None,
                height: str | None, keep_svg: bool) -> tuple[str, str] | str:
    """``(absolute url, caption)`` for an img tag that makes a pair, else the reason code it does not."""
    if raw_url is None or not raw_url.strip():
        return reasons.CRAWL_NO_SRC
    if _is_data_uri(raw_url.strip()):
        return reasons.CRAWL_DATA_URI
    url = resolve_url(raw_url, base)
    if url is None:
        return reasons.CRAWL_INVALID_URL
    scheme, separator, rest = url.partition(":")
    if not separator or scheme.lower() not in ("http", "https"):
        is_scheme = bool(separator) and scheme.isascii() and scheme.isalpha()
        return reasons.CRAWL_SCHEME if is_scheme else reasons.CRAWL_INVALID_URL
    if not rest.startswith("//") or not _valid_host(rest[2:]):
        return reasons.CRAWL_INVALID_URL
    for size in (_pixels(width), _pixels(height)):
        if size is not None and size <= 1:
            return reasons.CRAWL_TRACKING_PIXEL
    caption = " ".join(alt.split()) if alt else ""
    if not caption:
        return reasons.CRAWL_EMPTY_ALT
    if not keep_svg and url.split("?", 1)[0].split("#", 1)[0].lower().endswith((".svg", ".svgz")):
        return reasons.CRAWL_SVG
    return url, caption


def page_base(page_url: str | None, base_href: str | None) -> BaseUrl:
    """The URL relative img URLs resolve against: ``<base href>`` (resolved against the page URL), else the page URL."""
    base = page_url or ""
    if base_href and base_href.strip():
        try:
            candidate = urljoin(base, base_href.strip().translate(_URL_NOISE))
        except ValueError:
            candidate = ""
        if candidate.lower().startswith(("http://", "https://")):
            base = candidate
    scheme = base.split(":", 1)[0].lower() if ":" in base else ""
    origin = ""
    if scheme in ("http", "https") and base[len(scheme):len(scheme) + 3] == "://":
        host = re.split(r"[/?#]", base[len(scheme) + 3:], maxsplit=1)[0]
        origin = f"{base[:len(scheme)]}://{host}" if host else ""
    return BaseUrl(base, scheme, origin)


def _surrounding_text(node: Any) -> str | None:
    """Text of the img's nearest enclosing element that has some (a figure, link, paragraph), not the body."""
    parent = node.parent
    for _ in range(3):
        if parent is None or parent.tag in ("body", "html", "#document"):
            return None
        text = " ".join(parent.text(deep=True, separator=" ").split())
        if text:
            return text[:SURROUNDING_TEXT_CHARS]
        parent = parent.parent
    return None


def decode_html(payload: bytes, declared_charset: str | None) -> str:
    """Bytes -> text: the HTTP charset, else ``<meta charset>``/detection, with fallbacks for wrong declarations."""
    if declared_charset:
        try:
            return bytes_to_str(payload, declared_charset)
        except (LookupError, UnicodeError):
            pass  # an unknown or wrong label: detect instead
    return bytes_to_str(payload, detect_encoding(payload, from_html_meta=True), errors="replace")


def extract_images(
    html: str, page_url: str | None, counts: Counter, options: ExtractOptions, fallback_language: str | None = None
) -> tuple[str | None, list[tuple[str, str, str | None]]]:
    """A page's ``(language, [(image url, alt, surrounding text)])``; skipped img tags counted in ``counts``."""
    tree = LexborHTMLParser(html)
    root = tree.css_first("html")
    language = (root.attributes.get("lang") or "").strip().lower() if root is not None else ""
    base_node = tree.css_first("base[href]")
    base = page_base(page_url, base_node.attributes.get("href") if base_node is not None else None)
    pairs: list[tuple[str, str, str | None]] = []
    for node in tree.css("img"):
        counts[IMG_TAGS] += 1
        attributes = node.attributes
        verdict = judge_image(choose_image_url(attributes), attributes.get("alt"), base,
                              attributes.get("width"), attributes.get("height"), options.keep_svg)
        if isinstance(verdict, str):
            counts[verdict] += 1
            continue
        around = _surrounding_text(node) if options.surrounding_text else None
        pairs.append((verdict[0], verdict[1], around))
    return language or fallback_language, pairs


def _first_language(header: str | None) -> str | None:
    if not header:
        return None
    first = header.split(",", 1)[0].strip().lower()
    return first or None


# --- Readers ----------------------------------------------------------------------------------


def _is_html_response(record: Any) -> bool:
    status = record.http_headers.status_code if record.http_headers is not None else None
    if status is None or not 200 <= status < 300:
        return False
    content_type = (record.http_content_type or "").lower()
    identified = record.headers.get("WARC-Identified-Payload-Type", "").lower()
    return "html" in content_type or "html" in identified


def iter_warc_pairs(path: str, counts: Counter, options: ExtractOptions = ExtractOptions()) -> Iterator[dict[str, Any]]:
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
                                              _first_language(record.http_headers.get("Content-Language")))
        except Exception as err:  # a parser failure on one page must not end the file
            counts[reasons.CRAWL_CORRUPT_RECORD] += 1
            log.warning("%s: page at offset %d skipped (%s: %s)", path, offset, type(err).__name__, err)
            continue
        for url, caption, around in images:
            yield _row(url, caption, page_url, language, crawl_id, path, offset, around, options)


def _header(headers: dict[str, Any], name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value if isinstance(value, str) else None
    return None


def iter_wat_pairs(path: str, counts: Counter, options: ExtractOptions = ExtractOptions()) -> Iterator[dict[str, Any]]:
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
        language = _first_language(_header(http.get("Headers") or {}, "Content-Language"))
        for link in links:
            if not isinstance(link, dict) or link.get("path") != "IMG@/src":
                continue
            counts[IMG_TAGS] += 1
            verdict = judge_image(link.get("url"), link.get("alt"), base, None, None, options.keep_svg)
            if isinstance(verdict, str):
                counts[verdict] += 1
                continue
            yield _row(verdict[0], verdict[1], page_url, language, crawl_id, path, offset, None, options)


def _row(url: str, caption: str, page_url: str | None, language: str | None, crawl_id: str | None, path: str,
         offset: int, around: str | None, options: ExtractOptions) -> dict[str, Any]:
    row = {"url": url, "caption": caption, "page_url": page_url, "page_language": language, "crawl_id": crawl_id,
           "source_file": path, "record_offset": offset}
    if options.surrounding_text:
        row["surrounding_text"] = around
    return row


def iter_crawl_pairs(source: CrawlFile | str, counts: Counter,
                     options: ExtractOptions = ExtractOptions()) -> Iterator[dict[str, Any]]:
    """Pairs of one WARC or WAT file (kind from the name); skips and volumes counted in ``counts``."""
    path = source.path if isinstance(source, CrawlFile) else source
    kind = source.kind if isinstance(source, CrawlFile) else crawl_kind(path)
    counts[FILES] += 1
    for row in (iter_wat_pairs if kind == "wat" else iter_warc_pairs)(path, counts, options):
        counts[PAIRS_FOUND] += 1
        yield row


def dedup_key(url: str, caption: str) -> bytes:
    """128 bits of URL + alt: collisions are negligible even over billions of pairs."""
    return hashlib.blake2b(f"{url}\x00{caption}".encode("utf-8", "surrogatepass"), digest_size=16).digest()


# --- Beam -------------------------------------------------------------------------------------


def extracted_file_name(file_index: int, chunk: int) -> str:
    return f"{file_index:05d}_{chunk:05d}.parquet"


class _ExtractFile(beam.DoFn):
    """One crawl file -> ``(dedup key, (file index, record offset, ordinal, row))`` per pair."""

    def __init__(self, options: ExtractOptions, progress: ProgressWriter | None = None) -> None:
        self._options = options
        self._progress = progress  # the launcher's progress bar: pairs found per file, and files done

    def process(self, source: CrawlFile):
        counts: Counter = Counter()
        previous_offset, ordinal, found = -1, 0, 0
        item = f"{source.index:05d}"
        try:
            for row in iter_crawl_pairs(source, counts, self._options):
                offset = row["record_offset"]
                ordinal = ordinal + 1 if offset == previous_offset else 0
                previous_offset = offset
                found += 1
                if self._progress is not None:
                    self._progress.update(item, found)
                yield dedup_key(row["url"], row["caption"]), (source.index, offset, ordinal, row)
        except (OSError, EOFError) as err:  # the file itself cannot be opened or read from its start
            counts[FILES_FAILED] += 1
            log.warning("crawl file %s skipped: %s: %s", source.path, type(err).__name__, err)
        finally:
            for name, value in counts.items():
                Metrics.counter(METRICS_NAMESPACE, name).inc(value)
            if self._progress is not None:
                self._progress.update(item, found, done=True)


class _KeepFirst(beam.CombineFn):
    """Of the pairs with one URL + alt, the first in input order (file, offset, ordinal), and how many there were."""

    def create_accumulator(self) -> tuple[Any, int]:
        return None, 0

    def add_input(self, accumulator: tuple[Any, int], element: tuple) -> tuple[Any, int]:
        best, count = accumulator
        return (element if best is None or element[:3] < best[:3] else best), count + 1

    def merge_accumulators(self, accumulators) -> tuple[Any, int]:
        best, total = None, 0
        for candidate, count in accumulators:
            total += count
            if candidate is not None and (best is None or candidate[:3] < best[:3]):
                best = candidate
        return best, total

    def extract_output(self, accumulator: tuple[Any, int]) -> tuple[Any, int]:
        return accumulator


def _to_chunk(item: tuple[bytes, tuple[Any, int]]):
    _, (best, count) = item
    if count > 1:
        Metrics.counter(METRICS_NAMESPACE, reasons.CRAWL_DUPLICATE).inc(count - 1)
    file_index, offset, ordinal, row = best
    yield (file_index, offset // CHUNK_BYTES), (offset, ordinal, row)


class _WriteChunk(beam.DoFn):
    """The kept pairs of one stretch of one input file, in file order, as one Parquet file."""

    def __init__(self, output: str, options: ExtractOptions) -> None:
        self._output, self._options = output, options

    def process(self, element):
        (file_index, chunk), items = element
        rows = [row for _, _, row in sorted(items, key=lambda item: item[:2])]
        path = fsutil.join(self._output, extracted_file_name(file_index, chunk))
        write_pairs_parquet(path, rows, self._options)
        Metrics.counter(METRICS_NAMESPACE, PAIRS).inc(len(rows))
        yield path


def write_pairs_parquet(path: str, rows: list[dict[str, Any]], options: ExtractOptions) -> None:
    schema = pa.schema([pa.field(name, dtype) for name, dtype in output_schema(options)])
    table = pa.Table.from_pylist(rows, schema=schema)
    fsutil.write_atomic(path, lambda handle: pq.write_table(table, handle, compression="zstd"))


class ExtractCrawlPairs(beam.PTransform):
    """Crawl files -> deduplicated Parquet URL lists in ``output``; yields the paths written."""

    def __init__(self, files: list[CrawlFile], output: str, options: ExtractOptions,
                 progress: ProgressWriter | None = None) -> None:
        super().__init__()
        self._files, self._output, self._options = files, output, options
        self._progress = progress

    def expand(self, pipeline: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pipeline
            | "CrawlFiles" >> beam.Create(self._files)
            # One file per worker at a time: without the shuffle a runner may read them all in one place.
            | "Spread" >> beam.Reshuffle()
            | "Extract" >> beam.ParDo(_ExtractFile(self._options, self._progress))
            | "DedupUrlAlt" >> beam.CombinePerKey(_KeepFirst())
            | "ByChunk" >> beam.FlatMap(_to_chunk)
            | "GroupChunk" >> beam.GroupByKey()
            | "Write" >> beam.ParDo(_WriteChunk(self._output, self._options))
        )
