"""Download: fetch every partition's pairs through one window that stays full across partitions.

One ``Fetcher`` (its event loop, connections, per-host state, DNS and robots.txt caches) is built per
DoFn instance in ``setup()``. ``process`` submits a partition's URLs and returns as soon as they are
all in flight (waiting only while the window is full), so the next partition's requests start while
the last one's slow tail is pending: no partition waits for its slowest URL, and a stalled host holds
one slot, not the worker. Results leave as they complete, each pair as its own record, from whichever
``process`` call (or ``finish_bundle``) is running then; all within the bundle, so WriteShards (fused
after this stage, no GroupByKey between) still sees every record of a partition in one bundle.

Pairs a cheap rule already dropped pass through without a request.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from altsieve.core.config import DownloadConfig
from altsieve.core.layout import Column
from altsieve.transforms.read_inputs import Partition

if TYPE_CHECKING:  # the fetcher (and aiohttp, 0.26-0.35 s to import) loads in the workers only: see setup()
    from altsieve.transforms.fetch import Fetcher, FetchResult, FetchWindow

# The fields this stage sets on every record it fetches.
COLUMNS = (
    Column("bytes", pa.int64(), "size of the fetched body"),
    Column("http_status", pa.int32(), "the last response's status code (null: no response)"),
    Column("final_url", pa.string(), "where the redirects ended, when not at the URL itself"),
    Column("content_type", pa.string(), "the media type the server declared (Content-Type without parameters)"),
    Column("optout", pa.string(), "the opt-out signal that refused the pair: robots.txt, x-robots-tag, "
           "tdm-reservation (header) or tdmrep.json; null when none did"),
)


class _DownloadPartitions(beam.DoFn):
    def __init__(self, config: DownloadConfig) -> None:
        self._config = config
        self._fetcher: Fetcher | None = None
        self._bytes = Metrics.counter("altsieve", "bytes_fetched")
        self._fetched = Metrics.counter("altsieve", "pairs_fetched")
        self._latency = Metrics.distribution("altsieve", "fetch_latency_ms")
        self._reported: dict[str, int] = {}

    def setup(self) -> None:
        # Imported here, not at the top: the launcher builds this stage but never fetches, and importing aiohttp
        # (0.26-0.35 s) was on its way to starting the workers. The fork server preloads it (beam_worker.PRELOAD).
        from altsieve.transforms.fetch import Fetcher

        self._fetcher = Fetcher(self._config)

    def teardown(self) -> None:
        if self._fetcher is not None:
            self._fetcher.close()

    def start_bundle(self) -> None:
        assert self._fetcher is not None
        previous = getattr(self, "_window", None)
        if previous is not None:  # a failed bundle's fetches: nobody will take their results
            previous.cancel()
        from altsieve.transforms.fetch import FetchWindow

        config = self._config
        run_ahead = config.run_ahead_mib * 2**20
        self._window: FetchWindow[dict[str, Any]] = FetchWindow(
            self._fetcher, run_ahead_bytes=run_ahead, run_ahead_results=16 * config.concurrency if run_ahead else 0)

    def process(self, partition: Partition) -> Iterator[dict[str, Any]]:
        window = self._window
        for row in partition.rows:
            record = dict(row)  # Beam inputs must not be mutated
            record["partition_id"] = partition.partition_id
            # WriteShards writes the partition when this many records of it have arrived.
            record["partition_size"] = len(partition.rows)
            if record.get("reason") is not None:
                yield record
                continue
            while window.full:
                # One at a time: a request that ends while this one is decoded frees a slot to refill at once.
                yield self._finish(*window.take())
            window.submit(record, record["url"])
        # No wait for this partition's tail: the next partition's requests go out now, and what is in
        # flight leaves while later partitions fill the window, or in finish_bundle.
        window.flush()

    def finish_bundle(self) -> Iterator[Any]:
        window = self._window
        while window.in_flight:
            yield GlobalWindows.windowed_value(self._finish(*window.take()))
        self._report_stats()

    def _finish(self, record: dict[str, Any], result: FetchResult) -> dict[str, Any]:
        record["http_status"] = result.status_code
        record["final_url"] = result.final_url if result.final_url != result.url else None
        record["content_type"] = result.content_type
        record["optout"] = result.optout
        if result.reason is None and result.body is not None:
            record["body"] = result.body
            record["bytes"] = len(result.body)
            self._bytes.inc(len(result.body))
        else:
            record["reason"] = result.reason
            record["error_message"] = result.error_message
        self._fetched.inc()
        self._latency.update(int(result.elapsed_s * 1000))
        return record

    def _report_stats(self) -> None:
        """The fetcher's own counts (robots.txt fetches, DNS queries, breaker trips, host caps cut) since the last
        bundle."""
        assert self._fetcher is not None
        for name, value in self._fetcher.stats().items():
            delta = value - self._reported.get(name, 0)
            if delta:
                Metrics.counter("altsieve", f"fetch.{name}").inc(delta)
            self._reported[name] = value


class Download(beam.PTransform):
    """``PCollection[Partition]`` -> ``PCollection[record]``: one record per input row."""

    def __init__(self, config: DownloadConfig) -> None:
        super().__init__()
        self._config = config

    def expand(self, partitions: beam.PCollection) -> beam.PCollection:
        return partitions | "Fetch" >> beam.ParDo(_DownloadPartitions(self._config))
