"""The whole pipeline through Beam's portable path: the same output as the local runner (FnApiRunner).

Beam's own Python job service and an external worker pool on loopback stand in for Flink, Spark
or Dataflow: the pipeline is turned into a proto, staged, and run by SDK harnesses over gRPC in
other processes, so unpicklable DoFns, state held in the launcher, and side effects outside Beam
fail here as they would on a cluster.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from altsieve.pipeline.cli import run_all
from altsieve.pipeline.demo import demo_config
from tests.test_end_to_end import _comparable, _tar_members, _without_server, all_rows, final_keys, key_of, serving


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port} after {timeout_s} s")


@pytest.fixture(scope="module")
def portable_services(tmp_path_factory) -> Iterator[list[str]]:
    """A local job service and an external worker pool, both on loopback; yields the Beam options."""
    logs = tmp_path_factory.mktemp("beam-services")
    # The worker pool starts each SDK harness as `python ...`: this interpreter must come first.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    job_port, pool_port = _free_port(), _free_port()
    commands = [
        [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main", "--port", str(job_port)],
        [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", "--service_port", str(pool_port)],
    ]
    processes = []
    try:
        for index, command in enumerate(commands):
            log = open(logs / f"service-{index}.log", "w")  # noqa: SIM115 - closed with the process below
            processes.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), log))
        _wait_for_port(job_port, processes[0][0])
        _wait_for_port(pool_port, processes[1][0])
        yield [
            "--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}",
            "--environment_type=EXTERNAL", f"--environment_config=localhost:{pool_port}",
        ]
    finally:
        for process, log in processes:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()


def test_portable_runner_gives_the_direct_runners_output(corpus, portable_services, tmp_path) -> None:
    with serving(corpus, tmp_path / "direct") as (_, input_path):
        run_all(demo_config(), [input_path], str(tmp_path / "direct-out"), [])
    with serving(corpus, tmp_path / "portable") as (_, input_path):
        stats = run_all(demo_config(), [input_path], str(tmp_path / "portable-out"), portable_services)
    direct, portable = str(tmp_path / "direct-out"), str(tmp_path / "portable-out")
    assert final_keys(portable) == final_keys(direct)
    assert _without_server(all_rows(portable)) == _without_server(all_rows(direct))
    for path in sorted(Path(direct).glob("[0-9]*.tar")):
        assert _comparable(_tar_members(path)) == _comparable(_tar_members(Path(portable, path.name)))
    # Counters travel back from the SDK harnesses to the launcher.
    assert stats["metrics"].get("pairs_fetched", 0) > 0


def test_portable_runner_scores_clip_as_the_direct_runner(corpus, portable_services, tmp_path) -> None:
    """ClipScore (RunInference) in SDK harnesses: the model loads there, passes the launcher's weights check,
    and every partition reaches WriteShards whole, with the CLIP drops the truth table expects."""
    pytest.importorskip("open_clip")
    from tests.test_clip import expected_with_clip

    with serving(corpus, tmp_path / "portable") as (_, input_path):
        stats = run_all(demo_config("demo"), [input_path], str(tmp_path / "portable-out"), portable_services)
    rows = all_rows(str(tmp_path / "portable-out"))
    expected = expected_with_clip(corpus)
    assert {pair_id: rows[key_of(pair_id)]["reason"] for pair_id in expected} == expected
    assert stats["metrics"]["clip_pairs_scored"] > 0
