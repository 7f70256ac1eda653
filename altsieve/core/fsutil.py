"""Filesystem helpers over fsspec: every path may be local, gs://, s3://, hdfs://...

Writes are atomic: data goes to a temporary name beside the target and is renamed into place
last, so a killed run leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import io
import json
import tarfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

import fsspec


def join(*parts: str) -> str:
    head, *rest = parts
    return "/".join([head.rstrip("/")] + [p.strip("/") for p in rest])


def filesystem(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, _, (resolved,) = fsspec.get_fs_token_paths(path)
    return fs, resolved


def exists(path: str) -> bool:
    fs, resolved = filesystem(path)
    return fs.exists(resolved)


def makedirs(path: str) -> None:
    fs, resolved = filesystem(path)
    fs.makedirs(resolved, exist_ok=True)


def qualified(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path the filesystem listed, as a URL any fsspec call opens again (local paths stay plain)."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else f"{protocol}://{path}"


def glob(pattern: str) -> list[str]:
    fs, _, _ = fsspec.get_fs_token_paths(pattern)
    return sorted(qualified(fs, p) for p in fs.glob(fs._strip_protocol(pattern)))


@contextmanager
def atomic_open(path: str, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success rename it to ``path``, on error remove it."""
    fs, resolved = filesystem(path)
    parent = resolved.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    temporary = f"{parent}/.tmp-{uuid.uuid4().hex}-{resolved.rsplit('/', 1)[-1]}"
    try:
        with fs.open(temporary, mode) as handle:
            yield handle
        fs.mv(temporary, resolved)
    except BaseException:
        if fs.exists(temporary):
            fs.rm(temporary)
        raise


def write_atomic(path: str, write: Callable[[IO[bytes]], None]) -> None:
    with atomic_open(path, "wb") as handle:
        write(handle)


def write_json(path: str, data: Any) -> None:
    payload = json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False).encode("utf-8")
    write_atomic(path, lambda handle: handle.write(payload))


def read_json(path: str) -> Any:
    with fsspec.open(path, "rb") as handle:
        return json.loads(handle.read())


def write_text(path: str, text: str) -> None:
    write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


def add_tar_member(tar: tarfile.TarFile, name: str, payload: bytes, mtime: int = 0) -> None:
    """One file in a tar, mode 644; a fixed ``mtime`` keeps a rerun's tar byte-identical."""
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = mtime
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(payload))
