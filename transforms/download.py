"""Download: fetch each partition's pairs, bounded in concurrency per worker and per host.

One ``Fetcher`` (its thread pool and per-host limits) is built per DoFn instance in ``setup()``.
Pairs a cheap rule already dropped pass through without a request; each fetched pair leaves as
its own record, so the stages after this one work per pair.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics

from altsieve import __version__
from altsieve.core.config import DownloadConfig
from altsieve.core.layout import Column
from altsieve.transforms.fetch import Fetcher, FetchOptions
from altsieve.transforms.read_inputs import Partition

# The fields this stage sets on every record it fetches.
COLUMNS = (
    Column("bytes", pa.int64(), "size of the fetched body"),
    Column("http_status", pa.int32(), "the last response's status code (null: no response)"),
    Column("final_url", pa.string(), "where the redirects ended, when not at the URL itself"),
)

USER_AGENT = f"altsieve/{__version__} (+https://github.com/altsieve/altsieve; image-text dataset curation)"


def fetch_options(config: DownloadConfig) -> FetchOptions:
    return FetchOptions(
        connect_timeout_s=config.connect_timeout_s,
        read_timeout_s=config.read_timeout_s,
        retries=config.retries,
        backoff_base_s=config.backoff_base_s,
        backoff_max_s=config.backoff_max_s,
        retry_after_max_s=config.retry_after_max_s,
        max_redirects=config.max_redirects,
        max_bytes=config.max_bytes,
        user_agent=config.user_agent or USER_AGENT,
        respect_robots_optout=config.respect_robots_optout,
        allowed_private_networks=tuple(config.allow_private_addresses),
        concurrency=config.concurrency,
        per_host_concurrency=config.per_host_concurrency,
    )


class _DownloadPartition(beam.DoFn):
    def __init__(self, config: DownloadConfig) -> None:
        self._config = config
        self._fetcher: Fetcher | None = None
        self._bytes = Metrics.counter("altsieve", "bytes_fetched")
        self._fetched = Metrics.counter("altsieve", "pairs_fetched")
        self._latency = Metrics.distribution("altsieve", "fetch_latency_ms")

    def setup(self) -> None:
        self._fetcher = Fetcher(fetch_options(self._config))

    def teardown(self) -> None:
        if self._fetcher is not None:
            self._fetcher.close()

    def process(self, partition: Partition) -> Iterator[dict[str, Any]]:
        assert self._fetcher is not None
        to_fetch = []
        for row in partition.rows:
            record = dict(row)  # Beam inputs must not be mutated
            record["partition_id"] = partition.partition_id
            # WriteShards writes the partition when this many records of it have arrived.
            record["partition_size"] = len(partition.rows)
            if record.get("reason") is None:
                to_fetch.append((record, record["url"]))
            else:
                yield record
        for record, result in self._fetcher.fetch_many(iter(to_fetch)):
            record["http_status"] = result.status_code
            record["final_url"] = result.final_url if result.final_url != result.url else None
            if result.reason is None and result.body is not None:
                record["body"] = result.body
                record["bytes"] = len(result.body)
                self._bytes.inc(len(result.body))
            else:
                record["reason"] = result.reason
                record["error_message"] = result.error_message
            self._fetched.inc()
            self._latency.update(int(result.elapsed_s * 1000))
            yield record


class Download(beam.PTransform):
    """``PCollection[Partition]`` -> ``PCollection[record]``: one record per input row."""

    def __init__(self, config: DownloadConfig) -> None:
        super().__init__()
        self._config = config

    def expand(self, partitions: beam.PCollection) -> beam.PCollection:
        return partitions | "Fetch" >> beam.ParDo(_DownloadPartition(self._config))
