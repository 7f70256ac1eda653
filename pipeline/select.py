"""Pass 2, select: metadata only. Corpus-wide rules give one decision per passing pair.

Reads the candidate Parquet files (never the tars), runs the corpus-wide rules as Beam
transforms keyed by hash, and writes ``_decisions/{partition}.parquet``: ``key``, ``reason``
(``None`` = kept) and ``duplicate_of`` for every pair that passed ingest.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq

from altsieve.dedup.exact import ExactDuplicateFilter
from altsieve.pipeline import layout
from altsieve.pipeline.beam_run import run_pipeline
from altsieve.pipeline.config import Config, ConfigError
from altsieve.transforms import fsutil
from altsieve.transforms.shards import read_parquet_rows

DECISION_SCHEMA = pa.schema([("key", pa.string()), ("reason", pa.string()), ("duplicate_of", pa.string())])
SELECT_COLUMNS = ["key", "partition_id", "reason", "sha256", "url", "caption"]


def _passing_rows(output: str, partition_id: str) -> list[dict[str, Any]]:
    prefix = layout.candidate_prefix(output, partition_id)
    return [row for row in read_parquet_rows(f"{prefix}.parquet", SELECT_COLUMNS) if row["reason"] is None]


def _write_decisions(output: str, element: tuple[str, Any]) -> str:
    partition_id, grouped = element
    decisions = sorted(item for item in grouped if item is not None)
    table = pa.table(
        {
            "key": [d[0] for d in decisions],
            "reason": [d[1] for d in decisions],
            "duplicate_of": [d[2] for d in decisions],
        },
        schema=DECISION_SCHEMA,
    )
    fsutil.write_atomic(layout.decision_path(output, partition_id), lambda handle: pq.write_table(table, handle))
    return partition_id


def build_select(pipeline: beam.Pipeline, config: Config, output: str, partitions: list[str]) -> None:
    partition_ids = pipeline | "Partitions" >> beam.Create(partitions) | "Spread" >> beam.Reshuffle()
    rows = partition_ids | "ReadMetadata" >> beam.FlatMap(lambda pid: _passing_rows(output, pid))
    if config.dedup.exact_sha256:
        decisions = rows | "NearDuplicateFilter" >> ExactDuplicateFilter()
    else:
        decisions = rows | "KeepAll" >> beam.Map(lambda row: (row["partition_id"], (row["key"], None, None)))
    # Every partition gets a decision file, even one with no passing pair.
    empty = partition_ids | "EveryPartition" >> beam.Map(lambda pid: (pid, None))
    _ = (
        (decisions, empty)
        | "Merge" >> beam.Flatten()
        | "GroupByPartition" >> beam.GroupByKey()
        | "WriteDecisions" >> beam.Map(lambda element: _write_decisions(output, element))
    )


def ingested_partitions(output: str) -> list[str]:
    done_path = layout.meta(output, "ingest_done.json")
    if not fsutil.exists(done_path):
        raise ConfigError(f"{output} has no finished ingest pass ({done_path} is missing): run `altsieve ingest` first")
    return list(fsutil.read_json(done_path)["partitions"])


def run_select(config: Config, output: str, beam_args: list[str]) -> dict:
    partitions = ingested_partitions(output)
    metrics = run_pipeline(lambda p: build_select(p, config, output, partitions), beam_args)
    fsutil.write_json(layout.meta(output, "select_done.json"), {"partitions": partitions})
    return metrics
