"""Fixtures shared by the test modules."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile

import pytest

from altsieve.testcorpus.generator import TestCorpus, generate_corpus
from altsieve.testcorpus.server import CorpusServer

# What Beam's job servers leave in the temp folder when they are not stopped: a bare ``beam.Pipeline()`` (the
# DirectRunner) starts the Prism runner's, which offline fails to download its binary and is never stopped.
_JOB_SERVER_TEMP = os.path.join(tempfile.gettempdir(), "beam-temp*")


@pytest.fixture(autouse=True)
def _no_beam_job_server_temporaries():
    """A test leaves no Beam job-server folder behind (a run leaves no temporaries; the tests' own pipelines run
    on the local runner altsieve names, not the DirectRunner's download of Prism)."""
    before = set(glob.glob(_JOB_SERVER_TEMP))
    yield
    left = set(glob.glob(_JOB_SERVER_TEMP)) - before
    assert not left, f"left in the temp folder: {sorted(left)}"


@pytest.fixture(scope="session")
def corpus() -> TestCorpus:
    """The 100-pair noisy-web test corpus (every label at least once), fixed seed."""
    return generate_corpus(n_pairs=100, seed=0)


@pytest.fixture(scope="session")
def demo_run(corpus, tmp_path_factory) -> tuple[str, dict]:
    """The demo recipe (the default rules + the tiny test CLIP) on that corpus, as `altsieve demo` runs it:
    (output folder, stats). Shared by the modules that only read it (copy it to change anything)."""
    from altsieve.pipeline.cli import run_all
    from altsieve.pipeline.demo import demo_config

    folder = tmp_path_factory.mktemp("demo")
    with CorpusServer(corpus) as server:
        input_path = str(folder / "input.parquet")
        corpus.write_input(input_path, server.base_url)
        stats = run_all(demo_config("demo"), [input_path], str(folder / "out"), [])
    return str(folder / "out"), stats


@pytest.fixture(scope="session")
def tmpfs_mountable() -> bool:
    """Whether this machine lets a user namespace mount a (read-only) tmpfs: a real full or read-only disk.

    Most Linux kernels allow it (``unshare --user --map-root-user --mount``); where one does not, the fault
    tests make the same error with a patched write instead.
    """
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "d=$(mktemp -d) && mount -t tmpfs -o ro,size=64k tmpfs $d && umount $d; rmdir $d"],
                           capture_output=True)
    return probe.returncode == 0
