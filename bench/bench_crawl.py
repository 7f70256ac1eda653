"""Crawl extraction speed: pairs/s per core from WARC HTML, WARC readers and HTML parsers compared, and a WAT.

Generates (once, cached under bench/out/crawl/) a WARC of --pages realistic pages (default 10,000;
~50 KB of HTML each, ~20 img tags with real-world noise, see altsieve/testcorpus/crawlgen.py) and a
WAT of --wat-records records (default 50,000: a request, a response and a metadata record's
metadata per page, as Common Crawl writes them), then measures, in this one process:

  1. WARC record reading: FastWARC against warcio (every response record's payload read);
  2. HTML parsers on the first --parser-pages pages, already decoded, with the same URL/alt rules:
     selectolax (Lexbor), lxml (libxml2), Resiliparse's DOM (Lexbor, walked from Python);
  3. the reader altsieve uses (``iter_warc_pairs``: FastWARC + charset detection + selectolax +
     rules) over the whole WARC: pages/s, img tags/s and pairs/s per core (CPU seconds: one process
     is one core, and CPU time does not count time lost to other work on a shared machine);
  4. ``iter_wat_pairs`` over the WAT, projected to a real Common Crawl WAT file and compared with
     cc2dataset's published ~50 s per WAT per core. The generated WAT is smaller than a real one;
     the projection scales by record count (a real WAT has ~150k records: assumed, not measured)
     and by compressed size (~300 MB), and prints both;
  5. with --beam, the whole ``altsieve extract`` Beam pipeline (DirectRunner) on the WARC.

Usage: python bench/bench_crawl.py [--pages 10000] [--wat-records 50000] [--parser-pages 2000] [--beam]

Measured (`python bench/bench_crawl.py --beam`, defaults; the 2-core development machine, shared
with other work, so CPU seconds are quoted; figures moved by up to 25% between two runs):

  WARC: 117 MB compressed, 10,000 pages (530 MB of HTML), 203,051 img tags
    1. FastWARC 885 MB/s of payload, warcio 300 MB/s
    2. selectolax 3,230 pages/s (57,400 pairs/s), lxml 1,470 (26,200), Resiliparse DOM 680 (12,050)
    3. iter_warc_pairs: 4.5 CPU s = 2,210 pages/s, 44,800 img tags/s, 39,300 pairs/s per core
  WAT: 73 MB compressed, 50,000 records (16,666 pages)
    4. iter_wat_pairs: 4.6 CPU s = 10,900 records/s, 62,600 pairs/s per core; projected per real
       WAT: 14 s (by records) to 19 s (by compressed size) on one core, against cc2dataset's ~50 s
       (which also includes fetching the file from S3; this is parsing alone, from local disk)
    5. the whole extract pipeline (DirectRunner, one process, dedup included) on the WARC: 18.9 s
       wall for 166,016 unique pairs: the in-process shuffle of 178k pairs costs more than parsing.

Real pages are often larger than these (Common Crawl stores ~100 KB per page before compression):
pages/s falls with page size, pairs/s with the number of img tags per byte of HTML.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from altsieve.testcorpus.crawlgen import generate_site_pages, iter_wat_members, write_members, write_warc
from altsieve.transforms.crawl.html import decode_html, extract_images
from altsieve.transforms.crawl.images import choose_image_url, judge_image, page_base
from altsieve.transforms.crawl.pairs import IMG_TAGS, ExtractOptions
from altsieve.transforms.crawl.warc import iter_warc_pairs
from altsieve.transforms.crawl.wat import iter_wat_pairs

OUT = Path(__file__).resolve().parent / "out" / "crawl"
CC2DATASET_S_PER_WAT = 50.0  # cc2dataset's README: "process one warc [WAT] in about 50s", per core
REAL_WAT_RECORDS = 150_000  # assumed: ~50k captures per file, three metadata records each
REAL_WAT_BYTES = 300e6  # assumed: a CC-MAIN WAT file is ~300 MB compressed


class Clock:
    """Wall and CPU seconds of a block."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def generate(pages: int, wat_records: int) -> tuple[Path, Path]:
    OUT.mkdir(parents=True, exist_ok=True)
    warc = OUT / f"synthetic-{pages}.warc.gz"
    wat = OUT / f"synthetic-{wat_records}.warc.wat.gz"
    if not warc.exists():
        with Clock() as clock:
            write_warc(str(warc) + ".tmp", generate_site_pages(pages, seed=1))
            os.replace(str(warc) + ".tmp", warc)
        print(f"generated {warc.name}: {warc.stat().st_size / 1e6:.0f} MB in {clock.wall:.0f} s", flush=True)
    if not wat.exists():
        with Clock() as clock, open(str(wat) + ".tmp", "wb") as handle:
            # warcinfo + three records per page
            write_members(handle, iter_wat_members(generate_site_pages((wat_records - 1) // 3, seed=2)))
        os.replace(str(wat) + ".tmp", wat)
        print(f"generated {wat.name}: {wat.stat().st_size / 1e6:.0f} MB in {clock.wall:.0f} s", flush=True)
    return warc, wat


def compare_warc_readers(warc: Path) -> None:
    from fastwarc.warc import ArchiveIterator, WarcRecordType
    from warcio.archiveiterator import ArchiveIterator as WarcioIterator

    def fastwarc() -> int:
        with open(warc, "rb") as handle:
            return sum(len(r.reader.read()) for r in ArchiveIterator(handle, record_types=WarcRecordType.response))

    def warcio() -> int:
        with open(warc, "rb") as handle:
            return sum(len(r.content_stream().read()) for r in WarcioIterator(handle) if r.rec_type == "response")

    print("\n1. WARC record reading (every response payload), CPU s")
    for name, read in (("fastwarc", fastwarc), ("warcio", warcio)):
        with Clock() as clock:
            payload = read()
        print(f"  {name:<10} {clock.cpu:6.2f} s  {payload / 1e6 / clock.cpu:7.0f} MB/s of payload")


def _pairs_of(tags: Iterable[dict[str, Any]], base: Any, counts: Counter, options: ExtractOptions) -> list:
    """The pairs of a page's img tags (attribute maps), judged as the extractor judges them."""
    pairs = []
    for attributes in tags:
        counts[IMG_TAGS] += 1
        verdict = judge_image(choose_image_url(attributes), attributes.get("alt"), base,
                              attributes.get("width"), attributes.get("height"), options.keep_svg)
        if not isinstance(verdict, str):
            pairs.append(verdict)
    return pairs


def _lxml_images(html: str, page_url: str, counts: Counter, options: ExtractOptions) -> list:
    import lxml.html

    root = lxml.html.document_fromstring(html)
    base_nodes = root.xpath("//base[@href]")
    base = page_base(page_url, base_nodes[0].get("href") if base_nodes else None)
    return _pairs_of((dict(node.attrib) for node in root.iter("img")), base, counts, options)


def _resiliparse_images(html: str, page_url: str, counts: Counter, options: ExtractOptions) -> list:
    from resiliparse.parse.html import HTMLTree

    document = HTMLTree.parse(html).document
    base_node = document.query_selector("base[href]")
    base = page_base(page_url, base_node.getattr("href") if base_node is not None else None)
    tags = ({name: node.getattr(name) for name in node.attrs} for node in document.query_selector_all("img"))
    return _pairs_of(tags, base, counts, options)


def _selectolax_images(html: str, page_url: str, counts: Counter, options: ExtractOptions) -> list:
    return extract_images(html, page_url, counts, options)[1]


def compare_parsers(warc: Path, n_pages: int) -> None:
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    pages: list[tuple[str, str]] = []
    with open(warc, "rb") as handle:
        for record in ArchiveIterator(handle, record_types=WarcRecordType.response):
            html = decode_html(record.reader.read(), record.http_charset)
            pages.append((record.headers.get("WARC-Target-URI"), html))
            if len(pages) >= n_pages:
                break
    megabytes = sum(len(html) for _, html in pages) / 1e6
    print(f"\n2. HTML parsers on {len(pages)} decoded pages ({megabytes:.0f} MB), same rules, CPU s")
    parsers: list[tuple[str, Callable[..., list]]] = [("selectolax", _selectolax_images), ("lxml", _lxml_images),
                                                     ("resiliparse", _resiliparse_images)]
    options = ExtractOptions()
    for name, parse in parsers:
        counts: Counter = Counter()
        try:
            with Clock() as clock:
                found = sum(len(parse(html, url, counts, options)) for url, html in pages)
        except ImportError as err:
            print(f"  {name:<12} not installed ({err})")
            continue
        print(f"  {name:<12} {clock.cpu:6.2f} s  {len(pages) / clock.cpu:7.0f} pages/s  "
              f"{counts[IMG_TAGS] / clock.cpu:8.0f} img tags/s  {found / clock.cpu:8.0f} pairs/s  ({found} pairs)")


def time_reader(name: str, read: Callable[[str, Counter, ExtractOptions], Any], path: Path) -> tuple[Counter, Clock]:
    counts: Counter = Counter()
    with Clock() as clock:
        pairs = sum(1 for _ in read(str(path), counts, ExtractOptions()))
    counts["pairs"] = pairs
    print(f"  {name}: {clock.cpu:.1f} CPU s ({clock.wall:.1f} s wall), {counts['crawl_html_pages']} pages, "
          f"{counts[IMG_TAGS]} img tags, {pairs} pairs before dedup")
    return counts, clock


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=10_000)
    parser.add_argument("--wat-records", type=int, default=50_000)
    parser.add_argument("--parser-pages", type=int, default=2_000)
    parser.add_argument("--beam", action="store_true", help="also time the altsieve extract Beam pipeline")
    args = parser.parse_args()
    warc, wat = generate(args.pages, args.wat_records)
    compare_warc_readers(warc)
    compare_parsers(warc, args.parser_pages)

    print(f"\n3. WARC HTML extraction, altsieve's reader, one process ({warc.stat().st_size / 1e6:.0f} MB WARC)")
    counts, clock = time_reader("iter_warc_pairs", iter_warc_pairs, warc)
    print(f"  per core: {counts['crawl_html_pages'] / clock.cpu:.0f} pages/s, {counts[IMG_TAGS] / clock.cpu:.0f} "
          f"img tags/s, {counts['pairs'] / clock.cpu:.0f} pairs/s")
    skipped = {k: v for k, v in counts.items() if k.startswith("crawl_") and k not in (IMG_TAGS, "crawl_html_pages",
                                                                                        "crawl_records", "crawl_files")}
    print(f"  skipped: {skipped}")

    print(f"\n4. WAT ({wat.stat().st_size / 1e6:.0f} MB, {args.wat_records} records)")
    wat_counts, wat_clock = time_reader("iter_wat_pairs", iter_wat_pairs, wat)
    by_records = wat_clock.cpu * REAL_WAT_RECORDS / max(wat_counts["crawl_records"], 1)
    by_bytes = wat_clock.cpu * REAL_WAT_BYTES / wat.stat().st_size
    print(f"  {wat_counts['crawl_records'] / wat_clock.cpu:.0f} records/s, {wat_counts['pairs'] / wat_clock.cpu:.0f} "
          f"pairs/s per core")
    print(f"  projected per real WAT file, one core: {by_records:.0f} s by records ({REAL_WAT_RECORDS} assumed), "
          f"{by_bytes:.0f} s by compressed size ({REAL_WAT_BYTES / 1e6:.0f} MB assumed); "
          f"cc2dataset: ~{CC2DATASET_S_PER_WAT:.0f} s")

    if args.beam:
        import tempfile

        from altsieve.pipeline.extract import run_extract
        from altsieve.transforms.crawl.listing import list_crawl_files

        with tempfile.TemporaryDirectory() as folder, Clock() as beam_clock:
            stats = run_extract(list_crawl_files([str(warc)]), folder, ExtractOptions(), [])
        print(f"\n5. altsieve extract (Beam DirectRunner) on the WARC: {beam_clock.wall:.1f} s wall, "
              f"{stats['pairs']} pairs after dedup ({stats['skipped'].get('crawl_duplicate', 0)} duplicates)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
