"""Input URL lists: Parquet, CSV, TSV, JSONL, each plain or gzip, local or any fsspec path.

Files are streamed (Parquet row groups, text line by line), never loaded whole. A file that cannot
be read, or lacks the url/caption column, is one ``InputError`` naming the file and the column; a
bad row becomes a row with a reason code and a message naming its line, not an exception: no url,
a CSV record that does not parse strictly (an unclosed quote, another field count than the header),
an unparseable JSON line (``input_malformed_row``), a line not valid in ``input.encoding``
(``input_undecodable``; never U+FFFD). A byte-order mark is dropped. A truncated ``.gz`` is one
``InputError`` naming the file and the last line read.

Keys are deterministic: ``{file_index:05d}{row:010d}``, the file's position in the sorted listing
and the row's position in the file, so a rerun gives every pair the same key and partition.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import json
import shutil
import tempfile
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import fsspec
import pyarrow.parquet as pq

from altsieve.core import fsutil, reasons
from altsieve.core.config import Config, InputConfig, InputError
from altsieve.core.layout import candidate_prefix, marker_path
from altsieve.filters.base import RuleSet

TEXT_FORMATS = {"csv": ",", "tsv": "\t"}
SUFFIXES = {
    ".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
}
# Rows decoded from Parquet at a time: rows are streamed, so this bounds memory, not what is read.
PARQUET_BATCH_ROWS = 8192


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


# Beyond this many characters a CSV field is refused (input_malformed_row) unless rules.caption.max_chars allows
# more: with input.newlines_in_values an unclosed quote would otherwise swallow the rest of the file into one field.
DEFAULT_MAX_FIELD_CHARS = 1 << 20
_BAD_ROW = "__bad_row__"
# The limit is ours (above, per reader); csv's own process-wide one (128 KiB) would refuse a long caption.
csv.field_size_limit(2**31 - 1)


def _bad(reason: str, message: str) -> dict[str, Any]:
    return {_BAD_ROW: (reason, message)}


def _ascii_compatible(encoding: str) -> bool:
    """Whether lines can be split on the raw bytes before decoding (not so for UTF-16 and UTF-32)."""
    return '\n,\t"{}'.encode(encoding, errors="strict") == b'\n,\t"{}'


NumberedLine = tuple[int, str | None, str | None]  # line number (1-based), its text, or why it has none


def _numbered_lines(path: str, encoding: str) -> Iterator[NumberedLine]:
    """The physical lines of a text input, each decoded on its own, so one bad line costs only its row.

    A truncated or corrupt gzip stream is one InputError naming the file and the last good line.
    """
    number = 0
    try:
        with fsspec.open(path, "rb", compression="infer") as handle:
            if _ascii_compatible(encoding):
                for number, raw in enumerate(handle, start=1):
                    try:
                        text = raw.decode(encoding)
                    except UnicodeDecodeError as err:
                        problem = (f"byte {raw[err.start:err.start + 1]!r} at column {err.start + 1} is not valid "
                                   f"{encoding}; name the file's encoding with --encoding (e.g. latin-1, cp1252)")
                        yield number, None, problem
                        continue
                    yield number, text.removeprefix("\ufeff") if number == 1 else text, None
            else:  # the codec itself has to find the line ends; a bad byte then stops the file
                for number, text in enumerate(io.TextIOWrapper(handle, encoding=encoding, newline=""), start=1):
                    yield number, text.removeprefix("\ufeff") if number == 1 else text, None
    except UnicodeDecodeError as err:
        raise InputError(f"input {path}: line {number + 1} is not valid {encoding} ({err.reason}); "
                         "name the file's encoding with --encoding") from err
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise InputError(f"input {path}: the compressed stream is truncated or corrupt after line {number} "
                         f"({err}); the rows before it were read, the file must be replaced to read the rest") from err


def _split_line(text: str, delimiter: str) -> tuple[list[str] | None, str | None]:
    """One record's fields, or the parser's complaint; strict: a stray quote is an error, not a guess."""
    try:
        return next(csv.reader([text], delimiter=delimiter, strict=True)), None
    except csv.Error as err:
        return None, str(err)


_OPEN_QUOTE = "unexpected end of data"  # csv's complaint when a quoted field is still open at the end


def _iter_delimited(
    path: str, delimiter: str, needed: list[str], encoding: str = "utf-8", newlines_in_values: bool = False,
    max_field_chars: int = DEFAULT_MAX_FIELD_CHARS,
) -> Iterator[dict[str, Any]]:
    """CSV/TSV rows, strictly: a record that does not parse, or has another field count than the header, is a
    row with input_malformed_row naming its line, and reading goes on at the next line (never merged rows)."""
    lines = _numbered_lines(path, encoding)
    pending: deque[NumberedLine] = deque()  # lines of a refused multi-line record, to be read again as rows

    def next_line() -> NumberedLine | None:
        return pending.popleft() if pending else next(lines, None)

    header: list[str] | None = None
    while header is None:
        item = next_line()
        if item is None:
            raise InputError(f"input {path}: empty file, no header line")
        number, text, problem = item
        if problem is not None:
            raise InputError(f"input {path}: cannot read its header (line {number}: {problem})")
        if text.strip("\r\n"):
            header, error = _split_line(text, delimiter)
            if header is None:
                raise InputError(f"input {path}: cannot read its header (line {number}: {error})")
    _check_columns(path, header, needed)
    while (item := next_line()) is not None:
        number, text, problem = item
        if problem is not None:
            yield _bad(reasons.INPUT_UNDECODABLE, f"line {number}: {problem}")
            continue
        if not text.strip("\r\n"):
            continue  # a blank line is no row (as csv.DictReader and pandas read it)
        consumed = [item]
        fields, error = _split_line(text, delimiter)
        while error == _OPEN_QUOTE and newlines_in_values and len(text) <= max_field_chars:
            more = next_line()
            if more is None or more[1] is None:
                if more is not None:
                    pending.appendleft(more)
                break
            consumed.append(more)
            text += more[1]
            fields, error = _split_line(text, delimiter)
        if fields is not None and len(fields) == len(header):
            if max(map(len, fields), default=0) <= max_field_chars:
                yield dict(zip(header, fields, strict=True))
                continue
            error = f"a field is longer than {max_field_chars} characters"
        elif fields is not None:
            error = f"{len(fields)} field{'s' if len(fields) != 1 else ''} where the header has {len(header)}"
        elif error == _OPEN_QUOTE:
            error = "a quoted field is never closed" + ("" if newlines_in_values else
                                                         " on its line (input.newlines_in_values lets it go on)")
        yield _bad(reasons.INPUT_MALFORMED_ROW, f"line {number}: {error}: {consumed[0][1][:120]!r}")
        pending.extendleft(reversed(consumed[1:]))  # the lines it swallowed are rows of their own


def _iter_jsonl(path: str, needed: list[str], encoding: str = "utf-8") -> Iterator[dict[str, Any]]:
    checked = False
    for number, line, problem in _numbered_lines(path, encoding):
        if problem is not None:
            yield _bad(reasons.INPUT_UNDECODABLE, f"line {number}: {problem}")
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            yield _bad(reasons.INPUT_MALFORMED_ROW, f"line {number}: unparseable JSON ({err.msg})")
            continue
        if not isinstance(row, dict):
            yield _bad(reasons.INPUT_MALFORMED_ROW, f"line {number}: a JSON {type(row).__name__}, not an object")
            continue
        if not checked:
            # A JSONL file has no header: the first object stands for it.
            _check_columns(path, list(row), needed)
            checked = True
        nested = next((c for c in needed if isinstance(row.get(c), (dict, list))), None)
        if nested is not None:
            kind = "an object" if isinstance(row[nested], dict) else "a list"
            yield _bad(reasons.INPUT_MALFORMED_ROW, f"line {number}: {nested!r} is {kind}, not text")
            continue
        yield row


def iter_rows(
    source: InputFile, url_col: str, caption_col: str, extra_cols: list[str], *,
    settings: InputConfig | None = None, max_field_chars: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Rows of one file as ``{key, url, caption, extra..., reason?}``, streamed.

    ``settings``: the encoding and CSV dialect (``InputConfig``; its defaults when None). ``max_field_chars``:
    rules.caption.max_chars, so that a caption up to that length is a caption, not a malformed row.
    """
    settings = settings or InputConfig()
    field_limit = max(DEFAULT_MAX_FIELD_CHARS, max_field_chars or 0)
    needed = [url_col, caption_col]
    try:
        if source.fmt == "parquet":
            raw = _iter_parquet(source.path, needed, extra_cols)
        elif source.fmt in TEXT_FORMATS:
            raw = _iter_delimited(source.path, TEXT_FORMATS[source.fmt], needed, settings.encoding,
                                  settings.newlines_in_values, field_limit)
        else:
            raw = _iter_jsonl(source.path, needed, settings.encoding)
        for row_number, row in enumerate(raw):
            yield _normalise_row(source.index, row_number, row, url_col, caption_col, extra_cols, settings.encoding)
    except InputError:
        raise
    except (OSError, EOFError, UnicodeError, ValueError, zlib.error) as err:
        raise InputError(f"input {source.path}: cannot be read ({type(err).__name__}: {err})") from err


