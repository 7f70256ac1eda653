"""Batches for the model stages of ingest, cut short when a partition is complete.

WriteShards writes a partition when its last record arrives, and a partition's records arrive in
one bundle (transforms/write_shards.py): a stage that buffers records for a batch must let them go
when their partition is complete, or finished partitions would wait for the bundle's end (a killed
run would lose them). ``PartitionBatches`` does the bookkeeping; a subclass says which records need
work (``wants``) and does a batch in place (``run_batch``). ClipScore (transforms/clip/stage.py) keeps the
same rule with its own copy of this loop.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows


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
        self._seen: dict[str, int] = {}

    def process(self, record: dict[str, Any]):
        partition_id = record.get("partition_id")
        if self.wants(record):
            self._buffer.append(record)
        else:
            yield record
        done = False
        if partition_id is not None:
            self._seen[partition_id] = self._seen.get(partition_id, 0) + 1
            done = self._seen[partition_id] == record.get("partition_size")
            if done:
                del self._seen[partition_id]
        if done or len(self._buffer) >= self.batch_size:
            yield from self._flush()

    def finish_bundle(self):
        for record in self._flush():
            yield GlobalWindows.windowed_value(record)

    def _flush(self) -> list[dict[str, Any]]:
        batch, self._buffer = self._buffer, []
        for start in range(0, len(batch), self.batch_size):
            self.run_batch(batch[start : start + self.batch_size])
        return batch
