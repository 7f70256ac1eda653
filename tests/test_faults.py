"""Faults: each pass killed (SIGKILL) mid-write, a full disk, two runs on one output folder.

After every fault the same command is run again; it must succeed, leave no ``.tmp-*`` file anywhere,
and give the same dataset as a run that was never interrupted (final shards byte for byte, every
pair's decision and reason).
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from altsieve.core import fsutil, lease
from altsieve.pipeline.cli import main, run_all
from altsieve.pipeline.demo import demo_config
from altsieve.testcorpus.generator import generate_corpus
from altsieve.testcorpus.server import CorpusServer
from tests.test_bad_inputs import message_lines

# Deterministic labels only (no 503-then-200 response, whose state would differ between runs).
LABELS = {"exact_duplicate": 3, "http_404": 2, "near_dup_resized": 2, "tiny": 1, "corrupt": 1}
SMALL = {"input": {"rows_per_partition": 5}, "output": {"samples_per_shard": 8}}
CLI_FLAGS = ["--allow-private-addresses", "127.0.0.1/32", "--timeout", "2", "--retries", "1",
             "--rows-per-partition", "5", "--samples-per-shard", "8",
             "--set", "download.connect_timeout_s=2", "--set", "download.backoff_max_s=0.5",
             "--set", "download.retry_after_max_s=2", "--set", "input.save_additional_columns=[source_id]"]

# Runs the CLI in a child process that SIGKILLs itself when the N-th atomic write whose target contains
# PATTERN has written its temporary file and not yet renamed it: the worst moment for leftovers.
KILLING_DRIVER = textwrap.dedent("""
    import os, signal, sys
    from contextlib import contextmanager
    from altsieve.core import fsutil
    pattern, nth = os.environ["KILL_AT"].rsplit(":", 1)
    original, seen = fsutil.atomic_open, [0]

    @contextmanager
    def killing_open(path, mode="wb"):
        with original(path, mode) as handle:
            yield handle
            if pattern in path:
                seen[0] += 1
                if seen[0] == int(nth):
                    handle.flush()
                    os.kill(os.getpid(), signal.SIGKILL)

    fsutil.atomic_open = killing_open
    from altsieve.pipeline.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def small_corpus():
    corpus = generate_corpus(40, seed=1, label_counts=LABELS)
    with CorpusServer(corpus) as server:
        yield corpus, server


@pytest.fixture(scope="module")
def small_input(small_corpus, tmp_path_factory) -> str:
    corpus, server = small_corpus
    path = str(tmp_path_factory.mktemp("faults_input") / "input.parquet")
    corpus.write_input(path, server.base_url)
    return path


def small_config():
    return demo_config(extra=[SMALL])


@pytest.fixture(scope="module")
def reference(small_input, tmp_path_factory) -> str:
    """An uninterrupted run, to which every faulted-then-rerun output must be equal."""
    output = str(tmp_path_factory.mktemp("faults_reference") / "out")
    run_all(small_config(), [small_input], output, [])
    return output


def dataset(output: str) -> dict[str, object]:
    """What a user gets: final tars member by member, final Parquet rows, each pair's decision and reason."""
    found: dict[str, object] = {}
    for path in sorted(glob.glob(f"{output}/[0-9]*.tar")):
        with tarfile.open(path) as tar:
            found[Path(path).name] = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    for path in sorted(glob.glob(f"{output}/[0-9]*.parquet")):
        found[Path(path).name] = pq.read_table(path).to_pylist()
    for folder in ("_decisions", "_candidates"):
        for path in sorted(glob.glob(f"{output}/{folder}/*.parquet")):
            found[f"{folder}/{Path(path).name}"] = pq.read_table(path, columns=["key", "reason"]).to_pylist()
    found["funnel"] = json.loads(Path(output, "stats.json").read_text())["funnel"]
    return found


def temporaries(output: str | Path) -> list[str]:
    return sorted(str(p) for p in Path(output).rglob(".tmp-*"))


