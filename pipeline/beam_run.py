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
from tqdm import tqdm

from altsieve.transforms import progress

log = logging.getLogger("altsieve")


def pipeline_options(beam_args: list[str]) -> PipelineOptions:
    """The user's Beam options, unchanged; the DirectRunner when none is named."""
    return PipelineOptions(beam_args or [])


class Progress:
    """A tqdm bar for one pass, in pairs, with rate and ETA, fed by the counts its workers write.

    The workers write per item (partition, shard, crawl file) under the output folder
    (transforms/progress.py), so the bar moves on any runner whose workers write where the launcher
    can read, within a second of the work, and a one-partition run counts its pairs as they go.
    ``total`` may be a callable of the summed counts: a pass that learns its total while running.
    ``field``: the summed count the bar shows ("pairs", or "done" to count finished items).
    """

    def __init__(self, label: str, output: str, pass_name: str,
                 total: int | Callable[[dict[str, int]], int | None] | None,
                 unit: str = "pairs", field: str = "pairs", postfix: Callable[[dict[str, int]], str] | None = None,
                 interval_s: float = 0.5) -> None:
        self._label, self._output, self._pass = label, output, pass_name
        self._total, self._unit, self._field, self._postfix = total, unit, field, postfix
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._reader = progress.ProgressReader(output, pass_name)
        self._bar: tqdm | None = None
        self._interactive = False

    def __enter__(self) -> Progress:
        progress.clear(self._output, self._pass)  # a killed run's counts
        # Not a terminal (a log file, CI): a line every 10 s instead of a redrawn bar.
        self._interactive = sys.stderr.isatty()
        self._bar = tqdm(desc=self._label, total=None if callable(self._total) else self._total, unit=self._unit,
                         file=sys.stderr, dynamic_ncols=True, smoothing=0.1,
                         mininterval=0.5 if self._interactive else 10.0)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._poll()
        if self._bar is not None:
            self._bar.close()
        try:
            progress.clear(self._output, self._pass)
        except OSError as err:  # never hide the pass's own error behind a cleanup failure
            log.warning("could not remove the progress files of %s: %s", self._pass, err)

    def _loop(self) -> None:
        # Polls back off on slow listings (an object store with many items), to at most one in ten of the time.
        interval = self._interval
        while not self._stop.wait(interval):
            started = time.monotonic()
            self._poll()
            interval = max(self._interval, 10 * (time.monotonic() - started))

    def _poll(self) -> None:
        bar = self._bar
        if bar is None:
            return
        try:
            totals = self._reader.totals()
            if bar.total is None and callable(self._total):
                total = self._total(totals)
                if total is not None:
                    bar.total = total
        except Exception as err:  # a listing may fail while files are being renamed; the next poll catches up
            log.debug("progress poll failed: %s", err)
            return
        done = totals.get(self._field, 0)
        if self._postfix is not None:
            bar.set_postfix_str(self._postfix(totals), refresh=False)
        if done > bar.n:
            bar.update(done - bar.n)
        elif self._interactive:  # the elapsed time and rate move on while the count waits
            bar.refresh()


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
