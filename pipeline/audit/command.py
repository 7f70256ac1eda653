"""``altsieve audit PATH --report DIR``: detect, aggregate, estimate, render; write report.html and audit.json."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import fsspec
from tqdm import tqdm

from altsieve import __version__
from altsieve.core import fsutil, reasons
from altsieve.pipeline.audit.aggregate import KEPT, Aggregator
from altsieve.pipeline.audit.estimates import language_purity
from altsieve.pipeline.audit.gallery import ImageIds, build_gallery, fill_images
from altsieve.pipeline.audit.histograms import SPECS
from altsieve.pipeline.audit.published import comparison
from altsieve.pipeline.audit.runinfo import run_config, run_info, run_thresholds
from altsieve.pipeline.audit.sources import KIND_ALTSIEVE, Source, detect, iter_batches
from altsieve.pipeline.published_funnels import published_funnels_json

PURITY_LANGUAGES = 5  # without an allow-list in the run, the purity of this many of the largest kept languages


@dataclass
class Audited:
    """One audited corpus: its source, the aggregation, the run's config, the JSON and the images it refers to."""

    source: Source
    aggregator: Aggregator
    config: dict[str, Any] | None
    data: dict[str, Any]
    images: ImageIds


def collect(path: str, url_col: str = "url", caption_col: str = "caption",
            keep_outcomes: bool = False) -> tuple[Source, Aggregator]:
    source = detect(path, url_col, caption_col)
    aggregator = Aggregator(source, keep_outcomes=keep_outcomes)
    with tqdm(desc=f"audit {path}", total=_rows_of(source.parquet_files), unit="pairs", file=sys.stderr,
              dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 10.0) as bar:
        for batch in iter_batches(source):
            aggregator.add(batch)
            bar.update(len(batch.table))
    return source, aggregator


def _rows_of(paths: list[str]) -> int:
    """The rows of Parquet files, from their footers: the progress bar's total."""
    import pyarrow.parquet as pq

    total = 0
    for path in paths:
        with fsspec.open(path, "rb") as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    return total


def _estimates(source: Source, aggregator: Aggregator, config: dict[str, Any] | None,
               not_computed: list[dict[str, str]]) -> dict[str, Any]:
    """The estimates of the noise that remains in what was kept (see ``estimates``)."""
    kept = aggregator.reason_counts.get(KEPT, 0)
    kept_by_language = {language: count for (language, label), count in aggregator.languages.items()
                        if label == KEPT}
    columns = aggregator.columns
    # CLIP: kept pairs the model cannot tell from mismatched captions.
    if aggregator.clip.image is not None:
        clip = aggregator.clip.estimate(kept_by_language, kept)
    elif "clip_score" not in columns or not aggregator.histograms["clip_score"].counts:
        clip = {"computed": False, "why": "CLIP scoring did not run on this corpus"}
    elif source.kind == KIND_ALTSIEVE:
        clip = {"computed": False, "why": "the run saved no CLIP embeddings (clip.save_embeddings)"}
    else:
        clip = {"computed": False, "why": "needs the run's image and text embeddings (altsieve's "
                                          "_candidates/*_embeddings.npz); this input has scores only"}
    # pHash: near duplicates left at a looser distance.
    dedup = (config or {}).get("dedup") or {}
    run_distance = dedup.get("phash_max_distance") if dedup.get("perceptual") else None
    if "phash" in columns:
        near = aggregator.kept_hashes.estimate(run_distance)
    else:
        near = {"computed": False, "why": "no phash column (altsieve computes one per decoded image)"}
    # Language purity of the kept languages.
    if "language" in columns and aggregator.purity.heaps:
        allowed = list(((config or {}).get("rules") or {}).get("text", {}).get("languages") or [])
        if not allowed:
            allowed = [language for language, count in sorted(kept_by_language.items(), key=lambda item: -item[1])
                       if language != "(not tagged)"][:PURITY_LANGUAGES]
        backend = ((config or {}).get("language") or {}).get("backend", "fasttext")
        samples = {language: [row["caption"] for row in aggregator.purity.rows(language)] for language in allowed}
        purity = language_purity(samples, backend, allowed)
    else:
        purity = {"computed": False, "why": "no language labels on the kept pairs"}
    titles = {"clip": "Remaining noise: mismatched captions left",
              "near_duplicates": "Remaining noise: near duplicates at a looser pHash distance",
              "language_purity": "Remaining noise: language purity"}
    estimates = {"clip": clip, "near_duplicates": near, "language_purity": purity}
    for name, estimate in estimates.items():
        if not estimate["computed"]:
            not_computed.append({"what": titles[name], "why": estimate["why"]})
    return estimates


