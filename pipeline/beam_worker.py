"""A worker process of the local runner: Beam's SDK harness, with its own log kept off the terminal.

Beam's own worker logs a dozen INFO lines per process and pass to stderr (its logging is configured by
an import-time warning before the pipeline's log level is known), and a failing bundle's traceback
twice over. Here a handler that passes only CRITICAL records is installed first: every record still
reaches the runner through Beam's log channel, where the launcher's log level (``altsieve -v``)
decides what is shown, and a failed bundle reaches the launcher as its exception, which the CLI turns
into one line (``--debug`` shows the traceback). When the runner is done with it, the process ends without
the interpreter's module teardown, which the runner would wait for.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import traceback


def main() -> None:
    terminal = sys.stderr
    handler = logging.StreamHandler(terminal)
    handler.setLevel(logging.CRITICAL)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)  # before Beam's import: its logging.warning() then adds no handler
    # Beam's harness also prints a failed bundle's traceback to sys.stderr itself (SdkWorker._execute), besides
    # sending it to the runner: the launcher has it, so the worker's copy goes nowhere.
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process

    from apache_beam.runners.worker import sdk_worker_main

    try:
        sdk_worker_main.main(sys.argv)
    except Exception:  # the harness itself failed (not a bundle): that is the terminal's to see
        traceback.print_exc(file=terminal)
        raise SystemExit(1) from None
    # The runner closed the control channel and waits for this process to end, and the interpreter's teardown of
    # every module takes 0.3-0.5 s after Beam's and the stages' imports: the exit handlers run, then the process
    # ends without that teardown (the runner's close of 2 ingest workers: 0.74-0.96 s before, 0.08-0.10 s now).
    atexit._run_exitfuncs()
    logging.shutdown()
    os._exit(0)


if __name__ == "__main__":
    main()
