"""The local runner's worker processes come from a fork server that imported Beam's harness and the stages once.

What is checked: a multi-process pipeline's workers are the server's children and give the right output; the
streams and exit status of a forked worker are its client's; a worker dies with its client, and the server with
its launcher; with no server to answer, the client is a worker of its own; a server started ahead for a pass
that then runs in one process is stopped; nothing is left in the temp folder.
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import apache_beam as beam
import pytest

from altsieve.pipeline import beam_run, beam_worker

pytestmark = pytest.mark.skipif(not beam_worker.fork_server_supported(), reason="the fork server is Linux-only")

CLIENT = [sys.executable, "-m", "altsieve.pipeline.beam_worker", "--via"]
# The modules a client process imports are on its stderr: a client that ran the harness itself imported Beam.
CLIENT_IMPORTS = [sys.executable, "-X", "importtime", "-m", "altsieve.pipeline.beam_worker", "--via"]


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as handle:
        return [int(child) for child in handle.read().split()]


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _imported_beam(importtime_log: str) -> bool:
    return any(line.startswith("import time:") and "apache_beam" in line for line in importtime_log.splitlines())


def _run_script(script: str) -> subprocess.CompletedProcess:
    """``script`` in a fresh Python process (its imports and collector its own), which must succeed."""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def _wait_until(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.fixture
def server():
    started = beam_worker.WorkerForkServer()
    started.used = True  # a test's server is stopped the way a used one is: stdin closed, workers waited for
    yield started
    started.stop()
    assert not os.path.exists(started.folder)


def _openblas_threads() -> int:
    """The thread count of the OpenBLAS numpy's wheel bundles (numpy.libs/libscipy_openblas64_-*.so)."""
    import ctypes
    import glob

    import numpy

    (library,) = glob.glob(os.path.join(os.path.dirname(numpy.__file__), os.pardir, "numpy.libs", "*openblas*"))
    return ctypes.CDLL(library).scipy_openblas_get_num_threads64_()


class _WhoRanIt(beam.DoFn):
    def process(self, element: int):
        from altsieve.transforms import fetch, language

        # What the stages' setup() loads, already loaded when the worker was forked (PRELOAD_CALLS): 1 and 1.
        loaded = language._fasttext_predict.cache_info().currsize, fetch._default_ssl_context.cache_info().currsize
        collection = int(gc.isenabled()), gc.get_threshold()[0], gc.get_freeze_count()
        yield element, os.getpid(), os.getppid(), _openblas_threads(), *collection, *loaded


