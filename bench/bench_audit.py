"""``altsieve audit`` on a synthetic 1M-row altsieve output: wall-clock seconds and peak RSS.

    .venv/bin/python bench/bench_audit.py --rows 1000000 --partitions 100
    .venv/bin/python bench/bench_audit.py --rows 1000000 --partitions 100 --compare   # also A --compare B

Writes an altsieve-like output folder (candidate Parquet per partition with every column ingest
writes, realistic shares of each reason, Zipf-distributed domains, captions of varied length in
several languages, lognormal image sizes; a decision file per partition with exact duplicates and a
``clip_score`` column so that every histogram is drawn; CLIP embeddings (64-d, float16) of the
kept pairs beside each partition, so that the remaining-noise estimates all run; no images), then
times the whole ``altsieve audit`` command as a child process, start-up included, and reads its peak
resident memory from ``getrusage(RUSAGE_CHILDREN)`` (each command in a child of its own). Run it
twice with different ``--rows`` to see that memory does not grow with the corpus. ``--compare``
also writes a second output (the same input with other duplicate decisions) and times
``altsieve audit A --compare B``, which holds both corpora's keys for the join.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

BIN = Path(sys.executable).parent

# Share of input pairs per ingest reason (None: passes ingest), roughly a web crawl's.
INGEST_REASONS: dict[str | None, float] = {
    None: 0.70, "url_invalid": 0.005, "caption_empty": 0.01, "caption_too_short_chars": 0.01,
    "download_not_found": 0.09, "download_http_error": 0.03, "download_timeout": 0.03,
    "download_connection_error": 0.02, "download_dns_error": 0.015, "download_server_error": 0.01,
    "download_robots_optout": 0.005, "decode_unidentified": 0.02, "decode_error": 0.005,
    "image_too_small": 0.03, "image_aspect_ratio": 0.01,
}
ERRORS = {
    "download_not_found": "HTTP 404", "download_http_error": "HTTP 403",
    "download_timeout": "read timeout after 10.0 s",
    "download_connection_error": "connection reset", "download_dns_error": "DNS lookup failed",
    "download_server_error": "HTTP 503", "download_robots_optout": "X-Robots-Tag: noai",
    "decode_unidentified": "UnidentifiedImageError: cannot identify image file", "decode_error": "OSError: broken data",
}
EMBED_DIM = 64
LANGUAGES = ["en", "de", "fr", "es", "ja", "zh", "ru", "pt", "it", "nl"]
WORDS = np.array([
    "a", "photo", "of", "the", "dog", "cat", "red", "blue", "house", "tree", "car", "street", "beach", "sunset",
    "portrait", "woman", "man", "child", "vintage", "modern", "kitchen", "garden", "mountain", "river", "city",
    "night", "light", "stock", "image", "free", "download", "wallpaper", "hd", "logo", "icon", "vector",
])


# The run's config, as ingest saves it: what the audit reads for the thresholds it draws and the dedup distance.
CONFIG = """name: synthetic
rules:
  caption: {min_chars: 2, max_chars: 1000}
  image: {min_side: 64, max_aspect_ratio: 3.0}
