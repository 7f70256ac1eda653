"""Shard files: ``{name}.tar`` (webdataset), ``{name}.parquet`` (every row) and ``{name}_stats.json``.

The Parquet columns are a superset of img2dataset's (key, url, caption, status, error_message,
width, height, original_width, original_height, exif, sha256), so tools that read img2dataset
output read ours unchanged. Additional input columns are stored as strings under their own names.
The tar holds ``{key}.{jpg|webp|png}``, ``{key}.txt`` (the caption) and ``{key}.json`` (the row
without bulky fields, each field of one type in every sample): what webdataset, open_clip's loader
and Hugging Face ``datasets`` expect. With ``output.format: parquet`` a final shard is the Parquet
alone, the image bytes in a column named after the encode format (img2dataset's parquet format).
"""

from __future__ import annotations

import json
import tarfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import IO, Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from altsieve.core import fsutil, reasons
from altsieve.core.layout import Column
from altsieve.filters import corpus
from altsieve.transforms import crop_features, decode, download, heads, image_content, language, thumbnails
from altsieve.transforms.clip import stage as clip_stage
from altsieve.transforms.clip import store as clip_store

# Every row's identity and outcome; each stage declares the fields it adds (``COLUMNS`` in its module).
RECORD_COLUMNS = (
    Column("key", pa.string(), "{input file index:05d}{row:010d}, stable across reruns"),
    Column("partition_id", pa.string(), "the ingest partition the pair was read in"),
    Column("url", pa.string(), "the image URL as the input gave it"),
    Column("caption", pa.string(), "the normalised caption"),
    Column("status", pa.string(), "img2dataset's status: success, failed_to_download, failed_to_resize, filtered"),
    Column("reason", pa.string(), "the reason code of a dropped pair (null: kept)"),
    Column("error_message", pa.string(), "what went wrong, for a failed or dropped pair (null: kept)"),
)
# The Parquet columns, in pipeline order: what each stage declares. A record field outside these and
# INTERNAL_FIELDS is refused by ``to_table`` (a column a stage forgot to declare would be lost).
COLUMNS: tuple[Column, ...] = (
    *RECORD_COLUMNS, *language.COLUMNS, *download.COLUMNS, *decode.COLUMNS, *corpus.COLUMNS, *clip_stage.COLUMNS,
    *image_content.COLUMNS, *heads.COLUMNS,
)
COLUMN_NAMES = [column.name for column in COLUMNS]
# Fields that ride along a record but are never columns: the image itself, the input's own columns
# (folded under ``extra``), bookkeeping, and the CLIP embeddings (in _candidates/*_embeddings.npz).
INTERNAL_FIELDS = frozenset({"image", "body", "extra", "partition_size", clip_store.IMAGE_EMBEDDING_FIELD,
                             clip_store.TEXT_EMBEDDING_FIELD, thumbnails.SET_ASIDE_FIELD,
                             # Decode's pixels for ImageContent, and the crop features (in _candidates/*_crop.npz).
                             decode.PIXELS_FIELD, crop_features.CROP_FEATURES_FIELD})
_NOT_IN_JSON = INTERNAL_FIELDS | {"partition_id"}
_KNOWN_FIELDS = frozenset(COLUMN_NAMES) | INTERNAL_FIELDS
EXTENSIONS = {"jpg": "jpg", "webp": "webp", "png": "png"}


def schema(extra_columns: Iterable[str]) -> pa.Schema:
    fields = [pa.field(column.name, column.type) for column in COLUMNS]
    fields += [pa.field(name, pa.string()) for name in extra_columns if name not in COLUMN_NAMES]
    return pa.schema(fields)


def to_table(records: list[dict[str, Any]], extra_columns: list[str]) -> pa.Table:
    """Records as an Arrow table with the fixed schema; ``status`` follows from ``reason``."""
    columns: dict[str, list[Any]] = {name: [] for name in COLUMN_NAMES}
    extras: dict[str, list[Any]] = {name: [] for name in extra_columns if name not in COLUMN_NAMES}
    known = _KNOWN_FIELDS
    for record in records:
        if not known.issuperset(record):
            undeclared = ", ".join(sorted(set(record) - known))
            raise ValueError(f"record {record.get('key')} has fields no stage declared as an output column: "
                             f"{undeclared}. Add a Column to the COLUMNS of the stage that sets them "
                             "(transforms/shards.py lists the stages), or to INTERNAL_FIELDS if they are not output")
        for name in COLUMN_NAMES:
            columns[name].append(record.get(name))
        columns["status"][-1] = reasons.status_for(record.get("reason"))
        extra = record.get("extra") or {}
        for name in extras:
            extras[name].append(extra.get(name))
    return pa.table({**columns, **extras}, schema=schema(extra_columns))


