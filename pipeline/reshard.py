"""Pass 3, reshard: candidates + decisions -> final shards of exactly ``samples_per_shard`` pairs.

Kept pairs are numbered in key order across the whole corpus from per-partition counts (one
integer per partition crosses the shuffle, not the keys); each final shard is a list of segments
(partition, first, last kept index) and is written by reading those rows and images straight from
the candidate files, so image bytes are read once and never shuffled.
"""

from __future__ import annotations

import hashlib
import time
from itertools import accumulate
from typing import Any

import apache_beam as beam
import pyarrow.parquet as pq

from altsieve.core import fsutil, layout
from altsieve.core.config import Config, ConfigError, LanguageConfig, bucket_of
from altsieve.pipeline.beam_run import run_pipeline
from altsieve.transforms.shards import iter_tar_images, read_parquet_rows, rows_to_records, write_shard

Segment = tuple[str, int, int]  # partition_id, first and one-past-last index among its kept pairs
# A final shard: (language bucket, index). The bucket is "" unless output.split_by_language, and each bucket
# numbers its own shards from 00000 in its own folder (layout.final_prefix).
ShardId = tuple[str, int]


def kept_keys(output: str, partition_id: str) -> list[str]:
    import fsspec

    with fsspec.open(layout.decision_path(output, partition_id), "rb") as handle:
        table = pq.read_table(handle, columns=["key", "reason"])
    return sorted(k for k, r in zip(table["key"].to_pylist(), table["reason"].to_pylist(), strict=True) if r is None)


def kept_keys_by_bucket(output: str, partition_id: str, language: LanguageConfig | None) -> dict[str, list[str]]:
    """The kept keys of a partition per language bucket ("" when not split), each list sorted."""
    keys = kept_keys(output, partition_id)
    if language is None or not keys:
        return {"": keys} if keys else {}
    wanted = set(keys)
    columns = ["key", "language", "language_score"]
    rows = read_parquet_rows(layout.candidate_prefix(output, partition_id) + ".parquet", columns)
    buckets: dict[str, list[str]] = {}
    for row in sorted((r for r in rows if r["key"] in wanted), key=lambda r: r["key"]):
        buckets.setdefault(bucket_of(row["language"], row["language_score"], language), []).append(row["key"])
    return buckets


def plan_buckets(counts: dict[tuple[str, str], int], samples_per_shard: int) -> dict[ShardId, list[Segment]]:
    """``plan_segments`` for each bucket apart, from the kept count of each (bucket, partition)."""
    per_bucket: dict[str, dict[str, int]] = {}
    for (bucket, pid), count in counts.items():
        per_bucket.setdefault(bucket, {})[pid] = count
    return {
        (bucket, shard): segments
        for bucket, bucket_counts in sorted(per_bucket.items())
        for shard, segments in plan_segments(bucket_counts, samples_per_shard).items()
    }


def plan_segments(counts: dict[str, int], samples_per_shard: int) -> dict[int, list[Segment]]:
    """Final shard index -> its segments, from the kept count of each partition (in partition order)."""
    order = sorted(counts)
    starts = [0, *accumulate(counts[pid] for pid in order)]
    shards: dict[int, list[Segment]] = {}
    for pid, start in zip(order, starts, strict=False):
        position, end = start, start + counts[pid]
        while position < end:
            shard = position // samples_per_shard
            stop = min(end, (shard + 1) * samples_per_shard)
            shards.setdefault(shard, []).append((pid, position - start, stop - start))
            position = stop
    return shards


