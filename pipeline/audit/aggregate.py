"""The statistics of a corpus, streamed: each batch goes through pyarrow compute into histograms and counters."""

from __future__ import annotations

import heapq
import zlib
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from altsieve.pipeline.audit.domains import TopCounter, hosts
from altsieve.pipeline.audit.histograms import HIST_SPECS, Histogram
from altsieve.pipeline.audit.sources import Batch, Source

TOP_N = 20
# Columns shown with each gallery sample, when present.
SAMPLE_FIELDS = [
    "key", "url", "caption", "reason", "error_message", "original_width", "original_height", "bytes",
    "http_status", "language", "language_score", "clip_score", "duplicate_of",
]


def _floats(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)


def _normalize_error(message: pa.ChunkedArray) -> pa.ChunkedArray:
    """Error messages grouped by kind: URLs, addresses and numbers other than HTTP codes stripped."""
    message = pc.replace_substring_regex(message, r"[A-Za-z][A-Za-z0-9+.\-]*://\S+", "<url>")
    message = pc.replace_substring_regex(message, r"\d+\.\d+\.\d+\.\d+", "<address>")
    message = pc.replace_substring_regex(message, r"after \d+(\.\d+)? s", "after <n> s")
    return pc.utf8_slice_codeunits(message, 0, 160)


def _grouped(table: pa.Table, keys: list[str]) -> list[dict[str, Any]]:
    return table.group_by(keys).aggregate([([], "count_all")]).to_pylist()


