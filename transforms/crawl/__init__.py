"""Crawl to pairs: image URL + alt text from Common Crawl WARC (HTML responses) and WAT (link metadata) files.

One file per concern, as img2dataset keeps its reader, downloader, resizer and writer apart, so that
each can be read, tested and replaced on its own (a new container format touches ``records``, a new
lazy-loading attribute ``images``, a new output column ``pairs``):

- ``listing``: what to read: files, globs, folders and ``*.paths.gz`` listings -> ``CrawlFile``s.
- ``records``: the WARC container (WARC and WAT alike): records streamed, corrupt stretches stepped over.
- ``images``: which ``<img>`` makes a pair: the URL it shows, resolved and checked, and its alt text.
- ``html``: a WARC response's HTML: charset, parse, the page's img tags judged by ``images``.
- ``warc`` / ``wat``: one WARC / WAT file -> pair rows.
- ``pairs``: what a pair row is (columns, ``ExtractOptions``) and the volume counters every reader keeps.
- ``extract``: one crawl file of either kind -> rows, and the Beam transform ``ExtractCrawlPairs`` that
  runs them one file per element, deduplicates on URL + alt and writes Parquet URL lists.

Libraries, measured with ``bench/bench_crawl.py`` (10,000 generated pages, ~50 KB of HTML and ~20 img
tags each; CPU seconds of one process on the shared 2-core development machine):

- WARC/WAT records: FastWARC, 885 MB/s of payload against warcio's 300 MB/s on the same gzip-per-record
  file, and it reports each record's offset in the compressed file (``stream_pos``), which a pair carries.
- HTML: selectolax (Lexbor, a spec-following HTML5 parser in C): 3,230 pages/s (57k pairs/s) with the
  rules of ``images``, against lxml's 1,470 (libxml2, whose HTML parser predates HTML5 and nests
  malformed markup differently from browsers) and Resiliparse's DOM's 680 (the same Lexbor engine, but
  walking its img nodes from Python costs more than the parse). Resiliparse is used for its charset
  detection.

Why an img tag gives no pair, checked in this order, each counted under its reason code
(``altsieve.core.reasons.CRAWL_*``): no URL at all, a ``data:`` URI, a URL that does not resolve to one with
a host, a non-http(s) scheme, a width or height attribute of 1 px or less (tracking pixels), an empty
or missing alt, an ``.svg`` (unless ``keep_svg``), and in the Beam pipeline a URL + alt already seen.
These counts go to ``extract_stats.json``; they are not row reasons, because a skipped tag never
becomes a row. A record that cannot be read is counted as ``crawl_corrupt_record`` and skipped (see
``records``).

Memory stays bounded: records are streamed, and at most ``max_record_bytes`` of one payload is read.
"""
