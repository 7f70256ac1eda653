"""What the audited path is (an altsieve output, an img2dataset output, bare Parquet) and its rows, batch by batch.

Each adapter yields Arrow tables of the same normalized columns (a subset of ``WANTED`` plus
``reason`` and ``has_image``), so the aggregation never asks which tool wrote them.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from altsieve.core import fsutil, layout
from altsieve.core.config import ConfigError
from altsieve.pipeline.audit.img2dataset import normalized as _img2dataset_normalized

KIND_ALTSIEVE = "altsieve"
KIND_IMG2DATASET = "img2dataset"
KIND_PARQUET = "parquet"

# The columns the audit reads when a file has them (never exif or image bytes).
WANTED = [
    "key", "url", "caption", "reason", "status", "error_message", "original_width", "original_height",
    "bytes", "http_status", "language", "language_score", "clip_score", "duplicate_of", "sha256", "phash",
]
BATCH_ROWS = 65_536  # for bare Parquet read by row-group batches


class AuditError(ConfigError):
    """An audit input that cannot be read; the message names the path and what is missing."""


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
    _starts: dict[str, list[tuple[int, str]]] | None = field(default=None, repr=False)  # file -> (first row, pid)

    def shard_of_key(self, key: str) -> str | None:
        """The candidate tar that holds a pair's image if it passed ingest (altsieve keys name their partition).

        Keys are ``{file:05d}{row:010d}`` and partitions ``{file:05d}_{first row:010d}``: the partition of a
        key is the one of its file with the largest first row not above the key's row.
        """
        if self.kind != KIND_ALTSIEVE or len(key) != 15 or not key.isdigit():
            return None
        if self._starts is None:
            starts: dict[str, list[tuple[int, str]]] = {}
            for pid in self.partitions:
                file_index, _, first = pid.partition("_")
                if first.isdigit():
                    starts.setdefault(file_index, []).append((int(first), pid))
            self._starts = {f: sorted(v) for f, v in starts.items()}
        candidates = self._starts.get(key[:5], [])
        row = int(key[5:])
        position = bisect.bisect_right(candidates, (row, "\uffff")) - 1
        if position < 0:
            return None
        return layout.candidate_prefix(self.root, candidates[position][1]) + ".tar"


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
    image_tar: str | None  # the tar holding the images of the rows with has_image
    thumbs_tar: str | None = None  # ingest's thumbnails of pairs dropped after decode (altsieve)
    embeddings: str | None = None  # the partition's CLIP embeddings of its ingest-kept pairs (altsieve)


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
        prefix = layout.candidate_prefix(source.root, pid)
        embeddings = prefix + layout.EMBEDDINGS_SUFFIX
        yield Batch(candidates, prefix + ".tar", layout.thumbnails_path(source.root, pid),
                    embeddings if fsutil.exists(embeddings) else None)
