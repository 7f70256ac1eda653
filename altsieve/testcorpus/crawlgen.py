"""Synthetic Common Crawl files: WARC (HTTP responses with HTML) and WAT (their metadata JSON).

Tests write hand-made pages with ``write_warc`` / ``write_wat``; the benchmark makes thousands of
realistic pages with ``generate_site_pages`` (about 20 ``<img>`` each, with the noise real pages
have: empty alt, tracking pixels, lazy-loading placeholders, data: URIs, srcset, relative URLs,
``<base href>``, uppercase tags, non-UTF-8 charsets, shared logos across a site's pages).

Records are written the way Common Crawl writes them: one gzip member per record, a ``warcinfo``
record first (with ``isPartOf: CC-MAIN-...``), and for each page a request, a response and (WAT)
a metadata record, so a reader is measured skipping what it does not use, too.
"""

from __future__ import annotations

import gzip
import json
import random
import uuid
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO

SYNTHETIC_CRAWL_ID = "CC-MAIN-2099-01"
_DATE = "2099-01-01T00:00:00Z"


@dataclass
class Page:
    """One captured page: what a response record holds, plus what its WAT metadata record says about it."""

    url: str
    html: bytes
    charset: str | None = "utf-8"  # the HTTP Content-Type charset; None: the header names none
    content_language: str | None = None
    status: int = 200
    content_type: str = "text/html"
    # For the WAT: the img tags as ia-web-commons lists them (path IMG@/src, url as written, alt), and <base>.
    wat_images: list[tuple[str, str | None]] = field(default_factory=list)
    wat_base: str | None = None
    wat_other_links: int = 0


def _record_id() -> str:
    return f"<urn:uuid:{uuid.uuid4()}>"