def test_local_runner_workers_are_forked_by_the_fork_server(tmp_path: Path) -> None:
    out = tmp_path / "who"
    pipeline = beam_run.make_pipeline(["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    with pipeline as p:
        _ = (p | beam.Create(list(range(40)), reshuffle=False) | beam.ParDo(_WhoRanIt())
             | beam.Map(lambda row: ",".join(map(str, row))) | beam.io.WriteToText(str(out)))
    rows = [line.split(",") for path in tmp_path.glob("who*") for line in path.read_text().splitlines()]
    assert sorted(int(element) for element, *_ in rows) == list(range(40))
    server = beam_worker._server
    assert server is not None and server.process.poll() is None  # kept for the next multi-process pass
    assert {int(parent) for _, _, parent, *_ in rows} == {server.process.pid}
    assert os.getpid() not in {int(pid) for _, pid, *_ in rows}
    # One OpenBLAS thread in each worker (one worker per core already), unless the user set the count.
    assert {int(threads) for _, _, _, threads, *_ in rows} == {int(os.environ.get("OPENBLAS_NUM_THREADS", "1"))}
    # The fastText model and the CA bundles came with the fork.
    assert {(model, ssl_context) for *_, model, ssl_context in rows} == {("1", "1")}
    # Collection on, its youngest generation at the workers' threshold, the server's imports frozen before the fork.
    collection = {(int(enabled), int(threshold)) for _, _, _, _, enabled, threshold, _, _, _ in rows}
    assert collection == {(1, beam_worker.WORKER_GC_THRESHOLD)}
    assert min(int(frozen) for *_, frozen, _, _ in rows) > 50_000
    # A pass on one in-process worker stops it, and its socket folder goes with it; the server ends on its own.
    folder = server.folder
    single = beam_run.make_pipeline(["--direct_running_mode=in_memory"])
    shutil.rmtree(single.local_tempdir)  # never run: Beam removes a pipeline's temp folder only in run()
    assert beam_worker._server is None and not os.path.exists(folder)
    assert _wait_until(lambda: server.process.poll() is not None, timeout=10)


def test_a_forked_worker_has_its_clients_streams_and_status(server) -> None:
    # No control address in the environment: the harness fails at once, in the forked worker.
    env = {k: v for k, v in os.environ.items() if k != "CONTROL_API_SERVICE_DESCRIPTOR"}
    client = subprocess.run([*CLIENT_IMPORTS, server.path], env=env, capture_output=True, text=True, timeout=60)
    assert client.returncode == 1
    assert "KeyError: 'CONTROL_API_SERVICE_DESCRIPTOR'" in client.stderr  # the worker's terminal is the client's
    assert "import time" in client.stderr and not _imported_beam(client.stderr)  # the forked worker raised it


def test_without_a_fork_server_the_client_is_a_worker_of_its_own(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CONTROL_API_SERVICE_DESCRIPTOR"}
    client = subprocess.run([*CLIENT_IMPORTS, str(tmp_path / "nobody.sock")], env=env, capture_output=True,
                            text=True, timeout=60)
    assert client.returncode == 1
    assert "KeyError: 'CONTROL_API_SERVICE_DESCRIPTOR'" in client.stderr
    assert _imported_beam(client.stderr)


def test_a_worker_ends_with_its_client(server) -> None:
    # A control address where nothing answers: the harness waits for it, as a worker waits for its runner.
    env = dict(os.environ, CONTROL_API_SERVICE_DESCRIPTOR='url: "127.0.0.1:9"',
               LOGGING_API_SERVICE_DESCRIPTOR='url: "127.0.0.1:9"', PIPELINE_OPTIONS="{}")
    client = subprocess.Popen([*CLIENT, server.path], env=env, stderr=subprocess.DEVNULL)
    try:
        assert _wait_until(lambda: _children(server.process.pid))
        (worker,) = _children(server.process.pid)
        assert client.poll() is None and _running(worker)
    finally:
        client.kill()
        client.wait()
    assert _wait_until(lambda: not _running(worker), timeout=10)


def test_a_server_stopped_without_waiting_ends_on_its_own(server) -> None:
    """stop_fork_server's way: the launcher goes on at once; the server still ends, and reap() collects it."""
    started = time.monotonic()
    server.stop(wait=False)
    assert time.monotonic() - started < 0.01 and not os.path.exists(server.folder)
    assert _wait_until(lambda: not _running(server.process.pid), timeout=10)
    server.reap()
    assert server.process.returncode == 0


def test_the_fork_server_ends_with_its_launcher(tmp_path: Path) -> None:
    # A launcher that dies without stopping its server (os._exit: no exit handlers).
    launcher = subprocess.run(
        [sys.executable, "-c", "import os\nfrom altsieve.pipeline import beam_worker\n"
         "s = beam_worker.start_fork_server()\nprint(s.process.pid, s.folder, flush=True)\nos._exit(0)"],
        capture_output=True, text=True, timeout=60, check=True)
    pid, folder = launcher.stdout.split()
    assert _wait_until(lambda: not _running(int(pid)))
    # Its socket folder carries the dead launcher's pid: the next run's clean-up removes it.
    assert os.path.basename(folder).startswith(f"{beam_worker.TEMP_PREFIX}")
    beam_run.remove_dead_runs_temp_folders()
    assert not os.path.exists(folder)


def test_the_fork_server_is_started_ahead_only_for_the_local_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    beam_worker.stop_fork_server()
    monkeypatch.setattr(beam_worker, "local_cores", lambda: 4)
    for named in (["--runner=PrismRunner"], ["--direct_num_workers=1"], ["--direct_running_mode", "in_memory"]):
        beam_worker.prestart_fork_server(named)
        assert beam_worker._server is None
    monkeypatch.setattr(beam_worker, "local_cores", lambda: 1)
    beam_worker.prestart_fork_server([])
    assert beam_worker._server is None
    monkeypatch.setattr(beam_worker, "local_cores", lambda: 4)
    beam_worker.prestart_fork_server([])
    server = beam_worker._server
    assert server is not None and not server.used
    started = time.monotonic()
    beam_worker.stop_fork_server()  # unused: killed at once, not left to finish its imports
    assert not os.path.exists(server.folder)
    assert _wait_until(lambda: server.process.poll() is not None, timeout=2.0)
    assert time.monotonic() - started < 2.0


def test_beam_and_the_stages_load_without_pandas_pymongo_or_bigquery_which_stay_importable() -> None:
    script = (
        "import sys\n"
        "from altsieve.pipeline.beam_worker import PRELOAD, import_beam_lean\n"
        "import_beam_lean()\n"
        "import importlib\n"
        "for module in (*PRELOAD, 'altsieve.pipeline.select', 'altsieve.pipeline.reshard'):\n"
        "    importlib.import_module(module)\n"
        "import io, pyarrow as pa, pyarrow.parquet as pq\n"
        "pq.write_table(pa.table({'key': ['a'], 'n': [1]}), io.BytesIO())  # pyarrow's first table\n"
        "assert 'pandas' not in sys.modules, 'pandas was imported'\n"
        "assert 'pymongo' not in sys.modules and 'bson' not in sys.modules, 'the MongoDB driver was imported'\n"
        "assert 'apache_beam.io.gcp.bigquery' not in sys.modules, 'Beam imported its BigQuery IO'\n"
        "import pandas, pymongo\n"
        "from apache_beam.io.gcp.bigquery import WriteToBigQuery\n"
        "print(pandas.DataFrame({'a': [1]}).shape, pymongo.ASCENDING, WriteToBigQuery.__name__)\n"
    )
    result = _run_script(script)
    assert result.stdout.strip() == "(1, 1) 1 WriteToBigQuery"
    assert "bson" not in result.stderr  # mongodbio's warning that it found none: ours to expect, not the user's


def test_the_command_line_starts_the_fork_server_for_run_and_ingest_only(monkeypatch) -> None:
    """pipeline/launch.py starts it from the raw command line, before the CLI's imports."""
    started = []
    monkeypatch.setattr(beam_worker, "local_cores", lambda: 4)
    monkeypatch.setattr(beam_worker, "start_fork_server", lambda: started.append(True))
    for argv, starts in (
        (["run", "urls.parquet", "-o", "out"], True),
        (["--debug", "ingest", "urls.parquet", "-o", "out"], True),
        (["run", "urls.parquet", "-o", "out", "--direct_num_workers", "1"], False),  # the user's worker setting
        (["run", "--help"], False),
        (["select", "-o", "out"], False),
        (["audit", "out", "--report", "r"], False),
        (["--version"], False),
        ([], False),
    ):
        started.clear()
        beam_worker.prestart_for_command_line(argv)
        assert bool(started) == starts, argv


def test_python_dash_m_altsieve_is_the_altsieve_command() -> None:
    result = subprocess.run([sys.executable, "-m", "altsieve", "--version"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("altsieve "), result.stderr[-2000:]


def test_collection_waits_for_the_imports_of_a_command_that_defers_it() -> None:
    # launch.entry defers collection; the first pipeline (make_pipeline) resumes it, what the imports made frozen.
    script = (
        "import gc\n"
        "from altsieve.pipeline import beam_worker\n"
        "beam_worker.defer_collection()\n"
        "assert not gc.isenabled()\n"
        "from altsieve.pipeline import beam_run\n"
        "assert not gc.isenabled() and gc.get_freeze_count() == 0\n"
        "import shutil\n"
        "pipeline = beam_run.make_pipeline(['--direct_running_mode=in_memory'])\n"
        "shutil.rmtree(pipeline.local_tempdir)\n"
        "assert gc.isenabled() and gc.get_freeze_count() > 50_000, gc.get_freeze_count()\n"
        "frozen = gc.get_freeze_count()\n"
        "pipeline = beam_run.make_pipeline(['--direct_running_mode=in_memory'])\n"
        "shutil.rmtree(pipeline.local_tempdir)\n"
        "assert gc.get_freeze_count() == frozen  # once only\n"
    )
    _run_script(script)


def test_a_process_that_did_not_defer_collection_keeps_it_as_it_was() -> None:
    # altsieve as a library (a test, a notebook): making a pipeline neither freezes nor switches anything.
    frozen, enabled = gc.get_freeze_count(), gc.isenabled()
    pipeline = beam_run.make_pipeline(["--direct_running_mode=in_memory"])
    shutil.rmtree(pipeline.local_tempdir)
    assert (gc.get_freeze_count(), gc.isenabled()) == (frozen, enabled)
