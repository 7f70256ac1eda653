"""WriteShards: collect a partition's records and write its candidate shard, then its completion marker.

No GroupByKey stands between Download and this stage: a partition's records are produced by one
``Download.process`` call and flow through the fused stages in the same bundle, so this DoFn sees
all of them in a row and writes the partition the moment its last record arrives. A killed run
thus loses only the partitions in flight, never the finished ones (a GroupByKey would be a barrier
that holds every partition until all are fetched). Should a runner ever split a partition across
bundles, ``finish_bundle`` fails the bundle instead of writing a partial shard.

The marker is written last, after the tar, Parquet and stats are in place (each atomically), so a
partition with a marker is complete and a rerun skips it. A partition fetched again with
``--retry-failed`` is merged into its existing shard: rows with a new result replace the old ones,
images already fetched are copied over, and nothing is written twice.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from altsieve.core import fsutil
from altsieve.core.layout import EMBEDDINGS_SUFFIX, candidate_prefix, marker_path, thumbnails_path
from altsieve.transforms import crop_features
from altsieve.transforms.clip.store import partition_embeddings, write_partition_embeddings
from altsieve.transforms.shards import iter_tar_images, read_parquet_rows, rows_to_records, write_shard
from altsieve.transforms.thumbnails import ThumbnailSample, read_thumbnails


def _merge_with_existing(prefix: str, records: list[dict[str, Any]], extra_columns: list[str]) -> list[dict[str, Any]]:
    """The partition's previous rows with the new results laid over them, images included."""
    new_by_key = {record["key"]: record for record in records}
    old_records = rows_to_records(read_parquet_rows(f"{prefix}.parquet"), extra_columns)
    keep_old = {r["key"] for r in old_records if r["key"] not in new_by_key and r.get("reason") is None}
    old_images = dict(iter_tar_images(f"{prefix}.tar", keep_old))
    merged = []
    for record in old_records:
        if record["key"] in new_by_key:
            merged.append(new_by_key.pop(record["key"]))
        else:
            record["image"] = old_images.get(record["key"])
            merged.append(record)
    merged.extend(new_by_key.values())
    return merged


class _WriteCandidate(beam.DoFn):
    def __init__(self, output: str, extra_columns: list[str], encode_format: str,
                 clip_embeddings: tuple[int, str] | None = None, thumbnails: tuple[int, int] = (0, 128),
                 crop: bool = False) -> None:
        self._output, self._extra, self._format = output, extra_columns, encode_format
        self._clip = clip_embeddings
        self._thumbnails = thumbnails
        self._crop = crop
        self._partitions = Metrics.counter("altsieve", "partitions_written")
        self._bytes_written = Metrics.counter("altsieve", "bytes_written")

    def start_bundle(self) -> None:
        self._pending: dict[str, list[dict[str, Any]]] = {}
        self._started: dict[str, float] = {}
        self._samples: dict[str, ThumbnailSample] = {}

    def process(self, record: dict[str, Any]):
        partition_id = record["partition_id"]
        records = self._pending.setdefault(partition_id, [])
        self._started.setdefault(partition_id, time.time())
        # A dropped pair's set-aside image goes into the thumbnail sample now, or is let go.
        sample = self._samples.setdefault(partition_id, ThumbnailSample(*self._thumbnails))
        sample.offer_record(record)
        records.append(record)
        if len(records) == record["partition_size"]:
            del self._pending[partition_id]
            yield self._write(partition_id, records, self._started.pop(partition_id), self._samples.pop(partition_id))

    def finish_bundle(self) -> None:
        if self._pending:
            incomplete = ", ".join(f"{pid} ({len(rows)} records)" for pid, rows in self._pending.items())
            raise RuntimeError(f"bundle ended before these partitions were complete: {incomplete}")

    def _write(self, partition_id: str, records: list[dict[str, Any]], started: float,
               sample: ThumbnailSample) -> tuple[str, dict[str, Any]]:
        prefix = candidate_prefix(self._output, partition_id)
        marker = marker_path(self._output, partition_id)
        thumbs = thumbnails_path(self._output, partition_id)
        attempts = 1
        if fsutil.exists(marker):
            attempts = int(fsutil.read_json(marker).get("attempts", 1)) + 1
            fetched_again = {record["key"] for record in records}
            for key, reason, jpeg in read_thumbnails(thumbs):  # the earlier attempt's, where its row stays
                if key not in fetched_again:
                    sample.offer(key, reason, jpeg, is_thumbnail=True)
            records = _merge_with_existing(prefix, records, self._extra)
        for reason, count in Counter(r.get("reason") or "kept" for r in records).items():
            Metrics.counter("altsieve", f"reason.{reason}").inc(count)
        self._bytes_written.inc(sum(len(r.get("image") or b"") for r in records))
        stats = write_shard(prefix, records, self._extra, self._format, started, {"partition_id": partition_id},
                            indexed=True)
        if self._clip is not None:  # the CLIP embeddings of the kept pairs, before the marker like the rest
            embed_dim, weights_sha256 = self._clip
            path = prefix + EMBEDDINGS_SUFFIX
            arrays = partition_embeddings(records, embed_dim, previous=path if attempts > 1 else None)
            write_partition_embeddings(path, *arrays, weights_sha256)
        if len(sample):  # thumbnails of dropped pairs for the audit, before the marker like the rest
            sample.write(thumbs)
        if self._crop:  # the crop-robust dedup rule's features of the kept pairs (transforms/crop_features.py)
            path = prefix + crop_features.CROP_SUFFIX
            crop_features.write_partition(path, records, previous=path if attempts > 1 else None)
        fsutil.write_json(marker, {"partition_id": partition_id, "attempts": attempts, **stats})
        self._partitions.inc()
        return partition_id, stats


class WriteShards(beam.PTransform):
    """``PCollection[record]`` -> ``PCollection[(partition_id, stats)]``, one candidate shard per partition.

    ``clip_embeddings`` (embedding width, weights sha256): also write ``{partition}_embeddings.npz``.
    ``thumbnails`` (per reason, size in px): also write ``{partition}_thumbs.tar``, the thumbnails of a few
    pairs per reason dropped after decode (transforms/thumbnails.py). ``crop``: also ``{partition}_crop.npz``
    (dedup.crop).
    """

    def __init__(self, output: str, extra_columns: list[str], encode_format: str,
                 clip_embeddings: tuple[int, str] | None = None, thumbnails: tuple[int, int] = (0, 128),
                 crop: bool = False) -> None:
        super().__init__()
        self._output, self._extra, self._format = output, extra_columns, encode_format
        self._clip = clip_embeddings
        self._thumbnails = thumbnails
        self._crop = crop

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        return records | "Write" >> beam.ParDo(
            _WriteCandidate(self._output, self._extra, self._format, self._clip, self._thumbnails, self._crop))