def warc_record(warc_type: str, block: bytes, headers: dict[str, str]) -> bytes:
    """One uncompressed WARC/1.0 record: headers, blank line, block, and the two CRLFs that end it."""
    lines = ["WARC/1.0", f"WARC-Type: {warc_type}", f"WARC-Date: {_DATE}", f"WARC-Record-ID: {_record_id()}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(block)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + block + b"\r\n\r\n"


def gzip_member(data: bytes, level: int = 6) -> bytes:
    """A gzip member of its own, as Common Crawl compresses each record (so readers can seek to any record)."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


def warcinfo_record(filename: str, crawl_id: str | None = SYNTHETIC_CRAWL_ID) -> bytes:
    fields = "software: altsieve synthetic crawl\r\nformat: WARC File Format 1.1\r\n"
    if crawl_id:
        fields = f"isPartOf: {crawl_id}\r\n" + fields
    headers = {"WARC-Filename": filename, "Content-Type": "application/warc-fields"}
    return warc_record("warcinfo", fields.encode(), headers)


def http_response_block(page: Page) -> bytes:
    content_type = page.content_type + (f"; charset={page.charset}" if page.charset else "")
    head = [f"HTTP/1.1 {page.status} {'OK' if page.status == 200 else 'Other'}", f"Content-Type: {content_type}",
            f"Content-Length: {len(page.html)}"]
    if page.content_language:
        head.append(f"Content-Language: {page.content_language}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + page.html


def response_record(page: Page) -> bytes:
    return warc_record("response", http_response_block(page), {
        "WARC-Target-URI": page.url, "Content-Type": "application/http; msgtype=response",
        "WARC-Identified-Payload-Type": page.content_type,
    })


def request_record(page: Page) -> bytes:
    host = page.url.split("/")[2]
    block = f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: CCBot/2.0\r\n\r\n".encode()
    headers = {"WARC-Target-URI": page.url, "Content-Type": "application/http; msgtype=request"}
    return warc_record("request", block, headers)


def iter_warc_members(pages: Iterable[Page], filename: str = "synthetic.warc.gz",
                      crawl_id: str | None = SYNTHETIC_CRAWL_ID, with_requests: bool = True) -> Iterator[bytes]:
    """The gzip members of a WARC file, one per record."""
    yield gzip_member(warcinfo_record(filename, crawl_id))
    for page in pages:
        if with_requests:
            yield gzip_member(request_record(page))
        yield gzip_member(response_record(page))


def write_warc(path: str, pages: Iterable[Page], crawl_id: str | None = SYNTHETIC_CRAWL_ID,
               with_requests: bool = True, compressed: bool = True) -> None:
    with open(path, "wb") as handle:
        for member in iter_warc_members(pages, path.rsplit("/", 1)[-1], crawl_id, with_requests):
            handle.write(member if compressed else gzip.decompress(member))


# --- WAT --------------------------------------------------------------------------------------


def wat_metadata_json(page: Page, warc_filename: str, offset: int) -> dict:
    """The JSON of a WAT metadata record for a response, shaped like ia-web-commons' output."""
    links: list[dict[str, str]] = [
        {"path": "A@/href", "url": f"/section/{i}/article-{i * 7}.html", "text": f"Link number {i}"}
        for i in range(page.wat_other_links)
    ]
    for url, alt in page.wat_images:
        link = {"path": "IMG@/src", "url": url}
        if alt is not None:
            link["alt"] = alt
        links.append(link)
    head: dict = {"Title": "A synthetic page", "Metas": [{"name": "viewport", "content": "width=device-width"}],
                  "Link": [{"path": "LINK@/href", "url": "/style.css", "rel": "stylesheet"}]}
    if page.wat_base is not None:
        head["Base"] = page.wat_base
    headers = {"Content-Type": f"{page.content_type}; charset={page.charset or 'utf-8'}", "Server": "nginx"}
    if page.content_language:
        headers["Content-Language"] = page.content_language
    return {
        "Container": {"Filename": warc_filename, "Compressed": True, "Offset": str(offset),
                      "Gzip-Metadata": {"Deflate-Length": "12345", "Inflated-Length": str(len(page.html))}},
        "Envelope": {
            "Format": "WARC",
            "WARC-Header-Length": "500",
            "WARC-Header-Metadata": {"WARC-Type": "response", "WARC-Date": _DATE, "WARC-Target-URI": page.url,
                                     "Content-Type": "application/http; msgtype=response"},
            "Payload-Metadata": {
                "Actual-Content-Type": "application/http; msgtype=response",
                "HTTP-Response-Metadata": {
                    "Response-Message": {"Version": "HTTP/1.1", "Status": str(page.status), "Reason": "OK"},
                    "Headers": headers,
                    "Headers-Length": "300",
                    "Entity-Length": str(len(page.html)),
                    "HTML-Metadata": {"Head": head, "Links": links},
                },
            },
        },
    }


def _wat_request_json(page: Page, warc_filename: str, offset: int) -> dict:
    return {"Container": {"Filename": warc_filename, "Compressed": True, "Offset": str(offset)},
            "Envelope": {"Format": "WARC", "WARC-Header-Metadata": {"WARC-Type": "request",
                                                                      "WARC-Target-URI": page.url},
                         "Payload-Metadata": {"Actual-Content-Type": "application/http; msgtype=request",
                                              "HTTP-Request-Metadata": {"Request-Message": {"Method": "GET"}}}}}


def _wat_crawl_metadata_json(page: Page, warc_filename: str, offset: int) -> dict:
    fields = {"fetchTimeMs": "412", "charset-detected": page.charset or "UTF-8", "languages-cld2": '{"reliable":true}'}
    return {"Container": {"Filename": warc_filename, "Compressed": True, "Offset": str(offset)},
            "Envelope": {"Format": "WARC", "WARC-Header-Metadata": {"WARC-Type": "metadata",
                                                                      "WARC-Target-URI": page.url},
                         "Payload-Metadata": {"Actual-Content-Type": "application/warc-fields",
                                              "WARC-Metadata-Metadata": {"Metadata-Records": [
                                                  {"Name": k, "Value": v} for k, v in fields.items()]}}}}


def _metadata_record(page: Page, payload: dict | bytes) -> bytes:
    block = payload if isinstance(payload, bytes) else json.dumps(payload, separators=(",", ":")).encode()
    return warc_record("metadata", block, {"WARC-Target-URI": page.url, "Content-Type": "application/json"})


def iter_wat_members(pages: Iterable[Page], warc_filename: str = "synthetic.warc.gz",
                     with_requests: bool = True) -> Iterator[bytes]:
    """Gzip members of a WAT file: warcinfo, then per page the metadata of its request, response, metadata records."""
    info = b"software: altsieve synthetic crawl\r\nformat: WARC File Format 1.0\r\n"
    wat_name = warc_filename.replace(".warc.gz", ".warc.wat.gz")
    headers = {"WARC-Filename": wat_name, "Content-Type": "application/warc-fields"}
    yield gzip_member(warc_record("warcinfo", info, headers))
    offset = 1000
    for page in pages:
        if with_requests:
            yield gzip_member(_metadata_record(page, _wat_request_json(page, warc_filename, offset)))
            offset += 500
        yield gzip_member(_metadata_record(page, wat_metadata_json(page, warc_filename, offset)))
        offset += 5000 + len(page.html) // 4
        if with_requests:  # the crawler's own metadata record (fetch time, languages): no links
            yield gzip_member(_metadata_record(page, _wat_crawl_metadata_json(page, warc_filename, offset)))
            offset += 800


def write_wat(path: str, pages: Iterable[Page], warc_filename: str = "synthetic.warc.gz",
              with_requests: bool = True) -> None:
    with open(path, "wb") as handle:
        for member in iter_wat_members(pages, warc_filename, with_requests):
            handle.write(member)


# --- Realistic pages for the benchmark ----------------------------------------------------------

_WORDS_TEXT = (
    "the a of and to in is for on with as by at from that this an be are was it or which new one all can more "
    "photo image view garden house river city mountain street market family festival kitchen table chair lamp "
    "window door book shelf coffee tea bread cheese apple orange lemon flower tree forest lake beach boat car "
    "bicycle train station bridge tower church museum school park dog cat horse bird fish red blue green yellow "
    "black white small large old modern wooden stone glass metal summer winter spring autumn morning evening "
    "night sunset portrait landscape detail close up interior exterior aerial map logo icon banner product "
    "shoe dress shirt jacket bag watch ring necklace sofa bed desk phone laptop camera guitar piano painting"
)
_WORDS = tuple(_WORDS_TEXT.split(" "))
_LANG = ("en", "en-US", "de", "fr", "es", "it", "pt-BR", "nl", "ja", "ru")
_PIXEL_GIF = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"


_EXTRA_WORDS = {
    "windows-1252": ("café", "crème", "brûlée", "façade", "naïve", "Müller", "señor"),
    "shift_jis": ("写真", "猫", "東京", "桜", "ラーメン"),
}


def _sentence(rng: random.Random, low: int, high: int, extra: tuple[str, ...] = ()) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(low, high))]
    if extra:  # a non-UTF-8 page has text its charset encodes but UTF-8 decoding would garble
        words[0] = rng.choice(extra)
    return " ".join(words)


