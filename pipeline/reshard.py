"""Pass 3, reshard: candidates + decisions -> final shards of exactly ``samples_per_shard`` pairs.

Kept pairs are numbered in key order across the whole corpus from per-partition counts (one
integer per partition crosses the shuffle, not the keys); each final shard is a list of segments
(partition, first, last kept index) and is written by reading those rows and images straight from
the candidate files, so image bytes are read once and never shuffled.
"""

from __future__ import annotations

import functools
import hashlib
import io
import time
from itertools import accumulate
from typing import Any, NamedTuple

import apache_beam as beam
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from altsieve.core import fsutil, layout, lease
from altsieve.core.config import Config, ConfigError, LanguageConfig, bucket_of
from altsieve.pipeline.beam_run import Progress, run_pipeline
from altsieve.pipeline.select import build_select, ingested_partitions, pass_rows, record_select_done, select_progress
from altsieve.transforms.progress import ProgressWriter
from altsieve.transforms.shards import (
    iter_tar_images,
    read_parquet_rows,
    rows_to_records,
    schema,
    tar_index,
    write_final_shard,
    write_shard,
)

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


class ShardTask(NamedTuple):
    """What one final shard's writer needs: its segments, and the input rows its stats stand for.

    img2dataset's shard stats count every input row of the shard (failures included); a final shard
    here is cut from the kept pairs in key order, so it stands for the input rows after the previous
    shard's last kept pair up to its own last kept pair (the last shard: to the end of the input). Every
    input row is thus counted in exactly one shard of its bucket. ``previous``: the previous shard's last
    segment (None for the first shard); ``scan``: the partitions holding those rows.
    """

    segments: list[Segment]
    previous: Segment | None
    scan: list[str]
    last: bool


def plan_tasks(plan: dict[ShardId, list[Segment]], partitions: list[str]) -> dict[ShardId, ShardTask]:
    order = sorted(partitions)
    index = {pid: i for i, pid in enumerate(order)}
    tasks: dict[ShardId, ShardTask] = {}
    shards_of: dict[str, list[int]] = {}
    for bucket, shard in plan:
        shards_of.setdefault(bucket, []).append(shard)
    for bucket, shards in shards_of.items():
        shards.sort()
        for position, shard in enumerate(shards):
            segments = sorted(plan[(bucket, shard)])
            previous = sorted(plan[(bucket, shards[position - 1])])[-1] if position else None
            first = index[previous[0]] if previous else 0
            last = position == len(shards) - 1
            stop = len(order) if last else index[segments[-1][0]] + 1
            tasks[(bucket, shard)] = ShardTask(segments, previous, order[first:stop], last)
    return tasks


