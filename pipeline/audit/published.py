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


def funnel_shares(own: dict[str, Any], published: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every funnel's stages as shares of its first stage, for the chart: this corpus first, then each published one.

    This corpus: input, fetched (when it records downloads), kept. A published corpus: the stages its source gives
    a count for (DataComp gives no kept share, so its funnel ends at the images downloaded).
    """
    total = own["input_pairs"] or 0
    stages = {stage["stage"]: stage for stage in own["stages"]}
    ours = [{"stage": "input", "percent": 100.0}]
    if "fetched" in stages and total:
        ours.append({"stage": "fetched", "percent": 100.0 * stages["fetched"]["remaining"] / total})
    if own.get("kept") is not None and total:
        ours.append({"stage": "kept", "percent": 100.0 * own["kept"] / total})
    rows = [{"corpus": "this corpus", "ours": True, "stages": ours}]
    for funnel in published:
        shares = [{"stage": s["stage"], "percent": s["percent_of_first"]} for s in funnel["stages"]
                  if s["percent_of_first"] is not None]
        rows.append({"corpus": funnel["corpus"], "ours": False, "stages": shares})
    return rows
