"""A worker process of the local runner: Beam's SDK harness, with its start-up log kept off the terminal.

Beam's own worker logs a dozen INFO lines per process and pass to stderr (its logging is configured by
an import-time warning before the pipeline's log level is known). Here a handler that passes only
errors is installed first; every record still reaches the runner through Beam's log channel, where
the launcher's log level (``altsieve -v``) decides what is shown.
"""

from __future__ import annotations

import logging
import sys


def main() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.ERROR)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)  # before Beam's import: its logging.warning() then adds no handler

    from apache_beam.runners.worker import sdk_worker_main

    sdk_worker_main.main(sys.argv)


if __name__ == "__main__":
    main()
