"""Crawl to pairs: WARC and WAT readers, the extract pipeline, and crawl inputs to ``altsieve run``.

The real Common Crawl files (tests/data/commoncrawl/, one Wikipedia page of CC-MAIN-2024-22) check
that the expected img pairs come out with their URLs resolved; the synthetic WARCs written here
check each HTML case (relative URLs, <base href>, malformed markup, non-UTF-8 pages, uppercase
tags, srcset, lazy loading, duplicates) and each skip reason one by one.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from altsieve.core import reasons
from altsieve.pipeline.cli import main, run_all
from altsieve.pipeline.demo import demo_config
from altsieve.pipeline.extract import STATS_NAME, run_extract
from altsieve.testcorpus.crawlgen import Page, gzip_member, iter_warc_members, write_warc, write_wat
from altsieve.testcorpus.server import CorpusServer
from altsieve.transforms.crawl.extract import iter_crawl_pairs
from altsieve.transforms.crawl.images import best_srcset_candidate
from altsieve.transforms.crawl.listing import CrawlFile, CrawlInputError, list_crawl_files
from altsieve.transforms.crawl.pairs import HTML_PAGES, IMG_TAGS, RECORDS, RECORDS_NOT_HTML, ExtractOptions

REAL = Path(__file__).parent / "data" / "commoncrawl"
PAGE_URL = "https://an.wikipedia.org/wiki/Escopete"
WIKI = "https://upload.wikimedia.org/wikipedia/commons/thumb"
# Read off the page's HTML by hand: the img tags with a non-empty alt that are neither SVG nor a 1x1 pixel.
REAL_PAIRS = [
    (f"{WIKI}/0/0a/Escudo_de_Escopete_%28Guadalajara%29.svg/70px-Escudo_de_Escopete_%28Guadalajara%29.svg.png",
     "Escudo d'armas"),
    (f"{WIKI}/9/9c/Castilla-La_Mancha-loc.svg/250px-Castilla-La_Mancha-loc.svg.png",
     "Escopete ubicada en Castiella-La Mancha"),
    (f"{WIKI}/d/d2/Map_pointer.svg/12px-Map_pointer.svg.png", "Escopete"),
    ("https://an.wikipedia.org/static/images/footer/wikimedia-button.png", "Wikimedia Foundation"),
    ("https://an.wikipedia.org/static/images/footer/poweredby_mediawiki_88x31.png", "Powered by MediaWiki"),
]


def read_pairs(path: Path | str, **options) -> tuple[list[dict], Counter]:
    counts: Counter = Counter()
    rows = list(iter_crawl_pairs(str(path), counts, ExtractOptions(**options)))
    return rows, counts


def gzip_members(data: bytes) -> list[tuple[int, bytes]]:
    """(offset, inflated bytes) of each gzip member, found with zlib alone."""
    members, position = [], 0
    while position < len(data):
        inflater = zlib.decompressobj(31)
        inflated = inflater.decompress(data[position:])
        members.append((position, inflated))
        position = len(data) - len(inflater.unused_data)
    return members


def html_page(url: str, body: str, head: str = "", lang: str | None = "en", charset: str | None = "utf-8",
              **fields) -> Page:
    lang_attr = f' lang="{lang}"' if lang else ""
    html = f"<!DOCTYPE html><html{lang_attr}><head>{head}</head><body>{body}</body></html>"
    return Page(url=url, html=html.encode(charset or "utf-8"), charset=charset, **fields)


def skip_counts(counts: Counter) -> dict[str, int]:
    return {code: counts[code] for code in reasons.CRAWL_SKIP_REASONS if counts[code]}


# --- The real Common Crawl files ---------------------------------------------------------------


def test_real_warc_gives_the_expected_pairs_resolved() -> None:
    rows, counts = read_pairs(REAL / "whirlwind.warc.gz")
    assert [(row["url"], row["caption"]) for row in rows] == REAL_PAIRS
    response_offsets = [
        offset for offset, inflated in gzip_members((REAL / "whirlwind.warc.gz").read_bytes())
        if b"WARC-Type: response" in inflated[:200]
    ]
    assert len(response_offsets) == 1
    for row in rows:
        assert row["page_url"] == PAGE_URL
        assert row["page_language"] == "an"  # <html lang="an">
        assert row["crawl_id"] == "CC-MAIN-2024-22"  # the warcinfo record's isPartOf
        assert row["record_offset"] == response_offsets[0]
    # 13 img tags: 5 pairs, 5 with an empty or missing alt, 2 SVG logos, 1 login pixel (1x1).
    assert counts[IMG_TAGS] == 13 and counts[HTML_PAGES] == 1
    assert skip_counts(counts) == {reasons.CRAWL_EMPTY_ALT: 5, reasons.CRAWL_SVG: 2, reasons.CRAWL_TRACKING_PIXEL: 1}
    kept_svg, svg_counts = read_pairs(REAL / "whirlwind.warc.gz", keep_svg=True)
    assert len(kept_svg) == 7 and reasons.CRAWL_SVG not in svg_counts
    assert "https://an.wikipedia.org/static/images/mobile/copyright/wikipedia-wordmark-an.svg" in {
        row["url"] for row in kept_svg}


def test_real_wat_and_wet() -> None:
    # This WAT sample holds the metadata of the capture's request only: read, no pairs, nothing corrupt.
    rows, counts = read_pairs(REAL / "whirlwind.warc.wat.gz")
    assert rows == [] and counts[RECORDS] == 1 and counts[reasons.CRAWL_CORRUPT_RECORD] == 0
    with pytest.raises(CrawlInputError, match="WET"):
        list_crawl_files([str(REAL / "whirlwind.warc.wet.gz")])


# --- Synthetic WARCs: HTML cases and skip reasons ---------------------------------------------------

TRICKY_BODY = """
<img src="img/a.jpg" alt="relative a">
<img src="../b.jpg" alt="  parent
   b ">
