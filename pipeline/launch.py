"""The ``altsieve`` command's entry point: a run's fork server is started before the CLI's own imports.

Importing ``altsieve.pipeline.cli`` takes about 0.3 s (its config schema: pydantic builds every section's
validator). A run's fork server (beam_worker.prestart_fork_server) imports Beam and the ingest stages on
another core meanwhile; started from here, it starts that much sooner, and with it the workers. Only the
standard library and beam_worker (itself standard library only) are imported before it.
"""

from __future__ import annotations

import sys


def entry() -> None:
    from altsieve.pipeline import beam_worker

    beam_worker.defer_collection()  # until the first pipeline (beam_run.make_pipeline): see beam_worker
    beam_worker.prestart_for_command_line(sys.argv[1:])
    from altsieve.pipeline import cli

    cli.entry()


if __name__ == "__main__":
    entry()
