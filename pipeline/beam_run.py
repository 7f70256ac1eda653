"""Running one pass as a Beam pipeline: options passed through, progress shown, metrics collected."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

log = logging.getLogger("altsieve")


def pipeline_options(beam_args: list[str]) -> PipelineOptions:
    """The user's Beam options, unchanged; the DirectRunner when none is named."""
    return PipelineOptions(beam_args or [])


class Progress:
    """Prints ``done/total``, rate and ETA every few seconds, from a count the launcher can observe.

    The count comes from the output folder (completion markers), so it works on any runner whose
    workers write where the launcher can look.
    """

    def __init__(self, label: str, total: int, count_done: Callable[[], int], unit_per_item: float = 1.0,
                 unit: str = "partitions", interval_s: float = 5.0) -> None:
        self._label, self._total, self._count = label, total, count_done
        self._unit_per_item, self._unit, self._interval = unit_per_item, unit, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._started = time.monotonic()
        self._initial = 0

    def __enter__(self) -> Progress:
        self._initial = self._safe_count()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.report(final=True)

    def _safe_count(self) -> int:
        try:
            return self._count()
        except Exception:  # a listing may fail while files are being renamed; the next poll catches up
            return self._initial

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.report()

    def report(self, final: bool = False) -> None:
        done = self._safe_count()
        elapsed = max(time.monotonic() - self._started, 1e-9)
        new = done - self._initial
        rate = new * self._unit_per_item / elapsed
        remaining = max(self._total - done, 0)
        eta = remaining / (new / elapsed) if new else float("nan")
        eta_text = "done" if final else (f"ETA {eta:.0f} s" if eta == eta else "ETA -")
        print(
            f"[{self._label}] {done}/{self._total} {self._unit}, {rate:.0f} pairs/s, {elapsed:.0f} s, {eta_text}",
            file=sys.stderr,
            flush=True,
        )


def run_pipeline(build: Callable[[beam.Pipeline], None], beam_args: list[str]) -> dict[str, Any]:
    """Build and run one pipeline to completion; returns its counters and distributions."""
    pipeline = beam.Pipeline(options=pipeline_options(beam_args))
    build(pipeline)
    result = pipeline.run()
    result.wait_until_finish()
    return collect_metrics(result)


def collect_metrics(result: Any) -> dict[str, Any]:
    try:
        queried = result.metrics().query(MetricsFilter().with_namespace("altsieve"))
    except Exception as err:  # some runners expose no metrics to the launcher
        log.warning("metrics not available from this runner: %s", err)
        return {}
    metrics: dict[str, Any] = {}
    for counter in queried.get("counters", []):
        value = counter.committed if counter.committed is not None else counter.attempted
        metrics[counter.key.metric.name] = metrics.get(counter.key.metric.name, 0) + (value or 0)
    for distribution in queried.get("distributions", []):
        data = distribution.committed or distribution.attempted
        if data is not None and data.count:
            metrics[distribution.key.metric.name] = {
                "count": data.count, "sum": data.sum, "min": data.min, "max": data.max, "mean": data.mean,
            }
    return metrics
