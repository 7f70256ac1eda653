"""Progress the launcher can see on any runner: workers write small counts under the output folder.

Beam's metrics reach the launcher only when a pipeline ends (the Python DirectRunner's ``run`` returns
then), and completion markers count whole partitions (a one-partition run shows 0/1 until it ends).
So each worker writes, per item it works on (a partition, a shard, a crawl file), one JSON file with
how many pairs it has done, at most once a second and when the item is finished:
``OUTPUT/_altsieve/progress/{pass}/{item}.json``. The launcher sums them (pipeline/beam_run.py
``Progress``) and removes the folder when the pass ends.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import apache_beam as beam

from altsieve.core import fsutil, layout

WRITE_INTERVAL_S = 1.0


class ProgressWriter:
    """Writes the count of one item at most every ``WRITE_INTERVAL_S`` (always when ``done``); picklable."""

    def __init__(self, output: str, pass_name: str) -> None:
        self._folder = layout.progress_dir(output, pass_name)
        self._last: dict[str, float] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"_folder": self._folder, "_last": {}}

    def update(self, item: str, pairs: int, done: bool = False, **extra: Any) -> None:
        now = time.monotonic()
        if not done and now - self._last.get(item, float("-inf")) < WRITE_INTERVAL_S:
            return
        self._last[item] = now
        try:
            fsutil.write_json(fsutil.join(self._folder, f"{item}.json"), {"pairs": pairs, "done": done, **extra})
        except OSError:  # progress is for the eyes: a failed write never fails the pipeline
            return
        if done:
            self._last.pop(item, None)


class _CountRecords(beam.DoFn):
    """Pass-through: counts the records of each partition (records carry ``partition_id``, ``partition_size``)."""

    def __init__(self, writer: ProgressWriter) -> None:
        self._writer = writer

    def start_bundle(self) -> None:
        self._counts: dict[str, int] = {}

    def process(self, record: dict[str, Any]) -> Iterator[dict[str, Any]]:
        partition_id = record["partition_id"]
        count = self._counts.get(partition_id, 0) + 1
        size = record.get("partition_size")
        done = size is not None and count >= size
        self._writer.update(partition_id, count, done=done)
        if done:
            self._counts.pop(partition_id, None)
        else:
            self._counts[partition_id] = count
        yield record


class CountRecords(beam.PTransform):
    """``PCollection[record]`` unchanged; the pairs seen per partition go to the progress folder of ``pass_name``."""

    def __init__(self, output: str, pass_name: str) -> None:
        super().__init__()
        self._writer = ProgressWriter(output, pass_name)

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        return records | "Count" >> beam.ParDo(_CountRecords(self._writer))


class ProgressReader:
    """The launcher's side: the sum of every item's count (finished items are read once)."""

    def __init__(self, output: str, pass_name: str) -> None:
        self._folder = layout.progress_dir(output, pass_name)
        self._finished: dict[str, dict[str, Any]] = {}

    def totals(self) -> dict[str, int]:
        """Sum of each numeric field over the items, e.g. ``{"pairs": 1234, "items": 3, "done": 2}``."""
        sums: dict[str, int] = {"items": 0, "done": 0}
        for path in fsutil.glob(fsutil.join(self._folder, "*.json")):
            if path.rsplit("/", 1)[-1].startswith("."):  # an atomic write's temporary
                continue
            data = self._finished.get(path)
            if data is None:
                try:
                    data = fsutil.read_json(path)
                except (OSError, ValueError):  # being replaced right now: the next poll reads it
                    continue
                if data.get("done"):
                    self._finished[path] = data
            sums["items"] += 1
            sums["done"] += bool(data.get("done"))
            for name, value in data.items():
                if isinstance(value, int) and not isinstance(value, bool):
                    sums[name] = sums.get(name, 0) + value
        return sums


def clear(output: str, pass_name: str) -> None:
    """Remove a pass's progress files (before it starts, and when it has ended), and the folders above them
    that this leaves empty (an ``extract`` output has no other ``_altsieve/`` content)."""
    fs, resolved = fsutil.filesystem(layout.progress_dir(output, pass_name))
    if fs.exists(resolved):
        fs.rm(resolved, recursive=True)
    for _ in range(2):  # progress/, then _altsieve/
        resolved = resolved.rsplit("/", 1)[0]
        if not fs.isdir(resolved) or fs.ls(resolved, detail=False):
            return
        fs.rmdir(resolved)
