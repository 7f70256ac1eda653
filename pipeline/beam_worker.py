"""A worker process of the local runner: Beam's SDK harness, forked from a process that has imported it once.

Beam's local runner starts each worker as a command (``SubprocessSDKEnvironment``), and a fresh Python
process spends 2.2-2.5 CPU-s importing Beam's harness and the stages before its first bundle (1.5-1.8 of
it Beam's): on 2 cores, both cores for the first 1.4 s of an ingest. So on Linux the launcher starts one
*fork server* per process (``WorkerForkServer``): it imports Beam's harness and the ingest stages once,
then forks a worker for each request. The command Beam runs is then a client (``--via SOCKET``, about 60
ms of start-up) that hands the forked worker its environment, working folder and standard streams, waits
for it, and exits with its status; a worker dies with its client, and the server with its launcher.
Where no server answers, the client runs the harness itself, as a worker always did.
``multiprocessing``'s forkserver is the same idea, but it serves only the process that started it, not a
command Beam runs.

In every worker, a handler that passes only CRITICAL records is installed before Beam's import: Beam's
own worker logs a dozen INFO lines per process and pass to stderr (its logging is configured by an
import-time warning before the pipeline's log level is known), and a failing bundle's traceback twice
over. Every record still reaches the runner through Beam's log channel, where the launcher's log level
(``altsieve -v``) decides what is shown, and a failed bundle reaches the launcher as its exception,
which the CLI turns into one line (``--debug`` shows the traceback). When the runner is done with it,
the process ends without the interpreter's module teardown, which the runner would wait for.

This module imports only the standard library at load: the client must start fast.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib.abc
import json
import logging
import os
import select
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import traceback
from typing import IO, Any

# Beam's temp folders and the fork server's socket folder carry the launcher's pid: the next run removes those of
# processes that are gone (beam_run.remove_dead_runs_temp_folders).
TEMP_PREFIX = "altsieve-beam-"


def own_temp_folder() -> str:
    """A new temp folder (0700) named after this process, for the clean-up of a killed run's folders."""
    return tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-")


# The launcher's and the fork server's imports (Beam, the stages) make ~200,000 objects, nearly all for the life of
# the process: the collector's passes over them during the imports (254 collections, 3 of them of every generation)
# took 0.12-0.13 s of the launcher's 0.77-0.89 s (three runs). Collection waits until the imports are done, and what
# they made is then frozen (never collected; the cyclic garbage they left is ~1 MB). bench/bench_web.py's `altsieve
# run`, three runs each: its workers were forked 1.28-1.65 s into the run before, 1.14-1.41 s after.
_collection_deferred = False


def defer_collection() -> None:
    """No garbage collection until ``resume_collection``: called first thing by a process that imports Beam next."""
    global _collection_deferred
    if gc.isenabled():
        gc.disable()
        _collection_deferred = True


def resume_collection() -> None:
    """After the imports: what they made frozen, collection back on (a no-op unless ``defer_collection`` ran)."""
    global _collection_deferred
    if _collection_deferred:
        _collection_deferred = False
        gc.freeze()
        gc.enable()


def given_flags(beam_args: list[str] | None) -> set[str]:
    """The names of the ``--flags`` in ``beam_args``, without the dashes."""
    return {arg.split("=", 1)[0].lstrip("-") for arg in beam_args or [] if arg.startswith("--")}


# What the fork server imports before it serves: Beam's harness and every ingest stage (cv2, Pillow, fastText ...),
# with the fetcher (aiohttp), which the Download stage imports only at work: what a worker would otherwise import on
# its own.
PRELOAD = ("apache_beam.runners.worker.sdk_worker_main", "altsieve.pipeline.ingest", "altsieve.transforms.fetch")
# Then what the stages' setup() would load in each worker, loaded once here: the fetcher's CA bundles (39-44 ms) and
# the language stage's fastText model (16-19 ms), each module's ``preload()``.
PRELOAD_CALLS = ("altsieve.transforms.fetch", "altsieve.transforms.language")
_STARTED = b"S"  # a forked worker's first byte to its client: from here on its status is the worker's
_HEADER = struct.Struct("!I")


# Packages Beam or pyarrow import when they can, for features altsieve never uses: pandas (Beam's pandas batch
# converters; pyarrow's pandas shim) and the MongoDB driver (apache_beam.io.mongodbio, which Beam's io package
# imports and which goes without its driver when that import fails).
_KEPT_OUT = frozenset({"pandas", "pymongo", "bson"})
# Modules (exact names) Beam's io package imports inside ``try: ... except ImportError``: apache_beam/io/__init__.py
# goes on without BigQuery, Pub/Sub, GCS and the cross-language IOs when the first of them fails: 143 modules less in
# each launcher and fork server (eight interleaved runs, medians of CPU-s: ``import_beam_lean`` 1.07 -> 0.90, with
# the fork server's preload 1.96 -> 1.74). Beam imports the module as usual if a pipeline asks for it later.
_KEPT_OUT_MODULES = frozenset({"apache_beam.io.gcp.bigquery"})


