"""``altsieve audit A --compare B --report DIR``: two runs (or two recipes on one input) side by side.

Both corpora are audited in full (``DIR/a/`` and ``DIR/b/``, each its own report), then compared in
``DIR/report.html`` and ``DIR/compare.json``: the two funnels stage by stage, every reason's count in
each and the difference, the overlap of what each kept (pairs are matched on their key when both
corpora come from the same tool, else on the URL), every transition (kept in A and dropped in B for
reason R, ...) counted, and galleries of the pairs one kept and the other dropped, by the other's
reason, with the image from the run that kept it.

Memory: each corpus's keys and outcomes are held as Arrow arrays for the join (about 30 bytes a pair).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from altsieve.core import fsutil, layout, reasons
from altsieve.pipeline.audit.aggregate import KEPT
from altsieve.pipeline.audit.command import Audited, build, write_report
from altsieve.pipeline.audit.gallery import ImageIds
from altsieve.pipeline.audit.samples import key_hashes
from altsieve.pipeline.audit.sources import KIND_ALTSIEVE, Source

MISSING = "(not in this corpus)"
DETAIL_FIELDS = ["key", "url", "caption", "reason", "error_message", "original_width", "original_height",
                 "language", "language_score", "clip_score", "duplicate_of"]


def _name(audited: Audited, side: str) -> str:
    recipe = audited.data["run"].get("recipe")
    return f"{side}: {audited.data['path']}" + (f" ({recipe})" if recipe else "")


def _side(audited: Audited, side: str) -> dict[str, Any]:
    data = audited.data
    return {"path": data["path"], "name": _name(audited, side), "kind": data["kind"],
            "input_pairs": data["input_pairs"], "kept": data["kept"], "recipe": data["run"].get("recipe")}


def _outcomes(audited: Audited, match_on: str) -> pa.Table:
    table = pa.concat_tables(audited.aggregator.outcomes) if audited.aggregator.outcomes else \
        pa.table({"id": pa.array([], pa.string()), "label": pa.array([], pa.string())})
    if match_on == "url" and "url" in table.column_names:
        table = table.select(["url", "label"]).rename_columns(["id", "label"])
    table = table.select(["id", "label"])
    return table.set_column(0, "id", pc.cast(table["id"], pa.string()))


def _funnel_rows(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Stage by stage, in the funnel's order: what remained in each corpus."""
    def by_stage(funnel: dict[str, Any]) -> dict[str, int]:
        return {stage["stage"]: stage["remaining"] for stage in funnel["stages"]}

    order = ["input pairs", *(stage.label for stage in (*reasons.FUNNEL, reasons.OTHER_STAGE)), "kept"]
    left, right = by_stage(a), by_stage(b)
    rows = []
    previous = (a["input_pairs"], b["input_pairs"])
    for stage in order:
        if stage not in left and stage not in right:
            continue
        # A stage a corpus does not show dropped nothing there: it keeps what the stage before left.
        va, vb = left.get(stage, previous[0]), right.get(stage, previous[1])
        rows.append({"stage": stage, "a": va, "b": vb, "delta": vb - va})
        previous = (va, vb)
    return rows


def _reason_rows(a: dict[str, int], b: dict[str, int], inputs: int) -> list[dict[str, Any]]:
    rows = []
    for code in sorted(set(a) | set(b), key=lambda c: (-abs(b.get(c, 0) - a.get(c, 0)), c)):
        va, vb = a.get(code, 0), b.get(code, 0)
        rows.append({"reason": code, "stage": reasons.stage_of(code).label, "a": va, "b": vb, "delta": vb - va,
                     "delta_percent_of_input": round(100.0 * (vb - va) / inputs, 3) if inputs else 0.0})
    return rows


