"""Curation beyond the peers (issue 16), against the truth: crop-robust duplicates, safety lists, MetaCLIP balancing,
DataComp's image-based filter, text area, faces and the heads on the CLIP embeddings.

Each test plants what its rule must find (crops, overlays, listed hashes, entries, text, faces, labels) and checks
the rule's verdicts against that truth.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from altsieve.core import reasons
from altsieve.core.config import load_config
from altsieve.testcorpus.generator import TestCorpus, generate_corpus
from altsieve.transforms import crop_features
from altsieve.transforms.imageops import ImageOptions, phash_to_int64, process_image
from tests.test_dedup import by_key, key_of, partition_of, run_rules, truth_cluster

COPIES = ("exact_duplicate", "near_dup_reencoded", "near_dup_resized", "near_dup_cropped", "near_dup_brightened",
          "near_dup_cropped_side", "near_dup_overlay")
PER_KIND = 24


# ---------------------------------------------------------------------------------------------
# Crop-robust near duplicates


@pytest.fixture(scope="module")
def copies() -> TestCorpus:
    return generate_corpus(n_pairs=360, seed=21, label_counts=dict.fromkeys(COPIES, PER_KIND))


@pytest.fixture(scope="module")
def copies_output(copies, tmp_path_factory) -> tuple[str, list[dict[str, Any]]]:
    """Metadata rows and ``_crop.npz`` files as the ingest writes them (the same process_image and features)."""
    output = tmp_path_factory.mktemp("crop") / "out"
    rows, by_partition = [], {}
    options = ImageOptions(keep_content=True)
    for pair in copies.pairs:
        image = process_image(copies.responses[pair.path].body, options)
        record = {"key": key_of(pair.pair_id), "partition_id": partition_of(pair.pair_id), "reason": None,
                  "image": image.data, crop_features.CROP_FEATURES_FIELD: crop_features.extract(image.content)}
        by_partition.setdefault(record["partition_id"], []).append(record)
        rows.append({"key": record["key"], "partition_id": record["partition_id"], "sha256": image.sha256,
                     "phash": phash_to_int64(image.phash), "url": f"http://x.test{pair.path}", "caption": pair.caption})
    for partition_id, records in by_partition.items():
        path = Path(crop_features.crop_path(str(output), partition_id))
        path.parent.mkdir(parents=True, exist_ok=True)
        crop_features.write_partition(str(path), records)
    return str(output), rows


def test_crop_robust_duplicates_against_the_truth(copies, copies_output, tmp_path, capsys) -> None:
    output, rows = copies_output
    config = load_config("default", [{"dedup": {"crop": {"enabled": True}}}])
    from altsieve.pipeline.select import corpus_rules

    rules = corpus_rules(config, output)
    assert [name for name, _ in rules][-2:] == ["NearDuplicateFilter/PerceptualDuplicates",
                                                "NearDuplicateFilter/CropDuplicates"]
    drops = by_key(run_rules(rules, rows, tmp_path))
    cluster = truth_cluster(copies)
    correct = {key for key, (_, duplicate_of, _) in drops.items() if cluster[duplicate_of] == cluster[key]}
    precision = len(correct) / len(drops)
    recall = {label: sum(key_of(p.pair_id) in correct for p in copies.pairs_with_label(label)) / PER_KIND
              for label in COPIES}
    crop_drops = [key for key, d in drops.items() if d[0] == reasons.DUPLICATE_CROP]
    with capsys.disabled():
        print(f"\nsha256 + pHash + crop rule: precision {precision:.3f}, {len(crop_drops)} crop drops, recall "
              + ", ".join(f"{label.removeprefix('near_dup_')} {value:.2f}" for label, value in recall.items()))
    assert precision >= 0.99
    assert all(value >= 0.95 for value in recall.values()), recall
    # The crop rule finds what pHash cannot: every one-or-two-sided crop is beyond its 4 bits or not.
    side = {key_of(p.pair_id) for p in copies.pairs_with_label("near_dup_cropped_side")}
    assert len(side & set(crop_drops)) >= PER_KIND // 2
    # The crop rule is the last: its duplicate_of is a pair kept in the end, with a smaller key.
    for key in crop_drops:
        duplicate_of = drops[key][1]
        assert duplicate_of not in drops and duplicate_of < key


def test_crop_rule_reruns_give_the_same_drops(copies_output, tmp_path) -> None:
    from altsieve.dedup.crop import CropDuplicateFilter

    output, rows = copies_output
    rows = rows[:150]  # the first 150 pairs hold copies of their own originals: enough to see the order not matter
    first = sorted(run_rules([("C", CropDuplicateFilter(output))], rows, tmp_path))
    shuffled = list(reversed(rows))
    assert sorted(run_rules([("C", CropDuplicateFilter(output))], shuffled, tmp_path)) == first
    assert first


def test_crop_verification_refuses_distinct_scenes(copies, copies_output) -> None:
    """Every pair of distinct clean scenes among the 100 signature-nearest is refused by the ORB + pixel check."""
    output, _ = copies_output
    features = {}
    for path in Path(output, "_candidates").glob("*_crop.npz"):
        arrays = crop_features.load_arrays(str(path))
        features.update({key: crop_features.unpack(arrays, row) for row, key in enumerate(arrays["key"].tolist())})
    clean = [key_of(p.pair_id) for p in copies.pairs_with_label("clean")]
    signatures = np.stack([features[k].signature for k in clean]).astype(np.float32)
    signatures /= np.linalg.norm(signatures, axis=1, keepdims=True) + 1e-9
    similarity = signatures @ signatures.T
    np.fill_diagonal(similarity, -2)
    nearest = np.dstack(np.unravel_index(np.argsort(-similarity, axis=None)[:200], similarity.shape))[0]
    checked = 0
    for i, j in nearest.tolist():
        if i < j:
            assert not crop_features.verify(features[clean[i]], features[clean[j]])
            checked += 1
    assert checked >= 90


# ---------------------------------------------------------------------------------------------
# MetaCLIP balancing


SHIPPED_ENTRIES = Path(__file__).resolve().parents[1] / "altsieve" / "data" / "metaclip_entries_test.txt"


def metaclip_expected(captions: dict[str, str], entries: list[str], t: int, seed: int) -> dict[str, str]:
    """The paper's algorithm as a plain loop: substring counts, then p = min(1, t / count) per matched entry."""
    matched = {key: [i for i, entry in enumerate(entries) if entry in caption] for key, caption in captions.items()}
    counts = {i: sum(i in m for m in matched.values()) for i in range(len(entries))}
    expected = {}
    for key, found in matched.items():
        if not found:
            expected[key] = reasons.METACLIP_NO_ENTRY
            continue
        draws = [int.from_bytes(hashlib.blake2b(f"{seed}\x00{key}\x00{i}".encode(), digest_size=8).digest(),
                                "little") / 2.0**64 for i in found]
        if not any(u < min(1.0, t / counts[i]) for u, i in zip(draws, found, strict=True)):
            expected[key] = reasons.METACLIP_BALANCED
    return expected


