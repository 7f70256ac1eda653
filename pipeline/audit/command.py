"""``altsieve audit PATH --report DIR``: detect, aggregate, render; write ``report.html`` and ``audit.json``."""

from __future__ import annotations

import json
import time
from typing import Any

import fsspec

from altsieve import __version__
from altsieve.core import fsutil, reasons
from altsieve.pipeline.audit.aggregate import Aggregator
from altsieve.pipeline.audit.published import comparison
from altsieve.pipeline.audit.runinfo import run_info
from altsieve.pipeline.audit.sources import detect, iter_batches
from altsieve.pipeline.audit.thumbnails import thumbnails
from altsieve.pipeline.published_funnels import published_funnels_json


def audit(path: str, report_dir: str, samples_per_reason: int = 6, url_col: str = "url",
          caption_col: str = "caption") -> dict[str, Any]:
    """Audit PATH; write ``report.html`` and ``audit.json`` into ``report_dir``; return the JSON."""
    started = time.time()
    source = detect(path, url_col, caption_col)
    aggregator = Aggregator(source, samples_per_reason)
    for batch in iter_batches(source):
        aggregator.add(batch)
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
    thumbs = thumbnails(samples)
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
    from altsieve.pipeline.audit.html import render_html

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
