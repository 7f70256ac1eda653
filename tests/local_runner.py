"""The runner of the tests' own pipelines: Beam's Python FnApiRunner in one process, named as altsieve names it
(pipeline/beam_run.py). A bare ``beam.Pipeline()`` is the DirectRunner, which first tries to download and start the
Prism runner: online a runner no altsieve pass runs on, offline a job-server folder left in the temp folder."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import FnApiRunner


def local_pipeline() -> beam.Pipeline:
    return beam.Pipeline(runner=FnApiRunner())
