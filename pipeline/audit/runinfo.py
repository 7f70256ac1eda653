"""The run that made the corpus: recipe, versions and config from its manifest, and whether its stats agree."""

from __future__ import annotations

from typing import Any

from altsieve.core import fsutil
from altsieve.pipeline.audit.sources import KIND_ALTSIEVE, KIND_IMG2DATASET, Source


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
