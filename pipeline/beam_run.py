"""Running one pass as a Beam pipeline: the runner chosen, options passed through, progress shown, metrics collected.

With no ``--runner``, a pass runs on Beam's Python FnApiRunner, named here rather than left to Beam's
DirectRunner (which, online, first downloads and starts the Prism runner binary: a runner no test
ran), with one worker process per core (``--direct_num_workers`` and ``--direct_running_mode`` change
that). Any ``--runner`` (PrismRunner, PortableRunner, FlinkRunner, DataflowRunner, ...) is used as given.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from tqdm import tqdm

from altsieve.core import lease
from altsieve.pipeline import beam_memo, beam_worker
from altsieve.pipeline.beam_worker import given_flags, local_cores
from altsieve.transforms import progress

log = logging.getLogger("altsieve")


def uses_local_runner(beam_args: list[str]) -> bool:
    return PipelineOptions(beam_args or []).view_as(StandardOptions).runner is None


def local_workers(beam_args: list[str], rows: int | None = None, rows_per_worker: int = 1) -> int | None:
    """The workers a pass gets on the local runner; None on any other runner (not known here).

    The user's ``--direct_num_workers`` (0: every core), or one in-process worker when they ask for
    ``--direct_running_mode in_memory``; otherwise one worker process per core, but no more than the
    pass's ``rows`` fill at ``rows_per_worker`` each: a worker process costs seconds to start where it
    imports Beam itself (not Linux), and everywhere Beam's cost per bundle across processes, which a pass
    over a few hundred rows does not pay back.
    """
    if not uses_local_runner(beam_args):
        return None
    given = given_flags(beam_args)
    direct = PipelineOptions(beam_args or []).view_as(DirectOptions)
    if "direct_num_workers" in given:
        return direct.direct_num_workers or local_cores()
    if "direct_running_mode" in given and direct.direct_running_mode == "in_memory":
        return 1
    workers = local_cores()
    if rows is not None:
        workers = min(workers, max(1, -(-rows // max(rows_per_worker, 1))))
    return workers


def pipeline_options(beam_args: list[str], workers: int | None = None) -> PipelineOptions:
    """The user's Beam options; on the local runner with ``workers`` (see local_workers) unless they named them."""
    options = PipelineOptions(beam_args or [])
    if options.view_as(StandardOptions).runner is None:
        given = given_flags(beam_args)
        direct = options.view_as(DirectOptions)
        direct.direct_num_workers = workers or local_workers(beam_args) or 1
        if "direct_running_mode" not in given:
            direct.direct_running_mode = "multi_processing" if direct.direct_num_workers > 1 else "in_memory"
    return options


def make_pipeline(beam_args: list[str], workers: int | None = None) -> beam.Pipeline:
    """A pipeline on the runner ``beam_args`` name, or on the local FnApiRunner (see the module's docstring)."""
    beam_memo.install()  # where the CLI has not (altsieve used as a library)
    beam_worker.resume_collection()  # the command's imports are done (launch.entry deferred collection)
    remove_dead_runs_temp_folders()
    return _with_own_temp_folder(_make_pipeline(beam_args, workers))


# Beam makes a temp folder per pipeline (``beam-pipeline-temp*``) and removes it at the end of run(): a killed
# run leaves it behind, and nothing tells whose it was. Ours carry the launcher's pid, so the next run removes
# those of processes that are gone (beam_worker.own_temp_folder).


def _with_own_temp_folder(pipeline: beam.Pipeline) -> beam.Pipeline:
    shutil.rmtree(pipeline.local_tempdir, ignore_errors=True)
    pipeline.local_tempdir = beam_worker.own_temp_folder()
    return pipeline


def remove_dead_runs_temp_folders() -> None:
    """The Beam temp folders of altsieve processes that no longer run (killed ones: the others remove their own)."""
    for path in glob.glob(os.path.join(tempfile.gettempdir(), f"{beam_worker.TEMP_PREFIX}*-*")):
        pid = os.path.basename(path)[len(beam_worker.TEMP_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not lease.pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _make_pipeline(beam_args: list[str], workers: int | None) -> beam.Pipeline:
    options = pipeline_options(beam_args, workers)
    if options.view_as(StandardOptions).runner is not None:
        return beam.Pipeline(options=options)
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.transforms.environments import SubprocessSDKEnvironment

    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode != "multi_processing":
        beam_worker.stop_fork_server()  # one in-process worker: a fork server started ahead is not needed
        return beam.Pipeline(runner=FnApiRunner(), options=options)
    # The same worker processes Beam's multi_processing mode starts, through an entry point that keeps
    # their start-up log off the terminal. Beam would replace this environment in multi_processing mode,
    # so the runner is told in_memory: with more than one worker it then runs them in these processes.
    command = beam_worker.worker_command()
    runner = FnApiRunner(default_environment=SubprocessSDKEnvironment.from_command_string(command))
    direct.direct_running_mode = "in_memory"
    logging.getLogger("apache_beam.runners.portability.fn_api_runner.fn_runner").addFilter(_NOT_IN_MEMORY_WARNING)
    return beam.Pipeline(runner=runner, options=options)


class _NotInMemoryWarning(logging.Filter):
    """Drops FnApiRunner's advice to use multi_processing with several workers: they are worker processes here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("If direct_num_workers is not equal to 1")


_NOT_IN_MEMORY_WARNING = _NotInMemoryWarning()  # one instance: addFilter adds it once however many passes run


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
        # A log file gets each bar's lines in turn at position 0: a second bar's own position would be reached by
        # moving the cursor up (ESC [A), which a log keeps as garbage.
        self._bar = tqdm(desc=self._label, total=None if callable(self._total) else self._total, unit=self._unit,
                         file=sys.stderr, dynamic_ncols=True, smoothing=0.1,
                         mininterval=0.5 if self._interactive else 10.0, position=None if self._interactive else 0)
        self._thread.start()
        return self

    def stop_polling(self) -> None:
        """The bar takes its last count and polls no more (once; after ``__enter__``)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._poll()

    def finish(self) -> None:
        """The pass is done: its last count and its final line, now (``__exit__`` then does only the rest)."""
        if self._bar is None:
            return
        self.stop_polling()
        self._bar.close()
        self._bar = None

    @staticmethod
    def finish_in_order(*bars: Progress) -> None:
        """Bars shown at once, finished in the order given: each takes its last count first, so that no bar below
        one that closed redraws (in a terminal it would then be drawn again one line lower)."""
        for bar in bars:
            bar.stop_polling()
        for bar in bars:
            bar.finish()

    def __exit__(self, *exc: object) -> None:
        self.finish()
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


def run_pipeline(build: Callable[[beam.Pipeline], None], beam_args: list[str], rows: int | None = None,
                 rows_per_worker: int = 1) -> dict[str, Any]:
    """Build and run one pipeline to completion; returns its counters and distributions.

    ``rows`` / ``rows_per_worker``: the pass's size and the least work worth a local worker process.
    """
    pipeline = make_pipeline(beam_args, local_workers(beam_args, rows, rows_per_worker))
    try:
        build(pipeline)
    except BaseException:
        # Beam makes the pipeline's temp folder when the pipeline is made and removes it only in run().
        shutil.rmtree(pipeline.local_tempdir, ignore_errors=True)
        raise
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
