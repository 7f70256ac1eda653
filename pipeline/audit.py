"""``altsieve audit PATH --report DIR``: the noise statistics of a corpus, as one HTML file and as JSON.

PATH is one of:

- an altsieve output folder (``_altsieve/``, ``_candidates/``): every input row is in the candidate
  Parquet files with its ingest reason, and the select pass's decision is laid over it;
- an img2dataset output (``*.parquet`` with ``status`` and ``error_message``, ``*.tar`` beside them
  when written as webdataset): its status and error message are mapped onto altsieve's reason codes;
- bare Parquet (a file or a folder) with url and caption columns: metadata only.

It computes what the input holds and lists what it could not compute, with why. Statistics are
streamed one Parquet file (or row-group batch) at a time through pyarrow compute into fixed-bin
histograms and counters: no step holds the corpus as one frame. Memory grows only with the number
of distinct domains (capped, see ``TopCounter``) and with the keys of duplicates (Arrow strings).
"""

from __future__ import annotations

import base64
import heapq
import io
import json
import logging
import re
import sys
import tarfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from altsieve import __version__
from altsieve.core import fsutil, layout, reasons
from altsieve.core.config import ConfigError
from altsieve.pipeline.published_funnels import published_funnels_json

log = logging.getLogger("altsieve.audit")

KIND_ALTSIEVE = "altsieve"
KIND_IMG2DATASET = "img2dataset"
KIND_PARQUET = "parquet"

# The columns the audit reads when a file has them (never exif, phash or image bytes).
WANTED = [
    "key", "url", "caption", "reason", "status", "error_message", "original_width", "original_height",
    "bytes", "http_status", "language", "language_score", "clip_score", "duplicate_of", "sha256",
]
# Columns shown with each gallery sample, when present.
SAMPLE_FIELDS = [
    "key", "url", "caption", "reason", "error_message", "original_width", "original_height", "bytes",
    "http_status", "language", "language_score", "clip_score", "duplicate_of",
]
BATCH_ROWS = 65_536  # for bare Parquet read by row-group batches
DOMAIN_CAP = 200_000  # distinct domains kept exactly before the rarest are folded
TOP_N = 20
THUMB_SIZE = 160
_HOST = r"^[A-Za-z][A-Za-z0-9+.\-]*://(?:[^@/?#]*@)?(?P<host>[^/?#:]+)"


class AuditError(ConfigError):
    """An audit input that cannot be read; the message names the path and what is missing."""


# ---------------------------------------------------------------------------------------------
# Histograms


@dataclass(frozen=True)
class HistSpec:
    name: str
    title: str
    xlabel: str
    edges: np.ndarray
    log_x: bool = False
    # Published thresholds drawn on the plot: (value, label).
    markers: tuple[tuple[float, str], ...] = ()


HIST_SPECS: list[HistSpec] = [
    HistSpec("clip_score", "CLIP score", "image-text cosine similarity", np.round(np.arange(-0.1, 0.5001, 0.01), 3),
             markers=((0.28, "LAION-5B en 0.28"), (0.3, "LAION-400M 0.30"))),
    HistSpec("width", "Image width (original)", "pixels", np.geomspace(8, 16384, 45), log_x=True,
             markers=((200, "ALIGN/DataComp/COYO 200 px"),)),
    HistSpec("height", "Image height (original)", "pixels", np.geomspace(8, 16384, 45), log_x=True,
             markers=((200, "ALIGN/DataComp/COYO 200 px"),)),
    HistSpec("aspect_ratio", "Aspect ratio (width / height)", "width / height", np.geomspace(1 / 16, 16, 41),
             log_x=True, markers=((1 / 3, "1/3"), (3, "3 (ALIGN, DataComp, COYO)"))),
    HistSpec("caption_chars", "Caption length", "characters (last bin: 300 or more)", np.arange(0, 305, 5),
             markers=((5, "LAION < 5 chars"),)),
    HistSpec("caption_words", "Caption words", "whitespace-separated words (last bin: 64 or more)",
             np.arange(0, 65, 1), markers=((3, "ALIGN 3..20 words"), (20, ""))),
    HistSpec("bytes", "Downloaded file size", "bytes", np.geomspace(256, 64 * 2**20, 37), log_x=True,
             markers=((5 * 1024, "LAION/COYO 5 KB"),)),
]


