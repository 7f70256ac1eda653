"""Pass 2, select: metadata only. Corpus-wide rules give one decision per passing pair.

Reads the candidate Parquet files (never the tars), runs the corpus-wide rules (``CorpusRule``,
each a Beam transform keyed by hash, each seeing what the earlier ones kept), and writes
``_decisions/{partition}.parquet``: ``key``, ``reason`` (``None`` = kept) and ``duplicate_of`` for
every pair that passed ingest.
"""

from __future__ import annotations

import functools
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq

from altsieve.core import fsutil, layout, lease
from altsieve.core.config import Config, ConfigError
from altsieve.dedup.rules import dedup_rules
from altsieve.filters.clip import ClipTopFraction
from altsieve.filters.corpus import CorpusRule, Intersection
from altsieve.filters.corpus_text import corpus_text_rules
from altsieve.filters.metaclip import MetaClipBalance
from altsieve.pipeline.beam_run import Progress, run_pipeline
from altsieve.transforms.progress import ProgressWriter

DECISION_SCHEMA = pa.schema([("key", pa.string()), ("reason", pa.string()), ("duplicate_of", pa.string())])
# Always read: what the select pass itself needs to route rows and decisions.
BASE_COLUMNS = ("key", "partition_id", "reason")


def corpus_rules(config: Config, output: str | None = None, rows: int | None = None) -> list[tuple[str, CorpusRule]]:
    """The corpus-wide rules a config switches on, in the order they see the corpus.

    Each rule sees only what the rules before it kept. New rules go here, in funnel order.
    ``output`` is the run's folder, for rules that read the CLIP embeddings or write a report there; ``rows``, at
    most how many pairs the pass reads (None: not known).
    """
    # ALIGN's text-frequency rules first: they count the corpus before deduplication thins it.
    rules: list[tuple[str, CorpusRule]] = corpus_text_rules(config.corpus)
    # Beam labels them NearDuplicateFilter/<method>: the stage name the design uses for all dedup methods.
    rules += [(f"NearDuplicateFilter/{name}", rule) for name, rule in dedup_rules(config, output, rows)]
    # MetaCLIP's balancing counts the deduplicated pool (a copy would count twice for its entries).
    check_curation_settings(config)
    if config.metaclip.enabled and config.metaclip.entries_file is not None:
        metaclip = config.metaclip
        record = functools.partial(_record_json, output, "metaclip.json", "entries_over_t") if output else None
        rules.append(("MetaClipBalance", MetaClipBalance(metaclip.entries_file, metaclip.t, metaclip.lowercase,
                                                         metaclip.seed, record)))
    # DataComp's top fraction by CLIP score is of the deduplicated pool: after the dedup rules.
    clip_rule: CorpusRule | None = None
    if config.clip.enabled and config.clip.top_fraction is not None:
        record = functools.partial(record_clip_cut, output, config.clip.top_fraction) if output else None
        clip_rule = ClipTopFraction(config.clip.top_fraction, record)
    image_rule = image_cluster_rule(config, output)
    if image_rule is not None and clip_rule is not None:
        # DataComp-1B: image-based intersected with the CLIP top fraction, both of the same pool.
        rules.append(("ImageBasedAndClipTopFraction", Intersection([("ImageClusters", image_rule),
                                                                    ("ClipTopFraction", clip_rule)])))
    elif image_rule is not None:
        rules.append(("ImageClusters", image_rule))
    elif clip_rule is not None:
        rules.append(("ClipTopFraction", clip_rule))
    return rules


def check_curation_settings(config: Config) -> None:
    """What the MetaCLIP and image-based rules need from the user, checked before any pass (run_ingest calls it)."""
    if config.metaclip.enabled and config.metaclip.entries_file is None:
        raise ConfigError("metaclip.enabled needs metaclip.entries_file, your entry list (one a line): "
                          "--set metaclip.entries_file=entries.txt")
    if config.image_clusters.enabled and not config.image_clusters.reference_embeddings:
        raise ConfigError("image_clusters.enabled needs image_clusters.reference_embeddings: embeddings of your "
                          "reference images (DataComp: ImageNet-1k's training set) by the run's CLIP model, "
                          "--set 'image_clusters.reference_embeddings=[imagenet.npy]'")