def _read_rows(source: Source, ids: list[str], match_on: str) -> dict[str, dict[str, Any]]:
    """The rows of the given pairs (key or URL), with the tar that holds each one's image if it has one."""
    if not ids:
        return {}
    files: dict[str, list[str]] = {}
    if source.kind == KIND_ALTSIEVE and match_on == "key":
        for key in ids:
            tar = source.shard_of_key(key)
            if tar is not None:
                files.setdefault(tar.removesuffix(".tar") + ".parquet", []).append(key)
    else:
        files = dict.fromkeys(source.parquet_files, ids)
    column = "key" if match_on == "key" else source.url_col
    found: dict[str, dict[str, Any]] = {}
    for parquet, wanted in files.items():
        with fsspec.open(parquet, "rb") as handle:
            present = set(pq.read_schema(handle).names)
            if column not in present:
                continue
            handle.seek(0)
            table = pq.read_table(handle, columns=[c for c in {*DETAIL_FIELDS, column} if c in present],
                                  filters=[(column, "in", wanted)])
        tar = parquet.removesuffix(".parquet") + ".tar"
        for row in table.to_pylist():
            row["_tar"] = tar if (source.kind == KIND_ALTSIEVE and row.get("reason") is None) or \
                source.tars.get(parquet) else None
            found[str(row[column])] = row
    if source.kind == KIND_ALTSIEVE:  # the select pass's decision replaces the ingest outcome
        _apply_decisions(source, found.values())
    return found


def _apply_decisions(source: Source, rows: Iterable[dict[str, Any]]) -> None:
    """Each row updated with its select-pass decision: one read of each partition's decision file."""
    by_partition: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        tar = source.shard_of_key(str(row.get("key")))
        if tar is not None:
            by_partition.setdefault(tar.rsplit("/", 1)[-1].removesuffix(".tar"), []).append(row)
    for partition, partition_rows in by_partition.items():
        path = layout.decision_path(source.root, partition)
        if not fsutil.exists(path):
            continue
        with fsspec.open(path, "rb") as handle:
            table = pq.read_table(handle, filters=[("key", "in", [row["key"] for row in partition_rows])])
        decisions: dict[str, dict[str, Any]] = {}
        for decision in table.to_pylist():
            decisions.setdefault(decision["key"], decision)
        for row in partition_rows:
            decision = decisions.get(row["key"])
            if decision:
                row.update({k: v for k, v in decision.items() if k != "key"})


def _kept_by_one(joined: pa.Table, keeper: str, other: str, per_reason: int) -> dict[str, list[str]]:
    """Ids kept in ``keeper`` and dropped in ``other``, by the other's reason: the smallest key hashes first."""
    mask = pc.and_(pc.equal(joined[f"label_{keeper}"], KEPT),
                   pc.and_(pc.is_valid(joined[f"label_{other}"]), pc.not_equal(joined[f"label_{other}"], KEPT)))
    chosen = joined.filter(mask)
    out: dict[str, list[str]] = {}
    if len(chosen) == 0:
        return out
    ids = chosen["id"].to_pylist()
    labels = chosen[f"label_{other}"].to_pylist()
    hashes = key_hashes(ids)
    for label in sorted(set(labels)):
        rows = np.flatnonzero(np.array(labels, dtype=object) == label)
        rows = rows[np.lexsort((np.array(ids, dtype=object)[rows].astype(str), hashes[rows]))][:per_reason]
        out[label] = [ids[r] for r in rows]
    return out