class Histogram:
    """Fixed bins; values below the first edge fall in the first bin, above the last in the last one."""

    def __init__(self, spec: HistSpec) -> None:
        self.spec = spec
        self.counts: dict[str, np.ndarray] = {}
        self.stats: dict[str, list[float]] = {}  # group -> [n, sum, min, max]

    def add(self, group: str, values: np.ndarray) -> None:
        values = values[~np.isnan(values)]
        if values.size == 0:
            return
        nbins = len(self.spec.edges) - 1
        index = np.clip(np.searchsorted(self.spec.edges, values, side="right") - 1, 0, nbins - 1)
        counts = self.counts.setdefault(group, np.zeros(nbins, dtype=np.int64))
        counts += np.bincount(index, minlength=nbins)
        n, total, low, high = self.stats.get(group, [0, 0.0, np.inf, -np.inf])
        self.stats[group] = [n + values.size, total + float(values.sum()), min(low, float(values.min())),
                             max(high, float(values.max()))]

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.spec.title,
            "xlabel": self.spec.xlabel,
            "log_x": self.spec.log_x,
            "edges": [round(float(e), 6) for e in self.spec.edges],
            "markers": [list(m) for m in self.spec.markers],
            "counts": {group: counts.tolist() for group, counts in self.counts.items()},
            "summary": {
                group: {"n": int(n), "mean": round(total / n, 4), "min": low, "max": high}
                for group, (n, total, low, high) in self.stats.items()
            },
        }


