"""Input URL lists: Parquet, CSV, TSV, JSONL, each plain or gzip, local or any fsspec path.

Files are streamed (Parquet row groups, text line by line), never loaded whole. A file that cannot
be read, or lacks the url/caption column, is one ``InputError`` naming the file and the column; a
bad row (no url, unparseable JSON line) becomes a row with a reason code, not an exception.

Keys are deterministic: ``{file_index:05d}{row:010d}``, the file's position in the sorted listing
and the row's position in the file, so a rerun gives every pair the same key and partition.
"""

from __future__ import annotations

import csv
import functools
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import fsspec
import pyarrow.parquet as pq

from altsieve.core import fsutil, reasons
from altsieve.core.config import Config
from altsieve.core.layout import candidate_prefix, marker_path
from altsieve.filters.base import RuleSet

TEXT_FORMATS = {"csv": ",", "tsv": "\t"}
SUFFIXES = {
    ".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
}
# Rows decoded from Parquet at a time: rows are streamed, so this bounds memory, not what is read.
PARQUET_BATCH_ROWS = 8192


class InputError(ValueError):
    """An input file or column that cannot be used; the message names it."""


@dataclass(frozen=True)
class InputFile:
    index: int
    path: str
    fmt: str


@dataclass
class Partition:
    """A unit of work: consecutive rows of one input file. Its id is stable across reruns."""

    partition_id: str
    source: str
    rows: list[dict[str, Any]] = field(default_factory=list)


def make_key(file_index: int, row: int) -> str:
    return f"{file_index:05d}{row:010d}"


def partition_id_for(file_index: int, start_row: int) -> str:
    return f"{file_index:05d}_{start_row:010d}"


def detect_format(path: str, declared: str = "auto") -> str:
    if declared != "auto":
        return declared
    name = path.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for suffix, fmt in SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    raise InputError(
        f"input {path}: cannot tell its format from the name; name it .parquet, .csv, .tsv or .jsonl "
        "(optionally .gz), or pass --input-format"
    )


def list_input_files(inputs: list[str], declared_format: str = "auto") -> list[InputFile]:
    """Expand files, folders and globs into a sorted, de-duplicated list of input files."""
    found: list[str] = []
    for spec in inputs:
        fs, _, paths = fsspec.get_fs_token_paths(spec)

        if not paths:
            raise InputError(f"input {spec}: no file matches")
        for path in paths:
            if fs.isdir(path):
                inside = sorted(
                    p for p in fs.find(path) if not p.rsplit("/", 1)[-1].startswith((".", "_")) and _known_suffix(p)
                )
                if not inside and declared_format == "auto":
                    raise InputError(f"input folder {spec} holds no .parquet, .csv, .tsv or .jsonl file")
                found.extend(fsutil.qualified(fs, p) for p in inside)
            elif fs.exists(path):
                found.append(fsutil.qualified(fs, path))
            else:
                raise InputError(f"input {spec}: no such file")
    unique = sorted(dict.fromkeys(found))
    return [InputFile(i, p, detect_format(p, declared_format)) for i, p in enumerate(unique)]


def _known_suffix(path: str) -> bool:
    name = path.lower().removesuffix(".gz")
    return any(name.endswith(s) for s in SUFFIXES)


def _check_columns(path: str, available: list[str], needed: list[str]) -> None:
    missing = [c for c in needed if c not in available]
    if missing:
        raise InputError(
            f"input {path}: column {missing[0]!r} not found; its columns are {', '.join(available) or '(none)'}. "
            "Name the right one with --url-col / --caption-col (or input.url_col / input.caption_col)"
        )


def _iter_parquet(path: str, needed: list[str], optional: list[str]) -> Iterator[dict[str, Any]]:
    if path.lower().endswith(".gz"):
        yield from _iter_gzipped_parquet(path, needed, optional)
        return
    with fsspec.open(path, "rb") as handle:
        yield from _iter_parquet_handle(path, handle, needed, optional)


def _iter_gzipped_parquet(path: str, needed: list[str], optional: list[str]) -> Iterator[dict]:
    """Parquet needs random access, which a gzip stream lacks: inflate to a local temporary file first."""
    with tempfile.TemporaryFile() as local:
        with fsspec.open(path, "rb", compression="gzip") as handle:
            shutil.copyfileobj(handle, local, length=1 << 20)
        local.seek(0)
        yield from _iter_parquet_handle(path, local, needed, optional)


def _iter_parquet_handle(path: str, handle: Any, needed: list[str], optional: list[str]) -> Iterator[dict[str, Any]]:
    try:
        parquet = pq.ParquetFile(handle)
    except Exception as err:  # pyarrow raises several types for a non-Parquet file
        raise InputError(f"input {path}: not a readable Parquet file ({err})") from err
    names = parquet.schema_arrow.names
    _check_columns(path, names, needed)
    columns = needed + [c for c in optional if c in names]
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
        yield from batch.to_pylist()


