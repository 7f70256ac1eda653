"""One crawl file of either kind -> pair rows, and the Beam transform that extracts many into Parquet URL lists.

``ExtractCrawlPairs`` runs ``iter_crawl_pairs`` one file per element, deduplicates on URL + alt across
the whole extraction (the first pair in input order wins; the others count as ``crawl_duplicate``) and
writes the kept pairs of each stretch of each input file as one Parquet file.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics

from altsieve.core import fsutil, reasons
from altsieve.transforms.crawl.listing import CrawlFile, crawl_kind
from altsieve.transforms.crawl.pairs import (
    DEFAULT_OPTIONS,
    FILES,
    FILES_FAILED,
    PAIRS,
    PAIRS_FOUND,
    ExtractOptions,
    output_schema,
)
from altsieve.transforms.crawl.warc import iter_warc_pairs
from altsieve.transforms.crawl.wat import iter_wat_pairs
from altsieve.transforms.progress import ProgressWriter

log = logging.getLogger("altsieve")

METRICS_NAMESPACE = "altsieve"
# Output files hold the pairs of one stretch of one input file, so that no worker holds a whole
# file's pairs at once (32 MiB of a Common Crawl WARC is ~1,000 pages, some 10-20k pairs) and each
# output file is the same on every rerun.
CHUNK_BYTES = 32 << 20


def iter_crawl_pairs(source: CrawlFile | str, counts: Counter,
                     options: ExtractOptions = DEFAULT_OPTIONS) -> Iterator[dict[str, Any]]:
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
