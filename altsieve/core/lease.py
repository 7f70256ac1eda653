"""One run per output folder: a lease object in ``OUTPUT/_altsieve/lease.json`` with a heartbeat.

Why a lease object and not an OS lock: the output is any fsspec path (gs://, s3://, a local disk), and
object stores have no locks. The holder rewrites its heartbeat every ``heartbeat_s``; a second run on
the folder is refused with a message naming the holder (host, pid, start time) unless the lease is
stale: no heartbeat for ``stale_after_s``, or the holder's process is gone (same host).

Acquiring is an exclusive create where the filesystem has one (local disk, memory); elsewhere the lease
is written and read back after ``settle_s``: of two runs that start together, the later writer wins and
the other, reading back someone else's token, backs off. A stale lease is replaced the same way.
"""

from __future__ import annotations

import datetime
import functools
import inspect
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from altsieve.core import fsutil, layout

log = logging.getLogger("altsieve")

LEASE_NAME = "lease.json"
HEARTBEAT_S = 10.0
STALE_AFTER_S = 60.0


class LeaseHeld(RuntimeError):
    """Another run holds the output folder; the message names it."""


class OutputFolderError(RuntimeError):
    """The output path cannot be a folder this run writes (a file, under a file, read-only)."""


def lease_path(output: str) -> str:
    return layout.meta(output, LEASE_NAME)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def describe(holder: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    started = datetime.datetime.fromtimestamp(float(holder.get("started", 0))).isoformat(timespec="seconds")
    age = now - float(holder.get("heartbeat", 0))
    return (f"{holder.get('command', 'altsieve')} on host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
            f"started {started}, last heartbeat {age:.0f} s ago")


def is_stale(holder: dict[str, Any], stale_after_s: float, now: float | None = None) -> bool:
    now = time.time() if now is None else now
    if now - float(holder.get("heartbeat", 0)) > stale_after_s:
        return True
    # On the holder's own host a dead process is known at once (a killed run is resumed without waiting).
    return holder.get("host") == socket.gethostname() and not pid_alive(int(holder.get("pid", -1)))


def check_output_folder(output: str) -> list[str]:
    """Refuse, with one line, an output path that is a file, lies under a file, or cannot be written.

    Returns the folders it created (the output and its metadata folder, when missing), outermost first.
    """
    fs, path = fsutil.filesystem(output)
    if fs.isfile(path):
        raise OutputFolderError(f"output {output} is a file, not a folder: name a folder (it is created if missing)")
    parent = path.rstrip("/")
    while "/" in parent:
        parent = parent.rsplit("/", 1)[0]
        if parent and fs.isfile(parent):
            raise OutputFolderError(f"output {output} lies under {parent}, which is a file, not a folder")
        if parent and fs.isdir(parent):
            break
    meta = fsutil.join(path, layout.META_DIR)
    created = [folder for folder in (path, meta) if not fs.exists(folder)]
    try:
        fs.makedirs(meta, exist_ok=True)
    except OSError as err:
        raise OutputFolderError(f"output {output} cannot be created ({err.strerror or err})") from err
    return created


class Lease:
    def __init__(self, output: str, command: str = "altsieve", heartbeat_s: float = HEARTBEAT_S,
                 stale_after_s: float = STALE_AFTER_S, settle_s: float | None = None) -> None:
        self.output, self.path = output, lease_path(output)
        self._fs, self._resolved = fsutil.filesystem(self.path)
        self._heartbeat_s, self._stale_after_s = heartbeat_s, stale_after_s
        protocol = self._fs.protocol if isinstance(self._fs.protocol, str) else self._fs.protocol[0]
        self._local = protocol in ("file", "local")
        # Object stores: long enough for the later of two simultaneous writes to be the one both read back.
        self._settle_s = settle_s if settle_s is not None else (0.0 if self._local else 2.0)
        self.holder = {"token": uuid.uuid4().hex, "command": command, "host": socket.gethostname(),
                       "pid": os.getpid(), "started": time.time(), "heartbeat": time.time()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._created: list[str] = []

    # -- reading and writing the lease object

    def _read(self) -> dict[str, Any] | None:
        for _ in range(5):  # a heartbeat being rewritten can be read half-written: read again
            try:
                with self._fs.open(self._resolved, "rb") as handle:
                    return json.loads(handle.read())
            except FileNotFoundError:
                return None
            except (json.JSONDecodeError, UnicodeDecodeError):
                time.sleep(0.1)
        return {"host": "?", "pid": -1, "started": 0, "heartbeat": time.time(), "token": "?"}

    def _payload(self) -> bytes:
        return json.dumps(self.holder, indent=2).encode("utf-8")

    def _create_exclusive(self) -> bool:
        """Create the lease if none exists; False when another run's appeared first."""
        try:
            with self._fs.open(self._resolved, "xb") as handle:
                handle.write(self._payload())
            return True
        except FileExistsError:
            return False
        except (ValueError, NotImplementedError, TypeError):  # no exclusive mode here: write, then read back
            self._fs.pipe_file(self._resolved, self._payload())
            return True

    # -- the lease's life

    def acquire(self) -> None:
        self._created = check_output_folder(self.output)
        for _ in range(3):
            current = self._read()
            if current is not None and not is_stale(current, self._stale_after_s):
                raise LeaseHeld(self._held_message(current))
            if current is not None:
                log.warning("altsieve: taking over the stale lease of %s", describe(current))
                again = self._read()  # remove it only if it is still the stale one just read
                if again is not None and again.get("token") != current.get("token"):
                    continue
                self._fs.rm(self._resolved)
            try:
                created = self._create_exclusive()
            except OSError as err:  # read-only, no permission, disk full: the folder cannot take this run
                raise OutputFolderError(f"output {self.output} cannot be written: {err.strerror or err} "
                                        f"({self.path})") from err
            if not created:
                continue
            if self._settle_s or current is not None:
                time.sleep(self._settle_s or 0.2)
            back = self._read()
            if back is None or back.get("token") != self.holder["token"]:
                if back is None:
                    continue
                raise LeaseHeld(self._held_message(back))
            self._thread = threading.Thread(target=self._beat, name="altsieve-lease", daemon=True)
            self._thread.start()
            return
        raise LeaseHeld(f"output {self.output}: could not take its lease ({self.path}); another run keeps "
                        "starting on it")

    def _held_message(self, holder: dict[str, Any]) -> str:
        return (f"output {self.output} is in use by another run ({describe(holder)}); wait for it to finish, "
                f"or use another --output. A lease without a heartbeat for {self._stale_after_s:.0f} s is stale "
                f"and taken over ({self.path})")

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            try:
                current = self._read()
                if current is not None and current.get("token") != self.holder["token"]:
                    log.error("altsieve: the lease of %s was taken over by %s", self.output, describe(current))
                    return
                self.holder["heartbeat"] = time.time()
                self._fs.pipe_file(self._resolved, self._payload())
            except Exception as err:  # noqa: BLE001 - a missed heartbeat is retried; the run goes on
                log.warning("altsieve: lease heartbeat failed (%s); retrying", err)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            current = self._read()
            if current is not None and current.get("token") == self.holder["token"]:
                self._fs.rm(self._resolved)
            # A run refused before any work (a bad checkpoint, say) leaves no folder behind that it made itself.
            for folder in reversed(self._created):
                if self._fs.isdir(folder) and not self._fs.ls(folder):
                    self._fs.rmdir(folder)
        except OSError as err:  # e.g. the disk is full or gone: the next run finds the pid dead
            log.warning("altsieve: could not remove the lease %s (%s)", self.path, err)


_HELD: dict[str, Lease] = {}
_HELD_LOCK = threading.Lock()


@contextmanager
def hold(output: str, command: str = "altsieve") -> Iterator[Lease]:
    """Hold the output folder's lease for the block; nested holds of one folder in one process share it."""
    fs, resolved = fsutil.filesystem(output)
    key = f"{type(fs).__name__}:{resolved.rstrip('/')}"
    with _HELD_LOCK:
        held = _HELD.get(key)
    if held is not None:
        yield held
        return
    lease = Lease(output, command)
    lease.acquire()
    with _HELD_LOCK:
        _HELD[key] = lease
    try:
        yield lease
    finally:
        with _HELD_LOCK:
            _HELD.pop(key, None)
        lease.release()


Function = TypeVar("Function", bound=Callable[..., Any])


def holding(command: str) -> Callable[[Function], Function]:
    """Decorator: each call holds the lease of the folder its ``output`` argument names (see ``hold``)."""

    def decorate(function: Function) -> Function:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def held(*args: Any, **kwargs: Any) -> Any:
            with hold(signature.bind(*args, **kwargs).arguments["output"], command):
                return function(*args, **kwargs)

        return held  # type: ignore[return-value]

    return decorate