# The sidecar of a kept sample: every column but the outcome fields that are null for every kept pair
# (reason, duplicate_of) and the bookkeeping ones. error_message stays, null, as img2dataset writes it.
_SIDECAR_COLUMNS = tuple(c for c in COLUMNS if c.name not in _NOT_IN_JSON | {"reason", "duplicate_of"})
# Readers that infer a schema from the first samples (Hugging Face ``datasets`` reads 5) need one JSON type per
# field: a string that is null in one sample and text in the next makes them infer null and then fail. So an
# empty string field is "" (EXIF: "{}", img2dataset's "no tags"), and so is an empty carried input column.
# Numbers are null only where a whole run has none (CLIP off, language tagging off).
_EMPTY_STRING = {"exif": "{}", "error_message": None}


def sample_json(record: dict[str, Any]) -> bytes:
    """The ``{key}.json`` of a sample: its row, each field with one type across every sample of a run."""
    data: dict[str, Any] = {}
    for column in _SIDECAR_COLUMNS:
        value = record.get(column.name)
        if value is None and pa.types.is_string(column.type):
            value = _EMPTY_STRING.get(column.name, "")
        data[column.name] = value
    data["status"] = reasons.status_for(record.get("reason"))
    for name, value in (record.get("extra") or {}).items():
        if name not in data:  # a carried column named like one of ours never overwrites it
            data[name] = "" if value is None else str(value)
    return json.dumps(data, ensure_ascii=False).encode("utf-8")


def write_tar(handle: IO[bytes], records: Iterable[dict[str, Any]], encode_format: str,
              index: list[tuple[str, int, int]] | None = None) -> int:
    """Write the samples that have an image; returns how many. ``index``: each sample's ``(key, start, end)`` in the
    tar is appended to it (its three entries lie from ``start`` to ``end``)."""
    extension = EXTENSIONS[encode_format]
    count = 0
    with fsutil.TarWriter(handle) as tar:
        for record in records:
            image = record.get("image")
            if image is None or record.get("reason") is not None:
                continue
            key = record["key"]
            start = tar.position
            tar.add(f"{key}.{extension}", image)
            tar.add(f"{key}.txt", (record.get("caption") or "").encode("utf-8"))
            tar.add(f"{key}.json", sample_json(record))
            if index is not None:
                index.append((key, start, tar.position))
            count += 1
    return count


# A candidate shard's Parquet footer (key-value metadata) holds where each sample lies in its tar, written with it:
# reshard then copies the kept samples' bytes without reading the tar's 3 headers per sample (fsutil.iter_tar_entries,
# which it still does for candidates written without the index). The web benchmark's final tar of 4,565 samples
# (write_final_tar, three runs each): 0.15-0.17 s reading the 13,703 headers, 0.05-0.06 s by the index, on the pass's
# one core. Final shards carry no index: their files are the public format.
TAR_INDEX_KEY = b"altsieve.tar_index"


def with_tar_index(table: pa.Table, index: list[tuple[str, int, int]]) -> pa.Table:
    """``table`` with ``index`` (write_tar's) in its schema's metadata, as JSON ``[[key, start, end], ...]``."""
    metadata = dict(table.schema.metadata or {})
    metadata[TAR_INDEX_KEY] = json.dumps(index, separators=(",", ":")).encode()
    return table.replace_schema_metadata(metadata)


def tar_index(schema: pa.Schema) -> dict[str, tuple[int, int]] | None:
    """The tar index in a candidate Parquet's schema: key -> (start, end); None when it was written without one."""
    raw = (schema.metadata or {}).get(TAR_INDEX_KEY)
    if raw is None:
        return None
    return {key: (start, end) for key, start, end in json.loads(raw)}


def shard_stats(outcomes: Iterable[dict[str, Any]], start_time: float, end_time: float | None = None) -> dict[str, Any]:
    """``{shard}_stats.json``: img2dataset's keys with its meanings, then ours.

    img2dataset's: ``count`` (input rows the shard stands for), ``successes`` (samples in it),
    ``failed_to_download``, ``failed_to_resize``, ``duration``, ``start_time``, ``end_time`` (epoch
    seconds) and ``status_dict`` ("success", else the error message, else the reason code -> count).
    Ours: ``filtered`` (dropped by a rule), ``reasons`` (reason code -> count; "kept") and ``bytes_fetched``.
    """
    end_time = time.time() if end_time is None else end_time
    reason_counts: Counter[str] = Counter()
    status_counts: Counter[str] = Counter()
    status_dict: Counter[str] = Counter()
    bytes_fetched = 0
    for outcome in outcomes:
        reason = outcome.get("reason")
        reason_counts[reason or "kept"] += 1
        status_counts[reasons.status_for(reason)] += 1
        status_dict[reasons.STATUS_SUCCESS if reason is None else (outcome.get("error_message") or reason)] += 1
        bytes_fetched += int(outcome.get("bytes") or 0)
    return {
        "count": sum(reason_counts.values()),
        "successes": status_counts.get(reasons.STATUS_SUCCESS, 0),
        "failed_to_download": status_counts.get(reasons.STATUS_FAILED_TO_DOWNLOAD, 0),
        "failed_to_resize": status_counts.get(reasons.STATUS_FAILED_TO_RESIZE, 0),
        "duration": end_time - start_time,
        "start_time": start_time,
        "end_time": end_time,
        "status_dict": dict(status_dict.most_common()),
        "filtered": status_counts.get(reasons.STATUS_FILTERED, 0),
        "reasons": dict(sorted(reason_counts.items())),
        "bytes_fetched": bytes_fetched,
    }