def build(path: str, samples_per_reason: int = 6, url_col: str = "url", caption_col: str = "caption",
          keep_outcomes: bool = False) -> Audited:
    """Audit PATH into its JSON and images (nothing written)."""
    started = time.time()
    source, aggregator = collect(path, url_col, caption_col, keep_outcomes)
    config = run_config(source)
    thresholds = run_thresholds(source, config)
    result = aggregator.result({name: [value for value, _ in found] for name, found in thresholds.items()})
    for name, hist in result["histograms"].items():
        if hist.get("computed"):
            hist["markers"] = [list(m) for m in SPECS[name].markers]
            hist["run_markers"] = [list(m) for m in thresholds.get(name, [])]
    not_computed = result.pop("not_computed")
    reason_counts = {k: v for k, v in sorted(aggregator.reason_counts.items()) if k != KEPT}
    if source.has_outcomes:
        funnel_json = reasons.funnel(aggregator.reason_counts)
    else:
        funnel_json = reasons.funnel({KEPT: aggregator.rows})
        funnel_json["stages"] = funnel_json["stages"][:1]
        funnel_json["kept"] = None
        funnel_json["kept_percent"] = None
        not_computed.append({"what": "Funnel beyond input pairs",
                             "why": "the input records no outcome per pair (no status or reason column)"})
    images = ImageIds()
    gallery = build_gallery(source, aggregator, config, samples_per_reason, images)
    estimates = _estimates(source, aggregator, config, not_computed)
    images.resolve()
    fill_images(gallery, images)
    if not images.uris:
        not_computed.append({"what": "Thumbnails", "why": "no sampled pair has an image in this input"})
    data: dict[str, Any] = {
        "altsieve_audit": __version__,
        "path": path,
        "kind": source.kind,
        "input_pairs": aggregator.rows,
        "kept": funnel_json["kept"],
        "funnel": funnel_json,
        "reasons": reason_counts,
        "stages": {code: reasons.stage_of(code).label for code in reason_counts},
        "published_comparison": comparison(funnel_json, "this corpus"),
        "published_funnels": published_funnels_json(),
        **result,
        "noise_estimates": estimates,
        "gallery": gallery,
        "run": run_info(source, reason_counts, funnel_json["kept"] or 0),
        "notes": source.notes + [
            "images: kept pairs and those the select pass dropped (duplicates, corpus rules) from the shards; pairs "
            "an image or CLIP rule dropped from the thumbnails ingest keeps (a few per reason and partition); pairs "
            "dropped before their image was decoded have none, so a placeholder says why"
        ],
        "not_computed": not_computed,
        "statistics_s": round(time.time() - started, 2),
    }
    return Audited(source, aggregator, config, data, images)


def write_report(audited: Audited, report_dir: str, started: float) -> None:
    from altsieve.pipeline.audit.html import render_html

    html = render_html(audited.data, audited.images.by_id())
    audited.data["duration_s"] = round(time.time() - started, 2)
    fsutil.makedirs(report_dir)
    fsutil.write_json(fsutil.join(report_dir, "audit.json"), audited.data)
    fsutil.write_text(fsutil.join(report_dir, "report.html"), html)


def audit(path: str, report_dir: str, samples_per_reason: int = 6, url_col: str = "url",
          caption_col: str = "caption") -> dict[str, Any]:
    """Audit PATH; write ``report.html`` and ``audit.json`` into ``report_dir``; return the JSON."""
    started = time.time()
    audited = build(path, samples_per_reason, url_col, caption_col)
    write_report(audited, report_dir, started)
    return audited.data


def audit_cli(path: str, report_dir: str, samples: int, url_col: str, caption_col: str,
              compare_with: str | None = None) -> int:
    if compare_with is not None:
        from altsieve.pipeline.audit.compare import compare_cli

        return compare_cli(path, compare_with, report_dir, samples, url_col, caption_col)
    result = audit(path, report_dir, samples, url_col, caption_col)
    kept = result["kept"]
    kept_text = f", {kept:,} kept ({result['funnel']['kept_percent']:.1f} %)" if kept is not None else ""
    print(f"audited {result['input_pairs']:,} pairs ({result['kind']}){kept_text} in {result['duration_s']} s")
    print(f"  {fsutil.join(report_dir, 'report.html')}\n  {fsutil.join(report_dir, 'audit.json')}")
    for item in result["not_computed"]:
        print(f"  not computed: {item['what']}: {item['why']}")
    return 0


def load(report_dir: str) -> dict[str, Any]:
    with fsspec.open(fsutil.join(report_dir, "audit.json"), "rt", encoding="utf-8") as handle:
        return json.load(handle)