class _WriteFinalShard(beam.DoFn):
    def __init__(self, output: str, extra_columns: list[str], encode_format: str,
                 language: LanguageConfig | None = None, output_format: str = "webdataset",
                 clip_identity: dict[str, Any] | None = None) -> None:
        self._output, self._extra, self._format = output, extra_columns, encode_format
        self._language = language  # set when the output is split by language bucket
        self._output_format = output_format
        self._clip = clip_identity  # set when the run saved CLIP embeddings: they are exported per final shard
        self._progress = ProgressWriter(output, "reshard")

    def setup(self) -> None:
        # A partition is scanned by every shard whose rows it holds (several, when shards are smaller than
        # partitions): the last few are kept, as they are asked for in order.
        self._kept_keys = functools.lru_cache(maxsize=8)(
            lambda pid: kept_keys_by_bucket(self._output, pid, self._language))
        self._outcomes = functools.lru_cache(maxsize=4)(lambda pid: partition_outcomes(self._output, pid))

    def process(self, element: tuple[ShardId, ShardTask]):
        (bucket, shard), task = element
        segments = task.segments
        prefix = layout.final_prefix(self._output, shard, bucket or None)
        wanted_by_partition = {
            pid: self._kept_keys(pid).get(bucket, [])[first:last] for pid, first, last in segments
        }
        # The shard's identity is the keys it holds: a retry run that turned a failure into a kept
        # pair changes them even when the segment bounds stay the same.
        identity = hashlib.sha256("\n".join(k for keys in wanted_by_partition.values() for k in keys).encode())
        plan = {"segments": [list(s) for s in segments], "keys_sha256": identity.hexdigest(),
                "format": self._output_format, "embeddings": self._clip is not None}
        stats_path = f"{prefix}_stats.json"
        if fsutil.exists(stats_path):
            existing = fsutil.read_json(stats_path)
            if existing.get("plan") == plan:
                self._progress.update(f"{bucket}-{shard:05d}", int(existing["successes"]), done=True)
                yield shard, existing  # written by an earlier run from the same plan
                return
        started = time.time()
        extra = {"shard": shard, "plan": plan, **({"bucket": bucket} if bucket else {})}
        outcomes = self._attributed_outcomes(bucket, task, wanted_by_partition)
        if self._output_format == "webdataset":  # the candidates' tar entries copied as they are
            table, indexes = kept_rows(self._output, wanted_by_partition, self._extra)
            if self._clip is not None:  # before the stats file: a shard with stats is complete
                self._write_embeddings(bucket, shard, rows_to_records(table.to_pylist(), self._extra))
            sources = [(f"{layout.candidate_prefix(self._output, pid)}.tar", keys, indexes[pid])
                       for pid, keys in sorted(wanted_by_partition.items()) if keys]
            stats = write_final_shard(prefix, table, sources, started, extra, outcomes)
            written = table.num_rows
        else:
            records = self._kept_records(wanted_by_partition)
            if self._clip is not None:
                self._write_embeddings(bucket, shard, sorted(records, key=lambda r: r["key"]))
            stats = write_shard(prefix, records, self._extra, self._format, started, extra, outcomes,
                                self._output_format)
            written = len(records)
        self._progress.update(f"{bucket}-{shard:05d}", written, done=True)
        yield shard, stats

    def _kept_records(self, wanted_by_partition: dict[str, list[str]]) -> list[dict[str, Any]]:
        """The kept pairs' rows with their images (the Parquet output format: the images go in its Parquet)."""
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
        return records

    def _attributed_outcomes(self, bucket: str, task: ShardTask,
                             wanted: dict[str, list[str]]) -> list[dict[str, Any]]:
        """The input rows this shard stands for (see ``ShardTask``), with their final outcome."""
        after = None
        if task.previous is not None:
            pid, _, last = task.previous
            after = self._kept_keys(pid).get(bucket, [])[last - 1]
        through = None if task.last else max(k for keys in wanted.values() for k in keys)
        rows = []
        for pid in task.scan:
            for row in self._outcomes(pid):
                if (after is not None and row["key"] <= after) or (through is not None and row["key"] > through):
                    continue
                if self._language is not None and bucket_of(row["language"], row["language_score"],
                                                             self._language) != bucket:
                    continue
                rows.append(row)
        return rows

    def _write_embeddings(self, bucket: str, shard: int, records: list[dict[str, Any]]) -> None:
        from altsieve.transforms.clip.store import load_partition_embeddings

        keys = [r["key"] for r in records]
        by_key: dict[str, tuple[Any, Any]] = {}
        for pid in sorted({r["partition_id"] for r in records}):
            part_keys, image, text = load_partition_embeddings(self._output, pid, self._clip)
            index = {str(k): i for i, k in enumerate(part_keys)}
            for record in records:
                if record["partition_id"] == pid:
                    if record["key"] not in index:
                        raise RuntimeError(f"no CLIP embedding of kept pair {record['key']} in partition {pid}")
                    i = index[record["key"]]
                    by_key[record["key"]] = (image[i], text[i])
        image = np.stack([by_key[k][0] for k in keys])
        text = np.stack([by_key[k][1] for k in keys])
        write_embeddings(self._output, bucket or None, shard, image, text, embedding_metadata(records, shard))


def kept_rows(output: str, wanted_by_partition: dict[str, list[str]],
              extra_columns: list[str]) -> tuple[pa.Table, dict[str, dict[str, tuple[int, int]] | None]]:
    """The candidate Parquet rows of the wanted keys, in key order (partitions hold consecutive keys), with the
    schema write_shard gives them (no footer metadata); and each partition's tar index (tar_index) from the same
    read."""
    target = schema(extra_columns)
    tables = []
    indexes: dict[str, dict[str, tuple[int, int]] | None] = {}
    for partition_id, keys in sorted(wanted_by_partition.items()):
        if not keys:
            continue
        with fsspec.open(layout.candidate_prefix(output, partition_id) + ".parquet", "rb") as handle:
            table = pq.read_table(handle)
        indexes[partition_id] = tar_index(table.schema)
        table = table.filter(pc.is_in(table["key"], value_set=pa.array(keys, pa.string())))
        tables.append(pa.table([table[f.name].cast(f.type) if f.name in table.column_names
                                else pa.nulls(table.num_rows, f.type) for f in target], schema=target))
    return (pa.concat_tables(tables).combine_chunks() if tables else target.empty_table()), indexes


def partition_outcomes(output: str, partition_id: str) -> list[dict[str, Any]]:
    """Every input row of a partition with its final outcome: the ingest's reason, else the select decision."""
    columns = ["key", "reason", "error_message", "bytes", "language", "language_score"]
    rows = read_parquet_rows(layout.candidate_prefix(output, partition_id) + ".parquet", columns)
    decided = {r["key"]: r["reason"] for r in read_parquet_rows(layout.decision_path(output, partition_id),
                                                                  ["key", "reason"])}
    for row in rows:
        if row["reason"] is None:
            row["reason"] = decided.get(row["key"])
    return rows