def run_killed(argv: list[str], kill_at: str) -> None:
    env = {**os.environ, "KILL_AT": kill_at}
    done = subprocess.run([sys.executable, "-c", KILLING_DRIVER, *argv], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == -signal.SIGKILL, f"the kill at {kill_at} did not happen:\n{done.stderr[-3000:]}"


def ingested_copy(reference: str, output: Path, selected: bool = False) -> None:
    """The reference output as its ingest pass (``selected``: and its select pass) left it."""
    shutil.copytree(reference, output)
    (output / "_altsieve" / "reshard_plan.json").unlink()
    for path in [*output.glob("[0-9]*.*"), output / "stats.json", output / "manifest.json", output / "summary.txt"]:
        path.unlink()
    if not selected:
        (output / "_altsieve" / "select_done.json").unlink()
        for path in output.glob("_decisions/*"):
            path.unlink()


# Points in each pass: the command killed, what the write's target contains, which such write. Candidate
# shards are written tar, Parquet, stats, marker per partition, so "_candidates/" 22 dies inside the sixth of 8;
# "{out}/0000" is a final shard's file (tar, Parquet, stats per shard): 9 is the third shard's stats; the reports
# are written by the reshard command after its pass. (tests/test_end_to_end.py kills an ingest at a moment it
# does not choose.) select starts from the reference's ingest, reshard and the reports from its select.
KILL_POINTS = [
    ("ingest", "run", "_candidates/:22"),
    ("select", "select", "_decisions/:2"),
    ("reshard", "reshard", "{out}/0000:9"),
    ("reports", "reshard", "manifest.json:1"),
]


@pytest.mark.parametrize(("pass_name", "command", "kill_at"), KILL_POINTS, ids=[p[0] for p in KILL_POINTS])
def test_each_pass_killed_then_rerun_equals_uninterrupted(small_input, reference, tmp_path, pass_name, command,
                                                          kill_at) -> None:
    output = tmp_path / "out"
    argv = [command, small_input, "-o", str(output), *CLI_FLAGS] if command == "run" else [command, "-o", str(output)]
    if command != "run":
        ingested_copy(reference, output, selected=command == "reshard")
    run_killed(argv, kill_at.format(out=output))
    left = temporaries(output)
    assert left, f"the kill during {pass_name} should have left an unfinished write"
    if pass_name == "select":
        assert any("/_decisions/" in p for p in left)
    if pass_name == "reshard":
        assert any(Path(p).parent == output for p in left)
    assert not (output / "summary.txt").exists()
    assert (output / "_altsieve" / "lease.json").exists()  # the killed run's lease, stale now (its pid is gone)

    assert main(argv) == 0
    if command == "select":
        assert main(["reshard", "-o", str(output)]) == 0
    assert temporaries(output) == []
    assert not (output / "_altsieve" / "lease.json").exists()
    assert dataset(str(output)) == dataset(reference)


def test_two_runs_on_one_output_the_second_is_refused(small_input, reference, tmp_path) -> None:
    output = tmp_path / "out"
    command = [sys.executable, "-m", "altsieve.pipeline.cli", "run", small_input, "-o", str(output), *CLI_FLAGS]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lease_file = output / "_altsieve" / "lease.json"
    deadline = time.monotonic() + 60
    while not lease_file.exists() and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.05)
    holder = json.loads(lease_file.read_text())
    second = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert first.poll() is None, "the second run must have been refused while the first was still running"
    assert second.returncode == 2
    message = message_lines(second.stderr)
    assert len(message) == 1 and message[0].startswith("altsieve: error: output"), second.stderr
    assert f"pid {first.pid}" in message[0] and holder["host"] in message[0] and "started" in message[0]
    assert first.wait(timeout=300) == 0, first.stderr.read()[-3000:]
    assert dataset(str(output)) == dataset(reference)  # the refused run wrote nothing into it
    assert not lease_file.exists()


def test_lease_on_an_object_store_heartbeat_and_staleness() -> None:
    """The lease works on any fsspec store (memory:// here): held, refused, heartbeat, stale, released."""
    output = "memory://bucket/leased-out"
    first = lease.Lease(output, "altsieve run", heartbeat_s=0.05, stale_after_s=0.5, settle_s=0.01)
    first.acquire()
    before = lease.Lease(output)._read()["heartbeat"]
    time.sleep(0.3)
    assert lease.Lease(output)._read()["heartbeat"] > before  # the heartbeat advances
    with pytest.raises(lease.LeaseHeld, match=r"in use by another run \(altsieve run on host .*, pid \d+, started"):
        lease.Lease(output, settle_s=0.01).acquire()
    first._stop.set()  # the holder hangs (a frozen machine): no more heartbeats
    first._thread.join()
    time.sleep(0.6)
    second = lease.Lease(output, "altsieve select", stale_after_s=0.5, settle_s=0.01)
    second.acquire()  # stale: taken over
    assert lease.Lease(output)._read()["token"] == second.holder["token"]
    first.release()  # the old holder's release leaves the new lease alone
    assert fsutil.exists(lease.lease_path(output))
    second.release()
    assert not fsutil.exists(lease.lease_path(output))