dedup: {perceptual: true, phash_max_distance: 4}
clip: {enabled: true, min_score: 0.2}
language: {backend: fasttext}
"""


def write_partition(folder: Path, pid: str, start: int, rows: int, rng: np.random.Generator,
                    domains: np.ndarray) -> None:
    keys = np.array([f"00000{i:010d}" for i in range(start, start + rows)])
    labels = list(INGEST_REASONS)
    shares = np.array(list(INGEST_REASONS.values()))
    choice = rng.choice(len(labels), size=rows, p=shares / shares.sum())
    reason = [labels[c] for c in choice]
    passed = np.array([r is None for r in reason])
    decoded = np.array([r is None or r.startswith("image_") for r in reason])
    host = domains[np.minimum(rng.zipf(1.3, size=rows) - 1, len(domains) - 1)]
    urls = [f"https://{h}/images/{i}.jpg" for h, i in zip(host, range(start, start + rows), strict=True)]
    n_words = np.clip(rng.lognormal(2.0, 0.7, size=rows).astype(int), 0, 80)
    captions = [" ".join(rng.choice(WORDS, size=n)) for n in n_words]
    width = np.where(decoded, np.clip(rng.lognormal(6.3, 0.6, size=rows), 16, 8000).astype(np.int32), 0)
    height = np.where(decoded, (width / np.exp(rng.normal(0.2, 0.35, size=rows))).astype(np.int32), 0)
    fetched = np.array([r is None or r.startswith(("decode_", "image_")) for r in reason])
    sha = [rng.bytes(32).hex() if ok else None for ok in passed]
    table = pa.table({
        "key": keys, "partition_id": [pid] * rows, "url": urls, "caption": captions,
        "status": ["success" if r is None else "failed_to_download" for r in reason], "reason": reason,
        "error_message": [ERRORS.get(r) if r else None for r in reason],
        "width": pa.array(np.full(rows, 256, dtype=np.int32), mask=~passed),
        "height": pa.array(np.full(rows, 256, dtype=np.int32), mask=~passed),
        "original_width": pa.array(width, pa.int32(), mask=~decoded),
        "original_height": pa.array(height, pa.int32(), mask=~decoded),
        "exif": pa.nulls(rows, pa.string()),
        "sha256": pa.array(sha, pa.string()),
        "phash": pa.array(rng.integers(-2**62, 2**62, size=rows), pa.int64(), mask=~passed),
        "bytes": pa.array(np.clip(rng.lognormal(10.5, 1.2, size=rows), 100, 2e7).astype(np.int64), mask=~fetched),
        "http_status": pa.array(np.where(fetched, 200, 404).astype(np.int32)),
        "final_url": pa.nulls(rows, pa.string()),
        "original_format": pa.array(["JPEG" if ok else None for ok in decoded], pa.string()),
        "language": pa.array(rng.choice(LANGUAGES, size=rows, p=[.55, .1, .08, .07, .05, .05, .04, .03, .02, .01]),
                             mask=~passed),
        "language_score": pa.array(rng.uniform(0.3, 1.0, size=rows).astype(np.float32), mask=~passed),
        "duplicate_of": pa.nulls(rows, pa.string()),
        "source_id": [f"src-{i}" for i in range(start, start + rows)],
    })
    pq.write_table(table, folder / "_candidates" / f"{pid}.parquet", compression="zstd")
    (folder / "_candidates" / f"{pid}.done").write_text("")
    # Select pass: 6 % of what passed ingest are exact duplicates of an earlier key of the partition.
    kept_keys = keys[passed]
    duplicate = rng.random(kept_keys.size) < 0.06
    duplicate[0] = False
    targets = kept_keys[rng.integers(0, max(1, kept_keys.size // 4), size=kept_keys.size)]
    decisions = pa.table({
        "key": kept_keys,
        "reason": pa.array(["duplicate_sha256" if d else None for d in duplicate], pa.string()),
        "duplicate_of": pa.array([t if d else None for t, d in zip(targets, duplicate, strict=True)], pa.string()),
        "clip_score": pa.array(rng.normal(0.29, 0.05, size=kept_keys.size).astype(np.float32)),
    })
    pq.write_table(decisions, folder / "_decisions" / f"{pid}.parquet", compression="zstd")
    # CLIP embeddings of the ingest-kept pairs, as transforms/clip/store.py writes them: a caption close to its image
    # (cosine about 0.3) for most, an unrelated one for 5 %.
    image = rng.normal(size=(kept_keys.size, EMBED_DIM)).astype(np.float32)
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text = image + rng.normal(scale=0.4, size=image.shape)
    unrelated = rng.random(kept_keys.size) < 0.05
    text[unrelated] = rng.normal(size=(int(unrelated.sum()), EMBED_DIM))
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    np.savez(folder / "_candidates" / f"{pid}_embeddings.npz", key=kept_keys.astype(str),
             image=image.astype(np.float16), text=text.astype(np.float16), weights_sha256=np.array("bench"))


def make_output(folder: Path, rows: int, partitions: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for sub in ("_candidates", "_decisions", "_altsieve"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    domains = np.array([f"site{i}.example" for i in range(50_000)])
    per = rows // partitions
    ids = []
    for index in range(partitions):
        start = index * per
        count = per if index < partitions - 1 else rows - start
        pid = f"00000_{start:010d}"
        ids.append(pid)
        write_partition(folder, pid, start, count, rng, domains)
    (folder / "_altsieve" / "select_done.json").write_text(json.dumps({"partitions": ids}))
    (folder / "_altsieve" / "config.yaml").write_text(CONFIG)
    (folder / "manifest.json").write_text(json.dumps({"recipe": "synthetic", "versions": {"altsieve": "bench"},
                                                      "config": {"name": "synthetic"}}))


def timed(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of a command run in a child process of its own."""
    probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
             "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
             "sys.stderr.write(r.stderr[-3000:] if r.returncode else ''); sys.exit(r.returncode)")
    result = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{command[1]} failed:\n{result.stderr}")
    seconds, rss_kib = result.stdout.split()
    return float(seconds), int(rss_kib) / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", help="write the synthetic output here and keep it")
    parser.add_argument("--compare", action="store_true", help="also time audit A --compare B on two outputs")
    args = parser.parse_args()

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="altsieve-bench-audit-"))
    try:
        output = work / "out"
        if not (output / "_altsieve" / "select_done.json").exists():
            started = time.perf_counter()
            make_output(output, args.rows, args.partitions, args.seed)
            size = sum(p.stat().st_size for p in output.rglob("*.parquet"))
            print(f"wrote {args.rows:,} rows in {args.partitions} partitions ({size / 2**20:.0f} MiB Parquet) "
                  f"in {time.perf_counter() - started:.1f} s", flush=True)
        seconds, peak_mib = timed([str(BIN / "altsieve"), "audit", str(output), "--report", str(work / "report")])
        data = json.loads((work / "report" / "audit.json").read_text())
        html_size = (work / "report" / "report.html").stat().st_size
        print(f"\naudit of {data['input_pairs']:,} rows: {seconds:.1f} s wall (statistics {data['statistics_s']} s), "
              f"peak RSS {peak_mib:.0f} MiB, report.html {html_size / 1024:.0f} KiB")
        if args.compare:
            other = work / "other"
            if not (other / "_altsieve" / "select_done.json").exists():
                make_output(other, args.rows, args.partitions, args.seed + 1)
            seconds, peak_mib = timed([str(BIN / "altsieve"), "audit", str(output), "--compare", str(other),
                                       "--report", str(work / "compare")])
            print(f"audit --compare of two {args.rows:,}-row outputs: {seconds:.1f} s wall, "
                  f"peak RSS {peak_mib:.0f} MiB")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