def embedding_metadata(records: list[dict[str, Any]], shard: int) -> pa.Table:
    """clip-retrieval's ``metadata/`` rows: ``image_path`` (the sample key, as clip-retrieval writes for
    webdataset input), ``caption``, and ours: key, url, the tar, the CLIP score."""
    return pa.table({
        "image_path": [r["key"] for r in records],
        "caption": [r.get("caption") or "" for r in records],
        "url": [r.get("url") or "" for r in records],
        "key": [r["key"] for r in records],
        "shard": [f"{shard:05d}.tar"] * len(records),
        "clip_score": pa.array([r.get("clip_score") for r in records], pa.float32()),
    })


def write_embeddings(output: str, bucket: str | None, shard: int, image: np.ndarray, text: np.ndarray,
                     metadata: pa.Table) -> None:
    """One final shard's rows in clip-retrieval's layout: img_emb/, text_emb/ (.npy, float16 [N, D]) and
    metadata/ (Parquet), aligned row for row and in the shard's order, as autofaiss and clip back read them."""
    paths = layout.embedding_paths(output, shard, bucket)
    for path, array in ((paths.image, image), (paths.text, text)):
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(array, dtype=np.float16))
        fsutil.write_atomic(path, functools.partial(_write_bytes, buffer.getvalue()))
    fsutil.write_atomic(paths.metadata, lambda handle: pq.write_table(metadata, handle))


def _write_bytes(data: bytes, handle: Any) -> None:
    handle.write(data)


def build_reshard(pipeline: beam.Pipeline, config: Config, output: str, partitions: list[str],
                  clip_identity: dict[str, Any] | None = None, decided: beam.PCollection | None = None) -> None:
    """The reshard pass on ``pipeline``. ``decided``: the partition ids a select pass in the same pipeline gives as
    it writes their decisions (``altsieve run``); None: the decisions an earlier select pass wrote."""
    samples = config.output.samples_per_shard
    language = config.language if config.output.split_by_language else None
    source = (pipeline | "Partitions" >> beam.Create(partitions)) if decided is None else decided
    counts = (
        source
        | "CountKept" >> beam.FlatMap(
            lambda pid: [((bucket, pid), len(keys)) for bucket, keys in
                         kept_keys_by_bucket(output, pid, language).items()]
        )
        # One dict, once every partition is counted: after the last decision file of a select in this pipeline.
        | "AllCounts" >> beam.combiners.ToDict()
    )
    select_done = partitions if decided is not None else None
    writer = _WriteFinalShard(output, config.input.save_additional_columns, config.image.encode_format, language,
                              config.output.format, clip_identity)
    _ = (
        counts
        | "RecordPlan" >> beam.Map(lambda c: _record_plan(output, c, samples, select_done))
        | "PlanShards" >> beam.FlatMap(lambda c: sorted(plan_tasks(plan_buckets(c, samples), partitions).items()))
        | "SpreadShards" >> beam.Reshuffle()
        | "WriteShards" >> beam.ParDo(writer)
    )


def _plan_path(output: str) -> str:
    """``_altsieve/reshard_plan.json``: the shard count and kept pairs, written once every partition is counted."""
    return layout.meta(output, "reshard_plan.json")


def _record_plan(output: str, counts: dict[tuple[str, str], int], samples_per_shard: int,
                 select_done: list[str] | None = None) -> dict[tuple[str, str], int]:
    if select_done is not None:  # the select pass of this pipeline has written every decision file
        record_select_done(output, select_done)
    plan = plan_buckets(counts, samples_per_shard)
    per_bucket: dict[str, int] = {}
    for bucket, _ in plan:
        per_bucket[bucket] = per_bucket.get(bucket, 0) + 1
    fsutil.write_json(_plan_path(output),
                      {"shards": len(plan), "kept": sum(counts.values()), "buckets": per_bucket})
    return counts


# The least work worth a local worker process (rows whose images are copied): below it one in-process worker is faster.
ROWS_PER_WORKER = 20_000


@lease.holding("altsieve reshard")
def run_reshard(config: Config, output: str, beam_args: list[str]) -> dict:
    done_path = layout.meta(output, "select_done.json")
    if not fsutil.exists(done_path):
        raise ConfigError(f"{output} has no finished select pass ({done_path} is missing): run `altsieve select` first")
    partitions = list(fsutil.read_json(done_path)["partitions"])
    layout.remove_stale_temporaries(output)  # a killed reshard's unfinished final shards
    rows = pass_rows(config, partitions)
    clip_identity = _start_reshard(config, output)
    with _reshard_progress(output):
        metrics = run_pipeline(lambda p: build_reshard(p, config, output, partitions, clip_identity), beam_args,
                               rows, ROWS_PER_WORKER)
    _finish_reshard(config, output)
    return metrics