class TopCounter:
    """A counter whose size is capped: past ``cap`` keys the rarest half is folded into ``folded``.

    Counts of the keys that stay can be short by at most ``max_folded`` (the largest count folded),
    which the report states; below the cap every count is exact.
    """

    def __init__(self, cap: int = DOMAIN_CAP) -> None:
        self.cap = cap
        self.counts: Counter[Any] = Counter()
        self.folded = 0
        self.max_folded = 0

    def update(self, items: dict[Any, int]) -> None:
        self.counts.update(items)
        if len(self.counts) > self.cap:
            keep = dict(self.counts.most_common(self.cap // 2))
            dropped = [v for k, v in self.counts.items() if k not in keep]
            self.folded += sum(dropped)
            self.max_folded = max(self.max_folded, max(dropped))
            self.counts = Counter(keep)


# ---------------------------------------------------------------------------------------------
# Reading the inputs


@dataclass
class Source:
    kind: str
    root: str
    parquet_files: list[str]
    has_outcomes: bool
    tars: dict[str, str] = field(default_factory=dict)  # parquet path -> tar path (img2dataset)
    partitions: list[str] = field(default_factory=list)  # altsieve
    notes: list[str] = field(default_factory=list)
    url_col: str = "url"
    caption_col: str = "caption"


def _read_schema(path: str) -> pa.Schema:
    with fsspec.open(path, "rb") as handle:
        return pq.read_schema(handle)


def _read_columns(path: str, names: list[str]) -> pa.Table:
    with fsspec.open(path, "rb") as handle:
        present = set(pq.read_schema(handle).names)
        handle.seek(0)
        return pq.read_table(handle, columns=[n for n in names if n in present])


def detect(path: str, url_col: str = "url", caption_col: str = "caption") -> Source:
    """What PATH is: an altsieve run, an img2dataset output or bare Parquet."""
    path = path.rstrip("/") or "/"
    if not fsutil.exists(path):
        raise AuditError(f"{path}: no such file or folder")
    fs, resolved = fsutil.filesystem(path)
    if fs.isdir(resolved) and (
        fsutil.exists(layout.meta(path, "config.yaml")) or fsutil.exists(fsutil.join(path, layout.CANDIDATES_DIR))
    ):
        return _altsieve_source(path)
    if fs.isdir(resolved):
        # The demo's folder holds its run one level down, beside input.parquet and truth.parquet.
        if fsutil.exists(layout.meta(fsutil.join(path, "dataset"), "config.yaml")):
            return _altsieve_source(fsutil.join(path, "dataset"))
        files = fsutil.glob(fsutil.join(path, "*.parquet")) or fsutil.glob(fsutil.join(path, "**/*.parquet"))
    else:
        files = [path]
    if not files:
        raise AuditError(f"{path}: no Parquet files found (expected an altsieve output, an img2dataset output "
                         "or Parquet with url and caption columns)")
    names = set(_read_schema(files[0]).names)
    if "status" in names and "key" in names:
        tars = {}
        for parquet in files:
            tar = parquet.removesuffix(".parquet") + ".tar"
            if fsutil.exists(tar):
                tars[parquet] = tar
        source = Source(KIND_IMG2DATASET, path, files, True, tars=tars)
        if not tars:
            source.notes.append("no .tar beside the Parquet files: no thumbnails (img2dataset output format "
                                "other than webdataset, or tars removed)")
        return source
    for parquet in files:  # footers only: a file without the columns stops the audit before any work
        names = set(_read_schema(parquet).names)
        missing = [c for c in (url_col, caption_col) if c not in names]
        if missing:
            raise AuditError(f"{parquet}: no column {missing[0]!r} (columns: {', '.join(sorted(names))}); "
                             "name the columns with --url-col / --caption-col")
    has_outcomes = "reason" in names or "status" in names
    return Source(KIND_PARQUET, path, files, has_outcomes, url_col=url_col, caption_col=caption_col)


def _altsieve_source(path: str) -> Source:
    select_done = layout.meta(path, "select_done.json")
    notes = []
    if fsutil.exists(select_done):
        partitions = list(fsutil.read_json(select_done)["partitions"])
    else:
        partitions = layout.done_partitions(path)
        notes.append("the select pass has not completed: duplicates and other corpus-wide rules are not decided")
    if not partitions:
        raise AuditError(f"{path}: an altsieve output with no finished partition yet (_candidates/*.done)")
    files = [layout.candidate_prefix(path, pid) + ".parquet" for pid in partitions]
    return Source(KIND_ALTSIEVE, path, files, True, partitions=partitions, notes=notes)


@dataclass
class Batch:
    table: pa.Table  # normalized columns (a subset of WANTED) plus "reason" and "has_image"
    image_tar: str | None


def iter_batches(source: Source) -> Iterator[Batch]:
    if source.kind == KIND_ALTSIEVE:
        yield from _altsieve_batches(source)
    elif source.kind == KIND_IMG2DATASET:
        for path in source.parquet_files:
            table = _read_columns(path, WANTED)
            yield Batch(_img2dataset_normalized(table), source.tars.get(path))
    else:
        rename = {source.url_col: "url", source.caption_col: "caption"}
        wanted = [n for n in WANTED if n not in ("url", "caption")] + list(rename)
        for path in source.parquet_files:
            with fsspec.open(path, "rb") as handle:
                parquet = pq.ParquetFile(handle)
                columns = [n for n in wanted if n in parquet.schema_arrow.names]
                for record_batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns):
                    table = pa.Table.from_batches([record_batch])
                    table = table.rename_columns([rename.get(n, n) for n in table.column_names])
                    if "status" in table.column_names and "reason" not in table.column_names:
                        table = _img2dataset_normalized(table).drop_columns(["has_image"])
                    # Bare Parquet has no tars: no pair has an image to show.
                    table = table.append_column("has_image", pa.repeat(pa.scalar(False), len(table)))
                    yield Batch(table, None)


def _altsieve_batches(source: Source) -> Iterator[Batch]:
    for pid, path in zip(source.partitions, source.parquet_files, strict=True):
        candidates = _read_columns(path, WANTED)
        # Only pairs that passed ingest have an image in the candidate tar.
        has_image = pc.is_null(candidates["reason"])
        decision_path = layout.decision_path(source.root, pid)
        if fsutil.exists(decision_path):
            decisions = _read_columns(decision_path, WANTED)
            index = pc.index_in(candidates["key"], value_set=decisions["key"])
            for name in decisions.column_names:
                if name == "key":
                    continue
                decided = pc.take(decisions[name], index)
                if name in candidates.column_names:
                    position = candidates.column_names.index(name)
                    # The select pass's verdict (and its columns) replace the ingest ones where it decided.
                    merged = pc.if_else(pc.is_null(index), candidates[name], decided.cast(candidates[name].type))
                    candidates = candidates.set_column(position, name, merged)
                else:
                    candidates = candidates.append_column(name, decided)
        candidates = candidates.append_column("has_image", has_image)
        yield Batch(candidates, layout.candidate_prefix(source.root, pid) + ".tar")


# img2dataset writes failures as free text; these map it onto altsieve's reason codes.
_DOWNLOAD_PATTERNS: list[tuple[str, str]] = [
    (r"HTTP Error 40[45]|HTTP Error 410", reasons.DOWNLOAD_NOT_FOUND),
    (r"HTTP Error 429", reasons.DOWNLOAD_RATE_LIMITED),
    (r"HTTP Error 5\d\d", reasons.DOWNLOAD_SERVER_ERROR),
    (r"HTTP Error 4\d\d", reasons.DOWNLOAD_HTTP_ERROR),
    (r"redirect", reasons.DOWNLOAD_TOO_MANY_REDIRECTS),
    (r"timed out|timeout", reasons.DOWNLOAD_TIMEOUT),
    (r"Name or service not known|getaddrinfo|nodename nor servname|No address associated", reasons.DOWNLOAD_DNS_ERROR),
    (r"unknown url type|no host given|Invalid URL|URL can't contain", reasons.URL_INVALID),
    (r"[Cc]onnection|Remote end closed|reset by peer|refused", reasons.DOWNLOAD_CONNECTION_ERROR),
    (r"hash mismatch", reasons.DOWNLOAD_HASH_MISMATCH),
]
_RESIZE_PATTERNS: list[tuple[str, str]] = [
    (r"image too small", reasons.IMAGE_TOO_SMALL),
    (r"image area too large", reasons.IMAGE_TOO_MANY_PIXELS),
    (r"aspect ratio too large", reasons.IMAGE_ASPECT_RATIO),
    (r"[Dd]ecompression ?[Bb]omb", reasons.DECODE_BOMB),
    (r"truncated", reasons.DECODE_TRUNCATED),
]


def img2dataset_reason(status: str | None, message: str | None) -> str | None:
    """An img2dataset status and error message as an altsieve reason code (None: success)."""
    message = message or ""
    if status == reasons.STATUS_SUCCESS:
        return None
    if status == reasons.STATUS_FAILED_TO_DOWNLOAD:
        return next((code for pattern, code in _DOWNLOAD_PATTERNS if re.search(pattern, message)),
                    reasons.DOWNLOAD_ERROR)
    if status == reasons.STATUS_FAILED_TO_RESIZE:
        return next((code for pattern, code in _RESIZE_PATTERNS if re.search(pattern, message)),
                    reasons.DECODE_ERROR)
    return f"{reasons.UNKNOWN_STATUS_PREFIX}{status or 'missing'}"


def _img2dataset_normalized(table: pa.Table) -> pa.Table:
    """Add ``reason`` from status + error message, classifying each distinct pair once (not each row)."""
    status = pc.fill_null(table["status"], "")
    message = pc.fill_null(table["error_message"], "") if "error_message" in table.column_names else status
    combined = pc.binary_join_element_wise(status, message, "\x00")
    distinct = pc.unique(combined)
    codes = [img2dataset_reason(*(value.split("\x00", 1))) for value in distinct.to_pylist()]
    reason = pc.take(pa.array(codes, pa.string()), pc.index_in(combined, value_set=distinct))
    table = table.append_column("reason", reason)
    if "has_image" not in table.column_names:
        table = table.append_column("has_image", pc.equal(table["status"], reasons.STATUS_SUCCESS))
    return table


# ---------------------------------------------------------------------------------------------
# Aggregation


def _floats(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)


def _normalize_error(message: pa.ChunkedArray) -> pa.ChunkedArray:
    """Error messages grouped by kind: URLs, addresses and numbers other than HTTP codes stripped."""
    message = pc.replace_substring_regex(message, r"[A-Za-z][A-Za-z0-9+.\-]*://\S+", "<url>")
    message = pc.replace_substring_regex(message, r"\d+\.\d+\.\d+\.\d+", "<address>")
    message = pc.replace_substring_regex(message, r"after \d+(\.\d+)? s", "after <n> s")
    return pc.utf8_slice_codeunits(message, 0, 160)


def _hosts(urls: pa.ChunkedArray) -> pa.ChunkedArray:
    hosts = pc.struct_field(pc.extract_regex(urls, _HOST), "host")
    hosts = pc.replace_substring_regex(pc.utf8_lower(hosts), r"^www\.", "")
    return pc.if_else(pc.is_valid(hosts), hosts, pa.scalar("(no host)"))


def _grouped(table: pa.Table, keys: list[str]) -> list[dict[str, Any]]:
    return table.group_by(keys).aggregate([([], "count_all")]).to_pylist()


class Aggregator:
    def __init__(self, source: Source, samples_per_reason: int) -> None:
        self.source = source
        self.samples_per_reason = samples_per_reason
        self.rows = 0
        self.columns: set[str] = set()
        self.reason_counts: Counter[str] = Counter()
        self.histograms = {spec.name: Histogram(spec) for spec in HIST_SPECS}
        self.languages: Counter[tuple[str, str]] = Counter()
        self.domains = {group: TopCounter() for group in ("kept", "dropped", "all", "failed")}
        self.errors: Counter[tuple[str, str]] = Counter()
        self.duplicate_keys: list[pa.Array] = []
        self.hash_prefixes: list[pa.Array] = []
        # reason -> heap of (-hash, key, row): the smallest hashes of the keys, a sample that does not depend
        # on the order of files or batches.
        self.samples: dict[str, list[tuple[int, str, dict[str, Any]]]] = {}

    def group_of(self, table: pa.Table) -> tuple[pa.ChunkedArray, np.ndarray]:
        if self.source.has_outcomes:
            kept = pc.is_null(table["reason"])
            return pc.if_else(kept, pa.scalar("kept"), pa.scalar("dropped")), kept.to_numpy(zero_copy_only=False)
        return pa.chunked_array([pa.repeat(pa.scalar("all"), len(table))]), np.ones(len(table), dtype=bool)

    def add(self, batch: Batch) -> None:
        table = batch.table
        if len(table) == 0:
            return
        self.rows += len(table)
        self.columns.update(table.column_names)
        groups, kept = self.group_of(table)
        if self.source.has_outcomes:
            for item in pc.value_counts(table["reason"]).to_pylist():
                self.reason_counts[item["values"] or "kept"] += item["counts"]
        masks = {"kept": kept, "dropped": ~kept} if self.source.has_outcomes else {"all": kept}
        self._histograms(table, masks)
        extra = pa.table({"group": groups})
        if "language" in table.column_names:
            language = pc.fill_null(table["language"], "(not tagged)")
            for row in _grouped(extra.append_column("language", language), ["language", "group"]):
                self.languages[(row["language"], row["group"])] += row["count_all"]
        if "url" in table.column_names:
            self._domains(table, extra.append_column("domain", _hosts(table["url"])))
        if "duplicate_of" in table.column_names:
            duplicates = table["duplicate_of"].drop_null()
            if len(duplicates):
                self.duplicate_keys.append(duplicates.combine_chunks())
        elif "sha256" in table.column_names:
            hashes = table["sha256"].drop_null()  # img2dataset hashes successful downloads only
            if len(hashes):  # 16 hex digits (64 bits) tell SHA-256 digests apart at any corpus size
                self.hash_prefixes.append(pc.utf8_slice_codeunits(hashes, 0, 16).combine_chunks())
        self._sample(batch)

    def _histograms(self, table: pa.Table, masks: dict[str, np.ndarray]) -> None:
        names = table.column_names
        values: dict[str, Callable[[], np.ndarray]] = {}
        if "clip_score" in names:
            values["clip_score"] = lambda: _floats(table["clip_score"])
        if "original_width" in names and "original_height" in names:
            width, height = _floats(table["original_width"]), _floats(table["original_height"])
            values["width"] = lambda: width
            values["height"] = lambda: height
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(height > 0, width / np.where(height > 0, height, 1), np.nan)
            values["aspect_ratio"] = lambda: ratio
        if "caption" in names:
            values["caption_chars"] = lambda: _floats(pc.fill_null(pc.utf8_length(table["caption"]), 0))
            values["caption_words"] = lambda: _floats(
                pc.fill_null(pc.count_substring_regex(table["caption"], r"\S+"), 0))
        if "bytes" in names:
            values["bytes"] = lambda: _floats(table["bytes"])
        for name, compute in values.items():
            array = compute()
            for group, mask in masks.items():
                self.histograms[name].add(group, array[mask])

    def _domains(self, table: pa.Table, extra: pa.Table) -> None:
        counts: dict[str, Counter[str]] = {"kept": Counter(), "dropped": Counter(), "all": Counter()}
        for row in _grouped(extra, ["domain", "group"]):
            counts[row["group"]][row["domain"]] += row["count_all"]
            if row["group"] != "all":
                counts["all"][row["domain"]] += row["count_all"]
        for group, found in counts.items():
            if found:
                self.domains[group].update(found)
        if not self.source.has_outcomes:
            return
        failed = pc.starts_with(pc.fill_null(table["reason"], ""), "download_")
        if not pc.any(failed).as_py():
            return
        message = table["error_message"] if "error_message" in table.column_names else table["reason"]
        failures = pa.table({
            "domain": pc.filter(extra["domain"], failed),
            "reason": pc.filter(table["reason"], failed),
            "message": _normalize_error(pc.fill_null(pc.filter(message, failed), "")),
        })
        self.domains["failed"].update({r["domain"]: r["count_all"] for r in _grouped(failures, ["domain"])})
        for row in _grouped(failures, ["reason", "message"]):
            self.errors[(row["reason"], row["message"])] += row["count_all"]

    def _sample(self, batch: Batch) -> None:
        table = batch.table
        id_column = "key" if "key" in table.column_names else "url"
        if not self.samples_per_reason or id_column not in table.column_names:
            return
        keys = table[id_column].to_pylist()
        hashes = np.fromiter((zlib.crc32(str(k).encode()) for k in keys), dtype=np.int64, count=len(keys))
        if self.source.has_outcomes:
            encoded = pc.dictionary_encode(pc.fill_null(table["reason"], "kept")).combine_chunks()
            labels, codes = encoded.dictionary.to_pylist(), encoded.indices.to_numpy(zero_copy_only=False)
        else:
            labels, codes = ["all"], np.zeros(len(table), dtype=np.int64)
        fields = [n for n in SAMPLE_FIELDS if n in table.column_names]
        k = self.samples_per_reason
        for code, label in enumerate(labels):
            rows = np.flatnonzero(codes == code)
            if rows.size > k:
                rows = rows[np.argpartition(hashes[rows], k)[:k]]
            heap = self.samples.setdefault(label, [])
            for row in rows:
                entry = -int(hashes[row])
                if len(heap) == k and entry <= heap[0][0]:
                    continue
                record = {name: table[name][int(row)].as_py() for name in fields}
                record["has_image"] = bool(table["has_image"][int(row)].as_py())
                record["image_tar"] = batch.image_tar if record["has_image"] else None
                item = (entry, str(keys[row]), record)
                if len(heap) < k:
                    heapq.heappush(heap, item)
                else:
                    heapq.heapreplace(heap, item)

    # -----------------------------------------------------------------------------------------
    # Results

    def result(self) -> dict[str, Any]:
        not_computed: list[dict[str, str]] = []
        histograms: dict[str, Any] = {}
        for name, histogram in self.histograms.items():
            if histogram.counts:
                histograms[name] = histogram.to_json()
            else:
                histograms[name] = {"title": histogram.spec.title, "computed": False, "why": self._why_not(name)}
                not_computed.append({"what": histogram.spec.title, "why": histograms[name]["why"]})
        for histogram in histograms.values():
            histogram.setdefault("computed", True)
        out: dict[str, Any] = {
            "rows": self.rows,
            "columns": sorted(self.columns),
            "histograms": histograms,
        }
        out["languages"] = self._languages(not_computed)
        out["duplicate_clusters"] = self._duplicate_clusters(not_computed)
        out["domains"], out["download_failures"] = self._domains_json(not_computed)
        return {**out, "not_computed": not_computed}

    def _why_not(self, name: str) -> str:
        if name == "clip_score":
            if "clip_score" in self.columns:
                return "clip_score holds no values: CLIP scoring was off in this run (clip.enabled in the recipe)"
            return "no clip_score column: the CLIP scoring stage has not been run on this corpus"
        if name in ("width", "height", "aspect_ratio"):
            return "no original_width/original_height columns: image sizes need the images (metadata-only input)"
        if name == "bytes":
            return "no bytes column: this input does not record downloaded file sizes"
        return "no caption column"

    def _languages(self, not_computed: list[dict[str, str]]) -> dict[str, Any]:
        if "language" not in self.columns:
            why = "no language column: language identification has not been run on this corpus"
            not_computed.append({"what": "Language distribution", "why": why})
            return {"computed": False, "why": why}
        totals: Counter[str] = Counter()
        for (language, _), count in self.languages.items():
            totals[language] += count
        rows = []
        for language, total in totals.most_common():
            row = {"language": language, "total": total}
            for group in ("kept", "dropped", "all"):
                if (language, group) in self.languages:
                    row[group] = self.languages[(language, group)]
            rows.append(row)
        return {"computed": True, "distinct": len(rows), "languages": rows}

    def _duplicate_clusters(self, not_computed: list[dict[str, str]]) -> dict[str, Any]:
        if "duplicate_of" in self.columns:
            method = "duplicate_of: the pair each dropped duplicate names (the run's dedup methods)"
            chunks = self.duplicate_keys
            extra = 1  # the kept pair each cluster's duplicates point to
        elif "sha256" in self.columns:
            method = "sha256 of the downloaded image, equal digests (computed by the audit)"
            chunks = self.hash_prefixes
            extra = 0
        else:
            why = "no duplicate_of or sha256 column: deduplication has not been run and no image hashes are recorded"
            not_computed.append({"what": "Duplicate cluster sizes", "why": why})
            return {"computed": False, "why": why}
        sizes: Counter[int] = Counter()
        if chunks:
            counts = pc.value_counts(pa.chunked_array(chunks)).field("counts").to_numpy() + extra
            counts = counts[counts > 1]
            values, frequency = np.unique(counts, return_counts=True)
            sizes = Counter(dict(zip(values.tolist(), frequency.tolist(), strict=True)))
        in_clusters = sum(size * n for size, n in sizes.items())
        return {
            "computed": True,
            "method": method,
            "clusters": sum(sizes.values()),
            "pairs_in_clusters": in_clusters,
            "redundant_pairs": in_clusters - sum(sizes.values()),
            "largest": max(sizes) if sizes else 0,
            "sizes": [{"size": size, "clusters": n} for size, n in sorted(sizes.items())],
        }

    def _domains_json(self, not_computed: list[dict[str, str]]) -> tuple[dict[str, Any], dict[str, Any]]:
        if "url" not in self.columns:
            why = "no url column"
            not_computed.append({"what": "Domains", "why": why})
            return {"computed": False, "why": why}, {"computed": False, "why": why}

        def top(group: str) -> list[dict[str, Any]]:
            counter = self.domains[group]
            return [{"domain": d, "count": n, "total": self.domains["all"].counts.get(d, n)}
                    for d, n in counter.counts.most_common(TOP_N)]

        all_domains = self.domains["all"]
        domains: dict[str, Any] = {
            "computed": True,
            "distinct": len(all_domains.counts) + (1 if all_domains.folded else 0),
            "folded_rare_domains": {"pairs": all_domains.folded, "max_error": all_domains.max_folded},
        }
        if self.source.has_outcomes:
            domains["top_kept"] = top("kept")
            domains["top_dropped"] = top("dropped")
        else:
            domains["top"] = top("all")
            why = "the input records no outcome per pair (no status or reason column)"
            not_computed.append({"what": "Kept vs dropped, download failures", "why": why})
            return domains, {"computed": False, "why": why}
        by_reason: Counter[str] = Counter()
        for (reason, _), count in self.errors.items():
            by_reason[reason] += count
        failures = {
            "computed": True,
            "total": sum(by_reason.values()),
            "by_reason": [{"reason": r, "count": n} for r, n in by_reason.most_common()],
            "by_error": [{"reason": r, "error": m or "(no message)", "count": n}
                         for (r, m), n in self.errors.most_common(TOP_N * 2)],
            "by_domain": top("failed"),
        }
        return domains, failures


# ---------------------------------------------------------------------------------------------
# Funnel


def comparison(own: dict[str, Any], label: str) -> list[dict[str, Any]]:
    """This corpus beside the published ones: input, download attempts, fetched, kept, as shares of input."""
    stages = {stage["stage"]: stage for stage in own["stages"]}
    total = own["input_pairs"]
    attempted = None
    if "fetched" in stages:
        attempted = stages["fetched"]["remaining"] + stages["fetched"]["dropped"]
    rows = [{
        "corpus": label,
        "input": total,
        "download_attempts": attempted,
        "fetched": stages["fetched"]["remaining"] if "fetched" in stages else None,
        "kept": own["kept"] if len(own["stages"]) > 2 else None,
        "kept_percent": own["kept_percent"] if len(own["stages"]) > 2 else None,
        "source": "this audit",
    }]
    for published in published_funnels_json():
        by_stage = {s["stage"]: s for s in published["stages"]}
        first = published["stages"][0]
        rows.append({
            "corpus": published["corpus"],
            "input": first["as_published"],
            "download_attempts": by_stage.get("download attempts", {}).get("as_published"),
            "fetched": by_stage.get("images downloaded", {}).get("as_published"),
            "kept": by_stage.get("kept", {}).get("as_published"),
            "kept_percent": published["kept_percent"],
            "kept_percent_as_published": published["kept_percent_as_published"],
            "fetched_percent_of_attempts": (round(100 * by_stage["images downloaded"]["count"]
                                                  / by_stage["download attempts"]["count"], 1)
                                            if "download attempts" in by_stage else None),
            "notes": published["notes"],
            "source": published["source"],
        })
    if attempted:
        rows[0]["fetched_percent_of_attempts"] = round(100.0 * rows[0]["fetched"] / attempted, 1)
    return rows


# ---------------------------------------------------------------------------------------------
# Gallery thumbnails


def _thumbnails(samples: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """key -> JPEG data URI, read from the tars that hold the sampled pairs' images (headers only, then stop)."""
    from PIL import Image

    wanted: dict[str, set[str]] = {}
    for rows in samples.values():
        for row in rows:
            if row.get("image_tar"):
                wanted.setdefault(row["image_tar"], set()).add(str(row["key"]))
    thumbs: dict[str, str] = {}
    for tar_path, keys in wanted.items():
        if not fsutil.exists(tar_path):
            continue
        try:
            with fsspec.open(tar_path, "rb") as handle, tarfile.open(fileobj=handle, mode="r:") as tar:
                for member in tar:
                    key, _, extension = member.name.rpartition(".")
                    if key not in keys or extension.lower() not in ("jpg", "jpeg", "png", "webp"):
                        continue
                    extracted = tar.extractfile(member)
                    if extracted is None:
                        continue
                    image = Image.open(io.BytesIO(extracted.read()))
                    image.thumbnail((THUMB_SIZE, THUMB_SIZE))
                    buffer = io.BytesIO()
                    image.convert("RGB").save(buffer, format="JPEG", quality=80)
                    thumbs[key] = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
                    keys.discard(key)
                    if not keys:
                        break
        except (OSError, tarfile.TarError) as err:
            log.warning("audit: cannot read thumbnails from %s: %s", tar_path, err)
    return thumbs


# ---------------------------------------------------------------------------------------------
# The run that made the corpus


def run_info(source: Source, audited_reasons: dict[str, int], kept: int) -> dict[str, Any]:
    if source.kind == KIND_ALTSIEVE:
        info: dict[str, Any] = {"tool": "altsieve"}
        manifest_path = fsutil.join(source.root, "manifest.json")
        if fsutil.exists(manifest_path):
            manifest = fsutil.read_json(manifest_path)
            for name in ("recipe", "created", "versions", "inputs", "samples_per_shard", "total_samples", "config"):
                info[name] = manifest.get(name)
            info["cites"] = (manifest.get("config") or {}).get("cites", [])
        else:
            info["note"] = "no manifest.json yet (the reshard pass has not finished)"
        stats_path = fsutil.join(source.root, "stats.json")
        if fsutil.exists(stats_path):
            stats = fsutil.read_json(stats_path)
            info["stats_json_agrees"] = stats.get("reasons") == audited_reasons and stats["funnel"]["kept"] == kept
        return info
    if source.kind == KIND_IMG2DATASET:
        info = {"tool": "img2dataset", "note": "img2dataset records no recipe or versions in its output"}
        successes = 0
        found = False
        for parquet in source.parquet_files:
            stats_path = parquet.removesuffix(".parquet") + "_stats.json"
            if fsutil.exists(stats_path):
                found = True
                successes += int(fsutil.read_json(stats_path).get("successes", 0))
        if found:
            info["stats_json_successes"] = successes
            info["stats_json_agrees"] = successes == kept
        return info
    return {"tool": None, "note": "bare Parquet: no run recorded"}


# ---------------------------------------------------------------------------------------------
# The command


def _rows_of(paths: list[str]) -> int:
    """The rows of Parquet files, from their footers: the progress bar's total."""
    total = 0
    for path in paths:
        with fsspec.open(path, "rb") as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    return total


def audit(path: str, report_dir: str, samples_per_reason: int = 6, url_col: str = "url",
          caption_col: str = "caption") -> dict[str, Any]:
    """Audit PATH; write ``report.html`` and ``audit.json`` into ``report_dir``; return the JSON."""
    started = time.time()
    source = detect(path, url_col, caption_col)
    aggregator = Aggregator(source, samples_per_reason)
    with tqdm(desc="audit", total=_rows_of(source.parquet_files), unit="pairs", file=sys.stderr,
              dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 10.0) as bar:
        for batch in iter_batches(source):
            aggregator.add(batch)
            bar.update(len(batch.table))
    result = aggregator.result()
    not_computed = result.pop("not_computed")
    reason_counts = {k: v for k, v in sorted(aggregator.reason_counts.items()) if k != "kept"}
    if source.has_outcomes:
        funnel_json = reasons.funnel(aggregator.reason_counts)
    else:
        funnel_json = reasons.funnel({"kept": aggregator.rows})
        funnel_json["stages"] = funnel_json["stages"][:1]
        funnel_json["kept"] = None
        funnel_json["kept_percent"] = None
        not_computed.append({"what": "Funnel beyond input pairs",
                             "why": "the input records no outcome per pair (no status or reason column)"})
    samples = {label: [row for _, _, row in sorted(heap, key=lambda item: (-item[0], item[1]))]
               for label, heap in aggregator.samples.items()}
    thumbs = _thumbnails(samples)
    gallery = []
    for label in sorted(samples, key=lambda name: (name != "kept", -aggregator.reason_counts.get(name, 0), name)):
        rows = []
        for row in samples[label]:
            row = {k: v for k, v in row.items() if k != "image_tar"}
            row["thumbnail"] = str(row.get("key")) in thumbs
            rows.append(row)
        count = aggregator.reason_counts.get(label, aggregator.rows)
        gallery.append({"reason": label, "count": count, "samples": rows})
    if not thumbs:
        not_computed.append({"what": "Thumbnails", "why": "no sampled pair has an image in this input"})
    audit_json: dict[str, Any] = {
        "altsieve_audit": __version__,
        "path": path,
        "kind": source.kind,
        "input_pairs": aggregator.rows,
        "kept": funnel_json["kept"],
        "funnel": funnel_json,
        "reasons": reason_counts,
        "published_comparison": comparison(funnel_json, "this corpus"),
        "published_funnels": published_funnels_json(),
        **result,
        "gallery": gallery,
        "run": run_info(source, reason_counts, funnel_json["kept"] or 0),
        "notes": source.notes + [
            "thumbnails: only pairs that passed ingest have an image (kept pairs and duplicates); pairs dropped "
            "earlier (download, decode, image or caption rules) have none, so a placeholder stands for them"
        ],
        "not_computed": not_computed,
    }
    audit_json["statistics_s"] = round(time.time() - started, 2)
    from altsieve.pipeline.audit_report import render_html

    html = render_html(audit_json, thumbs)
    audit_json["duration_s"] = round(time.time() - started, 2)
    fsutil.makedirs(report_dir)
    fsutil.write_json(fsutil.join(report_dir, "audit.json"), audit_json)
    fsutil.write_text(fsutil.join(report_dir, "report.html"), html)
    return audit_json


def audit_cli(path: str, report_dir: str, samples: int, url_col: str, caption_col: str) -> int:
    result = audit(path, report_dir, samples, url_col, caption_col)
    kept = result["kept"]
    kept_text = f", {kept} kept ({result['funnel']['kept_percent']:.1f} %)" if kept is not None else ""
    print(f"audited {result['input_pairs']} pairs ({result['kind']}){kept_text} in {result['duration_s']} s")
    print(f"  {fsutil.join(report_dir, 'report.html')}\n  {fsutil.join(report_dir, 'audit.json')}")
    for item in result["not_computed"]:
        print(f"  not computed: {item['what']}: {item['why']}")
    return 0


def load(report_dir: str) -> dict[str, Any]:
    with fsspec.open(fsutil.join(report_dir, "audit.json"), "rt", encoding="utf-8") as handle:
        return json.load(handle)