class _WriteFinalShard(beam.DoFn):
    def __init__(self, output: str, extra_columns: list[str], encode_format: str,
                 language: LanguageConfig | None = None) -> None:
        self._output, self._extra, self._format = output, extra_columns, encode_format
        self._language = language  # set when the output is split by language bucket

    def process(self, element: tuple[ShardId, list[Segment]]):
        (bucket, shard), segments = element
        segments = sorted(segments)
        prefix = layout.final_prefix(self._output, shard, bucket or None)
        wanted_by_partition = {
            pid: kept_keys_by_bucket(self._output, pid, self._language).get(bucket, [])[first:last]
            for pid, first, last in segments
        }
        # The shard's identity is the keys it holds: a retry run that turned a failure into a kept
        # pair changes them even when the segment bounds stay the same.
        identity = hashlib.sha256("\n".join(k for keys in wanted_by_partition.values() for k in keys).encode())
        plan = {"segments": [list(s) for s in segments], "keys_sha256": identity.hexdigest()}
        stats_path = f"{prefix}_stats.json"
        if fsutil.exists(stats_path):
            existing = fsutil.read_json(stats_path)
            if existing.get("plan") == plan:
                yield shard, existing  # written by an earlier run from the same plan
                return
        started = time.time()
        records: list[dict[str, Any]] = []
        for partition_id, wanted_keys in wanted_by_partition.items():
            wanted = set(wanted_keys)
            candidate = layout.candidate_prefix(self._output, partition_id)
            rows = [r for r in read_parquet_rows(f"{candidate}.parquet") if r["key"] in wanted]
            images = dict(iter_tar_images(f"{candidate}.tar", wanted))
            for record in rows_to_records(rows, self._extra):
                record["image"] = images.get(record["key"])
                if record["image"] is None:
                    raise RuntimeError(f"candidate shard {candidate}.tar lacks the image of kept pair {record['key']}")
                records.append(record)
        extra = {"shard": shard, "plan": plan, **({"bucket": bucket} if bucket else {})}
        stats = write_shard(prefix, records, self._extra, self._format, started, extra)
        yield shard, stats


def build_reshard(pipeline: beam.Pipeline, config: Config, output: str, partitions: list[str]) -> None:
    samples = config.output.samples_per_shard
    language = config.language if config.output.split_by_language else None
    counts = (
        pipeline
        | "Partitions" >> beam.Create(partitions)
        | "CountKept" >> beam.FlatMap(
            lambda pid: [((bucket, pid), len(keys)) for bucket, keys in
                         kept_keys_by_bucket(output, pid, language).items()]
        )
        | "AllCounts" >> beam.combiners.ToDict()
    )
    _ = (
        counts
        | "RecordPlan" >> beam.Map(lambda c: _record_plan(output, c, samples))
        | "PlanShards" >> beam.FlatMap(lambda c: sorted(plan_buckets(c, samples).items()))
        | "Spread" >> beam.Reshuffle()
        | "WriteShards" >> beam.ParDo(
            _WriteFinalShard(output, config.input.save_additional_columns, config.image.encode_format, language)
        )
    )


def _record_plan(output: str, counts: dict[tuple[str, str], int], samples_per_shard: int) -> dict[tuple[str, str], int]:
    plan = plan_buckets(counts, samples_per_shard)
    per_bucket: dict[str, int] = {}
    for bucket, _ in plan:
        per_bucket[bucket] = per_bucket.get(bucket, 0) + 1
    fsutil.write_json(layout.meta(output, "reshard_plan.json"),
                      {"shards": len(plan), "kept": sum(counts.values()), "buckets": per_bucket})
    return counts


def run_reshard(config: Config, output: str, beam_args: list[str]) -> dict:
    done_path = layout.meta(output, "select_done.json")
    if not fsutil.exists(done_path):
        raise ConfigError(f"{output} has no finished select pass ({done_path} is missing): run `altsieve select` first")
    partitions = list(fsutil.read_json(done_path)["partitions"])
    metrics = run_pipeline(lambda p: build_reshard(p, config, output, partitions), beam_args)
    _remove_stale_shards(output, fsutil.read_json(layout.meta(output, "reshard_plan.json"))["buckets"])
    return metrics


def final_shards(output: str, bucket: str | None = None) -> list[int]:
    stats = fsutil.glob(layout.final_prefix(output, 0, bucket)[: -len("00000")] + "[0-9]" * 5 + "_stats.json")
    return sorted(int(path.rsplit("/", 1)[-1][:5]) for path in stats)


def _remove_stale_shards(output: str, expected: dict[str, int]) -> None:
    """Shards left by an earlier run that planned more of them (in a bucket, or buckets this run has not)."""
    for bucket in ["", *layout.final_buckets(output)]:
        for shard in final_shards(output, bucket or None):
            if shard < expected.get(bucket, 0):
                continue
            prefix = layout.final_prefix(output, shard, bucket or None)
            for suffix in (".tar", ".parquet", "_stats.json"):
                fs, path = fsutil.filesystem(prefix + suffix)
                if fs.exists(path):
                    fs.rm(path)
