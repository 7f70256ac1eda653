"""A WARC response's HTML -> its language and its img tags' pairs, each tag judged by ``images``.

Character set: the HTTP ``Content-Type`` charset when the response has one, else Resiliparse's
``detect_encoding`` (``<meta charset>``, then uchardet), then ``bytes_to_str`` with its fallbacks, so
a non-UTF-8 page gives readable alt text and a wrong declaration does not abort the page.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from resiliparse.parse.encoding import bytes_to_str, detect_encoding
from selectolax.lexbor import LexborHTMLParser

from altsieve.transforms.crawl.images import choose_image_url, judge_image, page_base
from altsieve.transforms.crawl.pairs import IMG_TAGS, ExtractOptions

SURROUNDING_TEXT_CHARS = 300


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