def test_metaclip_balancing_drops_exactly_what_the_paper_implies(corpus, tmp_path) -> None:
    from altsieve.filters.metaclip import read_entries
    from altsieve.pipeline.select import corpus_rules

    rows = [{"key": key_of(p.pair_id), "partition_id": partition_of(p.pair_id), "caption": p.caption}
            for p in generate_corpus(400, seed=5).pairs]
    t = 25
    config = load_config("metaclip", [{"metaclip": {"entries_file": str(SHIPPED_ENTRIES), "t": t},
                                       "dedup": {"exact_sha256": False, "exact_url_caption": False}}])
    rules = corpus_rules(config, str(tmp_path / "out"))
    assert [name for name, _ in rules] == ["NearDuplicateFilter/PerceptualDuplicates", "MetaClipBalance"]
    drops = by_key(run_rules(rules[1:], rows, tmp_path))
    expected = metaclip_expected({r["key"]: r["caption"] for r in rows}, read_entries(str(SHIPPED_ENTRIES), False),
                                 t, 0)
    assert {key: d[0] for key, d in drops.items()} == expected
    counted = {reason: list(expected.values()).count(reason) for reason in set(expected.values())}
    assert counted[reasons.METACLIP_NO_ENTRY] > 0 and counted[reasons.METACLIP_BALANCED] > 0  # both at work
    # A rerun keeps the same pairs (seeded draws, not random()).
    assert by_key(run_rules(rules[1:], list(reversed(rows)), tmp_path)) == drops


# ---------------------------------------------------------------------------------------------
# DataComp's image-based filter, and DataComp-1B's intersection with the CLIP top fraction


def test_image_based_filter_and_datacomp_1b_intersection(tmp_path) -> None:
    from altsieve.pipeline.select import corpus_rules
    from tests.test_dedup import write_embeddings

    rng = np.random.default_rng(4)
    centres = np.linalg.qr(rng.standard_normal((32, 8)))[0].T  # 8 orthonormal directions in 32-d
    n = 800
    cluster_of = rng.integers(0, 8, n)
    vectors = centres[cluster_of] + 0.05 * rng.standard_normal((n, 32))
    output = tmp_path / "out"
    write_embeddings(output, vectors.astype(np.float32))
    near = [1, 4, 6]  # the reference set (ImageNet's stand-in) sits near three of the eight
    references = centres[np.repeat(near, 5)] + 0.05 * rng.standard_normal((15, 32))
    np.save(tmp_path / "reference.npy", references.astype(np.float32))
    scores = rng.uniform(0.1, 0.4, n).astype(np.float32)
    rows = [{"key": key_of(i), "partition_id": partition_of(i), "clip_score": float(scores[i])} for i in range(n)]
    settings = {"clip": {"enabled": True, "pretrained": "random", "top_fraction": 0.3},
                "image_clusters": {"reference_embeddings": [str(tmp_path / "reference.npy")], "n_clusters": 8},
                "dedup": {"exact_sha256": False, "exact_url_caption": False, "perceptual": False}}
    config = load_config("datacomp-1b", [settings])
    rules = corpus_rules(config, str(output))
    assert [name for name, _ in rules] == ["ImageBasedAndClipTopFraction"]
    drops = by_key(run_rules(rules, rows, tmp_path))
    far = {key_of(i) for i in range(n) if cluster_of[i] not in near}
    cut = np.sort(scores)[::-1][int(np.ceil(0.3 * n)) - 1]  # the top 30 % of the whole pool, not of the near ones
    low = {key_of(i) for i in range(n) if scores[i] < cut}
    assert set(drops) == far | low  # kept: near a reference AND in the pool's top 30 %
    assert {key for key, d in drops.items() if d[0] == reasons.IMAGE_CLUSTER_FAR} == far
    assert {key for key, d in drops.items() if d[0] == reasons.CLIP_SCORE_BELOW_QUANTILE} == low - far
    report = json.loads(Path(output, "_altsieve", "image_clusters.json").read_text())
    assert report == {"clusters": 8, "kept_clusters": 3, "reference_embeddings": 15}
