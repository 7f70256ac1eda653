"""Estimates of the noise that remains in what was kept, each with a 95 % interval and a statement of its method.

- **Mismatched captions left** (when the run scored with CLIP and saved its embeddings): on a
  sample of kept pairs (bottom-k by the key's CRC32, up to ``CLIP_SAMPLE``), deliberately mismatched
  pairs are made by giving each image the caption of another sampled pair of the same language
  (``NULL_ROUNDS`` random derangements). A mismatched caption scores below the mismatched scores'
  median half the time and a true one (almost) never, so twice the share of kept pairs at or below
  that median estimates the share of kept pairs whose caption CLIP cannot tell from a mismatched one
  (Storey's estimate of the null proportion with lambda = 0.5; an upper bound, as true pairs that
  score that low count too). The interval joins a bootstrap over pairs and mismatches with a Wilson
  interval of the count. Scores are recomputed from the saved (main model's) embeddings, so a pair
  and its mismatches are scored by the same model.
- **Near duplicates left at a looser pHash distance**: for a uniform seeded sample of kept pairs
  (up to ``PHASH_SAMPLE``), the distance to the nearest other kept pair's pHash, exactly, against all
  kept pairs (numpy popcount); the share within d has a Wilson interval. "Would be dropped" counts a
  pair near a kept pair with a smaller key, as the dedup rule keeps the smallest key: an upper bound,
  since a chain can keep a pair whose nearer neighbour is itself dropped.
- **Language purity**: a sample of each language's kept captions (up to ``aggregate.PURITY_SAMPLE``)
  relabelled by the other language identifier (langdetect for a fastText run, fastText for a langdetect
  run), its model alone, without the script rule; the share it labels the same language, with a Wilson
  interval. A disagreement is an error of either identifier, so this is a lower bound of the purity as
  well as that identifier's accuracy allows (0.967 on 3+ word captions, README "Languages").
"""

from __future__ import annotations

import io
import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from altsieve.pipeline.audit.samples import key_hashes

Z95 = 1.959963984540054
CLIP_SAMPLE = 4000
NULL_ROUNDS = 10
BOOTSTRAP = 200
MIN_GROUP = 20  # sampled pairs a language needs for an estimate of its own
PHASH_SAMPLE = 1000
PHASH_BLOCK = 16  # queries per numpy block: a (16, n) uint8 matrix


def wilson(successes: int, n: int) -> list[float]:
    """The Wilson score interval (95 %) of a binomial share."""
    if n == 0:
        return [0.0, 1.0]
    share = successes / n
    denominator = 1 + Z95**2 / n
    centre = (share + Z95**2 / (2 * n)) / denominator
    half = Z95 * math.sqrt(share * (1 - share) / n + Z95**2 / (4 * n * n)) / denominator
    return [round(max(0.0, centre - half), 5), round(min(1.0, centre + half), 5)]


# ---------------------------------------------------------------------------------------------
# pHash near duplicates among the kept pairs


class KeptHashes:
    """The kept pairs' keys and 64-bit pHashes (8 bytes a pair plus the key), in Arrow arrays."""

    def __init__(self) -> None:
        self.keys: list[pa.Array] = []
        self.hashes: list[pa.Array] = []

    def add(self, keys: pa.ChunkedArray, hashes: pa.ChunkedArray) -> None:
        if len(keys):
            self.keys.append(keys.combine_chunks())
            self.hashes.append(hashes.combine_chunks())

    def estimate(self, run_distance: int | None, sample_size: int = PHASH_SAMPLE) -> dict[str, Any]:
        n = sum(len(k) for k in self.keys)
        if n < 2:
            return {"computed": False, "why": "fewer than two kept pairs have a pHash"}
        keys = pa.chunked_array(self.keys)
        order = pc.sort_indices(keys).to_numpy()
        hashes = pa.chunked_array(self.hashes).to_numpy().view(np.uint64)[order]
        rng = np.random.default_rng(0)
        positions = np.sort(rng.choice(n, size=min(n, sample_size), replace=False))
        nearest = np.empty(positions.size, dtype=np.uint8)  # to any other kept pair
        nearest_earlier = np.empty(positions.size, dtype=np.uint8)  # to one with a smaller key
        for start in range(0, positions.size, PHASH_BLOCK):
            block = positions[start:start + PHASH_BLOCK]
            distances = np.bitwise_count(hashes[None, :] ^ hashes[block, None])  # uint8, (block, n)
            distances[np.arange(block.size), block] = 255  # not its own neighbour
            nearest[start:start + block.size] = distances.min(axis=1)
            for row, position in enumerate(block.tolist()):  # positions ascend: the prefix is the smaller keys
                nearest_earlier[start + row] = distances[row, :position].min() if position else 255
        loose = max(2 * run_distance, run_distance + 4) if run_distance else 8
        distances_shown = sorted({0, 2, 4, 6, 8, 10, 12, 16, loose} | ({run_distance} if run_distance else set()))
        rows = []
        for d in distances_shown:
            near = int((nearest <= d).sum())
            earlier = int((nearest_earlier <= d).sum())
            rows.append({
                "distance": d,
                "share_near": round(near / positions.size, 5), "share_near_interval": wilson(near, positions.size),
                "share_dropped": round(earlier / positions.size, 5),
                "share_dropped_interval": wilson(earlier, positions.size),
                "estimated_dropped_pairs": round(earlier / positions.size * n),
            })
        which = "all of them" if positions.size == n else "uniform, seed 0"
        return {
            "computed": True,
            "kept_with_phash": n,
            "sample": int(positions.size),
            "exact": positions.size == n,
            "run_distance": run_distance,
            "loose_distance": loose,
            "by_distance": rows,
            "method": (f"{positions.size:,} of {n:,} kept pairs ({which}), "
                       "each against every kept pair's 64-bit pHash (exact Hamming distance); share within d with a "
                       "Wilson 95 % interval. 'Would be dropped': near a kept pair with a smaller key, as the dedup "
                       "rule keeps the smallest key (an upper bound: a chain may keep it)."),
        }