def generate_site_pages(n_pages: int, seed: int = 0, images_per_page: int = 20, n_sites: int = 300) -> Iterator[Page]:
    """Realistic noisy pages, streamed; each about 25-40 KB of HTML with ~``images_per_page`` img tags."""
    rng = random.Random(seed)
    for index in range(n_pages):
        yield _realistic_page(rng, index, images_per_page, n_sites)


def _realistic_page(rng: random.Random, index: int, images_per_page: int, n_sites: int) -> Page:
    site = rng.randrange(n_sites)
    host = f"www.site{site}.example"
    url = f"https://{host}/{rng.choice(['blog', 'shop', 'news', 'gallery'])}/{index // 50}/page-{index}.html"
    lang = rng.choice(_LANG)
    charset = "utf-8"
    if rng.random() < 0.08:
        charset = "windows-1252"
    elif rng.random() < 0.03:
        charset = "shift_jis"
    upper = rng.random() < 0.05
    base = f"https://cdn{site}.example/assets/" if rng.random() < 0.15 else None
    img_tags: list[str] = []
    wat_images: list[tuple[str, str | None]] = []
    # The site's logo and social icons appear on every page of the site: cross-page duplicates.
    img_tags.append(f'<img src="/static/logo-{site}.png" alt="Site {site} logo" width="120" height="40">')
    wat_images.append((f"/static/logo-{site}.png", f"Site {site} logo"))
    for number in range(images_per_page - 1):
        alt = _sentence(rng, 2, 12, _EXTRA_WORDS.get(charset, ()))
        path = f"/images/{rng.randrange(10**6)}/{'-'.join(alt.split()[:3])}.jpg"
        kind = rng.random()
        if kind < 0.45:
            src, extra = path, f'width="{rng.randint(100, 1200)}" height="{rng.randint(100, 900)}"'
        elif kind < 0.55:
            src, extra = f"//img{site}.example{path}", ""
        elif kind < 0.65:
            src, extra = f"../thumbs/{number}.jpg", 'loading="lazy"'
        elif kind < 0.72:  # lazy loading: a placeholder in src, the image in data-src
            src, extra = _PIXEL_GIF, f'data-src="{path}" class="lazyload"'
        elif kind < 0.77:
            src, extra = path, f'srcset="{path}?w=480 480w, {path}?w=960 960w" sizes="(max-width: 600px) 480px, 960px"'
        elif kind < 0.82:
            src, extra, alt = path, "", ""  # alt="" (decorative)
        elif kind < 0.86:
            src, extra = f"https://track{site}.example/pixel.gif?id={number}", 'width="1" height="1"'
        elif kind < 0.88:
            src, extra = "data:image/png;base64," + "iVBORw0KGgo" * 20, ""
        elif kind < 0.90:
            src, extra = f"/icons/{number}.svg", 'width="24" height="24"'
        else:
            src, extra = path, 'decoding="async"'
        alt_attr = "" if kind >= 0.78 and kind < 0.80 else f' alt="{alt}"'  # a few with no alt at all
        tag = f'<img src="{src}"{alt_attr} {extra}>'
        img_tags.append(tag.upper() if upper and kind < 0.1 else tag)
        wat_images.append((src, alt if alt_attr else None))
    if rng.random() < 0.3:  # the same image twice on one page (a thumbnail strip, a repeated banner)
        img_tags.append(img_tags[1])
        wat_images.append(wat_images[1])
    # Around the images, what makes a real page 50-100 KB: menus, card markup, inline JSON and CSS.
    body: list[str] = []
    nav = "".join(f'<li class="menu-item menu-item-type-post_type"><a class="nav-link" href="/section/{i}/">'
                  f"{_sentence(rng, 1, 3)}</a></li>" for i in range(150))
    body.append(f'<header class="site-header"><nav id="main-nav"><ul class="menu">{nav}</ul></nav></header><main>')
    for number, tag in enumerate(img_tags):
        body.append(f'<div class="card col-md-4"><div class="card-body"><h3 class="card-title">'
                    f'<a href="/post/{index}-{number}.html">{_sentence(rng, 3, 8)}</a></h3><p>{_sentence(rng, 30, 70)}'
                    f'</p><p class="excerpt">{_sentence(rng, 20, 40)}</p><figure class="wp-block-image">{tag}'
                    f'<figcaption>{_sentence(rng, 3, 10)}</figcaption></figure><span class="meta">'
                    f"{_sentence(rng, 2, 4)}</span></div></div>")
    footer = "".join(f'<a href="/about/{i}">{_sentence(rng, 1, 2)}</a> ' for i in range(60))
    body.append(f'</main><footer class="site-footer"><p>{_sentence(rng, 20, 40)}</p>{footer}</footer>')
    blob = json.dumps([{"id": i, "title": _sentence(rng, 4, 10), "slug": f"post-{i}"} for i in range(120)])
    script = ("<script>window.dataLayer=window.dataLayer||[];function gtag(){dataLayer.push(arguments);}"
              f"</script><script type=\"application/json\" id=\"state\">{blob}</script>")
    style = "<style>" + "".join(f".c{i}{{margin:{i % 7}px;padding:{i % 5}em;color:#{i * 997 % 4096:03x}}}"
                                for i in range(150)) + "</style>"
    base_tag = f'<base href="{base}">' if base else ""
    html = (f'<!DOCTYPE html><html lang="{lang}"><head><meta charset="{charset}"><title>{_sentence(rng, 3, 8)}'
            f'</title>{base_tag}<link rel="stylesheet" href="/style.css">{style}{script}'
            f"</head><body>{''.join(body)}</body></html>")
    encoded = html.encode(charset, errors="replace")
    return Page(url=url, html=encoded, charset=charset, wat_images=wat_images, wat_base=base,
                wat_other_links=len(img_tags) + 210)


def write_members(handle: IO[bytes], members: Iterable[bytes]) -> int:
    total = 0
    for member in members:
        handle.write(member)
        total += len(member)
    return total