def image_cluster_rule(config: Config, output: str | None) -> CorpusRule | None:
    """DataComp's image-based filter (image_clusters), its reference embeddings read and checked here."""
    clusters = config.image_clusters
    if not clusters.enabled or output is None:
        return None
    from altsieve.dedup.image_clusters import ImageClusterFilter, load_references
    from altsieve.dedup.rules import _require, _require_embeddings

    _require("faiss", "image_clusters.enabled")
    _require_embeddings(output, "image_clusters.enabled")
    try:
        references = load_references(clusters.reference_embeddings)
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"image_clusters.reference_embeddings: {err}") from None

    def record(kept: int, total: int) -> None:
        fsutil.write_json(layout.meta(output, "image_clusters.json"),
                          {"clusters": total, "kept_clusters": kept, "reference_embeddings": len(references)})

    return ImageClusterFilter(output, references, clusters.n_clusters, clusters.sample_size, clusters.seed, record)


def _record_json(output: str, name: str, field: str, value: Any) -> None:
    fsutil.write_json(layout.meta(output, name), {field: value})


def record_clip_cut(output: str, fraction: float, score: float | None, scored: int) -> None:
    """The select pass's CLIP cut, for the report: ``_altsieve/clip_quantile.json``."""
    fsutil.write_json(layout.meta(output, "clip_quantile.json"),
                      {"top_fraction": fraction, "min_kept_score": score, "scored_pairs": scored})


def _passing_rows(output: str, partition_id: str, columns: list[str]) -> list[dict[str, Any]]:
    """The metadata of a partition's pairs that passed ingest (only the columns the rules need)."""
    import fsspec

    prefix = layout.candidate_prefix(output, partition_id)
    with fsspec.open(f"{prefix}.parquet", "rb") as handle:
        parquet = pq.ParquetFile(handle)
        present = [c for c in columns if c in parquet.schema_arrow.names]
        rows = parquet.read(columns=present).to_pylist()
    return [row for row in rows if row["reason"] is None]


def _write_decisions(output: str, element: tuple[str, Any], writer: ProgressWriter | None = None) -> str:
    """A partition's decisions: its drops, and every other pair that passed ingest as kept. Those are read again
    (the key column of a file the pass has just read) rather than joined with the drops after the last rule, a
    CoGroupByKey of every row. Select of the web benchmark's 4,565 pairs, 4 times in one process, twice each,
    interleaved: 1.92-3.50 s with that join, 1.66-1.99 s without."""
    partition_id, grouped = element
    drops = [item for item in grouped if item is not None]
    dropped = {key for key, _, _ in drops}
    kept = [(row["key"], None, None) for row in _passing_rows(output, partition_id, ["key", "reason"])
            if row["key"] not in dropped]
    decisions = sorted(drops + kept)
    table = pa.table(
        {
            "key": [d[0] for d in decisions],
            "reason": [d[1] for d in decisions],
            "duplicate_of": [d[2] for d in decisions],
        },
        schema=DECISION_SCHEMA,
    )
    fsutil.write_atomic(layout.decision_path(output, partition_id), lambda handle: pq.write_table(table, handle))
    if writer is not None:
        writer.update(partition_id, len(decisions), done=True, read=len(decisions))
    return partition_id


def _read_passing(output: str, partition_id: str, columns: list[str], writer: ProgressWriter) -> list[dict[str, Any]]:
    rows = _passing_rows(output, partition_id, columns)
    writer.update(partition_id, 0, done=False, read=len(rows))
    return rows


def _survivors(rows: beam.PCollection, drops: beam.PCollection, label: str) -> beam.PCollection:
    """``rows`` less the keys in ``drops``: a join on key, so no worker holds the whole corpus."""

    def keep_undropped(element: tuple[str, dict[str, list[Any]]]):
        _, joined = element
        if not joined["dropped"]:
            yield from joined["row"]

    return (
        {
            "row": rows | f"{label}KeyRows" >> beam.Map(lambda row: (row["key"], row)),
            "dropped": drops | f"{label}KeyDrops" >> beam.Map(lambda drop: (drop[1][0], True)),
        }
        | f"{label}Join" >> beam.CoGroupByKey()
        | f"{label}Survivors" >> beam.FlatMap(keep_undropped)
    )


