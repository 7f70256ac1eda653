"""Pass 1, ingest: inputs -> per-partition candidate shards (every row, failures included) + markers."""

from __future__ import annotations

from typing import Any

import apache_beam as beam

from altsieve.core import fsutil, layout, lease, reasons
from altsieve.core.config import Config, ConfigError, config_to_yaml
from altsieve.pipeline.beam_run import Progress, local_workers, run_pipeline
from altsieve.pipeline.extract import CrawlInputs, prepare_crawl_inputs
from altsieve.transforms.clip.model import model_identity
from altsieve.transforms.clip.stage import ClipScore
from altsieve.transforms.clip.store import record_model_identity
from altsieve.transforms.decode import Decode
from altsieve.transforms.download import Download
from altsieve.transforms.heads import ClipHeads
from altsieve.transforms.image_content import ImageContent
from altsieve.transforms.language import LanguageTag
from altsieve.transforms.progress import CountRecords
from altsieve.transforms.read_inputs import InputFile, ReadPartitions, estimate_rows, list_input_files, sniff_input
from altsieve.transforms.text_rules import CaptionRules, TextRules
from altsieve.transforms.write_shards import WriteShards


def build_ingest(
    pipeline: beam.Pipeline, config: Config, files: list[InputFile], output: str, retry_failed: bool = False,
    clip_identity: dict[str, Any] | None = None,
) -> None:
    source = config.input
    if config.clip.enabled and clip_identity is None:
        clip_identity = model_identity(config.clip)
    clip_sha256 = clip_identity["weights_sha256"] if clip_identity else None  # what every worker must load
    records = (
        pipeline
        | "ReadPartitions" >> ReadPartitions(
            files, output, source.url_col, source.caption_col, source.save_additional_columns,
            rows_per_partition(config), retry_failed, settings=source,
            max_field_chars=config.rules.caption.max_chars,
        )
        # Text first: a caption needs no image, and every pair a text rule drops costs no request.
        | "CaptionRules" >> CaptionRules(config)
        | "LanguageTag" >> LanguageTag(config.language)
        | "TextRules" >> TextRules(config)
        | "Download" >> Download(config.download)
        | "Decode" >> Decode(config)
        # The picture itself (crop-dedup features, text area, faces): after the cheap image rules, before any model.
        | "ImageContent" >> ImageContent(config)
        # Last: the model sees only the pairs every cheaper rule kept.
        | "ClipScore" >> ClipScore(config, clip_sha256)
        # Heads on the image embeddings ClipScore left on each record (aesthetic, NSFW).
        | "ClipHeads" >> ClipHeads(config)
    )
    embeddings = None
    if clip_identity is not None and config.clip.save_embeddings:
        embeddings = (int(clip_identity["embed_dim"]), str(clip_identity["weights_sha256"]))
    # The launcher's progress bar counts the pairs that reach the writer, per partition (transforms/progress.py).
    records = records | "Progress" >> CountRecords(output, "ingest")
    _ = records | "WriteShards" >> WriteShards(
        output, source.save_additional_columns, config.image.encode_format, embeddings,
        (config.audit.thumbnails_per_reason, config.audit.thumbnail_size), config.dedup.crop.enabled,
    )


# Sections that decide what a partition's shard holds. Download settings (timeouts, retries,
# concurrency) may change between a run and its resumption: they change how, not what.
CONTENT_SECTIONS = {"input", "image", "rules", "language", "dedup", "corpus", "clip", "output",
                    "safety", "content", "heads", "metaclip", "image_clusters"}


# Automatic partition size: this many partitions per local worker at least, so that the workers finish
# together; partitions of at least MIN_AUTO_ROWS (each partition is four files) and at most MAX_AUTO_ROWS.
PARTITIONS_PER_WORKER = 4
# The least work worth a local worker process: about as long to fetch and decode as the process takes to start.
ROWS_PER_WORKER = 250
MIN_AUTO_ROWS = 50
MAX_AUTO_ROWS = 10_000