def image_column(encode_format: str) -> str:
    """The image bytes' column in Parquet shards (output.format: parquet): named after the format, as img2dataset."""
    return EXTENSIONS[encode_format]


def write_parquet_with_images(handle: IO[bytes], records: list[dict[str, Any]], extra_columns: list[str],
                              encode_format: str) -> int:
    """img2dataset's ``parquet`` output format: one row per sample, the image bytes beside the metadata."""
    kept = [record for record in records if record.get("image") is not None and record.get("reason") is None]
    table = to_table(kept, extra_columns)
    table = table.append_column(pa.field(image_column(encode_format), pa.binary()),
                                pa.array([record["image"] for record in kept], pa.binary()))
    pq.write_table(table, handle, compression="zstd")
    return len(kept)


def write_shard(
    prefix: str,
    records: list[dict[str, Any]],
    extra_columns: list[str],
    encode_format: str,
    started: float,
    extra_stats: dict[str, Any] | None = None,
    outcomes: Iterable[dict[str, Any]] | None = None,
    output_format: str = "webdataset",
    indexed: bool = False,
) -> dict[str, Any]:
    """Write ``prefix.tar``, ``prefix.parquet`` and ``prefix_stats.json``, each atomically, in that order.

    ``output_format`` "parquet": no tar; the Parquet holds the samples with their image bytes instead.
    ``outcomes``: the rows the stats count, when they are not ``records`` (a final shard counts the input
    rows it stands for, dropped ones included). ``indexed``: the Parquet's footer holds the tar's index
    (TAR_INDEX_KEY: a candidate shard's).
    """
    records = sorted(records, key=lambda record: record["key"])
    if output_format == "parquet":
        fsutil.write_atomic(f"{prefix}.parquet",
                            lambda handle: write_parquet_with_images(handle, records, extra_columns, encode_format))
    else:
        table = to_table(records, extra_columns)
        stored = as_stored(table, records, extra_columns)
        index: list[tuple[str, int, int]] | None = [] if indexed else None
        fsutil.write_atomic(f"{prefix}.tar", lambda handle: write_tar(handle, stored, encode_format, index))
        if index is not None:
            table = with_tar_index(table, index)
        fsutil.write_atomic(f"{prefix}.parquet", lambda handle: pq.write_table(table, handle, compression="zstd"))
    return _write_stats(prefix, records if outcomes is None else outcomes, started, extra_stats)


def _write_stats(prefix: str, outcomes: Iterable[dict[str, Any]], started: float,
                 extra_stats: dict[str, Any] | None) -> dict[str, Any]:
    stats = shard_stats(outcomes, started)
    stats.update(extra_stats or {})
    fsutil.write_json(f"{prefix}_stats.json", stats)
    return stats


def as_stored(table: pa.Table, records: list[dict[str, Any]], extra_columns: list[str]) -> list[dict[str, Any]]:
    """``records`` (the rows of ``table``) as its Parquet holds them, each with its image.

    A tar's sidecars are written from these, the column types applied (a float32 score, a struct's fields in
    schema order), so they are what the Parquet's rows give: a final shard copies a candidate's entries unchanged
    (write_final_tar) and holds what it would have written from those rows. It costs the ingest 12 ms a partition of
    625 web pairs (best of 5), about 0.1 CPU-s of the web benchmark's run, against the 1 s it saves reshard.
    """
    stored = rows_to_records(table.to_pylist(), extra_columns)
    for row, record in zip(stored, records, strict=True):
        row["image"] = record.get("image")
    return stored


# What a final shard copies from one candidate shard: its tar, the keys, and the tar's index (tar_index; None: none).
TarSource = tuple[str, list[str], dict[str, tuple[int, int]] | None]


