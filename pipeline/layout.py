"""Where each pass reads and writes inside an output folder (any fsspec path)."""

from __future__ import annotations

from altsieve.transforms import fsutil
from altsieve.transforms.write_shards import CANDIDATES_DIR, candidate_prefix, marker_path

__all__ = ["CANDIDATES_DIR", "candidate_prefix", "marker_path"]

META_DIR = "_altsieve"
DECISIONS_DIR = "_decisions"


def meta(output: str, name: str) -> str:
    return fsutil.join(output, META_DIR, name)


def decision_path(output: str, partition_id: str) -> str:
    return fsutil.join(output, DECISIONS_DIR, f"{partition_id}.parquet")


def final_prefix(output: str, shard: int) -> str:
    return fsutil.join(output, f"{shard:05d}")


def done_partitions(output: str) -> list[str]:
    """Partition ids with a completion marker, sorted."""
    markers = fsutil.glob(fsutil.join(output, CANDIDATES_DIR, "*.done"))
    return sorted(path.rsplit("/", 1)[-1].removesuffix(".done") for path in markers)
