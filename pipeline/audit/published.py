"""This corpus's funnel beside the funnels that published corpora report."""

from __future__ import annotations

from typing import Any

from altsieve.pipeline.published_funnels import published_funnels_json


def comparison(own: dict[str, Any], label: str) -> list[dict[str, Any]]:
    """This corpus beside the published ones: input, download attempts, fetched, kept, as shares of input."""
    stages = {stage["stage"]: stage for stage in own["stages"]}
    total = own["input_pairs"]
    attempted = None
    if "fetched" in stages:
        attempted = stages["fetched"]["remaining"] + stages["fetched"]["dropped"]
    rows = [{
        "corpus": label,
        "input": total,
        "download_attempts": attempted,
        "fetched": stages["fetched"]["remaining"] if "fetched" in stages else None,
        "kept": own["kept"] if len(own["stages"]) > 2 else None,
        "kept_percent": own["kept_percent"] if len(own["stages"]) > 2 else None,
        "source": "this audit",
    }]
    for published in published_funnels_json():
        by_stage = {s["stage"]: s for s in published["stages"]}
        first = published["stages"][0]
        rows.append({
            "corpus": published["corpus"],
            "input": first["as_published"],
            "download_attempts": by_stage.get("download attempts", {}).get("as_published"),
            "fetched": by_stage.get("images downloaded", {}).get("as_published"),
            "kept": by_stage.get("kept", {}).get("as_published"),
            "kept_percent": published["kept_percent"],
            "kept_percent_as_published": published["kept_percent_as_published"],
            "fetched_percent_of_attempts": (round(100 * by_stage["images downloaded"]["count"]
                                                  / by_stage["download attempts"]["count"], 1)
                                            if "download attempts" in by_stage else None),
            "notes": published["notes"],
            "source": published["source"],
        })
    if attempted:
        rows[0]["fetched_percent_of_attempts"] = round(100.0 * rows[0]["fetched"] / attempted, 1)
    return rows