# ---------------------------------------------------------------------------------------------
# CLIP scores against mismatched captions


def read_embeddings(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """``key``, ``image``, ``text`` and ``weights_sha256`` of ``_candidates/{partition}_embeddings.npz``."""
    with fsspec.open(path, "rb") as handle:
        data = np.load(io.BytesIO(handle.read()), allow_pickle=False)
        return data["key"].astype(str), data["image"], data["text"], str(data["weights_sha256"])


class ClipEmbeddingSample:
    """Bottom-k (by the key's CRC32) of the kept pairs' image and text embeddings, with their language."""

    def __init__(self, k: int = CLIP_SAMPLE) -> None:
        self.k = k
        self.hash = np.zeros(0, dtype=np.int64)
        self.key = np.zeros(0, dtype=str)
        self.language = np.zeros(0, dtype=object)
        self.image: np.ndarray | None = None
        self.text: np.ndarray | None = None
        self.models: set[str] = set()
        self.kept = 0

    def add(self, path: str, kept_keys: list[str], languages: list[str | None]) -> None:
        keys, image, text, weights = read_embeddings(path)
        self.models.add(weights)
        language_of = dict(zip(kept_keys, languages, strict=True))
        rows = np.flatnonzero(np.isin(keys, np.array(kept_keys, dtype=str)))
        self.kept += rows.size
        if rows.size == 0:
            return
        hashes = key_hashes(keys[rows].tolist())
        if self.image is None:
            self.image = np.zeros((0, image.shape[1]), dtype=np.float16)
            self.text = np.zeros((0, text.shape[1]), dtype=np.float16)
        if image.shape[1] != self.image.shape[1]:
            return  # another embedding width: the model check below reports it
        self.hash = np.concatenate([self.hash, hashes])
        self.key = np.concatenate([self.key.astype(object), keys[rows].astype(object)])
        self.language = np.concatenate([self.language, np.array([language_of[k] for k in keys[rows]], dtype=object)])
        self.image = np.concatenate([self.image, image[rows]])
        self.text = np.concatenate([self.text, text[rows]])
        if self.hash.size > self.k:
            keep = np.lexsort((self.key.astype(str), self.hash))[: self.k]
            self.hash, self.key, self.language = self.hash[keep], self.key[keep], self.language[keep]
            self.image, self.text = self.image[keep], self.text[keep]

    def estimate(self, kept_by_language: dict[str, int], kept_total: int) -> dict[str, Any]:
        if self.image is None or self.hash.size < MIN_GROUP:
            return {"computed": False, "why": f"fewer than {MIN_GROUP} kept pairs have CLIP embeddings"}
        if len(self.models) > 1:
            return {"computed": False, "why": "the partitions' embeddings come from different models"}
        image = self.image.astype(np.float32)
        text = self.text.astype(np.float32)
        scores = (image * text).sum(axis=1)
        rng = np.random.default_rng(0)
        languages = np.array(["(none)" if x is None else x for x in self.language], dtype=object)
        by_language = {name: np.flatnonzero(languages == name) for name in sorted(set(languages.tolist()))}
        # Mismatched pairs: each image with another sampled caption of its language, a random derangement a round
        # (a caption of another language would score low for reasons that say nothing about the match).
        nulls = {}
        for name, members in by_language.items():
            if members.size >= 2:
                rounds = []
                for _ in range(NULL_ROUNDS):
                    order = rng.permutation(members)
                    rounds.append((image[order] * text[np.roll(order, 1)]).sum(axis=1))
                nulls[name] = np.concatenate(rounds)
        groups = [("all languages", np.concatenate([by_language[n] for n in nulls]) if nulls else np.arange(0),
                   np.concatenate(list(nulls.values())) if nulls else np.zeros(0), kept_total)]
        for language, count in sorted(kept_by_language.items(), key=lambda item: -item[1]):
            if language in nulls and by_language[language].size >= MIN_GROUP:
                groups.append((language, by_language[language], nulls[language], count))
        rows = []
        for name, members, null_scores, population in groups:
            if members.size < MIN_GROUP:
                continue
            own = scores[members]
            median = float(np.median(null_scores))
            below = int((own <= median).sum())
            boot = np.empty(BOOTSTRAP)
            for b in range(BOOTSTRAP):
                own_b = own[rng.integers(0, own.size, own.size)]
                median_b = np.median(null_scores[rng.integers(0, null_scores.size, null_scores.size)])
                boot[b] = min(1.0, (own_b <= median_b).mean() / 0.5)
            low, high = wilson(below, own.size)
            estimate = min(1.0, below / own.size / 0.5)
            interval = [round(min(min(1.0, low / 0.5), float(np.quantile(boot, 0.025))), 5),
                        round(max(min(1.0, high / 0.5), float(np.quantile(boot, 0.975))), 5)]
            rows.append({
                "group": name, "sample": int(own.size), "kept": int(population),
                "mismatched_p05": round(float(np.quantile(null_scores, 0.05)), 4),
                "mismatched_median": round(median, 4),
                "mismatched_p95": round(float(np.quantile(null_scores, 0.95)), 4),
                "kept_p05": round(float(np.quantile(own, 0.05)), 4),
                "kept_median": round(float(np.median(own)), 4),
                "below_mismatched_median": below,
                "share_below_mismatched_median": round(below / own.size, 5),
                "share": round(estimate, 5), "interval": interval,
                "estimated_pairs": round(estimate * population),
            })
        if not rows:
            return {"computed": False, "why": f"no language has {MIN_GROUP} sampled kept pairs with embeddings"}
        return {
            "computed": True,
            "sample": int(scores.size),
            "embedded_kept_pairs": self.kept,
            "by_group": rows,
            "method": (f"{scores.size:,} kept pairs (bottom-k by the key's CRC32), scored from the run's saved "
                       f"embeddings; mismatched pairs made by giving each sampled image another sampled caption of "
                       f"its language ({NULL_ROUNDS} random derangements). A mismatched pair scores below the "
                       "mismatched scores' median half the time, a true pair (almost) never, so twice the share of "
                       "kept pairs at or below that median estimates the share of mismatched captions among the kept "
                       "ones (Storey's estimate of the null share, lambda = 0.5; true pairs that score that low add to "
                       f"it: an upper bound). Interval: a bootstrap over pairs and mismatches ({BOOTSTRAP} resamples) "
                       "joined with a Wilson 95 % interval of the count."),
        }


# ---------------------------------------------------------------------------------------------
# Language purity


# A label whose script the caption lacks is impossible: the second identifier's first label that the caption's
# scripts allow is taken (langdetect calls many short Chinese captions Korean, README "Languages").
_SCRIPT_NEEDED = {"ko": ("hangul",), "ja": ("kana", "han"), "zh": ("han",)}


def _second_identifier(backend: str) -> Callable[[str], list[str]]:
    """The ranked labels of the identifier the run did not use (its model alone, no script rule)."""
    if backend == "langdetect":
        import fasttext  # fasttext-predict's module

        from altsieve.transforms.language import default_model_path

        model = fasttext.load_model(default_model_path())
        return lambda text: [label.removeprefix("__label__") for label in model.predict(" ".join(text.split()), 5)[0]]
    from langdetect import DetectorFactory, detect_langs
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0  # langdetect samples n-grams at random: seeded, a re-audit gives the same labels

    def ranked(text: str) -> list[str]:
        try:
            return [found.lang.split("-")[0] for found in detect_langs(text)]
        except LangDetectException:  # no letters
            return []

    return ranked


def language_purity(samples: dict[str, list[str]], run_backend: str, languages: list[str]) -> dict[str, Any]:
    """The share of each language's sampled kept captions that the other identifier labels the same."""
    from altsieve.transforms.language import script_shares

    other = "fasttext" if run_backend == "langdetect" else "langdetect"
    ranked = _second_identifier(run_backend)

    def label(caption: str) -> str | None:
        shares = script_shares(caption)
        for candidate in ranked(caption):
            needed = _SCRIPT_NEEDED.get(candidate)
            if needed and all(shares[script] == 0.0 for script in needed):
                continue
            return candidate
        return None

    rows = []
    for language in languages:
        labels = [label(caption) for caption in samples.get(language, []) if caption]
        labelled = [found for found in labels if found is not None]
        agree = sum(1 for found in labelled if found == language)
        if not labelled:
            continue
        rows.append({
            "language": language, "sample": len(labelled), "agree": agree,
            "share": round(agree / len(labelled), 5), "interval": wilson(agree, len(labelled)),
            "other_labels": dict(Counter(found for found in labelled if found != language).most_common(5)),
        })
    if not rows:
        return {"computed": False, "why": "no kept captions with a language label to check"}
    return {
        "computed": True,
        "second_identifier": other,
        "by_language": rows,
        "method": (f"up to {max(r['sample'] for r in rows):,} kept captions per language (bottom-k by the key's "
                   f"CRC32) relabelled by {other}'s model alone (not the script rule; of its ranked labels the first "
                   "whose script the caption has: no Korean without Hangul); the share labelled the same, with a "
                   "Wilson 95 % interval. A disagreement is an error of either identifier: a lower bound of the "
                   "purity within that identifier's own accuracy."),
    }