def test_a_lease_of_a_dead_process_on_this_host_is_stale_at_once(tmp_path) -> None:
    output = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = {"token": "x", "command": "altsieve run", "host": os.uname().nodename, "pid": int(dead.stdout),
             "started": time.time(), "heartbeat": time.time()}
    (output / "_altsieve").mkdir(parents=True)
    (output / "_altsieve" / "lease.json").write_text(json.dumps(stale))
    with lease.hold(str(output)) as held:
        assert json.loads((output / "_altsieve" / "lease.json").read_text())["token"] == held.holder["token"]


# --- Disk full --------------------------------------------------------------------------------------


DISK_FULL_SCRIPT = textwrap.dedent("""
    set -u
    mount -t tmpfs -o size=$SIZE tmpfs "$OUT"
    "$PYTHON" -m altsieve.pipeline.cli run "$INPUT" -o "$OUT/data" $FLAGS >/dev/null 2>"$KEEP/full.err"
    echo $? > "$KEEP/full.rc"
    (cd "$OUT" && find . -name '.tmp-*') > "$KEEP/full.tmp"
    mount -o remount,size=64m "$OUT"   # space freed
    "$PYTHON" -m altsieve.pipeline.cli run "$INPUT" -o "$OUT/data" $FLAGS >/dev/null 2>"$KEEP/rerun.err"
    echo $? > "$KEEP/rerun.rc"
    cp -r "$OUT/data" "$KEEP/data"
""")


def test_disk_full_is_one_line_and_the_rerun_completes(small_input, reference, tmp_path, monkeypatch, capsys,
                                                       tmpfs_mountable) -> None:
    """A real full disk (a 600 KB tmpfs) where the machine allows mounting one; else ENOSPC from a patched write.

    The 600 KB hold the run's metadata and a few candidate shards, not all 8 partitions and the final shards.
    """
    keep = tmp_path / "keep"
    keep.mkdir()
    if tmpfs_mountable:
        mount_point = tmp_path / "mnt"
        mount_point.mkdir()
        env = {**os.environ, "SIZE": "600k", "OUT": str(mount_point), "KEEP": str(keep), "INPUT": small_input,
               "PYTHON": sys.executable, "FLAGS": " ".join(CLI_FLAGS)}
        subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", DISK_FULL_SCRIPT],
                       env=env, check=True, timeout=600)
        rc, err = int((keep / "full.rc").read_text()), (keep / "full.err").read_text()
        left = (keep / "full.tmp").read_text().split()
        rerun_rc, rerun_err = int((keep / "rerun.rc").read_text()), (keep / "rerun.err").read_text()
        output = keep / "data"
    else:  # simulated: the 12th atomic write of the run fails with ENOSPC, as a full disk makes it
        original, count = fsutil.atomic_open, [0]

        def full_disk(path: str, mode: str = "wb"):
            count[0] += 1
            if count[0] == 12:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return original(path, mode)

        output = tmp_path / "data"
        monkeypatch.setattr(fsutil, "atomic_open", full_disk)
        rc = main(["run", small_input, "-o", str(output), *CLI_FLAGS])
        err, left = capsys.readouterr().err, temporaries(output)
        monkeypatch.setattr(fsutil, "atomic_open", original)
        rerun_rc = main(["run", small_input, "-o", str(output), *CLI_FLAGS])
        rerun_err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("altsieve: error:")]
    assert rc == 2, err[-3000:]
    assert len(errors) == 1 and "the disk is full" in errors[0], err[-3000:]
    assert "Traceback" not in err
    assert left == []  # the failed write removed its own temporary
    assert rerun_rc == 0, rerun_err[-3000:]
    assert temporaries(output) == []
    assert dataset(str(output)) == dataset(reference)


def test_disk_full_in_select_then_in_reshard_then_rerun(reference, tmp_path, monkeypatch, capsys) -> None:
    """ENOSPC raised by each pass's second output write (simulated: the tmpfs test covers a real disk in ingest)."""
    output = tmp_path / "out"
    ingested_copy(reference, output)
    original = fsutil.atomic_open
    # The second decision file, the second final-shard file (progress files are written and lost quietly).
    for pass_name, target in (("select", "/_decisions/"), ("reshard", f"{output}/0000")):
        count = [0]

        def full_disk(path: str, mode: str = "wb", count: list[int] = count, target: str = target):
            count[0] += target in path
            if target in path and count[0] == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
            return original(path, mode)

        monkeypatch.setattr(fsutil, "atomic_open", full_disk)
        assert main([pass_name, "-o", str(output)]) == 2
        err = message_lines(capsys.readouterr().err)
        assert len(err) == 1 and err[0].startswith("altsieve: error: the disk is full: ") and str(output) in err[0]
        monkeypatch.setattr(fsutil, "atomic_open", original)
        assert main([pass_name, "-o", str(output)]) == 0
    assert temporaries(output) == []
    assert dataset(str(output)) == dataset(reference)