def write_final_shard(prefix: str, table: pa.Table, sources: list[TarSource], started: float,
                      extra_stats: dict[str, Any], outcomes: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """A final webdataset shard made of candidate shards: ``table`` (their kept rows, in key order) as its Parquet,
    their entries copied into its tar (write_final_tar), then its stats; each atomically, in write_shard's order.

    The same files write_shard makes from those rows with their images, with less Python: the one final shard of
    the web benchmark's 4,565 samples took 1.10 s that way and 0.66 s this way (cProfile), half of it the scan of the
    candidates' headers; select and reshard of that run, in one process, 3.8-4.3 s before and 3.0 s after.
    """
    fsutil.write_atomic(f"{prefix}.tar", lambda handle: write_final_tar(handle, sources))
    fsutil.write_atomic(f"{prefix}.parquet", lambda handle: pq.write_table(table, handle, compression="zstd"))
    return _write_stats(prefix, outcomes, started, extra_stats)


def write_final_tar(handle: IO[bytes], sources: list[TarSource]) -> int:
    """The samples ``sources`` name, ``(candidate tar, keys, index)`` in key order: each one's entries (image,
    caption, sidecar) copied as they are from its candidate tar, where they lie in key order too. Returns how many.
    ``index`` (the candidate Parquet's tar_index) says where they lie; None: the tar's headers are read to find them.

    A kept key whose image is not in its candidate tar is an error (the candidate shards were damaged), and so is an
    index whose spans do not begin with the entries of the keys it names.
    """
    count = 0
    with fsutil.TarWriter(handle) as tar:
        for path, keys, index in sources:
            with fsspec.open(path, "rb") as source:
                if index is None:
                    spans = _spans_read_from(source, path, set(keys))
                else:
                    spans = _spans_from_index(source, path, keys, index)
                for start, end in spans:  # runs of wanted entries, each copied in one piece
                    tar.copy(source, start, end, path)
            count += len(keys)
    return count


def _spans_from_index(source: IO[bytes], path: str, keys: list[str],
                      index: dict[str, tuple[int, int]]) -> list[list[int]]:
    spans: list[list[int]] = []
    firsts: list[str] = []  # the key each run begins with
    for key in keys:
        span = index.get(key)
        if span is None:
            raise RuntimeError(f"candidate shard {path} lacks the image of kept pair {key}")
        if _extend_runs(spans, *span):
            firsts.append(key)
    for (start, _), key in zip(spans, firsts, strict=True):  # one header a run: the index is this tar's
        source.seek(start)
        try:
            entry = next(fsutil.iter_tar_entries(source, path, payloads=False), None)
        except tarfile.ReadError:  # no header there
            entry = None
        if entry is None or entry.name.rpartition(".")[0] != key:
            raise RuntimeError(f"candidate shard {path} does not match its Parquet's tar index at pair {key}")
    return spans


def _spans_read_from(source: IO[bytes], path: str, wanted: set[str]) -> list[list[int]]:
    images = set(EXTENSIONS.values())
    spans: list[list[int]] = []
    with_image = set()
    for entry in fsutil.iter_tar_entries(source, path, payloads=False):
        key, _, extension = entry.name.rpartition(".")
        if key not in wanted:
            continue
        if extension in images:
            with_image.add(key)
        _extend_runs(spans, entry.start, entry.end)
    if wanted - with_image:
        raise RuntimeError(f"candidate shard {path} lacks the image of kept pair {min(wanted - with_image)}")
    return spans


def _extend_runs(runs: list[list[int]], start: int, end: int) -> bool:
    """Bytes ``start`` to ``end`` added to ``runs``: the last run made longer when they follow it, else a new run
    (True), so that adjacent entries are copied in one piece."""
    if runs and runs[-1][1] == start:
        runs[-1][1] = end
        return False
    runs.append([start, end])
    return True


def read_parquet_rows(path: str, columns: list[str] | None = None) -> list[dict[str, Any]]:
    with fsspec.open(path, "rb") as handle:
        return pq.read_table(handle, columns=columns).to_pylist()


def iter_tar_images(path: str, wanted: set[str]) -> Iterator[tuple[str, bytes]]:
    """``(key, image bytes)`` for the wanted keys of a shard tar, streamed."""
    with fsspec.open(path, "rb") as handle:
        for name, payload in fsutil.iter_tar_files(handle, path):
            key, _, extension = name.rpartition(".")
            if key in wanted and extension in EXTENSIONS.values():
                yield key, payload


def rows_to_records(rows: list[dict[str, Any]], extra_columns: list[str]) -> list[dict[str, Any]]:
    """Parquet rows back into records (extra columns folded under ``extra``)."""
    records = []
    for row in rows:
        record = {name: row.get(name) for name in COLUMN_NAMES}
        record["extra"] = {name: row.get(name) for name in extra_columns}
        records.append(record)
    return records
