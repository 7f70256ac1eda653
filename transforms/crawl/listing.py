"""What to read: files, globs, folders and ``*.paths.gz`` listings -> the crawl files, in order.

Separate from the readers: it touches only names and listings (one request per listing, none per
file), so ``altsieve extract --limit`` and the ingest pass can plan a run without opening a WARC.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import fsspec

from altsieve.core import fsutil
from altsieve.core.config import InputError

DEFAULT_CC_BASE_URL = "https://data.commoncrawl.org/"
_CRAWL_ID = re.compile(r"CC-MAIN-\d{4}-\d{2}")


class CrawlInputError(InputError):
    """A crawl input that cannot be used; the message names it (the CLI prints it like any input error)."""


class CrawlFile(NamedTuple):
    index: int
    path: str
    kind: str  # "warc" or "wat"


def crawl_kind(path: str) -> str | None:
    """``warc``, ``wat`` or ``paths`` (a listing) from the name; None for anything else."""
    name = path.rstrip("/").lower().removesuffix(".gz")
    if name.endswith(".wat"):
        return "wat"
    if name.endswith(".warc"):
        return "warc"
    if name.endswith(".paths"):
        return "paths"
    if name.endswith(".wet"):
        raise CrawlInputError(f"input {path}: a WET file holds extracted text only, no img tags: give its WARC or WAT")
    return None


def is_crawl_spec(spec: str) -> bool:
    """Whether an input (file, glob or folder) names crawl files rather than URL lists."""
    if crawl_kind(spec) is not None:
        return True
    if any(ch in spec for ch in "*?["):
        return False  # a glob with another suffix: a URL list's
    try:
        fs, resolved = fsutil.filesystem(spec)
        if fs.isdir(resolved):
            kinds = {_safe_kind(p) for p in fs.find(resolved) if not p.rsplit("/", 1)[-1].startswith((".", "_"))}
            return bool(kinds) and kinds <= {"warc", "wat", "paths"}
    except (OSError, ValueError):
        return False
    return False


def _safe_kind(path: str) -> str | None:
    try:
        return crawl_kind(path)
    except CrawlInputError:
        return "wet"


def resolve_listing_entry(entry: str, cc_base_url: str) -> str:
    """A line of a ``*.paths.gz`` listing (``crawl-data/CC-MAIN-.../x.warc.gz``) as a path fsspec opens."""
    if "://" in entry or entry.startswith("/"):
        return entry
    return cc_base_url.rstrip("/") + "/" + entry.lstrip("/")


def read_listing(listing: str, cc_base_url: str) -> list[str]:
    try:
        with fsspec.open(listing, "rt", compression="infer", encoding="utf-8") as handle:
            return [resolve_listing_entry(line.strip(), cc_base_url) for line in handle if line.strip()]
    except (OSError, EOFError, UnicodeError) as err:
        raise CrawlInputError(f"input {listing}: cannot read the paths listing ({type(err).__name__}: {err})") from err


def list_crawl_files(
    inputs: list[str], cc_base_url: str = DEFAULT_CC_BASE_URL, limit: int | None = None
) -> list[CrawlFile]:
    """Files, globs, folders and paths listings -> the crawl files to read, in order, at most ``limit``.

    A listing keeps its own order (``--limit 10`` takes its first ten files); globs and folders are
    sorted. Files named by a listing are not checked here: that would be one request per file.
    """
    found: list[str] = []
    for spec in inputs:
        if crawl_kind(spec) == "paths" and not any(ch in spec for ch in "*?["):
            found.extend(read_listing(spec, cc_base_url))
            continue
        fs, _, paths = fsspec.get_fs_token_paths(spec)

        if not paths:
            raise CrawlInputError(f"input {spec}: no file matches")
        for path in sorted(paths):
            if fs.isdir(path):
                inside = sorted(p for p in fs.find(path) if not p.rsplit("/", 1)[-1].startswith((".", "_")))
                found.extend(fsutil.qualified(fs, p) for p in inside if _safe_kind(p) in ("warc", "wat"))
            elif not fs.exists(path):
                raise CrawlInputError(f"input {spec}: no such file")
            elif crawl_kind(path) == "paths":
                found.extend(read_listing(fsutil.qualified(fs, path), cc_base_url))
            else:
                found.append(fsutil.qualified(fs, path))
    unique = list(dict.fromkeys(found))
    if limit is not None:
        unique = unique[:limit]
    files = []
    for index, path in enumerate(unique):
        kind = crawl_kind(path)
        if kind not in ("warc", "wat"):
            raise CrawlInputError(f"input {path}: not a WARC or WAT file (name it .warc.gz or .wat.gz)")
        files.append(CrawlFile(index, path, kind))
    if not files:
        raise CrawlInputError(f"inputs {', '.join(inputs)}: no WARC or WAT file found")
    return files


def crawl_id_from_path(path: str) -> str | None:
    match = _CRAWL_ID.search(path)
    return match.group(0) if match else None