def chain_rules(rows: beam.PCollection, rules: list[tuple[str, CorpusRule]],
                kept: bool = True) -> tuple[list[beam.PCollection], beam.PCollection | None]:
    """Each rule on the survivors of the ones before it: every rule's drops, and the rows no rule dropped (None
    when ``kept`` is False and the last rule does not give them: no join after it)."""
    all_drops = []
    survivors: beam.PCollection | None = rows
    for index, (name, rule) in enumerate(rules):
        drops, survivors = rule.drops_and_survivors(rows, name)
        all_drops.append(drops)
        last = index == len(rules) - 1
        if survivors is None and (kept or not last):  # the rows less the drops, by a join on key
            survivors = _survivors(rows, drops, "Final" if last else name)
        rows = survivors
    return all_drops, survivors


def build_select(pipeline: beam.Pipeline, config: Config, output: str, partitions: list[str],
                 rows: int | None = None) -> beam.PCollection:
    """The select pass on ``pipeline``; returns the ids of the partitions whose decision files it has written."""
    rules = corpus_rules(config, output, rows)
    columns = list(dict.fromkeys([*BASE_COLUMNS, *(c for _, rule in rules for c in rule.columns)]))
    # Spread's shuffle spreads the partitions over the workers: Create's own (a stage of its own) would do it twice.
    partition_ids = pipeline | "Partitions" >> beam.Create(partitions, reshuffle=False) | "Spread" >> beam.Reshuffle()
    writer = ProgressWriter(output, "select")  # the launcher's bar: pairs read, then pairs decided
    rows = partition_ids | "ReadMetadata" >> beam.FlatMap(lambda pid: _read_passing(output, pid, columns, writer))
    all_drops, _ = chain_rules(rows, rules, kept=False)  # the kept pairs are the rest of each partition
    decisions = [
        *all_drops,
        # Every partition gets a decision file, even one with no passing pair or no drop.
        partition_ids | "EveryPartition" >> beam.Map(lambda pid: (pid, None)),
    ]
    return (
        decisions
        | "Merge" >> beam.Flatten()
        | "GroupByPartition" >> beam.GroupByKey()
        | "WriteDecisions" >> beam.Map(lambda element: _write_decisions(output, element, writer))
    )


def ingested_partitions(output: str) -> list[str]:
    done_path = layout.meta(output, "ingest_done.json")
    if not fsutil.exists(done_path):
        raise ConfigError(f"{output} has no finished ingest pass ({done_path} is missing): run `altsieve ingest` first")
    return list(fsutil.read_json(done_path)["partitions"])


# The least work worth a local worker process (rows of metadata): below it one in-process worker is faster.
ROWS_PER_WORKER = 50_000


def pass_rows(config: Config, partitions: list[str]) -> int:
    """At most how many pairs a pass after ingest reads: partitions are full but the last."""
    return len(partitions) * (config.input.rows_per_partition or 10_000)


def select_progress(output: str, partitions: list[str]) -> Progress:
    """The select pass's bar: pairs read, then pairs decided."""

    def total(counts: dict[str, int]) -> int | None:  # known once every partition's metadata is read
        return counts.get("read", 0) if counts["items"] >= len(partitions) else None

    return Progress("select", output, "select", total=total,
                    postfix=lambda counts: f"read {counts.get('read', 0)}, decided {counts.get('pairs', 0)}")


def record_select_done(output: str, partitions: list[str]) -> None:
    """Every partition's decision file is written: what ``altsieve reshard`` starts from."""
    fsutil.write_json(layout.meta(output, "select_done.json"), {"partitions": partitions})


@lease.holding("altsieve select")
def run_select(config: Config, output: str, beam_args: list[str]) -> dict:
    partitions = ingested_partitions(output)
    layout.remove_stale_temporaries(output)  # a killed select's unfinished decision files
    rows = pass_rows(config, partitions)
    with select_progress(output, partitions):
        metrics = run_pipeline(lambda p: build_select(p, config, output, partitions, rows), beam_args, rows,
                               ROWS_PER_WORKER)
    record_select_done(output, partitions)
    return metrics