class _KeptOut(importlib.abc.MetaPathFinder):
    """An import of a package in ``_KEPT_OUT`` (or a module of one), or of a module in ``_KEPT_OUT_MODULES``, fails
    while this finder is on sys.meta_path."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.partition(".")[0] in _KEPT_OUT or name in _KEPT_OUT_MODULES:
            raise ImportError(f"{name} is kept out of this import (beam_worker.import_beam_lean)")
        return None


def import_beam_lean() -> None:
    """Import Beam and pyarrow with ``_KEPT_OUT`` and ``_KEPT_OUT_MODULES`` kept out; they stay importable afterwards.

    pandas: Beam imports it at its import (apache_beam/typehints/__init__.py) and pyarrow on the first array it
    makes from Python values (its shim remembers the answer). That was 0.3 s of each launcher's and worker's start
    (``import apache_beam``: 0.90-0.97 s with pandas, 0.63-0.65 s without) and 0.3 s more at each one's first
    Parquet table. pymongo and bson: 0.10-0.15 s more of the same import (three interleaved runs, 0.89-0.99 s with
    them, 0.79-0.89 s without), on the launcher's way to its first pipeline. Then two of Beam's introspections are
    remembered per object (beam_memo).
    """
    if "pandas" not in sys.modules:
        _import_without_kept_out()
    from altsieve.pipeline import beam_memo

    beam_memo.install()


def _import_without_kept_out() -> None:
    finder = _KeptOut()
    sys.meta_path.insert(0, finder)
    # mongodbio warns that it found no bson package: true, and by our doing, so not worth a line on the terminal.
    mongodbio_log = logging.getLogger("apache_beam.io.mongodbio")
    level = mongodbio_log.level
    mongodbio_log.setLevel(logging.ERROR)
    try:
        import apache_beam  # noqa: F401
        import pyarrow

        pyarrow.array([])  # pyarrow's pandas shim tries its import here, once for the process
    finally:
        sys.meta_path.remove(finder)
        mongodbio_log.setLevel(level)


def _quiet_terminal() -> IO[str]:
    """The CRITICAL-only handler on the terminal and sys.stderr to /dev/null; returns the terminal's stream."""
    terminal = sys.stderr
    handler = logging.StreamHandler(terminal)
    handler.setLevel(logging.CRITICAL)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)  # before Beam's import: its logging.warning() then adds no handler
    # Beam's harness also prints a failed bundle's traceback to sys.stderr itself (SdkWorker._execute), besides
    # sending it to the runner: the launcher has it, so the worker's copy goes nowhere.
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    return terminal


# A worker's youngest generation is collected after this many new container objects (Python's default: 700); the
# older generations as Python has them. A worker makes dicts per record and per row, nearly all freed by their
# reference counts within the record: at 700 the collector ran ~270 times per worker in bench/bench_web.py's
# `altsieve run` and took 0.45-0.54 s of each worker's 9.4-9.7 CPU-s, at 50,000 0.03 s of 8.1-8.7 CPU-s (two runs
# each, the same peak memory: 411-449 MB a worker). Six interleaved pairs of the whole run: 10.0-11.9 s (median
# 10.6) and 17.3-20.3 CPU-s (median 18.1) at 700, 10.0-10.6 s (median 10.2) and 17.3-18.1 CPU-s (median 17.6) now.
WORKER_GC_THRESHOLD = 50_000


def tune_collection() -> None:
    """This worker's collection thresholds (WORKER_GC_THRESHOLD)."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(WORKER_GC_THRESHOLD, older, oldest)


def _run_harness(terminal: IO[str]) -> int | None:
    """Beam's SDK harness on the environment the runner set (control and logging addresses, options)."""
    from apache_beam.runners.worker import sdk_worker_main

    tune_collection()

    try:
        sdk_worker_main.main(sys.argv)
    except Exception:  # the harness itself failed (not a bundle): that is the terminal's to see
        traceback.print_exc(file=terminal)
        return 1
    return 0


def run_exit_handlers() -> None:
    """What the interpreter does at exit that matters: the exit handlers, the log handlers closed, the streams
    flushed (one whose reader has gone is left as it is)."""
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):
            stream.flush()


def end_without_teardown(status: int) -> None:
    """End the process once its exit handlers ran, without the interpreter's teardown of every module: 0.3-0.5 s
    after Beam's and the stages' imports (the runner's close of 2 ingest workers: 0.74-0.96 s before, 0.08-0.10 s
    now; the end of ``altsieve run``: 0.4-0.5 s before, 0.07 s now)."""
    run_exit_handlers()
    os._exit(status)


