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