<img src="/c.jpg?x=1#f" alt="root c">
<img src="//cdn.example/d.png" alt="protocol relative d">
<IMG SRC="E.JPG" ALT="Upper E">
<img srcset="s-small.jpg 320w, s-large.jpg 1280w, s-mid.jpg 640w" alt="srcset only">
<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" data-src="lazy.jpg" alt="lazy loaded">
<img src="placeholder.gif" data-lazy-src="/real.jpg" alt="lazy real">
<img src="dup.jpg" alt="twice"><img src="dup.jpg" alt="twice">
<img src="dup.jpg" alt="other alt">
<img src="HTTPS://site.example/x.jpg" alt="Fish &amp; chips">
<img src="wide.gif" alt="banner" width="100%" height="auto">
<img src="https://u.example/x.svg.png" alt="png from svg">
<img src="data:image/png;base64,iVBORw0KGgo=" alt="inline">
<img src="noalt.jpg">
<img src="blank.jpg" alt="   ">
<img src="pixel.gif" alt="t" width="1" height="1">
<img src="zero.gif" alt="t" width="0px">
<img src="javascript:void(0)" alt="js">
<img src="ftp://files.example/f.jpg" alt="ftp">
<img src="http://[::1/broken.jpg" alt="broken">
<img alt="no source">
<img src="/logo.svg" alt="logo svg">
"""
TRICKY_PAIRS = [
    ("https://site.example/dir/img/a.jpg", "relative a"),
    ("https://site.example/b.jpg", "parent b"),
    ("https://site.example/c.jpg?x=1#f", "root c"),
    ("https://cdn.example/d.png", "protocol relative d"),
    ("https://site.example/dir/E.JPG", "Upper E"),
    ("https://site.example/dir/s-large.jpg", "srcset only"),
    ("https://site.example/dir/lazy.jpg", "lazy loaded"),
    ("https://site.example/real.jpg", "lazy real"),
    ("https://site.example/dir/dup.jpg", "twice"),
    ("https://site.example/dir/dup.jpg", "twice"),  # the reader keeps both; the pipeline's dedup drops one
    ("https://site.example/dir/dup.jpg", "other alt"),
    ("https://site.example/x.jpg", "Fish & chips"),
    ("https://site.example/dir/wide.gif", "banner"),
    ("https://u.example/x.svg.png", "png from svg"),
]
TRICKY_SKIPS = {
    reasons.CRAWL_DATA_URI: 1, reasons.CRAWL_EMPTY_ALT: 2, reasons.CRAWL_TRACKING_PIXEL: 2, reasons.CRAWL_SCHEME: 2,
    reasons.CRAWL_INVALID_URL: 1, reasons.CRAWL_NO_SRC: 1, reasons.CRAWL_SVG: 1,
}


def test_every_img_case_and_skip_reason(tmp_path) -> None:
    warc = tmp_path / "tricky.warc.gz"
    write_warc(str(warc), [html_page("https://site.example/dir/page.html", TRICKY_BODY, lang="en-GB")])
    rows, counts = read_pairs(warc)
    assert [(row["url"], row["caption"]) for row in rows] == TRICKY_PAIRS
    assert skip_counts(counts) == TRICKY_SKIPS
    assert counts[IMG_TAGS] == len(TRICKY_PAIRS) + sum(TRICKY_SKIPS.values())
    assert {row["page_language"] for row in rows} == {"en-gb"}
    assert {row["crawl_id"] for row in rows} == {"CC-MAIN-2099-01"}  # from the synthetic warcinfo


def test_base_href_relative_and_absolute(tmp_path) -> None:
    pages = [
        html_page("https://site.example/articles/2024/post.html",
                  '<img src="pic.jpg" alt="based"><img src="/root.jpg" alt="root"><img src="../up.jpg" alt="up">',
                  head='<base href="/static/v2/">'),
        html_page("http://site.example/p.html",
                  '<img src="p.jpg" alt="cdn based"><img src="//o.example/q.jpg" alt="q">',
                  head='<base href="https://cdn.example/assets/" target="_blank">'),
        # A <base> that is not http(s) is ignored: the page URL stays the base.
        html_page("https://site.example/a/b.html", '<img src="c.jpg" alt="page based">', head='<base href="about:x">'),
    ]
    warc = tmp_path / "base.warc.gz"
    write_warc(str(warc), pages)
    rows, _ = read_pairs(warc)
    assert [(row["url"], row["caption"]) for row in rows] == [
        ("https://site.example/static/v2/pic.jpg", "based"),
        ("https://site.example/root.jpg", "root"),
        ("https://site.example/static/up.jpg", "up"),
        ("https://cdn.example/assets/p.jpg", "cdn based"),
        ("https://o.example/q.jpg", "q"),  # the scheme of the base, not of the page
        ("https://site.example/a/c.jpg", "page based"),
    ]


def test_malformed_html_still_gives_its_images(tmp_path) -> None:
    body = ("<div><p>unclosed <table><tr><td><img src=unquoted.jpg alt=unquoted-alt></td>"
            "<img src='single.jpg' alt='single quoted'><p>stray < less than & ampersand"
            '<img src="after-stray.jpg" alt="after stray" alt="second alt ignored">'
            "<b><i>misnested</b></i><img\nsrc = 'spaced.jpg'\nalt = 'spaced out'>"
            "<!-- <img src='commented.jpg' alt='commented out'> -->"
            "<script>document.write('<img src=\"scripted.jpg\" alt=\"in script\">')</script>")
    warc = tmp_path / "malformed.warc.gz"
    write_warc(str(warc), [Page(url="https://m.example/", html=body.encode() + b"\x00\xff trailing junk <img")])
    rows, counts = read_pairs(warc)
    # Sorted: an HTML5 parser moves what sits in a table outside its cells to before the table
    # ("foster parenting"), as browsers do, so document order differs from source order.
    assert sorted((row["url"], row["caption"]) for row in rows) == [
        ("https://m.example/after-stray.jpg", "after stray"),
        ("https://m.example/single.jpg", "single quoted"),
        ("https://m.example/spaced.jpg", "spaced out"),
        ("https://m.example/unquoted.jpg", "unquoted-alt"),
    ]
    assert counts[reasons.CRAWL_CORRUPT_RECORD] == 0
    assert {row["page_language"] for row in rows} == {None}  # no lang attribute, no Content-Language


def test_non_utf8_pages_decode(tmp_path) -> None:
    cafe = "Crème brûlée, façade"
    pages = [
        # Declared only by <meta charset>: the HTTP header names no charset.
        Page(url="https://fr.example/1", charset=None,
             html=(f'<html lang="fr"><head><meta charset="windows-1252"></head><body><img src="1.jpg" alt="{cafe}">'
                   "</body></html>").encode("cp1252")),
        # Declared only by the HTTP header.
        Page(url="https://jp.example/2", html='<html><body><img src="2.jpg" alt="東京の桜と写真"></body></html>'.encode(
            "shift_jis"), charset="Shift_JIS", content_language="ja"),
        # The header says UTF-8 but the bytes are windows-1252: decoding falls back instead of garbling.
        Page(url="https://fr.example/3", html=f'<img src="3.jpg" alt="{cafe}">'.encode("cp1252"), charset="utf-8"),
        # An unknown charset label: detected instead.
        Page(url="https://fr.example/4", html=f'<img src="4.jpg" alt="{cafe}">'.encode(), charset="x-no-such-charset"),
    ]
    warc = tmp_path / "charsets.warc.gz"
    write_warc(str(warc), pages)
    rows, _ = read_pairs(warc)
    assert [(row["url"], row["caption"], row["page_language"]) for row in rows] == [
        ("https://fr.example/1.jpg", cafe, "fr"),
        ("https://jp.example/2.jpg", "東京の桜と写真", "ja"),  # no <html lang>: the Content-Language header
        ("https://fr.example/3.jpg", cafe, None),
        ("https://fr.example/4.jpg", cafe, None),
    ]


def test_only_successful_html_responses_are_read(tmp_path) -> None:
    pages = [
        Page(url="https://s.example/i.jpg", html=b"\xff\xd8\xff<img src='x.jpg' alt='not html'>",
             content_type="image/jpeg", charset=None),
        html_page("https://s.example/missing", '<img src="404.jpg" alt="error page">', status=404),
        html_page("https://s.example/ok", '<img src="ok.jpg" alt="ok">', content_language="de-DE, en"),
    ]
    warc = tmp_path / "kinds.warc.gz"
    write_warc(str(warc), pages)
    rows, counts = read_pairs(warc)
    assert [(row["url"], row["page_language"]) for row in rows] == [("https://s.example/ok.jpg", "en")]
    assert counts[RECORDS] == 3 and counts[RECORDS_NOT_HTML] == 2 and counts[HTML_PAGES] == 1


def test_surrounding_text_is_optional(tmp_path) -> None:
    body = ('<figure><img src="f.jpg" alt="figure"><figcaption>A red   bicycle by the lake</figcaption></figure>'
            '<p>Intro text <a href="/x"><img src="linked.jpg" alt="linked"></a> more words</p>')
    warc = tmp_path / "around.warc.gz"
    write_warc(str(warc), [html_page("https://t.example/", body)])
    rows, _ = read_pairs(warc, surrounding_text=True)
    assert [row["surrounding_text"] for row in rows] == ["A red bicycle by the lake", "Intro text more words"]
    plain, _ = read_pairs(warc)
    assert "surrounding_text" not in plain[0]


def test_srcset_parsing() -> None:
    assert best_srcset_candidate("a.jpg 1x, b.jpg 2x") == "b.jpg"
    assert best_srcset_candidate("a.jpg 100w,b.jpg 900w , c.jpg 300w") == "b.jpg"
    assert best_srcset_candidate("only.jpg") == "only.jpg"
    assert best_srcset_candidate("https://x.example/img,comma.jpg 2x, y.jpg 1x") == "https://x.example/img,comma.jpg"
    assert best_srcset_candidate("  ") is None


# --- Corrupt records ----------------------------------------------------------------------------


def _three_pages() -> list[Page]:
    return [html_page(f"https://c.example/{i}.html", f'<img src="{i}.jpg" alt="page {i}">') for i in range(3)]


def _urls(rows: list[dict]) -> list[str]:
    return [row["url"] for row in rows]


def test_a_corrupt_record_is_counted_and_skipped(tmp_path) -> None:
    members = list(iter_warc_members(_three_pages(), with_requests=False))  # warcinfo, page 0, 1, 2
    damaged = bytearray(members[2])
    damaged[30:60] = b"\x00" * 30  # inside page 1's deflate stream
    cases = {
        "bad_deflate": members[:2] + [bytes(damaged)] + members[3:],
        "garbage_between": members[:2] + [b"\x1f\x8b\x08 not gzip at all"] + members[2:3] + members[3:],
        "bad_warc_header": members[:2] + [gzip_member(b"WARC/1.0\r\nContent-Length: many\r\n\r\nx\r\n\r\n")]
        + members[2:],
        "truncated_end": members[:3] + [members[3][: len(members[3]) // 2]],
    }
    expected = {
        "bad_deflate": ["https://c.example/0.jpg", "https://c.example/2.jpg"],
        "garbage_between": ["https://c.example/0.jpg", "https://c.example/1.jpg", "https://c.example/2.jpg"],
        "bad_warc_header": ["https://c.example/0.jpg", "https://c.example/1.jpg", "https://c.example/2.jpg"],
        "truncated_end": ["https://c.example/0.jpg", "https://c.example/1.jpg"],
    }
    for name, parts in cases.items():
        path = tmp_path / f"{name}.warc.gz"
        path.write_bytes(b"".join(parts))
        rows, counts = read_pairs(path)
        assert _urls(rows) == expected[name], name
        assert counts[reasons.CRAWL_CORRUPT_RECORD] == 1, name


def test_uncompressed_warc_and_its_corruption(tmp_path) -> None:
    path = tmp_path / "plain.warc"
    write_warc(str(path), _three_pages(), compressed=False)
    rows, counts = read_pairs(path)
    assert _urls(rows) == [f"https://c.example/{i}.jpg" for i in range(3)]
    data = path.read_bytes()
    second = data.index(b"WARC/1.0", data.index(b"c.example/1.html") - 400)
    path.write_bytes(data[:second] + b"WARC/1.0\r\nnot a header line\r\n\r\n" + data[second:])
    rows, counts = read_pairs(path)
    assert _urls(rows) == [f"https://c.example/{i}.jpg" for i in range(3)]
    assert counts[reasons.CRAWL_CORRUPT_RECORD] == 1


# --- WAT ------------------------------------------------------------------------------------------


def test_wat_img_links_resolve_against_base(tmp_path) -> None:
    page = Page(url="https://w.example/news/story.html", html=b"", content_language="pt-BR",
                wat_images=[("img/a.jpg", "A"), ("//cdn.example/b.png", " B\n b "), ("data:image/gif;base64,AA", "d"),
                            ("c.jpg", None), ("/d.svg", "svg"), ("mailto:x@example", "mail")],
                wat_base="/static/", wat_other_links=5)
    other = Page(url="https://w.example/plain.html", html=b"", wat_images=[("https://i.example/e.jpg", "E")])
    wat = tmp_path / "CC-MAIN-2099-05-sample.warc.wat.gz"
    write_wat(str(wat), [page, other])
    with open(wat, "ab") as handle:  # a metadata record whose JSON is cut short
        handle.write(gzip_member(
            b"WARC/1.0\r\nWARC-Type: metadata\r\nContent-Type: application/json\r\nContent-Length: 30\r\n\r\n"
            b'{"Envelope": {"IMG@/src": tru\r\n\r\n'))
    rows, counts = read_pairs(wat)
    assert [(row["url"], row["caption"], row["page_language"]) for row in rows] == [
        ("https://w.example/static/img/a.jpg", "A", "pt-br"),
        ("https://cdn.example/b.png", "B b", "pt-br"),
        ("https://i.example/e.jpg", "E", None),
    ]
    assert skip_counts(counts) == {reasons.CRAWL_DATA_URI: 1, reasons.CRAWL_EMPTY_ALT: 1, reasons.CRAWL_SVG: 1,
                                   reasons.CRAWL_SCHEME: 1, reasons.CRAWL_CORRUPT_RECORD: 1}
    assert {row["crawl_id"] for row in rows} == {"CC-MAIN-2099-05"}  # a WAT's warcinfo has none: from the name
    offsets = [offset for offset, inflated in gzip_members(wat.read_bytes()) if b'"IMG@/src"' in inflated]
    assert [row["record_offset"] for row in rows] == [offsets[0], offsets[0], offsets[1]]


# --- Listings, the extract pipeline, the CLI --------------------------------------------------------


def _crawl_tree(tmp_path: Path) -> tuple[Path, Path]:
    """A local stand-in for data.commoncrawl.org: two WARCs and a WAT, and a warc.paths.gz listing."""
    base = tmp_path / "cc"
    segment = base / "crawl-data" / "CC-MAIN-2099-10" / "segments" / "1" / "warc"
    segment.mkdir(parents=True)
    shared = '<img src="/shared.jpg" alt="shared logo">'
    names = []
    for number in range(2):
        name = f"CC-MAIN-2099-10-{number:05d}.warc.gz"
        pages = [html_page(f"https://l.example/{number}/{i}.html", shared + f'<img src="p{i}.jpg" alt="page {i}">'
                           + f'<img src="p{i}.jpg" alt="page {i}">') for i in range(3)]
        write_warc(str(segment / name), pages)
        names.append(f"crawl-data/CC-MAIN-2099-10/segments/1/warc/{name}")
    listing = tmp_path / "warc.paths.gz"
    listing.write_bytes(gzip.compress(("\n".join(names) + "\n").encode()))
    return base, listing


def test_paths_listing_resolves_against_the_base_url_with_a_limit(tmp_path) -> None:
    base, listing = _crawl_tree(tmp_path)
    files = list_crawl_files([str(listing)], cc_base_url=f"file://{base}/", limit=1)
    assert files == [CrawlFile(0, f"file://{base}/crawl-data/CC-MAIN-2099-10/segments/1/warc/"
                                        "CC-MAIN-2099-10-00000.warc.gz", "warc")]
    rows, _ = read_pairs(files[0].path)
    assert len(rows) == 9 and {row["crawl_id"] for row in rows} == {"CC-MAIN-2099-01"}  # warcinfo beats the path
    assert len(list_crawl_files([str(listing)], cc_base_url=f"file://{base}")) == 2
    assert len(list_crawl_files([str(base / "crawl-data" / "**" / "*.warc.gz")])) == 2  # a glob
    with pytest.raises(CrawlInputError, match="no such file"):
        list_crawl_files([str(tmp_path / "missing.warc.gz")])


def test_extract_cli_dedups_across_files_and_reruns_the_same(tmp_path, capsys) -> None:
    base, listing = _crawl_tree(tmp_path)
    wat = tmp_path / "more.warc.wat.gz"  # the same logo again, and one pair of its own
    write_wat(str(wat), [Page(url="https://l.example/w.html", html=b"",
                              wat_images=[("/shared.jpg", "shared logo"), ("/w.jpg", "wat only")])])
    output = tmp_path / "pairs"
    argv = ["extract", str(listing), str(wat), "--output", str(output), "--cc-base-url", f"file://{base}/"]
    assert main(argv) == 0
    assert "after URL + alt dedup" in capsys.readouterr().out
    stats = json.loads((output / STATS_NAME).read_text())
    files = sorted(output.glob("*.parquet"))
    assert [f.name for f in files] == ["00000_00000.parquet", "00001_00000.parquet", "00002_00000.parquet"]
    rows = [row for f in files for row in pq.read_table(f).to_pylist()]
    assert list(rows[0]) == ["url", "caption", "page_url", "page_language", "crawl_id", "source_file",
                             "record_offset"]
    pairs = [(row["url"], row["caption"]) for row in rows]
    assert len(pairs) == len(set(pairs)) == 8  # the logo once, 3 page images per WARC file, the WAT's own
    # The logo is kept once, from the first file's first page: the earliest in input order.
    logo = [row for row in rows if row["caption"] == "shared logo"]
    assert len(logo) == 1 and logo[0]["page_url"] == "https://l.example/0/0.html"
    # 2 files x 3 pages x 3 img tags + the WAT's 2 = 20 found; 12 of them repeat a URL + alt.
    assert (stats["pairs_found"], stats["pairs"]) == (20, 8)
    assert stats["skipped"] == {reasons.CRAWL_DUPLICATE: 12}
    assert [item["kind"] for item in stats["inputs"]] == ["warc", "warc", "wat"]
    first = [f.read_bytes() for f in files]
    assert main(argv) == 0  # a rerun replaces the files with the same content
    assert [f.read_bytes() for f in sorted(output.glob("*.parquet"))] == first


def test_run_accepts_a_warc_directly(tmp_path, corpus) -> None:
    clean = corpus.pairs_with_label("clean")[:4]
    with CorpusServer(corpus) as server:
        page_url = f"{server.base_url}/gallery/index.html"
        body = "".join(f'<img src="{pair.path}" alt="{pair.caption}">' for pair in clean)
        body += f'<img src="{clean[0].path}" alt="">'  # skipped: no alt
        body += f'<img src="{clean[0].path}" alt="{clean[0].caption}">'  # skipped: same URL + alt
        warc = tmp_path / "site.warc.gz"
        write_warc(str(warc), [html_page(page_url, body, lang="en")])
        output = tmp_path / "out"
        stats = run_all(demo_config(), [str(warc)], str(output), [])
    assert stats["output_samples"] == 4
    rows = [row for path in sorted(output.glob("[0-9]*.parquet")) for row in pq.read_table(path).to_pylist()]
    assert sorted(row["caption"] for row in rows) == sorted(pair.caption for pair in clean)
    for row in rows:
        assert row["page_url"] == page_url and row["page_language"] == "en"
        assert row["crawl_id"] == "CC-MAIN-2099-01" and int(row["record_offset"]) > 0
    extracted = json.loads((output / "_extracted" / STATS_NAME).read_text())
    assert extracted["pairs"] == 4 and extracted["skipped"] == {reasons.CRAWL_EMPTY_ALT: 1, reasons.CRAWL_DUPLICATE: 1}
    # Other crawl files into the same output are refused: their keys would collide with these.
    other = tmp_path / "other.warc.gz"
    write_warc(str(other), _three_pages())
    assert main(["ingest", str(other), "--output", str(output)]) == 2


def test_mixing_crawl_files_and_url_lists_is_refused(tmp_path) -> None:
    from altsieve.pipeline.extract import prepare_crawl_inputs

    warc = tmp_path / "a.warc.gz"
    write_warc(str(warc), _three_pages())
    with pytest.raises(CrawlInputError, match="mix"):
        prepare_crawl_inputs(demo_config(), [str(warc), str(tmp_path / "urls.parquet")], str(tmp_path / "o"), [])


def test_run_extract_counts_match_the_reader(tmp_path) -> None:
    warc = tmp_path / "tricky.warc.gz"
    write_warc(str(warc), [html_page("https://site.example/dir/page.html", TRICKY_BODY)])
    stats = run_extract(list_crawl_files([str(warc)]), str(tmp_path / "out"), ExtractOptions(), [])
    assert stats["skipped"] == {**TRICKY_SKIPS, reasons.CRAWL_DUPLICATE: 1}
    assert stats["pairs"] == len(set(TRICKY_PAIRS)) and stats["img_tags"] == 14 + sum(TRICKY_SKIPS.values())


def test_max_record_mib_caps_what_is_read_of_a_payload(tmp_path) -> None:
    """`--max-record-mib`: an img tag past the cap is not read; the cap lands in extract_stats.json."""
    body = '<img src="early.jpg" alt="early">' + "<p>" + "x" * (2 << 20) + "</p>" + '<img src="late.jpg" alt="late">'
    warc = tmp_path / "big.warc.gz"
    write_warc(str(warc), [html_page("https://t.example/", body)])
    captions = {}
    for mib in ("1", "3"):
        output = tmp_path / f"out-{mib}"
        assert main(["extract", str(warc), "--output", str(output), "--max-record-mib", mib]) == 0
        stats = json.loads((output / STATS_NAME).read_text())
        assert stats["options"]["max_record_bytes"] == int(mib) << 20
        captions[mib] = sorted(row["caption"] for path in output.glob("*.parquet")
                               for row in pq.read_table(path).to_pylist())
    assert captions == {"1": ["early"], "3": ["early", "late"]}