def limit_blas_threads() -> None:
    """OpenBLAS to one thread in this worker process (unless the user set its count), before numpy loads it.

    The local runner already runs one worker per core; OpenBLAS's own pool on top (numpy's matmul, in every pHash)
    oversubscribed the cores: the zero-latency benchmark's ingest of 2,000 images took 26.8 s and 51.6 CPU-s with
    it, 12.8 s and 23.1 CPU-s with one thread (bench/bench_ingest_vs_img2dataset.py's corpus, one run each).
    """
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def main() -> None:
    limit_blas_threads()  # first: the server's imports load numpy, and its workers inherit the loaded library
    args = sys.argv[1:]
    if args[:1] == ["--serve"] and len(args) == 2:
        serve(int(args[1]))
    elif args[:1] == ["--via"] and len(args) == 2:
        status = _through_fork_server(args[1])
        if status is not None:
            os._exit(status)
    # A worker of its own: no server, or one that did not fork.
    terminal = _quiet_terminal()
    import_beam_lean()
    end_without_teardown(_run_harness(terminal))


# -- the client: the command Beam runs --------------------------------------------------------------------------

def _through_fork_server(path: str) -> int | None:
    """The status of a worker the server at ``path`` forked for this process; None when none was forked."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(path)
        request = json.dumps({"env": dict(os.environ), "cwd": os.getcwd(), "argv": sys.argv}).encode()
        socket.send_fds(connection, [_HEADER.pack(len(request))], [0, 1, 2])
        connection.sendall(request)
        if connection.recv(1) != _STARTED:
            return None
    except OSError:
        return None
    status = connection.recv(1)  # until the worker ends; its pipe closing with no status: it was killed
    return status[0] if status else 1


# -- the server ---------------------------------------------------------------------------------------------------

def serve(listener_fd: int) -> None:
    """Import the harness and the stages, then fork a worker per connection on the listening socket the launcher
    passed (bound before this process started: a client that comes during the imports waits in its backlog), until
    stdin (the launcher) closes."""
    defer_collection()
    terminal = _quiet_terminal()
    listener = socket.socket(fileno=listener_fd)
    import_beam_lean()
    for module in PRELOAD:
        importlib.import_module(module)
    for module in PRELOAD_CALLS:
        # A failure here is not the server's: a worker's own setup() then loads it, and reports what is wrong.
        with contextlib.suppress(Exception):
            importlib.import_module(module).preload()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the launcher's to handle; it then closes stdin
    # What the imports made is frozen (never collected): a worker's collections then leave those pages shared.
    resume_collection()
    workers: set[int] = set()
    while True:
        ready, _, _ = select.select([listener, sys.stdin], [], [], 0.5)
        if sys.stdin in ready and not os.read(sys.stdin.fileno(), 1024):
            break  # the launcher ended (or stopped this server)
        if listener in ready:
            connection, _ = listener.accept()
            pid = _fork_worker(connection, listener, terminal)
            if pid is not None:
                workers.add(pid)
        workers = _reap(workers, block=False)
    listener.close()
    _reap(workers, block=True)  # waited for, their CPU time is counted as this process's children's, as before
    end_without_teardown(0)


def _reap(workers: set[int], block: bool) -> set[int]:
    running = set()
    for pid in workers:
        try:
            done, _ = os.waitpid(pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            continue
        if not done:
            running.add(pid)
    return running


def _fork_worker(connection: socket.socket, listener: socket.socket, terminal: IO[str]) -> int | None:
    try:
        connection.settimeout(10)  # the client sends its request at once; a stuck one does not stop the server
        header, fds, _, _ = socket.recv_fds(connection, _HEADER.size, 3)
        if len(header) != _HEADER.size or len(fds) != 3:
            raise OSError("the client's request is incomplete")
        request = _receive(connection, _HEADER.unpack(header)[0])
        connection.settimeout(None)
    except (OSError, ValueError):
        connection.close()  # the client runs the harness itself
        return None
    pid = os.fork()
    if pid == 0:
        listener.close()
        _worker(connection, fds, request, terminal)  # never returns
    connection.close()
    for fd in fds:
        os.close(fd)
    return pid


def _receive(connection: socket.socket, size: int) -> dict[str, Any]:
    data = bytearray()
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise OSError("the client closed its request early")
        data += chunk
    return json.loads(data)


def _worker(connection: socket.socket, fds: list[int], request: dict[str, Any], terminal: IO[str]) -> None:
    """The forked worker: the client's streams, folder and environment, then the harness."""
    status = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as a worker of its own has it
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = request["argv"]
        finished = threading.Event()
        threading.Thread(target=_die_with_client, args=(connection, finished), daemon=True).start()
        connection.sendall(_STARTED)
        status = _run_harness(terminal)
        run_exit_handlers()  # before the status: the client's end is the worker's, for the runner
        finished.set()
        connection.sendall(bytes([status]))
    except BaseException:  # noqa: BLE001 - a forked child never returns into the server's loop
        traceback.print_exc(file=terminal)
    os._exit(status)