def _iter_delimited(path: str, delimiter: str, needed: list[str]) -> Iterator[dict[str, Any]]:
    with fsspec.open(path, "rt", compression="infer", encoding="utf-8", errors="replace", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        try:
            header = reader.fieldnames or []
        except (csv.Error, OSError, EOFError) as err:
            raise InputError(f"input {path}: cannot read its header ({err})") from err
        _check_columns(path, list(header), needed)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                yield {"__bad_row__": f"unparseable CSV row: {err}"}
                continue
            yield row


def _iter_jsonl(path: str, needed: list[str]) -> Iterator[dict[str, Any]]:
    with fsspec.open(path, "rt", compression="infer", encoding="utf-8", errors="replace") as handle:
        checked = False
        for line in handle:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                yield {"__bad_row__": f"unparseable JSON line: {err.msg}"}
                continue
            if not isinstance(row, dict):
                yield {"__bad_row__": "JSON line is not an object"}
                continue
            if not checked:
                # A JSONL file has no header: the first object stands for it.
                _check_columns(path, list(row), needed)
                checked = True
            yield row


def iter_rows(source: InputFile, url_col: str, caption_col: str, extra_cols: list[str]) -> Iterator[dict[str, Any]]:
    """Rows of one file as ``{key, url, caption, extra..., reason?}``, streamed."""
    needed = [url_col, caption_col]
    try:
        if source.fmt == "parquet":
            raw = _iter_parquet(source.path, needed, extra_cols)
        elif source.fmt in TEXT_FORMATS:
            raw = _iter_delimited(source.path, TEXT_FORMATS[source.fmt], needed)
        else:
            raw = _iter_jsonl(source.path, needed)
        for row_number, row in enumerate(raw):
            yield _normalise_row(source.index, row_number, row, url_col, caption_col, extra_cols)
    except InputError:
        raise
    except (OSError, EOFError, UnicodeError, ValueError) as err:
        raise InputError(f"input {source.path}: cannot be read ({type(err).__name__}: {err})") from err


def _normalise_row(
    file_index: int, row_number: int, row: dict[str, Any], url_col: str, caption_col: str, extra_cols: list[str]
) -> dict[str, Any]:
    record: dict[str, Any] = {"key": make_key(file_index, row_number), "reason": None, "error_message": None}
    if "__bad_row__" in row:
        record.update(url="", caption="", reason=reasons.URL_INVALID, error_message=row["__bad_row__"])
        record["extra"] = {c: None for c in extra_cols}
        return record
    url = row.get(url_col)
    caption = row.get(caption_col)
    record["url"] = url.strip() if isinstance(url, str) else ("" if url is None else str(url))
    record["caption"] = caption if isinstance(caption, str) else ("" if caption is None else str(caption))
    record["extra"] = {c: None if row.get(c) is None else str(row.get(c)) for c in extra_cols}
    verdict = _input_rules().apply(record)
    if verdict is not None:
        record["reason"], record["error_message"] = verdict
    return record


@functools.cache
def _input_rules() -> RuleSet:
    # The input rules (filters/url.py) take no settings, so the default config builds them.
    return RuleSet.for_stages(Config(), reasons.INPUT)


def iter_partitions(
    source: InputFile, url_col: str, caption_col: str, extra_cols: list[str], rows_per_partition: int
) -> Iterator[Partition]:
    """Cut one file into partitions of ``rows_per_partition`` consecutive rows."""
    current: Partition | None = None
    for row_number, row in enumerate(iter_rows(source, url_col, caption_col, extra_cols)):
        if current is None or len(current.rows) >= rows_per_partition:
            if current is not None:
                yield current
            current = Partition(partition_id_for(source.index, row_number), source.path)
        current.rows.append(row)
    if current is not None:
        yield current


def sniff_input(source: InputFile, url_col: str, caption_col: str) -> None:
    """Fail early and clearly, in the launcher, on an unreadable file or a missing column."""
    rows = iter_rows(source, url_col, caption_col, [])
    try:
        next(rows, None)
    finally:
        rows.close()



# --- Beam ------------------------------------------------------------------------------------


class _PlanPartitions(beam.DoFn):
    """Stream one input file into partitions, skipping those already complete in ``output``."""

    def __init__(
        self, output: str, url_col: str, caption_col: str, extra_cols: list[str], rows_per_partition: int,
        retry_failed: bool,
    ) -> None:
        self._output, self._url, self._caption = output, url_col, caption_col
        self._extra, self._rows, self._retry = extra_cols, rows_per_partition, retry_failed

    def process(self, source: InputFile):
        for partition in iter_partitions(source, self._url, self._caption, self._extra, self._rows):
            if not fsutil.exists(marker_path(self._output, partition.partition_id)):
                yield partition
            elif self._retry:
                retry = _transient_rows(candidate_prefix(self._output, partition.partition_id), partition)
                if retry is not None:
                    yield retry


def _transient_rows(prefix: str, partition: Partition) -> Partition | None:
    """The rows of a finished partition whose failure was transient, ready to be fetched again."""
    from altsieve.transforms.shards import read_parquet_rows

    failed = {
        row["key"]
        for row in read_parquet_rows(f"{prefix}.parquet", ["key", "reason"])
        if row["reason"] in reasons.TRANSIENT
    }
    rows = [row for row in partition.rows if row["key"] in failed]
    return Partition(partition.partition_id, partition.source, rows) if rows else None


class ReadPartitions(beam.PTransform):
    """Input files -> ``PCollection[Partition]`` of the work still to do, spread over the workers."""

    def __init__(
        self, files: list[InputFile], output: str, url_col: str, caption_col: str, extra_cols: list[str],
        rows_per_partition: int, retry_failed: bool = False,
    ) -> None:
        super().__init__()
        self._files = files
        self._plan = _PlanPartitions(output, url_col, caption_col, extra_cols, rows_per_partition, retry_failed)

    def expand(self, pipeline: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pipeline
            | "InputFiles" >> beam.Create(self._files)
            | "Plan" >> beam.ParDo(self._plan)
            # Partitions of one file are read in one place; the shuffle spreads them over the workers.
            | "Spread" >> beam.Reshuffle()
        )
