"""Safety lists: user-supplied hashes of files that must never enter a dataset (known abuse material, for one).

Two rules of the ``safety`` stage, both run inside Decode (transforms/decode.py):

* ``SafetyHashList``: MD5 or SHA-256 of the fetched bytes is on ``safety.md5_files`` /
  ``safety.sha256_files``; checked before the bytes are decoded (``safety_hash_list``);
* ``SafetyPHashList``: the 64-bit pHash is within ``safety.phash_max_distance`` bits of one on
  ``safety.phash_files``; checked the moment the hash exists, before any image is kept
  (``safety_phash_list``).

A match is only counted: ``scrub`` leaves the row its key, partition and reason, and nothing else
(no URL, caption, input columns, hashes, sizes or image), so no later stage, file, thumbnail,
embedding or report can hold anything of it.

The pHash list is searched by multi-index hashing (as dedup/perceptual.py, in memory): within d
bits means equal on one of d + 1 bands, so each lookup compares only the listed hashes sharing a
band value with it, not the whole list.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from altsieve.core import reasons
from altsieve.core.config import Config, ConfigError
from altsieve.filters.base import PairRule, Record, Verdict

# What a scrubbed row keeps: what WriteShards needs to file it, and its verdict.
_KEPT_FIELDS = ("key", "partition_id", "partition_size", "reason")


def _lines(path: str) -> list[str]:
    import fsspec

    with fsspec.open(path, "rt", encoding="utf-8") as handle:
        return [line.split("#", 1)[0].strip() for line in handle if line.split("#", 1)[0].strip()]


def read_digests(paths: list[str], name: str, hex_length: int) -> set[bytes]:
    """The digests of hash-list files (hex, one a line, an optional ``md5:`` / ``sha256:`` prefix) as raw bytes."""
    digests: set[bytes] = set()
    for path in paths:
        for number, line in enumerate(_lines(path), start=1):
            value = line.split(":", 1)[1].strip() if line.lower().startswith(f"{name}:") else line
            if len(value) != hex_length:
                raise ConfigError(f"{path}, line {number}: {value[:80]!r} is not a {name} digest "
                                  f"({hex_length} hex digits)")
            try:
                digests.add(bytes.fromhex(value))
            except ValueError:
                raise ConfigError(f"{path}, line {number}: {value[:80]!r} is not hexadecimal") from None
    return digests


def read_phashes(paths: list[str]) -> np.ndarray:
    """uint64 pHashes: 16 hex digits (imagehash's str()) or a signed decimal (the Parquet ``phash`` column)."""
    values: list[int] = []
    for path in paths:
        for number, line in enumerate(_lines(path), start=1):
            try:
                if len(line) == 16 and all(c in "0123456789abcdefABCDEF" for c in line):
                    values.append(int(line, 16))
                else:
                    values.append(int(line) & 0xFFFFFFFFFFFFFFFF)
            except ValueError:
                raise ConfigError(f"{path}, line {number}: {line[:80]!r} is not a 64-bit pHash (16 hex digits or "
                                  "a decimal integer)") from None
    return np.array(values, dtype=np.uint64)


class PHashIndex:
    """Hashes within ``max_distance`` bits of a listed one, by multi-index hashing on ``max_distance + 1`` bands."""

    def __init__(self, hashes: np.ndarray, max_distance: int) -> None:
        from altsieve.filters.hashing import band_layout

        self.hashes = np.unique(hashes.astype(np.uint64))
        self.max_distance = max_distance
        self.layout = band_layout(max_distance + 1)
        self.bands: list[dict[int, np.ndarray]] = []
        for shift, width in self.layout:
            values = (self.hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)
            groups: dict[int, list[int]] = defaultdict(list)
            for index, value in enumerate(values.tolist()):
                groups[value].append(index)
            self.bands.append({value: np.array(rows, dtype=np.int64) for value, rows in groups.items()})

    def __len__(self) -> int:
        return len(self.hashes)

    def matches(self, value: int) -> bool:
        query = np.uint64(value & 0xFFFFFFFFFFFFFFFF)
        for (shift, width), band in zip(self.layout, self.bands, strict=True):
            rows = band.get(int((query >> np.uint64(shift)) & np.uint64((1 << width) - 1)))
            if rows is not None and int(np.bitwise_count(self.hashes[rows] ^ query).min()) <= self.max_distance:
                return True
        return False


def scrub(record: dict[str, Any], reason: str) -> dict[str, Any]:
    """The row of a listed file: its key, partition and reason only (see the module docstring)."""
    kept = {name: record[name] for name in _KEPT_FIELDS if name in record}
    kept["reason"] = reason
    return kept


class SafetyHashList(PairRule):
    """safety.md5_files / safety.sha256_files: the fetched bytes' digest is listed (checked before decoding)."""

    stage, reasons = reasons.SAFETY, (reasons.SAFETY_HASH_LIST,)
    before_decode = True  # the bytes alone

    def __init__(self, md5: set[bytes], sha256: set[bytes]) -> None:
        self.md5, self.sha256 = md5, sha256

    @classmethod
    def from_config(cls, config: Config) -> SafetyHashList | None:
        safety = config.safety
        if not safety.md5_files and not safety.sha256_files:
            return None
        return cls(read_digests(safety.md5_files, "md5", 32), read_digests(safety.sha256_files, "sha256", 64))

    def check(self, record: Record) -> Verdict:
        body = record.get("body")
        if body is None:
            return None
        if self.md5 and hashlib.md5(body, usedforsecurity=False).digest() in self.md5:
            return reasons.SAFETY_HASH_LIST
        if self.sha256 and hashlib.sha256(body).digest() in self.sha256:
            return reasons.SAFETY_HASH_LIST
        return None


class SafetyPHashList(PairRule):
    """safety.phash_files: the image's pHash within safety.phash_max_distance bits of a listed one."""

    stage, reasons = reasons.SAFETY, (reasons.SAFETY_PHASH_LIST,)

    def __init__(self, index: PHashIndex) -> None:
        self.index = index

    @classmethod
    def from_config(cls, config: Config) -> SafetyPHashList | None:
        safety = config.safety
        if not safety.phash_files:
            return None
        return cls(PHashIndex(read_phashes(safety.phash_files), safety.phash_max_distance))

    def check(self, record: Record) -> Verdict:
        value = record.get("phash")
        if value is None or not len(self.index):
            return None
        return reasons.SAFETY_PHASH_LIST if self.index.matches(int(value)) else None


def check_lists(config: Config) -> None:
    """Read every list once when the pipeline is built: a bad line is one error before any work, not in a worker."""
    safety = config.safety
    for path in (*safety.md5_files, *safety.sha256_files, *safety.phash_files):
        if "://" not in path and not Path(path).expanduser().is_file():
            raise ConfigError(f"safety list {path} does not exist")
    read_digests(safety.md5_files, "md5", 32)
    read_digests(safety.sha256_files, "sha256", 64)
    read_phashes(safety.phash_files)
