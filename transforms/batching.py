"""Batches for the model stages of ingest, cut short when a partition is complete.

WriteShards writes a partition when its last record arrives, and a partition's records arrive in
one bundle (transforms/write_shards.py): a stage that buffers records for a batch must let them go
when their partition is complete, or finished partitions would wait for the bundle's end (a killed
run would lose them). ``PartitionBatches`` does the bookkeeping; a subclass says which records need
work (``wants``) and does a batch in place (``run_batch``). ``PartitionBatchesFor`` cuts the same
batches for Beam's RunInference (ClipScore, transforms/clip/stage.py), whose own ``BatchElements``
can cut a batch only when it is full or the bundle ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows


class _PartitionEnds:
    """Counts a bundle's records per partition: says when the record that completes its partition arrives."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def completes(self, record: dict[str, Any]) -> bool:
        partition_id = record.get("partition_id")
        if partition_id is None:
            return False
        seen = self._seen.get(partition_id, 0) + 1
        if seen == record.get("partition_size"):
            del self._seen[partition_id]
            return True
        self._seen[partition_id] = seen
        return False


class PartitionBatches(beam.DoFn):
    """Buffer the records that ``wants``; ``run_batch`` them when ``batch_size`` are waiting or a partition ends."""

    batch_size: int = 64

    def wants(self, record: dict[str, Any]) -> bool:
        raise NotImplementedError

    def run_batch(self, batch: list[dict[str, Any]]) -> None:
        """Work on ``batch`` in place (scores, reasons)."""
        raise NotImplementedError

    def start_bundle(self) -> None:
        self._buffer: list[dict[str, Any]] = []
        self._ends = _PartitionEnds()

    def process(self, record: dict[str, Any]):
        if self.wants(record):
            self._buffer.append(record)
        else:
            yield record
        if self._ends.completes(record) or len(self._buffer) >= self.batch_size:
            yield from self._flush()

    def finish_bundle(self):
        for record in self._flush():
            yield GlobalWindows.windowed_value(record)

    def _flush(self) -> list[dict[str, Any]]:
        batch, self._buffer = self._buffer, []
        for start in range(0, len(batch), self.batch_size):
            self.run_batch(batch[start : start + self.batch_size])
        return batch


class PartitionBatchesFor(beam.DoFn):
    """Records -> lists of records for a RunInference ``with_no_batching()``, cut by the same rule: a list ends
    when ``batch_size`` of its records are ``wants`` or when a partition is complete.

    The records that are not wanted ride in the lists too (the model handler hands them back untouched): sent
    around RunInference they would need a Flatten, which a runner may turn into a new stage, moving a
    partition's records out of their bundle.
    """

    def __init__(self, batch_size: int, wants: Callable[[dict[str, Any]], bool]) -> None:
        self._batch_size, self._wants = batch_size, wants

    def start_bundle(self) -> None:
        self._batch: list[dict[str, Any]] = []
        self._wanted = 0
        self._ends = _PartitionEnds()

    def process(self, record: dict[str, Any]):
        self._batch.append(record)
        self._wanted += bool(self._wants(record))
        if self._ends.completes(record) or self._wanted >= self._batch_size:
            yield self._take()

    def finish_bundle(self):
        if self._batch:
            yield GlobalWindows.windowed_value(self._take())

    def _take(self) -> list[dict[str, Any]]:
        batch, self._batch, self._wanted = self._batch, [], 0
        return batch