def _die_with_client(connection: socket.socket, finished: threading.Event) -> None:
    """A worker whose client is gone (Beam killed it) ends too, as a subprocess worker would."""
    with contextlib.suppress(OSError):
        connection.recv(1)
    if not finished.is_set():
        os._exit(1)


# -- the launcher's side -----------------------------------------------------------------------------------------

class WorkerForkServer:
    """The fork server of this launcher: its process, its socket, and the command Beam runs for a worker."""

    def __init__(self) -> None:
        self.folder = own_temp_folder()  # 0700: only this user connects
        self.path = os.path.join(self.folder, "workers.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            listener.bind(self.path)
            listener.listen(64)
            fd = listener.fileno()
            self.process = subprocess.Popen([sys.executable, "-m", "altsieve.pipeline.beam_worker", "--serve", str(fd)],
                                            stdin=subprocess.PIPE, pass_fds=[fd])
        self.used = False

    @property
    def command(self) -> str:
        self.used = True
        return f"{shlex.quote(sys.executable)} -m altsieve.pipeline.beam_worker --via {shlex.quote(self.path)}"

    def stop(self, wait: bool = True) -> None:
        """End the server; ``wait`` False: return at once and ``reap`` it later (its end takes 20-30 ms)."""
        if not self.used:
            self.process.kill()  # started ahead for a pass that then ran in one process: its imports are moot
        elif self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()  # the server's cue to end, once it has waited for its workers
        shutil.rmtree(self.folder, ignore_errors=True)  # its listening socket: no client connects any more
        if wait:
            self.reap()

    def reap(self) -> None:
        """Wait for the server's end (killed if it takes over 5 s)."""
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


_server: WorkerForkServer | None = None
_server_lock = threading.Lock()


def local_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def fork_server_supported() -> bool:
    """Linux only: fork after Beam's and cv2's imports is not safe on macOS, and Windows has no fork."""
    return sys.platform.startswith("linux")


def start_fork_server() -> WorkerForkServer | None:
    """This process's fork server, started on first use (stopped at exit); None where it is not supported."""
    global _server
    if not fork_server_supported():
        return None
    with _server_lock:
        if _server is None or _server.process.poll() is not None:
            _server = WorkerForkServer()
            atexit.register(_server.stop)
        return _server


def prestart_fork_server(beam_args: list[str]) -> None:
    """Start the fork server now when a pass will likely run worker processes (the local runner, more than one core,
    no worker settings given), so that its imports run on another core beside the launcher's own (1.5-1.8 s of
    each) rather than after them. A pass that then runs in one process stops it (see stop_fork_server)."""
    if given_flags(beam_args) & {"runner", "direct_running_mode", "direct_num_workers"} or local_cores() < 2:
        return
    start_fork_server()


# The commands whose first pass may run worker processes (the CLI and pipeline/launch.py start the fork server for
# them); a help or version request runs none.
WORKER_COMMANDS = ("run", "ingest")
_NO_PASS_FLAGS = frozenset({"-h", "--help", "--version"})


def prestart_for_command_line(argv: list[str]) -> None:
    """``prestart_fork_server`` from the raw command line, before the CLI has parsed it (pipeline/launch.py): for
    ``altsieve run`` and ``altsieve ingest``. A run that then fails its checks stops the unused server at exit."""
    words = [arg for arg in argv if not arg.startswith("-")]
    if not words or words[0] not in WORKER_COMMANDS or _NO_PASS_FLAGS & set(argv):
        return
    prestart_fork_server(argv)


def stop_fork_server() -> None:
    """Stop this process's fork server, if it runs (a pass that needs no worker processes)."""
    global _server
    with _server_lock:
        if _server is not None:
            atexit.unregister(_server.stop)
            # Not waited for here: its end (20-30 ms, its memory unmapped) overlaps the in-process pass that follows,
            # on the core the workers left. It is reaped at exit, its CPU time (and its workers') then counted.
            _server.stop(wait=False)
            atexit.register(_server.reap)
            _server = None


def worker_command() -> str:
    """The command the local runner starts a worker process with: through the fork server where there is one."""
    server = start_fork_server()
    if server is not None:
        return server.command
    return f"{shlex.quote(sys.executable)} -m altsieve.pipeline.beam_worker"


if __name__ == "__main__":
    main()
