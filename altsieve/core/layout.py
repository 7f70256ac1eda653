"""Where each pass reads and writes inside an output folder (any fsspec path), and what an output column is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import pyarrow as pa

from altsieve.core import fsutil

CANDIDATES_DIR = "_candidates"
META_DIR = "_altsieve"
DECISIONS_DIR = "_decisions"


def candidate_prefix(output: str, partition_id: str) -> str:
    return fsutil.join(output, CANDIDATES_DIR, partition_id)


def marker_path(output: str, partition_id: str) -> str:
    return candidate_prefix(output, partition_id) + ".done"


# The CLIP stage's image and text embeddings of a partition's kept pairs, and the model that made them.
EMBEDDINGS_SUFFIX = "_embeddings.npz"
CLIP_MODEL_FILE = "clip_model.json"


def embeddings_path(output: str, partition_id: str) -> str:
    return candidate_prefix(output, partition_id) + EMBEDDINGS_SUFFIX


def meta(output: str, name: str) -> str:
    return fsutil.join(output, META_DIR, name)


def saved_config(output: str) -> dict | None:
    """The config a run saved in its output folder (``_altsieve/config.yaml``) as a dict; None when there is none."""
    path = meta(output, "config.yaml")
    if not fsutil.exists(path):
        return None
    import fsspec
    import yaml

    with fsspec.open(path, "rt", encoding="utf-8") as handle:
        return yaml.safe_load(handle.read()) or {}


# Beside each candidate shard: thumbnails of a few pairs per reason that were dropped after decode (for the audit).
THUMBNAILS_SUFFIX = "_thumbs.tar"


def thumbnails_path(output: str, partition_id: str) -> str:
    return candidate_prefix(output, partition_id) + THUMBNAILS_SUFFIX


def decision_path(output: str, partition_id: str) -> str:
    return fsutil.join(output, DECISIONS_DIR, f"{partition_id}.parquet")


def progress_dir(output: str, pass_name: str) -> str:
    """Where a pass's workers write their counts for the launcher's progress bar (removed when the pass ends)."""
    return meta(output, f"progress/{pass_name}")


# One output tree per language bucket (output.split_by_language): OUTPUT/lang=en/00000.tar ... The
# hive-style name lets pyarrow/duckdb datasets read the bucket as a column.
BUCKET_DIR_PREFIX = "lang="


def final_prefix(output: str, shard: int, bucket: str | None = None) -> str:
    folder = fsutil.join(output, f"{BUCKET_DIR_PREFIX}{bucket}") if bucket else output
    return fsutil.join(folder, f"{shard:05d}")


# Beside the final shards of each tree, for the tools that read them (pipeline/reshard.py, pipeline/report.py).
SIZES_FILE = "sizes.json"  # open_clip_train: tar name -> samples
WIDS_INDEX_FILE = "shardindex.json"  # wids: wids-shard-index-v1
CARD_FILE = "README.md"  # Hugging Face datasets: the dataset card, its `configs:` name the shards
EMBEDDINGS_DIR = "embeddings"  # clip-retrieval's layout: img_emb/, text_emb/, metadata/


class EmbeddingPaths(NamedTuple):
    image: str
    text: str
    metadata: str


def embeddings_root(output: str, bucket: str | None = None) -> str:
    folder = fsutil.join(output, f"{BUCKET_DIR_PREFIX}{bucket}") if bucket else output
    return fsutil.join(folder, EMBEDDINGS_DIR)


def embedding_paths(output: str, shard: int, bucket: str | None = None) -> EmbeddingPaths:
    """A final shard's CLIP embeddings, as clip-retrieval names them (img_emb/img_emb_00000.npy ...)."""
    root = embeddings_root(output, bucket)
    return EmbeddingPaths(fsutil.join(root, "img_emb", f"img_emb_{shard:05d}.npy"),
                          fsutil.join(root, "text_emb", f"text_emb_{shard:05d}.npy"),
                          fsutil.join(root, "metadata", f"metadata_{shard:05d}.parquet"))


def final_buckets(output: str) -> list[str]:
    """The language buckets that have an output tree, sorted."""
    stats = fsutil.glob(fsutil.join(output, f"{BUCKET_DIR_PREFIX}*", "[0-9]" * 5 + "_stats.json"))
    return sorted({path.rsplit("/", 2)[-2].removeprefix(BUCKET_DIR_PREFIX) for path in stats})


def done_partitions(output: str) -> list[str]:
    """Partition ids with a completion marker, sorted."""
    markers = fsutil.glob(fsutil.join(output, CANDIDATES_DIR, "*.done"))
    return sorted(path.rsplit("/", 1)[-1].removesuffix(".done") for path in markers)


def remove_stale_temporaries(output: str) -> int:
    """Delete the temporary files killed runs left anywhere in the output tree; returns how many.

    Writes go to ``.tmp-*`` beside their target and are renamed when complete (fsutil.atomic_open), and
    every pass calls this while it holds the folder's lease (core/lease.py), so a leftover is always an
    unfinished write of a run that no longer exists: candidates, decisions, final shards (also in each
    ``lang=`` bucket), extracted crawl pairs and the run's own metadata.
    """
    leftovers = sorted({
        path for depth in ("", "*/", "*/*/", "*/*/*/") for path in fsutil.glob(fsutil.join(output, f"{depth}.tmp-*"))
    })
    for path in leftovers:
        fs, resolved = fsutil.filesystem(path)
        fs.rm(resolved)
    return len(leftovers)


@dataclass(frozen=True)
class Column:
    """An output column: the stage that sets a record field declares it here, so the field reaches the Parquet.

    ``transforms.shards`` assembles the schema from the declarations and refuses a record field that no
    stage declared, so a new column cannot be dropped silently.
    """

    name: str
    type: pa.DataType
    doc: str = ""