def compare_data(a: Audited, b: Audited, per_reason: int, images: ImageIds) -> dict[str, Any]:
    match_on = "key" if a.source.kind == b.source.kind and "key" in a.aggregator.columns \
        and "key" in b.aggregator.columns else "url"
    left = _outcomes(a, match_on).rename_columns(["id", "label_a"])
    right = _outcomes(b, match_on).rename_columns(["id", "label_b"])
    joined = left.join(right, keys="id", join_type="full outer")
    label_a = pc.fill_null(joined["label_a"], MISSING)
    label_b = pc.fill_null(joined["label_b"], MISSING)
    transitions = pa.table({"a": label_a, "b": label_b}).group_by(["a", "b"]).aggregate([([], "count_all")])
    transitions = sorted(({"a": r["a"], "b": r["b"], "count": r["count_all"]} for r in transitions.to_pylist()),
                         key=lambda r: (-r["count"], r["a"], r["b"]))
    counts = {(r["a"], r["b"]): r["count"] for r in transitions}
    kept_a = sum(n for (x, _), n in counts.items() if x == KEPT)
    kept_b = sum(n for (_, y), n in counts.items() if y == KEPT)
    both = counts.get((KEPT, KEPT), 0)
    union = kept_a + kept_b - both
    overlap = {
        "match_on": match_on,
        "kept_a": kept_a, "kept_b": kept_b, "kept_both": both,
        "kept_only_a": kept_a - both, "kept_only_b": kept_b - both,
        "jaccard": round(both / union, 5) if union else 1.0,
        "only_in_a": sum(n for (_, y), n in counts.items() if y == MISSING),
        "only_in_b": sum(n for (x, _), n in counts.items() if x == MISSING),
    }
    galleries = []
    for keeper, other, keeper_audit, other_audit in (("a", "b", a, b), ("b", "a", b, a)):
        sampled = _kept_by_one(joined, keeper, other, per_reason)
        wanted = [i for ids in sampled.values() for i in ids]
        keeper_rows = _read_rows(keeper_audit.source, wanted, match_on)
        other_rows = _read_rows(other_audit.source, wanted, match_on)
        groups = []
        for reason, ids in sorted(sampled.items(), key=lambda item: -counts.get(
                (KEPT, item[0]) if keeper == "a" else (item[0], KEPT), 0)):
            samples = []
            for ident in ids:
                row = dict(keeper_rows.get(ident, {"key": ident}))
                theirs = other_rows.get(ident, {})
                row["_image"] = images.want(row.pop("_tar", None), row.get("key"))
                row["reason"] = reason
                row["other_name"] = other.upper()
                for name in ("clip_score", "duplicate_of", "error_message", "language", "language_score"):
                    if theirs.get(name) is not None:
                        row[f"other_{name}"] = theirs[name]
                samples.append(row)
            count = counts.get((KEPT, reason) if keeper == "a" else (reason, KEPT), 0)
            groups.append({"reason": reason, "count": count, "shown": max(1, per_reason // 2), "samples": samples})
        galleries.append({"kept_by": keeper, "dropped_by": other, "groups": groups})
    return {
        "a": _side(a, "A"),
        "b": _side(b, "B"),
        "funnel": _funnel_rows(a.data["funnel"], b.data["funnel"]),
        "reasons": _reason_rows(a.data["reasons"], b.data["reasons"], a.data["input_pairs"]),
        "overlap": overlap,
        "transitions": transitions,
        "galleries": galleries,
    }


def fill_compare_images(data: dict[str, Any], images: ImageIds) -> None:
    for gallery in data["galleries"]:
        for group in gallery["groups"]:
            for row in group["samples"]:
                row["image"] = images.id_of(row.pop("_image"))
                row["thumbnail"] = row["image"] is not None
                if not row["thumbnail"]:
                    row["no_image_why"] = "image not found in the run that kept it"


def compare(path_a: str, path_b: str, report_dir: str, samples_per_reason: int = 6, url_col: str = "url",
            caption_col: str = "caption") -> dict[str, Any]:
    """Audit both, write their reports under ``a/`` and ``b/`` and the comparison beside; return its JSON."""
    started = time.time()
    audits = [build(path, samples_per_reason, url_col, caption_col, keep_outcomes=True) for path in (path_a, path_b)]
    for side, audited in zip(("a", "b"), audits, strict=True):
        write_report(audited, fsutil.join(report_dir, side), started)
    images = ImageIds()
    data = compare_data(*audits, max(samples_per_reason, 1) * 2, images)
    images.resolve()
    fill_compare_images(data, images)
    data["reports"] = {"a": "a/report.html", "b": "b/report.html"}
    from altsieve.pipeline.audit.html import render_compare

    html = render_compare(data, images.by_id(), [a.data for a in audits])
    data["duration_s"] = round(time.time() - started, 2)
    fsutil.write_json(fsutil.join(report_dir, "compare.json"), data)
    fsutil.write_text(fsutil.join(report_dir, "report.html"), html)
    return data


def compare_cli(path_a: str, path_b: str, report_dir: str, samples: int, url_col: str, caption_col: str) -> int:
    data = compare(path_a, path_b, report_dir, samples, url_col, caption_col)
    overlap = data["overlap"]
    print(f"compared {data['a']['name']} ({data['a']['input_pairs']:,} pairs, {data['a']['kept'] or 0:,} kept) with "
          f"{data['b']['name']} ({data['b']['input_pairs']:,} pairs, {data['b']['kept'] or 0:,} kept) "
          f"in {data['duration_s']} s")
    print(f"  kept by both {overlap['kept_both']:,}, only A {overlap['kept_only_a']:,}, only B "
          f"{overlap['kept_only_b']:,} (Jaccard {overlap['jaccard']:.3f}, matched on {overlap['match_on']})")
    print(f"  {fsutil.join(report_dir, 'report.html')}\n  {fsutil.join(report_dir, 'compare.json')}")
    return 0
