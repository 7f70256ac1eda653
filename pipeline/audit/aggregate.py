"""The statistics of a corpus, streamed: each batch goes through pyarrow compute into histograms and counters.

Everything is counted per outcome label (``kept`` or the reason code; ``all`` for input without
outcomes), so that the report can show kept against dropped and drill into one reason, one domain,
one language or one score range without a second pass. Samples are bottom-k by the CRC32 of the key
(``samples.BottomK``): the same pairs on every audit of the same corpus, whatever the order of files and batches.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from altsieve.core import reasons
from altsieve.pipeline.audit.domains import DOMAIN_CAP, DomainMapper, TopCounter
from altsieve.pipeline.audit.estimates import ClipEmbeddingSample, KeptHashes
from altsieve.pipeline.audit.histograms import HIST_SPECS, Histogram
from altsieve.pipeline.audit.samples import BottomK, key_hashes
from altsieve.pipeline.audit.sources import Batch, Source

TOP_N = 20
DRILL_DOMAINS = 200  # domains whose outcome breakdown the report carries for drilling down
MAX_SAMPLES = 24  # gathered per reason; the page shows the first ones and the rest on demand
PURITY_SAMPLE = 120  # kept captions per language for the purity estimate (langdetect: ~5-15 ms a caption)
KEPT, DROPPED, ALL = "kept", "dropped", "all"
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
    def __init__(self, source: Source, max_samples: int = MAX_SAMPLES, keep_outcomes: bool = False) -> None:
        self.source = source
        self.rows = 0
        self.columns: set[str] = set()
        self.reason_counts: Counter[str] = Counter()
        self.histograms = {spec.name: Histogram(spec) for spec in HIST_SPECS}
        self.languages: Counter[tuple[str, str]] = Counter()  # (language, label)
        self.domain_mapper = DomainMapper()
        self.domains = {group: TopCounter() for group in (KEPT, DROPPED, ALL, "failed")}
        self.domain_labels = TopCounter(2 * DOMAIN_CAP)  # (domain, label), for drilling down by domain
        self.errors: Counter[tuple[str, str]] = Counter()
        self.duplicate_keys: list[pa.Array] = []
        self.hash_prefixes: list[pa.Array] = []
        self.samples = BottomK(max_samples)
        self.purity = BottomK(PURITY_SAMPLE)  # label: a language of kept pairs
        self.kept_hashes = KeptHashes()
        self.clip = ClipEmbeddingSample()
        # For --compare: every row's key and label, as Arrow arrays (the only part that grows with the corpus).
        self.keep_outcomes = keep_outcomes
        self.outcomes: list[pa.Table] = []

    def _labels(self, table: pa.Table) -> tuple[list[str], np.ndarray]:
        """The outcome label of each row (``kept``, the reason code, or ``all``) as a dictionary and its codes."""
        if not self.source.has_outcomes:
            return [ALL], np.zeros(len(table), dtype=np.int64)
        encoded = pc.dictionary_encode(pc.fill_null(table["reason"], KEPT)).combine_chunks()
        return encoded.dictionary.to_pylist(), encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)

    def add(self, batch: Batch) -> None:
        table = batch.table
        if len(table) == 0:
            return
        self.rows += len(table)
        self.columns.update(table.column_names)
        labels, codes = self._labels(table)
        for code, count in enumerate(np.bincount(codes, minlength=len(labels)).tolist()):
            if count and self.source.has_outcomes:
                self.reason_counts[labels[code]] += count
        kept = codes == labels.index(KEPT) if KEPT in labels else np.zeros(len(table), dtype=bool)
        self._histograms(table, labels, codes)
        label_column = pa.array(labels, pa.string()).take(pa.array(codes))
        if "language" in table.column_names:
            language = pc.fill_null(table["language"], "(not tagged)")
            for row in _grouped(pa.table({"language": language, "label": label_column}), ["language", "label"]):
                self.languages[(row["language"], row["label"])] += row["count_all"]
        domain = None
        if "url" in table.column_names:
            domain = self.domain_mapper.domains(table["url"])
            self._domains(table, domain, label_column)
        if "duplicate_of" in table.column_names:
            duplicates = table["duplicate_of"].drop_null()
            if len(duplicates):
                self.duplicate_keys.append(duplicates.combine_chunks())
        elif "sha256" in table.column_names:
            hashes = table["sha256"].drop_null()  # img2dataset hashes successful downloads only
            if len(hashes):  # 16 hex digits (64 bits) tell SHA-256 digests apart at any corpus size
                self.hash_prefixes.append(pc.utf8_slice_codeunits(hashes, 0, 16).combine_chunks())
        id_column = "key" if "key" in table.column_names else "url"
        if id_column in table.column_names:
            keys = table[id_column].to_pylist()
            hashes = key_hashes(keys)
            self._sample(batch, labels, codes, hashes, keys, domain)
            self._kept_extras(batch, kept, hashes, keys)
            if self.keep_outcomes:
                columns = {"id": table[id_column], "label": label_column}
                if "url" in table.column_names and id_column != "url":
                    columns["url"] = table["url"]
                self.outcomes.append(pa.table(columns))

    def _histograms(self, table: pa.Table, labels: list[str], codes: np.ndarray) -> None:
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
        if "language_score" in names:
            values["language_score"] = lambda: _floats(table["language_score"])
        for name, compute in values.items():
            self.histograms[name].add(compute(), codes, labels)

    def _domains(self, table: pa.Table, domain: pa.Array, label: pa.Array) -> None:
        counts: dict[str, Counter[str]] = {KEPT: Counter(), DROPPED: Counter(), ALL: Counter(), "failed": Counter()}
        by_label: dict[tuple[str, str], int] = {}
        for row in _grouped(pa.table({"domain": domain, "label": label}), ["domain", "label"]):
            name, code, count = row["domain"], row["label"], row["count_all"]
            by_label[(name, code)] = count
            counts[ALL][name] += count
            if self.source.has_outcomes:
                counts[KEPT if code == KEPT else DROPPED][name] += count
                if code.startswith("download_"):
                    counts["failed"][name] += count
        for group, found in counts.items():
            if found:
                self.domains[group].update(found)
        self.domain_labels.update(by_label)
        if not self.source.has_outcomes:
            return
        failed = pc.starts_with(pc.fill_null(table["reason"], ""), "download_")
        if not pc.any(failed).as_py():
            return
        message = table["error_message"] if "error_message" in table.column_names else table["reason"]
        failures = pa.table({
            "reason": pc.filter(table["reason"], failed),
            "message": _normalize_error(pc.fill_null(pc.filter(message, failed), "")),
        })
        for row in _grouped(failures, ["reason", "message"]):
            self.errors[(row["reason"], row["message"])] += row["count_all"]

    def _sample(self, batch: Batch, labels: list[str], codes: np.ndarray, hashes: np.ndarray, keys: list[Any],
                domain: pa.Array | None) -> None:
        table = batch.table
        fields = [n for n in SAMPLE_FIELDS if n in table.column_names]
        has_image = table["has_image"]

        def make(row: int) -> dict[str, Any]:
            record = {name: table[name][row].as_py() for name in fields}
            if domain is not None:
                record["domain"] = domain[row].as_py()
            reason = record.get("reason")
            record["image_from"] = None
            if reasons.may_show_image(reason):  # never a safety-list match's image
                if has_image[row].as_py():
                    record["image_from"] = batch.image_tar
                elif reason is not None and batch.thumbs_tar is not None and _may_have_thumbnail(reason):
                    record["image_from"] = batch.thumbs_tar
            return record

        for code, label in enumerate(labels):
            self.samples.add(label, np.flatnonzero(codes == code), hashes, keys, make)

    def _kept_extras(self, batch: Batch, kept: np.ndarray, hashes: np.ndarray, keys: list[Any]) -> None:
        """What the estimates of the remaining noise need from the kept pairs."""
        if not kept.any():
            return
        table = batch.table
        rows = np.flatnonzero(kept)
        if "phash" in table.column_names:
            chosen = table.take(pa.array(rows)).select(["key", "phash"]).filter(
                pc.is_valid(table["phash"].take(pa.array(rows))))
            self.kept_hashes.add(chosen["key"], chosen["phash"])
        if "language" in table.column_names and "caption" in table.column_names:
            language = table["language"]
            caption = table["caption"]
            encoded = pc.dictionary_encode(language.take(pa.array(rows))).combine_chunks()
            names = encoded.dictionary.to_pylist()
            indices = encoded.indices.to_numpy(zero_copy_only=False)
            for code, name in enumerate(names):
                members = rows[indices == code]
                self.purity.add(name, members, hashes, keys,
                                lambda row: {"key": str(keys[row]), "caption": caption[row].as_py()})
        if batch.embeddings is not None:
            languages = table["language"].take(pa.array(rows)).to_pylist() if "language" in table.column_names \
                else [None] * rows.size
            self.clip.add(batch.embeddings, [str(keys[r]) for r in rows.tolist()], languages)

    # -----------------------------------------------------------------------------------------
    # Results

    def result(self, thresholds: dict[str, list[float]]) -> dict[str, Any]:
        not_computed: list[dict[str, str]] = []
        histograms: dict[str, Any] = {}
        for name, histogram in self.histograms.items():
            if histogram.counts:
                histograms[name] = {**histogram.to_json(thresholds.get(name, [])), "computed": True}
            else:
                histograms[name] = {"title": histogram.spec.title, "computed": False, "why": self._why_not(name)}
                if name != "language_score" or "language" in self.columns:
                    not_computed.append({"what": histogram.spec.title, "why": histograms[name]["why"]})
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
        if name == "language_score":
            return "no language_score values: language identification has not been run on this corpus"
        return "no caption column"

    def _languages(self, not_computed: list[dict[str, str]]) -> dict[str, Any]:
        if "language" not in self.columns:
            why = "no language column: language identification has not been run on this corpus"
            not_computed.append({"what": "Language distribution", "why": why})
            return {"computed": False, "why": why}
        totals: Counter[str] = Counter()
        by_language: dict[str, dict[str, int]] = {}
        for (language, label), count in self.languages.items():
            totals[language] += count
            by_language.setdefault(language, {})[label] = count
        rows = []
        for language, total in totals.most_common():
            labels = by_language[language]
            row: dict[str, Any] = {"language": language, "total": total, "labels": dict(sorted(labels.items()))}
            if self.source.has_outcomes:
                row[KEPT] = labels.get(KEPT, 0)
                row[DROPPED] = total - row[KEPT]
            else:
                row[ALL] = total
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

        def top(group: str, n: int = TOP_N) -> list[dict[str, Any]]:
            counter = self.domains[group]
            return [{"domain": d, "count": c, "total": self.domains[ALL].counts.get(d, c)}
                    for d, c in counter.counts.most_common(n)]

        all_domains = self.domains[ALL]
        # The outcome breakdown of the largest domains, for the page's drill-down.
        drill = {d: {} for d, _ in all_domains.counts.most_common(DRILL_DOMAINS)}
        for (name, label), count in self.domain_labels.counts.items():
            if name in drill:
                drill[name][label] = count
        domains: dict[str, Any] = {
            "computed": True,
            "method": "registered domain (Public Suffix List, tldextract's bundled snapshot, private suffixes "
                      "included); a host the list cannot place (IP address, localhost) is its own domain",
            "distinct": len(all_domains.counts) + (1 if all_domains.folded else 0),
            "folded_rare_domains": {"pairs": all_domains.folded, "max_error": all_domains.max_folded},
            "by_domain": [{"domain": d, "total": sum(labels.values()), "labels": dict(sorted(labels.items()))}
                          for d, labels in drill.items()],
        }
        if self.source.has_outcomes:
            domains["top_kept"] = top(KEPT)
            domains["top_dropped"] = top(DROPPED)
        else:
            domains["top"] = top(ALL)
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


def _may_have_thumbnail(reason: str) -> bool:
    """Ingest thumbnails the pairs dropped once their image was fetched: image rules and CLIP rules."""
    return reasons.stage_of(reason).name in (reasons.IMAGE, reasons.CLIP)
