"""``altsieve extract``: crawl files (WARC, WAT, paths listings) -> deduplicated Parquet URL lists.

Writes ``{file index:05d}_{chunk:05d}.parquet`` (columns url, caption, page_url, page_language,
crawl_id, source_file, record_offset, and surrounding_text when asked) and ``extract_stats.json``:
the volumes read and the count of every reason an img tag gave no pair. The same files feed the
ingest pass: ``altsieve run`` / ``ingest`` given crawl inputs extract into ``OUTPUT/_extracted/``
first (once: a rerun reuses them, so keys and partitions stay the same) and ingest those.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam

from altsieve.core import fsutil, reasons
from altsieve.core.config import Config, ConfigError
from altsieve.pipeline.beam_run import Progress, run_pipeline
from altsieve.transforms.crawl import listing, pairs
from altsieve.transforms.crawl.extract import ExtractCrawlPairs
from altsieve.transforms.crawl.listing import CrawlFile
from altsieve.transforms.crawl.pairs import ExtractOptions
from altsieve.transforms.progress import ProgressWriter

STATS_NAME = "extract_stats.json"
EXTRACTED_DIR = "_extracted"
VOLUME_COUNTERS = (pairs.FILES, pairs.FILES_FAILED, pairs.RECORDS, pairs.RECORDS_NOT_HTML, pairs.HTML_PAGES,
                   pairs.IMG_TAGS, pairs.PAIRS_FOUND, pairs.PAIRS)


def build_extract(pipeline: beam.Pipeline, files: list[CrawlFile], output: str, options: ExtractOptions) -> None:
    _ = pipeline | "ExtractCrawlPairs" >> ExtractCrawlPairs(files, output, options, ProgressWriter(output, "extract"))


def extract_stats(metrics: dict[str, Any], files: list[CrawlFile], options: ExtractOptions, elapsed_s: float) -> dict:
    volumes = {name.removeprefix("crawl_"): int(metrics.get(name, 0)) for name in VOLUME_COUNTERS}
    skipped = {code: int(metrics.get(code, 0)) for code in reasons.CRAWL_SKIP_REASONS if metrics.get(code)}
    return {
        "inputs": [{"index": f.index, "path": f.path, "kind": f.kind} for f in files],
        "options": {"surrounding_text": options.surrounding_text, "keep_svg": options.keep_svg,
                    "crawl_id": options.crawl_id, "max_record_bytes": options.max_record_bytes},
        **volumes,
        "skipped": skipped,
        "elapsed_s": round(elapsed_s, 3),
    }


def _remove_previous(output: str) -> None:
    """An earlier extraction's files in this folder would mix with the new ones: remove them (ours only)."""
    fs, resolved = fsutil.filesystem(output)
    for path in fs.glob(f"{resolved}/[0-9][0-9][0-9][0-9][0-9]_[0-9][0-9][0-9][0-9][0-9].parquet"):
        fs.rm(path)
    if fs.exists(f"{resolved}/{STATS_NAME}"):
        fs.rm(f"{resolved}/{STATS_NAME}")


def run_extract(files: list[CrawlFile], output: str, options: ExtractOptions, beam_args: list[str]) -> dict:
    """Extract ``files`` into ``output``; returns (and writes) the stats."""
    fsutil.makedirs(output)
    _remove_previous(output)
    started = time.time()
    # The bar counts crawl files (their pair count is unknown until read); the pairs found so far beside it.
    with Progress("extract", output, "extract", total=len(files), unit="files", field="done",
                  postfix=lambda counts: f"{counts.get('pairs', 0)} pairs found"):
        metrics = run_pipeline(lambda p: build_extract(p, files, output, options), beam_args)
    stats = extract_stats(metrics, files, options, time.time() - started)
    # Written last: its presence says the Parquet files beside it are complete.
    fsutil.write_json(fsutil.join(output, STATS_NAME), stats)
    return stats


def extracted_glob(output: str) -> str:
    return fsutil.join(output, EXTRACTED_DIR, "[0-9]*.parquet")  # not a killed write's .tmp-* leftover


def extract_for_ingest(files: list[CrawlFile], output: str, options: ExtractOptions, beam_args: list[str]) -> str:
    """Extract once into ``OUTPUT/_extracted/`` and return the glob the ingest pass reads.

    A rerun with the same crawl files reuses what is there (the ingest keys depend on those files
    staying the same); other crawl files into the same output are refused.
    """
    folder = fsutil.join(output, EXTRACTED_DIR)
    stats_path = fsutil.join(folder, STATS_NAME)
    if fsutil.exists(stats_path):
        previous = fsutil.read_json(stats_path)
        if [item["path"] for item in previous.get("inputs", [])] != [f.path for f in files]:
            raise ConfigError(
                f"output {output} holds pairs extracted from other crawl files ({stats_path}): "
                "use a new --output folder, or the same inputs and --limit"
            )
        stats = previous
    else:
        stats = run_extract(files, folder, options, beam_args)
    if not stats.get("pairs"):
        raise ConfigError(f"the crawl files gave no image/alt pair (see {stats_path})")
    return extracted_glob(output)


def config_for_extracted(config: Config, options: ExtractOptions) -> Config:
    """The ingest config for extracted files: their column names, and the page columns carried to the output."""
    carried = list(config.input.save_additional_columns)
    carried += [c for c in options.columns() if c not in ("url", "caption") and c not in carried]
    updated = config.input.model_copy(update={
        "url_col": "url", "caption_col": "caption", "input_format": "auto", "save_additional_columns": carried,
    })
    return config.model_copy(update={"input": updated})


def summary_lines(stats: dict) -> list[str]:
    lines = [
        f"{stats['files']} crawl files ({stats['files_failed']} unreadable), {stats['records']} records, "
        f"{stats['html_pages']} HTML pages, {stats['img_tags']} img tags",
        f"{stats['pairs_found']} pairs found, {stats['pairs']} after URL + alt dedup",
    ]
    for code, count in sorted(stats["skipped"].items(), key=lambda item: -item[1]):
        lines.append(f"  skipped {code:<24} {count}")
    return lines


@dataclass(frozen=True)
class CrawlInputs:
    """How ``run`` / ``ingest`` read crawl inputs: the ``extract`` flags."""

    limit: int | None = None
    cc_base_url: str = listing.DEFAULT_CC_BASE_URL
    options: ExtractOptions = field(default_factory=ExtractOptions)


def prepare_crawl_inputs(
    config: Config, inputs: list[str], output: str, beam_args: list[str], settings: CrawlInputs | None = None
) -> tuple[list[str], Config]:
    """Crawl inputs -> (the extracted Parquet glob, the config to ingest it with); URL lists pass unchanged."""
    crawl_specs = [spec for spec in inputs if listing.is_crawl_spec(spec)]
    if not crawl_specs:
        return inputs, config
    if len(crawl_specs) != len(inputs):
        others = [spec for spec in inputs if spec not in crawl_specs]
        raise listing.CrawlInputError(
            f"inputs mix crawl files ({crawl_specs[0]}) and URL lists ({others[0]}): run them separately, "
            "or `altsieve extract` the crawl files first and give the Parquet files it writes"
        )
    settings = settings or CrawlInputs()
    files = listing.list_crawl_files(crawl_specs, settings.cc_base_url, settings.limit)
    glob = extract_for_ingest(files, output, settings.options, beam_args)
    return [glob], config_for_extracted(config, settings.options)