@lease.holding("altsieve run")
def run_select_and_reshard(config: Config, output: str, beam_args: list[str]) -> dict:
    """The select and reshard passes as one pipeline (``altsieve run``): the same files as ``altsieve select`` then
    ``altsieve reshard``, for one pipeline's start and end rather than two. bench/bench_web.py's 4,565 pairs, four
    interleaved pairs in one process: 2.46-2.81 s against 2.80-2.98 s (0.17 s less on average).

    ``select_done.json`` is written once every decision file is, before any final shard: a run stopped in its
    reshard part is resumed by ``altsieve reshard`` (or by ``altsieve run``, which redoes select, as after a
    stop in select).
    """
    partitions = ingested_partitions(output)
    layout.remove_stale_temporaries(output)  # a killed pass's unfinished decision files and final shards
    rows = pass_rows(config, partitions)
    clip_identity = _start_reshard(config, output)

    def build(pipeline: beam.Pipeline) -> None:
        decided = build_select(pipeline, config, output, partitions, rows)
        build_reshard(pipeline, config, output, partitions, clip_identity, decided)

    with select_progress(output, partitions) as select_bar, _reshard_progress(output) as reshard_bar:
        # Local workers as for reshard alone (from 20,000 rows; select alone: 50,000): copying the images is the
        # larger part of the work.
        metrics = run_pipeline(build, beam_args, rows, ROWS_PER_WORKER)
        Progress.finish_in_order(select_bar, reshard_bar)  # select's final line first, as the passes ran
    _finish_reshard(config, output)
    return metrics


def _start_reshard(config: Config, output: str) -> dict[str, Any] | None:
    """Before a reshard pipeline: an earlier run's plan removed (the bar's total is this run's); returns the CLIP
    model identity when the final shards carry embeddings (clip-retrieval's layout), else None."""
    fs, resolved = fsutil.filesystem(_plan_path(output))
    if fs.exists(resolved):
        fs.rm(resolved)
    if not (config.clip.enabled and config.clip.save_embeddings):
        return None
    return {k: v for k, v in fsutil.read_json(layout.meta(output, layout.CLIP_MODEL_FILE)).items()
            if k in ("model", "weights_sha256", "embed_dim")}


def _reshard_progress(output: str) -> Progress:
    plan_path = _plan_path(output)

    def total(_: dict[str, int]) -> int | None:
        return int(fsutil.read_json(plan_path)["kept"]) if fsutil.exists(plan_path) else None

    return Progress("reshard", output, "reshard", total=total)


def _finish_reshard(config: Config, output: str) -> None:
    """After a reshard pipeline: an earlier run's surplus shards removed, the shard indexes written."""
    plan = fsutil.read_json(_plan_path(output))["buckets"]
    _remove_stale_shards(output, plan)
    for bucket in sorted(plan):
        write_shard_indexes(output, bucket or None, config.output.format)


def write_shard_indexes(output: str, bucket: str | None, output_format: str) -> None:
    """Beside the tars, what trainers read instead of counting samples: ``sizes.json`` (open_clip_train's
    get_dataset_size: tar name -> samples) and ``shardindex.json`` (wids' shard index, wids-shard-index-v1,
    its URLs relative to the index's folder)."""
    if output_format != "webdataset":
        return
    shardlist, sizes = [], {}
    for shard in final_shards(output, bucket):
        prefix = layout.final_prefix(output, shard, bucket)
        samples = int(fsutil.read_json(prefix + "_stats.json")["successes"])
        fs, path = fsutil.filesystem(prefix + ".tar")
        name = f"{shard:05d}.tar"
        sizes[name] = samples
        shardlist.append({"url": name, "nsamples": samples, "filesize": int(fs.size(path))})
    folder = layout.final_prefix(output, 0, bucket)[: -len("/00000")]
    fsutil.write_json(fsutil.join(folder, layout.SIZES_FILE), sizes)
    name = f"altsieve{'-' + bucket if bucket else ''}"
    fsutil.write_json(fsutil.join(folder, layout.WIDS_INDEX_FILE),
                      {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": name, "shardlist": shardlist})


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
            for stale in (prefix + ".tar", prefix + ".parquet", prefix + "_stats.json",
                          *layout.embedding_paths(output, shard, bucket or None)):
                fs, path = fsutil.filesystem(stale)
                if fs.exists(path):
                    fs.rm(path)
