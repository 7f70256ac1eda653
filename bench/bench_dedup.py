"""Deduplication: the pHash distance measured on the test corpus, and time + peak memory of each method.

    .venv/bin/python bench/bench_dedup.py --measure-distance            # the default d, measured
    .venv/bin/python bench/bench_dedup.py --sizes 100000,300000,1000000  # the scaling table
    .venv/bin/python bench/bench_dedup.py --sizes 100000 --methods phash,semantic

**--measure-distance** generates a test corpus (6,000 distinct clean scenes and 100 of each planted
copy), hashes every served image exactly as the pipeline does (``process_image``), and prints the
distance of each planted copy to its original, per kind, and the closest distances between
distinct scenes: the default ``dedup.phash_max_distance`` is the largest d that still separates
the two.

**Scaling**: each method runs as the Beam transform the select pass uses (DirectRunner, one
process, its default), on rows generated inside the pipeline from partition ids (10,000 rows per
partition, like the ingest's partitions; generation is part of the time, reading Parquet is not),
in a subprocess of its own so that its peak resident memory (the whole process tree, sampled
every 0.2 s) is its own. The synthetic data plant near duplicates across partitions:

* exact: 2 % of rows repeat an earlier row's sha256;
* phash: 10 % of rows are copies of an earlier row's hash with 0-4 bits flipped, 2 % with 5-8;
* exact+phash: both rules chained as the select pass chains them (the survivors join between);
* select: the whole select pass of the default recipe (``run_select``: URL + caption, sha256 and
  pHash rules, reading the candidate Parquet files, writing the decision files), on candidate
  files written first (not timed) with the exact+phash rows;
* semantic: 512-d embeddings around 2,000 latent centres, 10 % near copies (cosine ~0.99) of
  vectors shared across partitions; written as the ClipScore stage's ``_embeddings.npz`` files
  first (not timed), then read by the rule as in a run;
* captions: captions of 6-14 words from a 2,000-word vocabulary, 10 % copies of an earlier one,
  re-cased and punctuated (6 %) or with one word changed (4 %).

The growth exponent between two sizes is log(t2/t1) / log(n2/n1): 1.0 is linear.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _proc import tree_rss_bytes  # bench/_proc.py: scripts here run with bench/ on sys.path

ROWS_PER_PARTITION = 10_000
METHODS = ("exact", "phash", "exact+phash", "select", "semantic", "captions")
EMBEDDING_DIM = 512


# ---------------------------------------------------------------------------------------------
# The distance measurement


def measure_distance(n_clean: int, copies: int, seed: int, texture: bool) -> None:
    from altsieve.testcorpus.generator import generate_corpus
    from altsieve.transforms.imageops import hamming64, process_image

    kinds = ("near_dup_reencoded", "near_dup_resized", "near_dup_brightened", "near_dup_cropped")
    started = time.perf_counter()
    corpus = generate_corpus(n_pairs=n_clean + copies * (len(kinds) + 1), seed=seed, texture=texture,
                             label_counts={"exact_duplicate": copies, **dict.fromkeys(kinds, copies)})
    processed = {pair.pair_id: process_image(corpus.responses[pair.path].body) for pair in corpus.pairs}
    hashes = {pair_id: image.phash for pair_id, image in processed.items()}
    print(f"{len(hashes)} images hashed in {time.perf_counter() - started:.0f} s (seed {seed}, texture {texture})")
    print(f"\ndistance of each planted copy to its original ({copies} of each):")
    distances: dict[str, np.ndarray] = {}
    for kind in ("exact_duplicate", *kinds):
        values = np.array([hamming64(hashes[p.pair_id], hashes[p.duplicate_of])
                           for p in corpus.pairs_with_label(kind)])
        distances[kind] = values
        found, counts = np.unique(values, return_counts=True)
        histogram = dict(zip(found.tolist(), counts.tolist(), strict=True))
        print(f"  {kind:<22} max {values.max():>2}  histogram {histogram}")
    clean = np.array([hashes[p.pair_id] for p in corpus.pairs_with_label("clean")], dtype=np.uint64)
    closest = np.full(len(clean), 64)
    for start in range(0, len(clean), 512):
        block = np.bitwise_count(clean[start : start + 512, None] ^ clean[None, :])
        rows = np.arange(block.shape[0])
        block[rows, rows + start] = 64  # not itself
        closest[start : start + 512] = block.min(axis=1)
    pairwise = np.bitwise_count(clean[:, None] ^ clean[None, :])[np.triu_indices(len(clean), 1)]
    counts = np.bincount(pairwise, minlength=65)
    print(f"\ndistinct scenes ({len(clean)} clean, {len(clean) * (len(clean) - 1) // 2} pairs): closest pair at "
          f"{closest.min()} bits; pairs at <= 8 bits: {dict((d, int(counts[d])) for d in range(9) if counts[d])}")
    print("\n   d  " + "  ".join(f"{k.removeprefix('near_dup_'):>10}" for k in kinds) + "  distinct pairs within d")
    for d in range(0, 13, 2):
        recall = "  ".join(f"{(distances[k] <= d).mean():>10.2f}" for k in kinds)
        print(f"  {d:>2}  {recall}  {int(counts[: d + 1].sum()):>10}")
    # The largest d below the closest distinct pair (pHash distances are even: each hash has 32 ones).
    print(f"\nlargest d with no distinct pair within it: {int(closest.min()) - 1}; re-encoded and resized need "
          f">= {max(distances['near_dup_reencoded'].max(), distances['near_dup_resized'].max())}")
    measure_semantic(corpus, {pair_id: image.data for pair_id, image in processed.items()}, kinds)


def measure_semantic(corpus, stored: dict[int, bytes], kinds: tuple[str, ...]) -> None:
    """The same copies by CLIP image embedding (the shipped tiny test model, on the images as the ingest stores
    them): 1 - cosine to the original per kind, and how many distinct scenes fall within each eps."""
    try:
        from altsieve.transforms.clip.model import ClipScorer, ClipSpec

        scorer = ClipScorer.load(ClipSpec())  # altsieve-tiny-clip, builtin weights
    except Exception as err:  # noqa: BLE001 - open_clip or the checkpoint missing: the pHash part stands alone
        print(f"\n(no semantic measurement: {err})")
        return
    ids = [pair.pair_id for pair in corpus.pairs]
    vectors = np.concatenate([scorer.embed_images([stored[i] for i in ids[s : s + 256]])
                              for s in range(0, len(ids), 256)])
    row = {pair_id: n for n, pair_id in enumerate(ids)}

    def distance(pair) -> float:
        return float(1.0 - vectors[row[pair.pair_id]] @ vectors[row[pair.duplicate_of]])

    copies = {kind: np.array([distance(p) for p in corpus.pairs_with_label(kind)]) for kind in kinds}
    clean = vectors[[row[p.pair_id] for p in corpus.pairs_with_label("clean")]]
    distinct = (1.0 - clean @ clean.T)[np.triu_indices(len(clean), 1)]
    print(f"\nsemantic: {scorer.identity['model']} ({scorer.identity['pretrained']}), 1 - cosine to the original, "
          "median / max:")
    for kind, values in copies.items():
        print(f"  {kind:<22} {np.median(values):.5f} / {values.max():.5f}")
    print("\n   eps  " + "  ".join(f"{k.removeprefix('near_dup_'):>10}" for k in kinds) + "  distinct pairs within eps")
    for eps in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2):
        recall = "  ".join(f"{(copies[k] <= eps).mean():>10.2f}" for k in kinds)
        print(f"  {eps:<6g}{recall}  {int((distinct <= eps).sum()):>10}")


# ---------------------------------------------------------------------------------------------
# Synthetic rows (deterministic in the row index, so any partition can compute any row)


def _mix(values: np.ndarray) -> np.ndarray:
    from altsieve.dedup.banding import splitmix64

    return splitmix64(np.asarray(values, dtype=np.uint64))


def synthetic_rows(partition: int, method: str) -> list[dict]:
    from altsieve.transforms.imageops import phash_to_int64

    start = partition * ROWS_PER_PARTITION
    index = np.arange(start, start + ROWS_PER_PARTITION, dtype=np.uint64)
    draw = _mix(index ^ np.uint64(0xA5A5)) % np.uint64(1000)
    earlier = (_mix(index ^ np.uint64(0x5A5A)) % np.maximum(index, np.uint64(1))).astype(np.uint64)
    rows = [{"key": f"{i:015d}", "partition_id": f"{partition:05d}"} for i in range(start, start + ROWS_PER_PARTITION)]
    if method in ("exact", "exact+phash"):
        source = np.where(draw < 20, earlier, index)
        for row, value in zip(rows, _mix(source).tolist(), strict=True):
            row["sha256"] = f"{value:016x}" * 4
    if method in ("phash", "exact+phash"):
        source = np.where(draw < 120, earlier, index)
        hashes = _mix(source ^ np.uint64(0x1234))
        flips = np.where(draw < 100, draw % 5, np.where(draw < 120, 5 + draw % 4, 0))
        bits = _mix(index ^ np.uint64(0x777))
        for k in range(8):
            position = (bits >> np.uint64(6 * k)) & np.uint64(63)
            hashes = np.where(flips > k, hashes ^ (np.uint64(1) << position), hashes)
        for row, value in zip(rows, hashes.tolist(), strict=True):
            row["phash"] = phash_to_int64(value)
    if method == "captions":
        words = [f"w{n}" for n in range(2000)]
        source = np.where(draw < 100, earlier, index)
        for row, src, own in zip(rows, source.tolist(), index.tolist(), strict=True):
            rng = np.random.default_rng(src)
            caption = [words[n] for n in rng.integers(0, len(words), int(rng.integers(6, 15)))]
            text = " ".join(caption)
            if src != own:  # a copy: re-cased and punctuated, or (2 in 5) one word changed
                edit = int(_mix(np.array([own], dtype=np.uint64))[0] % 5)
                if edit < 2:
                    caption[edit % len(caption)] = "edited"
                    text = " ".join(caption)
                text = text.capitalize() + "." if edit >= 2 else text
            row["caption"] = text
    return rows


def synthetic_embeddings(partition: int) -> tuple[np.ndarray, np.ndarray]:
    """(keys, float16 [N, 512]): latent centres + noise; 10 % near copies of vectors shared by all partitions."""
    centres = np.random.default_rng(0).standard_normal((2000, EMBEDDING_DIM)).astype(np.float32)
    shared = np.random.default_rng(1).standard_normal((20_000, EMBEDDING_DIM)).astype(np.float32)
    shared = centres[np.arange(len(shared)) % len(centres)] + 0.6 * shared
    rng = np.random.default_rng(100 + partition)
    own = centres[rng.integers(0, len(centres), ROWS_PER_PARTITION)]
    vectors = own + 0.6 * rng.standard_normal((ROWS_PER_PARTITION, EMBEDDING_DIM)).astype(np.float32)
    copies = rng.random(ROWS_PER_PARTITION) < 0.1
    picks = rng.integers(0, len(shared), int(copies.sum()))
    noise = 0.1 * rng.standard_normal((len(picks), EMBEDDING_DIM)).astype(np.float32)
    vectors[copies] = shared[picks] + noise * np.linalg.norm(shared[picks], axis=1, keepdims=True) / math.sqrt(
        EMBEDDING_DIM)
    start = partition * ROWS_PER_PARTITION
    keys = np.array([f"{i:015d}" for i in range(start, start + ROWS_PER_PARTITION)])
    return keys, vectors.astype(np.float16)


def write_embeddings(output: Path, partitions: int) -> None:
    from altsieve.core import layout
    from altsieve.core.layout import embeddings_path

    identity = {"model": "synthetic", "pretrained": None, "weights_sha256": "0" * 64, "embed_dim": EMBEDDING_DIM}
    Path(layout.meta(str(output), "")).mkdir(parents=True, exist_ok=True)
    Path(layout.meta(str(output), "clip_model.json")).write_text(json.dumps(identity))
    for partition in range(partitions):
        path = Path(embeddings_path(str(output), f"{partition:05d}"))
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        keys, image = synthetic_embeddings(partition)
        text = np.zeros((len(keys), 1), dtype=np.float16)  # not read by dedup; kept small for the benchmark's disk
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, key=keys, image=image, text=text)
        tmp.rename(path)


# ---------------------------------------------------------------------------------------------
# One method at one size (runs in its own process)


def write_candidates(output: Path, n_rows: int) -> None:
    """Candidate Parquet files as the ingest writes them, and its completion record, for the select pass."""
    import pyarrow.parquet as pq

    from altsieve.core import layout
    from altsieve.transforms import shards

    partitions = [f"{p:05d}" for p in range(n_rows // ROWS_PER_PARTITION)]
    for partition in range(len(partitions)):
        records = [dict(row, reason=None, url=f"http://img.test/{row['key']}.jpg", caption=f"picture {row['key']}")
                   for row in synthetic_rows(partition, "exact+phash")]
        path = Path(layout.candidate_prefix(str(output), partitions[partition]) + ".parquet")
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(shards.to_table(records, []), path)
    Path(layout.meta(str(output), "")).mkdir(parents=True, exist_ok=True)
    Path(layout.meta(str(output), "ingest_done.json")).write_text(json.dumps({"partitions": partitions}))


def run_select_pass(n_rows: int, folder: str) -> dict:
    from collections import Counter

    import pyarrow.parquet as pq

    from altsieve.core import layout
    from altsieve.core.config import load_config
    from altsieve.pipeline.select import run_select

    output = os.path.join(folder, f"select-{n_rows}")
    started = time.perf_counter()
    run_select(load_config("default"), output, [])
    elapsed = time.perf_counter() - started
    counts: Counter[str] = Counter()
    for partition in range(n_rows // ROWS_PER_PARTITION):
        reasons_column = pq.read_table(layout.decision_path(output, f"{partition:05d}"), columns=["reason"])["reason"]
        counts.update(r for r in reasons_column.to_pylist() if r is not None)
    return {"seconds": elapsed, "drops": dict(sorted(counts.items()))}


def run_one(method: str, n_rows: int, folder: str, result_path: str) -> None:
    if method == "select":
        with open(result_path, "w") as handle:
            json.dump(run_select_pass(n_rows, folder), handle)
        return
    import apache_beam as beam

    from altsieve.core import reasons
    from altsieve.dedup.captions import CaptionDuplicateFilter
    from altsieve.dedup.exact import ExactDuplicateFilter
    from altsieve.dedup.perceptual import PerceptualDuplicateFilter
    from altsieve.dedup.semantic import SemanticDuplicateFilter
    from altsieve.pipeline.select import _survivors

    partitions = n_rows // ROWS_PER_PARTITION
    count_path = os.path.join(folder, f"count-{method}-{n_rows}.json")

    def save(counts: dict) -> None:
        with open(count_path, "w") as handle:
            json.dump(counts, handle)

    started = time.perf_counter()
    with beam.Pipeline() as pipeline:
        rows = (
            pipeline
            | "Partitions" >> beam.Create(list(range(partitions)))
            | "Spread" >> beam.Reshuffle()
            | "Rows" >> beam.FlatMap(synthetic_rows, method=method)
        )
        if method == "exact":
            drops = rows | "Exact" >> ExactDuplicateFilter()
        elif method == "phash":
            drops = rows | "PHash" >> PerceptualDuplicateFilter(4)
        elif method == "exact+phash":
            exact = rows | "Exact" >> ExactDuplicateFilter()
            survivors = _survivors(rows, exact, "Exact")
            drops = (exact, survivors | "PHash" >> PerceptualDuplicateFilter(4)) | beam.Flatten()
        elif method == "semantic":
            drops = rows | "Semantic" >> SemanticDuplicateFilter(folder, eps=0.05, n_clusters=1000, sample_size=100_000)
        elif method == "captions":
            drops = rows | "Captions" >> CaptionDuplicateFilter(0.8)
        else:
            raise ValueError(method)
        _ = (
            drops
            | "Reason" >> beam.Map(lambda drop: drop[1][1])
            | "Count" >> beam.combiners.Count.PerElement()
            | "ToDict" >> beam.combiners.ToDict()
            | "Save" >> beam.Map(save)
        )
    elapsed = time.perf_counter() - started
    with open(count_path) as handle:
        counts = json.load(handle)
    assert all(reason.startswith("duplicate_") for reason in counts), counts
    _ = reasons
    with open(result_path, "w") as handle:
        json.dump({"seconds": elapsed, "drops": counts}, handle)


def measure(method: str, n_rows: int, folder: str) -> dict:
    result_path = os.path.join(folder, f"result-{method}-{n_rows}.json")
    process = subprocess.Popen([sys.executable, __file__, "--run-one", method, str(n_rows), folder, result_path],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_rss_bytes(process.pid))
        time.sleep(0.2)
    stderr = process.stderr.read() if process.stderr else ""
    if process.returncode != 0:
        raise RuntimeError(f"{method} at {n_rows} failed:\n{stderr[-3000:]}")
    with open(result_path) as handle:
        result = json.load(handle)
    result["peak_rss_mib"] = peak / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measure-distance", action="store_true")
    parser.add_argument("--clean", type=int, default=6000)
    parser.add_argument("--copies", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--texture", action="store_true")
    parser.add_argument("--sizes", default="100000,300000,1000000")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--folder", help="where the embeddings files go (default: a temporary folder, removed)")
    parser.add_argument("--run-one", nargs=4, metavar=("METHOD", "ROWS", "FOLDER", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        method, rows, folder, result = args.run_one
        run_one(method, int(rows), folder, result)
        return
    if args.measure_distance:
        measure_distance(args.clean, args.copies, args.seed, args.texture)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    folder = Path(args.folder or tempfile.mkdtemp(prefix="bench-dedup-"))
    try:
        if "semantic" in methods:
            started = time.perf_counter()
            write_embeddings(folder, max(sizes) // ROWS_PER_PARTITION)
            print(f"embeddings files written in {time.perf_counter() - started:.0f} s (not timed below)", flush=True)
        if "select" in methods:
            started = time.perf_counter()
            for n_rows in sizes:
                write_candidates(folder / f"select-{n_rows}", n_rows)
            print(f"candidate files written in {time.perf_counter() - started:.0f} s (not timed below)", flush=True)
        print(f"{'method':<13}{'rows':>10}{'seconds':>10}{'rows/s':>10}{'peak MiB':>10}{'time exp':>10}"
              f"{'mem exp':>9}  drops", flush=True)
        for method in methods:
            previous = None
            for n_rows in sizes:
                result = measure(method, n_rows, str(folder))
                seconds, peak = result["seconds"], result["peak_rss_mib"]
                t_exp = m_exp = ""
                if previous is not None:
                    ratio = math.log(n_rows / previous[0])
                    t_exp = f"{math.log(seconds / previous[1]) / ratio:.2f}"
                    m_exp = f"{math.log(peak / previous[2]) / ratio:.2f}"
                print(f"{method:<13}{n_rows:>10}{seconds:>10.1f}{n_rows / seconds:>10.0f}{peak:>10.0f}{t_exp:>10}"
                      f"{m_exp:>9}  {result['drops']}", flush=True)
                previous = (n_rows, seconds, peak)
    finally:
        if not args.folder:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
