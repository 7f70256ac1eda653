"""Which ``<img>`` makes a pair: the URL it shows, resolved against the page and checked, and its alt text.

Shared by the WARC reader (img tags parsed from HTML) and the WAT reader (``IMG@/src`` links), so both
judge a tag by the same rules.

Which URL an ``<img>`` gives: a lazy-loading attribute (``data-src``, ``data-lazy-src``,
``data-original``, ``data-lazy``) when it holds a URL (the page's script would swap it in), else
``src``, else the largest candidate of ``srcset`` / ``data-srcset``. It is resolved against the page's
``<base href>`` (itself resolved against the page URL) or the page URL. The alt text has its
whitespace collapsed; entities are decoded by the parser.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import urljoin, urlsplit

from altsieve.core import reasons

LAZY_SRC_ATTRIBUTES = ("data-src", "data-lazy-src", "data-original", "data-lazy")
SRCSET_ATTRIBUTES = ("srcset", "data-srcset")
_URL_NOISE = str.maketrans("", "", "\t\n\r")  # browsers drop these anywhere in a URL


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
