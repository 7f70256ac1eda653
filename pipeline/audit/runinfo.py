"""The run that made the corpus: recipe, versions and config from its manifest, and whether its stats agree."""

from __future__ import annotations

from typing import Any

from altsieve.core import fsutil, layout
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


def run_config(source: Source) -> dict[str, Any] | None:
    """The config the run was made with (``_altsieve/config.yaml``), or None for other tools' outputs."""
    return layout.saved_config(source.root) if source.kind == KIND_ALTSIEVE else None


def run_thresholds(source: Source, config: dict[str, Any] | None) -> dict[str, list[tuple[float, str]]]:
    """The run's own cuts, per histogram: what its config set (and the CLIP quantile its select pass chose)."""
    if not config:
        return {}
    rules = config.get("rules") or {}
    caption, image, text = rules.get("caption") or {}, rules.get("image") or {}, rules.get("text") or {}
    clip = config.get("clip") or {}
    found: dict[str, list[tuple[float, str]]] = {}

    def add(name: str, value: Any, label: str) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            found.setdefault(name, []).append((float(value), label))

    add("caption_chars", caption.get("min_chars"), f"this run: >= {caption.get('min_chars')} chars")
    add("caption_chars", caption.get("max_chars"), f"this run: <= {caption.get('max_chars')} chars")
    add("caption_words", caption.get("min_words"), f"this run: >= {caption.get('min_words')} words")
    add("caption_words", caption.get("max_words"), f"this run: <= {caption.get('max_words')} words")
    for side in ("width", "height"):
        add(side, image.get("min_side"), f"this run: shorter side >= {image.get('min_side')} px")
    ratio = image.get("max_aspect_ratio")
    if ratio:
        add("aspect_ratio", ratio, f"this run: <= {ratio:g}")
        add("aspect_ratio", 1 / ratio, f"this run: >= 1/{ratio:g}")
    add("bytes", image.get("min_file_bytes"), f"this run: >= {image.get('min_file_bytes')} B")
    add("language_score", text.get("min_language_score"), f"this run: >= {text.get('min_language_score')}")
    if clip.get("enabled"):
        add("clip_score", clip.get("min_score"), f"this run: >= {clip.get('min_score')}")
        for bucket, settings in sorted((clip.get("per_language") or {}).items()):
            score = (settings or {}).get("min_score")
            add("clip_score", score, f"this run, {bucket}: >= {score}")
        cut_path = layout.meta(source.root, "clip_quantile.json")
        if clip.get("top_fraction") and fsutil.exists(cut_path):
            cut = fsutil.read_json(cut_path).get("min_kept_score")
            add("clip_score", cut, f"this run: top {clip['top_fraction']:.0%} cut {cut:.3f}" if cut else "")
    return found