def _text(value: Any, encoding: str) -> str:
    """A cell as text: a binary Parquet cell is decoded (strictly), never written as ``b'...'``."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode(encoding)
    return str(value)


def _normalise_row(
    file_index: int, row_number: int, row: dict[str, Any], url_col: str, caption_col: str, extra_cols: list[str],
    encoding: str = "utf-8",
) -> dict[str, Any]:
    record: dict[str, Any] = {"key": make_key(file_index, row_number), "reason": None, "error_message": None}
    if _BAD_ROW in row:
        reason, message = row[_BAD_ROW]
        record.update(url="", caption="", reason=reason, error_message=message)
        record["extra"] = {c: None for c in extra_cols}
        return record
    try:
        url, caption = _text(row.get(url_col), encoding).strip(), _text(row.get(caption_col), encoding)
    except UnicodeDecodeError as err:
        record.update(url="", caption="", reason=reasons.INPUT_UNDECODABLE,
                      error_message=f"a binary url or caption cell is not valid {encoding} ({err.reason})")
        record["extra"] = {c: None for c in extra_cols}
        return record
    if isinstance(row.get(caption_col), (dict, list)):  # a Parquet list or struct column
        record.update(url=url, caption="", reason=reasons.INPUT_MALFORMED_ROW,
                      error_message=f"the caption cell is a {type(row[caption_col]).__name__}, not text")
        record["extra"] = {c: None for c in extra_cols}
        return record
    record["url"], record["caption"] = url, caption
    # Carried columns are kept whatever they hold: bytes that are not text keep their escapes, not U+FFFD.
    record["extra"] = {c: None if row.get(c) is None else _extra_text(row[c], encoding) for c in extra_cols}
    verdict = _input_rules().apply(record)
    if verdict is not None:
        record["reason"], record["error_message"] = verdict
    return record


def _extra_text(value: Any, encoding: str) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode(encoding, errors="backslashreplace")
    return str(value)


@functools.cache
def _input_rules() -> RuleSet:
    # The input rules (filters/url.py) take no settings, so the default config builds them.
    return RuleSet.for_stages(Config(), reasons.INPUT)


def iter_partitions(
    source: InputFile, url_col: str, caption_col: str, extra_cols: list[str], rows_per_partition: int, *,
    settings: InputConfig | None = None, max_field_chars: int | None = None,
) -> Iterator[Partition]:
    """Cut one file into partitions of ``rows_per_partition`` consecutive rows."""
    current: Partition | None = None
    rows = iter_rows(source, url_col, caption_col, extra_cols, settings=settings, max_field_chars=max_field_chars)
    for row_number, row in enumerate(rows):
        if current is None or len(current.rows) >= rows_per_partition:
            if current is not None:
                yield current
            current = Partition(partition_id_for(source.index, row_number), source.path)
        current.rows.append(row)
    if current is not None:
        yield current


ESTIMATE_SAMPLE_BYTES = 1 << 20


def estimate_rows(source: InputFile) -> tuple[int, bool]:
    """(rows, exact): a plain Parquet file's row count from its footer; otherwise an estimate from the file's
    size and the lines in its first MiB (one range read, so a gs:// input is not downloaded twice)."""
    fs, path = fsutil.filesystem(source.path)
    if source.fmt == "parquet" and not path.lower().endswith(".gz"):
        with fs.open(path, "rb") as handle:
            return pq.ParquetFile(handle).metadata.num_rows, True
    if source.fmt == "parquet":  # gzipped Parquet keeps its row count at the end: one partition, it grows
        return 1, False
    size = fs.size(path)
    with fs.open(path, "rb", block_size=ESTIMATE_SAMPLE_BYTES) as handle:  # one range request on a store
        sample = handle.read(ESTIMATE_SAMPLE_BYTES)
    text = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(sample) if path.lower().endswith(".gz") else sample
    exact = len(sample) >= size and not path.lower().endswith(".gz")
    lines = text.count(b"\n") + (0 if text.endswith(b"\n") or not text else 1)
    rows = lines if exact else round(lines * size / max(len(sample), 1))
    return max(rows - (1 if source.fmt in TEXT_FORMATS else 0), 0), exact


def sniff_input(source: InputFile, url_col: str, caption_col: str, settings: InputConfig | None = None) -> None:
    """Fail early and clearly, in the launcher, on an unreadable file or a missing column."""
    rows = iter_rows(source, url_col, caption_col, [], settings=settings)
    try:
        next(rows, None)
    finally:
        rows.close()



# --- Beam ------------------------------------------------------------------------------------


class _PlanPartitions(beam.DoFn):
    """Stream one input file into partitions, skipping those already complete in ``output``."""

    def __init__(
        self, output: str, url_col: str, caption_col: str, extra_cols: list[str], rows_per_partition: int,
        retry_failed: bool, settings: InputConfig | None = None, max_field_chars: int | None = None,
    ) -> None:
        self._output, self._url, self._caption = output, url_col, caption_col
        self._extra, self._rows, self._retry = extra_cols, rows_per_partition, retry_failed
        self._settings, self._max_field_chars = settings, max_field_chars

    def process(self, source: InputFile):
        for partition in iter_partitions(source, self._url, self._caption, self._extra, self._rows,
                                         settings=self._settings, max_field_chars=self._max_field_chars):
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
        rows_per_partition: int, retry_failed: bool = False, *, settings: InputConfig | None = None,
        max_field_chars: int | None = None,
    ) -> None:
        super().__init__()
        self._files = files
        self._plan = _PlanPartitions(output, url_col, caption_col, extra_cols, rows_per_partition, retry_failed,
                                     settings, max_field_chars)

    def expand(self, pipeline: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pipeline
            | "InputFiles" >> beam.Create(self._files)
            | "Plan" >> beam.ParDo(self._plan)
            # Partitions of one file are read in one place; the shuffle spreads them over the workers.
            | "Spread" >> beam.Reshuffle()
        )