class Aggregator:
    def __init__(self, source: Source, samples_per_reason: int) -> None:
        self.source = source
        self.samples_per_reason = samples_per_reason
        self.rows = 0
        self.columns: set[str] = set()
        self.reason_counts: Counter[str] = Counter()
        self.histograms = {spec.name: Histogram(spec) for spec in HIST_SPECS}
        self.languages: Counter[tuple[str, str]] = Counter()
        self.domains = {group: TopCounter() for group in ("kept", "dropped", "all", "failed")}
        self.errors: Counter[tuple[str, str]] = Counter()
        self.duplicate_keys: list[pa.Array] = []
        self.hash_prefixes: list[pa.Array] = []
        # reason -> heap of (-hash, key, row): the smallest hashes of the keys, a sample that does not depend
        # on the order of files or batches.
        self.samples: dict[str, list[tuple[int, str, dict[str, Any]]]] = {}

    def group_of(self, table: pa.Table) -> tuple[pa.ChunkedArray, np.ndarray]:
        if self.source.has_outcomes:
            kept = pc.is_null(table["reason"])
            return pc.if_else(kept, pa.scalar("kept"), pa.scalar("dropped")), kept.to_numpy(zero_copy_only=False)
        return pa.chunked_array([pa.repeat(pa.scalar("all"), len(table))]), np.ones(len(table), dtype=bool)

    def add(self, batch: Batch) -> None:
        table = batch.table
        if len(table) == 0:
            return
        self.rows += len(table)
        self.columns.update(table.column_names)
        groups, kept = self.group_of(table)
        if self.source.has_outcomes:
            for item in pc.value_counts(table["reason"]).to_pylist():
                self.reason_counts[item["values"] or "kept"] += item["counts"]
        masks = {"kept": kept, "dropped": ~kept} if self.source.has_outcomes else {"all": kept}
        self._histograms(table, masks)
        extra = pa.table({"group": groups})
        if "language" in table.column_names:
            language = pc.fill_null(table["language"], "(not tagged)")
            for row in _grouped(extra.append_column("language", language), ["language", "group"]):
                self.languages[(row["language"], row["group"])] += row["count_all"]
        if "url" in table.column_names:
            self._domains(table, extra.append_column("domain", hosts(table["url"])))
        if "duplicate_of" in table.column_names:
            duplicates = table["duplicate_of"].drop_null()
            if len(duplicates):
                self.duplicate_keys.append(duplicates.combine_chunks())
        elif "sha256" in table.column_names:
            hashes = table["sha256"].drop_null()  # img2dataset hashes successful downloads only
            if len(hashes):  # 16 hex digits (64 bits) tell SHA-256 digests apart at any corpus size
                self.hash_prefixes.append(pc.utf8_slice_codeunits(hashes, 0, 16).combine_chunks())
        self._sample(batch)

    def _histograms(self, table: pa.Table, masks: dict[str, np.ndarray]) -> None:
        names = table.column_names
        values: dict[str, Callable[[], np.ndarray]] = {}
        if "clip_score" in names:
            values["clip_score"] = lambda: _floats(table["clip_score"])
        if "original_width" in names and "original_height" in names:
            width, height = _floats(table["original_width"]), _floats(table["original_height"])
            values["width"] = lambda: width
            values["height"] = lambda: height
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(height > 0, width / np.where(height > 0, height, 1), np.nan)
            values["aspect_ratio"] = lambda: ratio
        if "caption" in names:
            values["caption_chars"] = lambda: _floats(pc.fill_null(pc.utf8_length(table["caption"]), 0))
            values["caption_words"] = lambda: _floats(
                pc.fill_null(pc.count_substring_regex(table["caption"], r"\S+"), 0))
        if "bytes" in names:
            values["bytes"] = lambda: _floats(table["bytes"])
        for name, compute in values.items():
            array = compute()
            for group, mask in masks.items():
                self.histograms[name].add(group, array[mask])

    def _domains(self, table: pa.Table, extra: pa.Table) -> None:
        counts: dict[str, Counter[str]] = {"kept": Counter(), "dropped": Counter(), "all": Counter()}
        for row in _grouped(extra, ["domain", "group"]):
            counts[row["group"]][row["domain"]] += row["count_all"]
            if row["group"] != "all":
                counts["all"][row["domain"]] += row["count_all"]
        for group, found in counts.items():
            if found:
                self.domains[group].update(found)
        if not self.source.has_outcomes:
            return
        failed = pc.starts_with(pc.fill_null(table["reason"], ""), "download_")
        if not pc.any(failed).as_py():
            return
        message = table["error_message"] if "error_message" in table.column_names else table["reason"]
        failures = pa.table({
            "domain": pc.filter(extra["domain"], failed),
            "reason": pc.filter(table["reason"], failed),
            "message": _normalize_error(pc.fill_null(pc.filter(message, failed), "")),
        })
        self.domains["failed"].update({r["domain"]: r["count_all"] for r in _grouped(failures, ["domain"])})
        for row in _grouped(failures, ["reason", "message"]):
            self.errors[(row["reason"], row["message"])] += row["count_all"]

    def _sample(self, batch: Batch) -> None:
        table = batch.table
        id_column = "key" if "key" in table.column_names else "url"
        if not self.samples_per_reason or id_column not in table.column_names:
            return
        keys = table[id_column].to_pylist()
        hashes = np.fromiter((zlib.crc32(str(k).encode()) for k in keys), dtype=np.int64, count=len(keys))
        if self.source.has_outcomes:
            encoded = pc.dictionary_encode(pc.fill_null(table["reason"], "kept")).combine_chunks()
            labels, codes = encoded.dictionary.to_pylist(), encoded.indices.to_numpy(zero_copy_only=False)
        else:
            labels, codes = ["all"], np.zeros(len(table), dtype=np.int64)
        fields = [n for n in SAMPLE_FIELDS if n in table.column_names]
        k = self.samples_per_reason
        for code, label in enumerate(labels):
            rows = np.flatnonzero(codes == code)
            if rows.size > k:
                rows = rows[np.argpartition(hashes[rows], k)[:k]]
            heap = self.samples.setdefault(label, [])
            for row in rows:
                entry = -int(hashes[row])
                if len(heap) == k and entry <= heap[0][0]:
                    continue
                record = {name: table[name][int(row)].as_py() for name in fields}
                record["has_image"] = bool(table["has_image"][int(row)].as_py())
                record["image_tar"] = batch.image_tar if record["has_image"] else None
                item = (entry, str(keys[row]), record)
                if len(heap) < k:
                    heapq.heappush(heap, item)
                else:
                    heapq.heapreplace(heap, item)

    # -----------------------------------------------------------------------------------------
    # Results

    def result(self) -> dict[str, Any]:
        not_computed: list[dict[str, str]] = []
        histograms: dict[str, Any] = {}
        for name, histogram in self.histograms.items():
            if histogram.counts:
                histograms[name] = histogram.to_json()
            else:
                histograms[name] = {"title": histogram.spec.title, "computed": False, "why": self._why_not(name)}
                not_computed.append({"what": histogram.spec.title, "why": histograms[name]["why"]})
        for histogram in histograms.values():
            histogram.setdefault("computed", True)
        out: dict[str, Any] = {
            "rows": self.rows,
            "columns": sorted(self.columns),
            "histograms": histograms,
        }
        out["languages"] = self._languages(not_computed)
        out["duplicate_clusters"] = self._duplicate_clusters(not_computed)
        out["domains"], out["download_failures"] = self._domains_json(not_computed)
        return {**out, "not_computed": not_computed}

    def _why_not(self, name: str) -> str:
        if name == "clip_score":
            if "clip_score" in self.columns:
                return "clip_score holds no values: CLIP scoring was off in this run (clip.enabled in the recipe)"
            return "no clip_score column: the CLIP scoring stage has not been run on this corpus"
        if name in ("width", "height", "aspect_ratio"):
            return "no original_width/original_height columns: image sizes need the images (metadata-only input)"
        if name == "bytes":
            return "no bytes column: this input does not record downloaded file sizes"
        return "no caption column"

    def _languages(self, not_computed: list[dict[str, str]]) -> dict[str, Any]:
        if "language" not in self.columns:
            why = "no language column: language identification has not been run on this corpus"
            not_computed.append({"what": "Language distribution", "why": why})
            return {"computed": False, "why": why}
        totals: Counter[str] = Counter()
        for (language, _), count in self.languages.items():
            totals[language] += count
        rows = []
        for language, total in totals.most_common():
            row = {"language": language, "total": total}
            for group in ("kept", "dropped", "all"):
                if (language, group) in self.languages:
                    row[group] = self.languages[(language, group)]
            rows.append(row)
        return {"computed": True, "distinct": len(rows), "languages": rows}

    def _duplicate_clusters(self, not_computed: list[dict[str, str]]) -> dict[str, Any]:
        if "duplicate_of" in self.columns:
            method = "duplicate_of: the pair each dropped duplicate names (the run's dedup methods)"
            chunks = self.duplicate_keys
            extra = 1  # the kept pair each cluster's duplicates point to
        elif "sha256" in self.columns:
            method = "sha256 of the downloaded image, equal digests (computed by the audit)"
            chunks = self.hash_prefixes
            extra = 0
        else:
            why = "no duplicate_of or sha256 column: deduplication has not been run and no image hashes are recorded"
            not_computed.append({"what": "Duplicate cluster sizes", "why": why})
            return {"computed": False, "why": why}
        sizes: Counter[int] = Counter()
        if chunks:
            counts = pc.value_counts(pa.chunked_array(chunks)).field("counts").to_numpy() + extra
            counts = counts[counts > 1]
            values, frequency = np.unique(counts, return_counts=True)
            sizes = Counter(dict(zip(values.tolist(), frequency.tolist(), strict=True)))
        in_clusters = sum(size * n for size, n in sizes.items())
        return {
            "computed": True,
            "method": method,
            "clusters": sum(sizes.values()),
            "pairs_in_clusters": in_clusters,
            "redundant_pairs": in_clusters - sum(sizes.values()),
            "largest": max(sizes) if sizes else 0,
            "sizes": [{"size": size, "clusters": n} for size, n in sorted(sizes.items())],
        }

    def _domains_json(self, not_computed: list[dict[str, str]]) -> tuple[dict[str, Any], dict[str, Any]]:
        if "url" not in self.columns:
            why = "no url column"
            not_computed.append({"what": "Domains", "why": why})
            return {"computed": False, "why": why}, {"computed": False, "why": why}

        def top(group: str) -> list[dict[str, Any]]:
            counter = self.domains[group]
            return [{"domain": d, "count": n, "total": self.domains["all"].counts.get(d, n)}
                    for d, n in counter.counts.most_common(TOP_N)]

        all_domains = self.domains["all"]
        domains: dict[str, Any] = {
            "computed": True,
            "distinct": len(all_domains.counts) + (1 if all_domains.folded else 0),
            "folded_rare_domains": {"pairs": all_domains.folded, "max_error": all_domains.max_folded},
        }
        if self.source.has_outcomes:
            domains["top_kept"] = top("kept")
            domains["top_dropped"] = top("dropped")
        else:
            domains["top"] = top("all")
            why = "the input records no outcome per pair (no status or reason column)"
            not_computed.append({"what": "Kept vs dropped, download failures", "why": why})
            return domains, {"computed": False, "why": why}
        by_reason: Counter[str] = Counter()
        for (reason, _), count in self.errors.items():
            by_reason[reason] += count
        failures = {
            "computed": True,
            "total": sum(by_reason.values()),
            "by_reason": [{"reason": r, "count": n} for r, n in by_reason.most_common()],
            "by_error": [{"reason": r, "error": m or "(no message)", "count": n}
                         for (r, m), n in self.errors.most_common(TOP_N * 2)],
            "by_domain": top("failed"),
        }
        return domains, failures