def with_partition_size(config: Config, output: str, total_rows: int, workers: int | None) -> Config:
    """``config`` with ``input.rows_per_partition`` decided: the user's, the resumed run's, or sized from the input.

    Partitions are planned from it, so a resumed run must keep the size the first run chose.
    """
    if config.input.rows_per_partition is not None:
        return config
    saved = (layout.saved_config(output) or {}).get("input", {}).get("rows_per_partition")
    if saved is not None:
        rows = int(saved)
    elif workers is None:  # another runner: its workers are not known here
        rows = MAX_AUTO_ROWS
    else:
        rows = -(-total_rows // (workers * PARTITIONS_PER_WORKER))
        rows = max(MIN_AUTO_ROWS, min(MAX_AUTO_ROWS, rows))
    resolved = config.model_copy(deep=True)
    resolved.input.rows_per_partition = rows
    return resolved


def check_config_matches(output: str, config: Config) -> None:
    """A resumed run must use the content settings that made the partitions already written."""
    saved_path = layout.meta(output, "config.yaml")
    saved = layout.saved_config(output)
    if saved is not None:
        current = config.model_dump(mode="json")
        changed = sorted(
            f"{section}.{field}"
            for section in CONTENT_SECTIONS
            for field in set(saved.get(section, {})) | set(current.get(section, {}))
            if saved.get(section, {}).get(field) != current.get(section, {}).get(field)
        )
        if changed:
            raise ConfigError(
                f"output {output} was started with other settings ({saved_path}): {', '.join(changed)} differ. "
                "Resuming would mix two configs in one dataset: use a new --output folder, or the same settings."
            )
    fsutil.write_text(saved_path, config_to_yaml(config))


@lease.holding("altsieve ingest")  # one run per output folder (a second is refused, naming this one)
def run_ingest(
    config: Config, inputs: list[str], output: str, beam_args: list[str], retry_failed: bool = False,
    crawl_inputs: CrawlInputs | None = None,
) -> dict:
    # WARC / WAT / paths listings: extracted to Parquet URL lists first (once), then ingested as usual.
    inputs, config = prepare_crawl_inputs(config, inputs, output, beam_args, crawl_inputs)
    files = list_input_files(inputs, config.input.input_format)
    for source in files:
        sniff_input(source, config.input.url_col, config.input.caption_col, config.input)
    check_curation_models(config)
    # Load the CLIP model here once, before anything is written: a bad path or no network is one clear
    # error, and the output folder is left as it was (a corrected rerun is not refused as "other settings").
    clip_identity = model_identity(config.clip) if config.clip.enabled else None
    total_rows = _count_rows(files)  # an estimate for text inputs
    workers = local_workers(beam_args, total_rows, ROWS_PER_WORKER)
    config = with_partition_size(config, output, total_rows, workers)
    check_config_matches(output, config)
    if clip_identity is not None:
        record_model_identity(output, clip_identity)
    fsutil.write_json(layout.meta(output, "inputs.json"), [{"index": f.index, "path": f.path} for f in files])
    fsutil.makedirs(fsutil.join(output, layout.CANDIDATES_DIR))
    layout.remove_stale_temporaries(output)  # a killed run's unfinished writes, anywhere in the tree
    with Progress("ingest", output, "ingest", total=_pairs_to_process(total_rows, config, output, retry_failed)):
        metrics = run_pipeline(lambda p: build_ingest(p, config, files, output, retry_failed, clip_identity), beam_args,
                               total_rows, ROWS_PER_WORKER)
    fsutil.write_json(layout.meta(output, "ingest_done.json"), {"partitions": layout.done_partitions(output)})
    return metrics


def rows_per_partition(config: Config) -> int:
    rows = config.input.rows_per_partition
    if rows is None:
        raise ValueError("input.rows_per_partition is decided by with_partition_size() before a run")
    return rows


def check_curation_models(config: Config) -> None:
    """Safety lists, the text detector, the face cascade, the heads' weights and what the select-pass curation
    needs, each loaded once here: a bad file is one error before any work, not a failure in every worker."""
    from altsieve.filters.safety import check_lists
    from altsieve.pipeline.select import check_curation_settings

    check_lists(config)
    check_curation_settings(config)
    if config.content.text.enabled:
        from altsieve.transforms.image_content import TextDetector

        TextDetector(config.content.text)
    if config.content.faces.enabled:
        from altsieve.transforms.image_content import FaceDetector

        FaceDetector(config.content.faces)
    if config.heads.aesthetic.enabled or config.heads.nsfw.enabled:
        from altsieve.transforms.heads import heads_of

        heads_of(config)


def _pairs_to_process(rows: int, config: Config, output: str, retry_failed: bool) -> int | None:
    """What this run will push through the pipeline, for the progress bar's total and ETA: the input rows
    less the partitions a previous run finished (whole partitions, so exact but for each file's last one),
    plus, with --retry-failed, the transient failures the previous run's stats.json counted."""
    done = len(layout.done_partitions(output))
    remaining = max(rows - done * rows_per_partition(config), 0)
    if retry_failed:
        stats_path = fsutil.join(output, "stats.json")
        if not fsutil.exists(stats_path):
            return None
        counted = fsutil.read_json(stats_path).get("reasons", {})
        remaining += sum(count for reason, count in counted.items() if reason in reasons.TRANSIENT)
    return remaining


def _count_rows(files: list[InputFile]) -> int:
    """Exact for plain Parquet (row counts are in the footer); for text inputs an estimate from each file's size
    and the lines in its first MiB: never a read of the whole file (for gs:// that would be a second download)."""
    return sum(estimate_rows(source)[0] for source in files)
