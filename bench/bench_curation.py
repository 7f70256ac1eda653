"""Issue 16's stages: CPU time per pair at 256 px beside the existing ones, and the crop rule's cost at scale.

    .venv/bin/python bench/bench_curation.py --stages 200          # per-stage time on 200 test-corpus images
    .venv/bin/python bench/bench_curation.py --crop-sizes 20000,100000

**Stages** (one process, one thread: ``cv2.setNumThreads(1)``, ``torch.set_num_threads(1)``; each stage on the
same images, the stored 256-px versions of textured 640x480 test-corpus JPEGs): Decode's ``process_image``
(decode, resize, re-encode, sha256, pHash: the existing per-pair cost), the safety lists (MD5 + SHA-256 of
the bytes, a pHash lookup in a list of 1M hashes), the crop features (signature + ORB + thumbnail), the
text detector, the face cascade, and the heads (a 768-d LAION-sized MLP and a linear head, batch 256).

**Crop rule at scale**: ``CropDuplicateFilter`` in a DirectRunner pipeline (a subprocess per size, its
peak RSS sampled) on synthetic ``_crop.npz`` files, 10,000 pairs a partition: random unit signatures,
random ORB descriptors and points, one shared 64-px noise thumbnail, and 2 % near copies (an earlier
pair's features with a little noise on the signature). Random descriptors make verification fail early
(few ratio-test matches), so the verification share is a lower bound; the kNN products and the
descriptor-vote search are what they are on real features. Bytes shuffled per pair: the pickled size
of one cluster-group member (what the GroupByKey on the cluster carries).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _proc import tree_rss_bytes

ROWS_PER_PARTITION = 10_000


def per_pair(fn, items, repeat: int = 1) -> float:
    started = time.process_time()
    for _ in range(repeat):
        for item in items:
            fn(item)
    return (time.process_time() - started) / (len(items) * repeat) * 1000


def bench_stages(n: int) -> None:
    import cv2
    import torch

    from altsieve.core.config import FacesConfig, HeadConfig, TextAreaConfig
    from altsieve.filters.safety import PHashIndex
    from altsieve.testcorpus.generator import generate_corpus
    from altsieve.transforms import crop_features
    from altsieve.transforms.heads import Head
    from altsieve.transforms.image_content import FaceDetector, TextDetector
    from altsieve.transforms.imageops import process_image

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    corpus = generate_corpus(n, seed=3, image_size=(640, 480), texture=True, label_counts={"text_overlay": n // 10,
                                                                                             "face": n // 10})
    bodies = [corpus.responses[p.path].body for p in corpus.pairs]
    content = [process_image(b, keep_content=True).content for b in bodies]
    rows = []
    rows.append(("Decode: process_image (decode, resize, encode, sha256, pHash)", per_pair(
        lambda b: process_image(b), bodies)))
    import hashlib

    rows.append(("safety: MD5 + SHA-256 of the fetched bytes", per_pair(
        lambda b: (hashlib.md5(b, usedforsecurity=False).digest(), hashlib.sha256(b).digest()), bodies)))
    index = PHashIndex(np.random.default_rng(0).integers(0, 2**63, 1_000_000, dtype=np.int64).astype(np.uint64), 4)
    rows.append(("safety: pHash lookup in a 1M-hash list, d = 4", per_pair(
        lambda b: index.matches(int.from_bytes(hashlib.md5(b).digest()[:8], "little")), bodies)))
    rows.append(("crop features: signature", per_pair(
        lambda c: crop_features.signature(cv2.cvtColor(c, cv2.COLOR_RGB2GRAY)), content)))
    rows.append(("crop features: all (signature, ORB, thumbnail)", per_pair(crop_features.extract, content)))
    text = TextDetector(TextAreaConfig(enabled=True))
    rows.append(("content.text: PP-OCRv6 DB detector, 256 px", per_pair(lambda c: text.ratios([c]), content)))
    faces = FaceDetector(FacesConfig(enabled=True))
    rows.append(("content.faces: Haar cascade (frontalface_alt)", per_pair(faces.boxes, content)))
    folder = Path(tempfile.mkdtemp())
    mlp = torch.nn.Sequential(torch.nn.Linear(768, 1024), torch.nn.Linear(1024, 128), torch.nn.Linear(128, 64),
                              torch.nn.Linear(64, 16), torch.nn.Linear(16, 1))  # LAION's aesthetic MLP's shape
    torch.save(mlp.state_dict(), folder / "mlp.pth")
    head = Head(HeadConfig(enabled=True, weights=str(folder / "mlp.pth")), "cpu", "aesthetic")
    batch = np.random.default_rng(1).standard_normal((256, 768)).astype(np.float16)
    rows.append(("heads: LAION-sized aesthetic MLP on 768-d embeddings, batch 256", per_pair(
        head.scores, [batch] * 20) / 256))
    print(f"\n{len(bodies)} images (640x480 textured JPEG -> 256 px), CPU ms per pair, one thread:")
    base = rows[0][1]
    for name, ms in rows:
        print(f"  {name:<66} {ms:8.3f} ms  {ms / base:6.2f}x Decode")


def write_synthetic(output: Path, n_rows: int) -> None:
    import cv2

    from altsieve.transforms import crop_features

    noise = np.random.default_rng(5).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    thumb = cv2.imencode(".jpg", noise)[1].tobytes()
    for partition in range(n_rows // ROWS_PER_PARTITION):
        path = Path(crop_features.crop_path(str(output), f"{partition:05d}"))
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(partition)
        start = partition * ROWS_PER_PARTITION
        signatures = rng.standard_normal((ROWS_PER_PARTITION, crop_features.SIGNATURE_DIM)).astype(np.float32)
        copies = rng.random(ROWS_PER_PARTITION) < 0.02
        signatures[copies] = np.roll(signatures, 1, axis=0)[copies] + 0.05 * rng.standard_normal(
            (int(copies.sum()), crop_features.SIGNATURE_DIM))
        signatures /= np.linalg.norm(signatures, axis=1, keepdims=True)
        features = [crop_features.CropFeatures(
            signatures[i].astype(np.float16), rng.uniform(0, 256, (96, 2)).astype(np.float32),
            rng.integers(0, 256, (96, 32), dtype=np.uint8), thumb, (192, 256)) for i in range(ROWS_PER_PARTITION)]
        keys = [f"{i:015d}" for i in range(start, start + ROWS_PER_PARTITION)]
        records = [{"key": k, "reason": None, "image": b"x", crop_features.CROP_FEATURES_FIELD: f}
                   for k, f in zip(keys, features, strict=True)]
        crop_features.write_partition(str(path), records)


def run_crop(n_rows: int, folder: str, result: str) -> None:
    import apache_beam as beam

    from altsieve.dedup.crop import CropDuplicateFilter, read_members

    output = Path(folder) / "crop"
    write_synthetic(output, n_rows)
    member = read_members(str(output), "00000", [f"{i:015d}" for i in range(1)])[0]
    started = time.perf_counter()
    with beam.Pipeline() as pipeline:
        rows = pipeline | beam.Create([{"key": f"{i:015d}", "partition_id": f"{i // ROWS_PER_PARTITION:05d}"}
                                       for i in range(n_rows)])
        drops = rows | CropDuplicateFilter(str(output), n_clusters=max(1, n_rows // 10_000))
        _ = drops | beam.combiners.Count.Globally() | beam.Map(
            lambda n: Path(result).write_text(json.dumps({"drops": n})))
    found = json.loads(Path(result).read_text())
    found.update(seconds=time.perf_counter() - started, member_bytes=len(pickle.dumps(member)))
    Path(result).write_text(json.dumps(found))


def bench_crop(sizes: list[int]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        print("\ncrop rule (DirectRunner, one process, synthetic features, 10,000 pairs a partition):")
        previous = None
        for n in sizes:
            result = os.path.join(folder, f"result-{n}.json")
            process = subprocess.Popen([sys.executable, __file__, "--run-crop", str(n), folder, result])
            peak = 0
            while process.poll() is None:
                peak = max(peak, tree_rss_bytes(process.pid))
                time.sleep(0.2)
            if process.returncode:
                raise SystemExit(f"crop run at {n} failed")
            found = json.loads(Path(result).read_text())
            growth = "" if previous is None else (
                f", growth exponent {np.log(found['seconds'] / previous[1]) / np.log(n / previous[0]):.2f}")
            print(f"  {n:>8,} pairs: {found['seconds']:7.1f} s ({found['seconds'] / n * 1e6 / 60:6.1f} min per 1M "
                  f"pairs at this rate), peak RSS {peak / 2**30:.2f} GiB, {found['drops']} drops, "
                  f"{found['member_bytes']:,} bytes shuffled per pair (pickled member){growth}")
            previous = (n, found["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", type=int, default=0, help="per-stage time on this many images")
    parser.add_argument("--crop-sizes", default="", help="comma-separated pair counts for the crop rule")
    parser.add_argument("--run-crop", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_crop:
        run_crop(int(args.run_crop[0]), args.run_crop[1], args.run_crop[2])
        return
    if args.stages:
        bench_stages(args.stages)
    if args.crop_sizes:
        bench_crop([int(s) for s in args.crop_sizes.split(",")])


if __name__ == "__main__":
    main()
