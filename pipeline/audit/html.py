"""The audit as one self-contained, interactive HTML file: plots, thumbnails, script and style all inline.

Everything is drawn from the audit JSON, so the page and ``audit.json`` show the same numbers. The
page loads nothing from anywhere (a Content-Security-Policy allowing only inline data says so to the
browser). Its script (``report.js``, inlined) sorts, filters and searches every table, drills down by
domain, language and score range from the counts embedded as JSON, pages through more samples per
reason, filters the gallery, and marks ``<body data-images-loaded>`` once every image decoded (the
rendering test reads it from headless Chromium). The style (``report.css``) names a CJK-capable font
stack, and each caption carries its language as ``lang`` so that Chinese and Japanese glyphs differ.
"""

from __future__ import annotations

import base64
import html
import json
from importlib import resources
from typing import Any

from altsieve.core import reasons
from altsieve.pipeline.audit.histograms import grouped
from altsieve.pipeline.audit.plots import plot_bars, plot_clusters, plot_funnel, plot_histogram, plot_published
from altsieve.pipeline.audit.published import funnel_shares

SECTIONS = [
    ("summary", "Summary"),
    ("funnel", "Funnel"),
    ("published", "Published funnels"),
    ("noise", "Remaining noise"),
    ("histograms", "Histograms"),
    ("explore", "Drill down"),
    ("failures", "Download failures"),
    ("domains", "Domains"),
    ("gallery", "Pairs by reason"),
    ("run", "Recipe and versions"),
    ("not-computed", "Not computed"),
]
TRANSITIONS_SHOWN = 60  # the comparison's table of (outcome in A, outcome in B) shows the largest ones
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
Cell = str | tuple[str, Any]  # html, or (html, sort value)


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _n(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"
    return _e(value)


def pairs(count: int) -> str:
    return f"{count:,} pair" + ("" if count == 1 else "s")


def _pct(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f} %"


def _img(uri: str, alt: str, css: str = "plot") -> str:
    return f'<img class="{css}" src="{uri}" alt="{_e(alt)}">'


def asset(name: str) -> str:
    return resources.files("altsieve.pipeline.audit").joinpath(name).read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Pieces of the page


def table(headers: list[tuple[str, str]], rows: list[list[Cell] | dict[str, Any]], css: str = "",
          table_id: str = "") -> str:
    """An interactive table: ``headers`` are (title, kind) with kind ``text``, ``num`` (sorts by number) or
    ``cat`` (gets a filter menu); a row is a list of cells or ``{"cells": [...], "child": True}`` for a row that
    belongs to the row above it (it sorts and filters with it)."""
    head = "".join(f'<th data-kind="{kind}">{title}</th>' for title, kind in headers)
    body = []
    for row in rows:
        cells, child = (row["cells"], row.get("child")) if isinstance(row, dict) else (row, False)
        tds = []
        for cell in cells:
            if isinstance(cell, tuple):
                tds.append(f'<td data-v="{_e(cell[1])}">{cell[0]}</td>')
            else:
                tds.append(f"<td>{cell}</td>")
        row_class = ' class="child"' if child else ""
        body.append(f"<tr{row_class}>{''.join(tds)}</tr>")
    ident = f' id="{table_id}"' if table_id else ""
    return f'<table class="data {css}"{ident}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _bar_cell(count: int, total: int, color: str) -> Cell:
    width = 100.0 * count / total if total else 0.0
    return (f'<div class="cellbar"><span style="width:{width:.1f}%;background:{color}"></span>'
            f"<b>{count:,}</b></div>", count)


def _not_computed(what: str, why: str) -> str:
    return f'<div class="nc"><b>{_e(what)}: not computed.</b> {_e(why)}</div>'


def placeholder(reason: str, why: str) -> str:
    """An inline SVG standing for a pair that has no image: its reason and why there is none."""

    def lines(text: str, width: int, most: int) -> list[str]:
        words, out = text.split(), [""]
        for word in words:
            if len(out[-1]) + len(word) + 1 > width and out[-1]:
                out.append("")
            out[-1] = f"{out[-1]} {word}".strip()
        return out[:most]

    top = "".join(f'<tspan x="64" dy="{0 if i == 0 else 14}">{_e(line)}</tspan>'
                  for i, line in enumerate([reason[i:i + 18] for i in range(0, min(len(reason), 54), 18)]))
    bottom = "".join(f'<tspan x="64" dy="{0 if i == 0 else 11}">{_e(line)}</tspan>'
                     for i, line in enumerate(lines(why, 24, 4)))
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" width="128" height="128" viewBox="0 0 128 128">'
        '<rect width="128" height="128" fill="#eceff1" stroke="#b0bec5" stroke-dasharray="4 3"/>'
        '<g font-family="sans-serif" text-anchor="middle">'
        f'<text x="64" y="40" font-size="11" fill="#546e7a">{top}</text>'
        f'<text x="64" y="84" font-size="8.5" fill="#78909c">{bottom}</text></g>'
        "</svg>"
    )
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def section_summary(data: dict[str, Any]) -> str:
    funnel = data["funnel"]
    cards = [("input pairs", _n(data["input_pairs"]))]
    if funnel["kept"] is not None:
        cards.append(("kept", f"{funnel['kept']:,} <small>({funnel['kept_percent']:.1f} %)</small>"))
        cards.append(("dropped", _n(data["input_pairs"] - funnel["kept"])))
    if data["reasons"]:
        reason, count = max(data["reasons"].items(), key=lambda item: item[1])
        cards.append(("top drop reason", f"{_e(reason)} <small>({count:,})</small>"))
    clusters = data["duplicate_clusters"]
    if clusters.get("computed"):
        cards.append(("duplicate clusters", _n(clusters["clusters"])))
    languages = data["languages"]
    if languages.get("computed"):
        cards.append(("languages", _n(languages["distinct"])))
    clip = data["noise_estimates"]["clip"]
    if clip.get("computed"):
        row = clip["by_group"][0]
        cards.append(("mismatched captions left (est.)",
                      f"{100 * row['share']:.1f} % <small>({100 * row['interval'][0]:.1f}–"
                      f"{100 * row['interval'][1]:.1f} %)</small>"))
    body = "".join(f'<div class="card"><div class="k">{k}</div><div class="v">{v}</div></div>' for k, v in cards)
    notes = "".join(f"<li>{_e(note)}</li>" for note in data["notes"])
    return (f'<section id="summary"><h2>Summary</h2><div class="cards">{body}</div>'
            f"<p>Input: <code>{_e(data['path'])}</code> ({_e(data['kind'])} output). "
            f"Statistics computed in {data['statistics_s']} s.</p><ul class='notes'>{notes}</ul></section>")


def funnel_table(funnel: dict[str, Any], table_id: str = "funnel-table") -> str:
    rows: list[list[Cell] | dict[str, Any]] = []
    for stage in funnel["stages"]:
        rows.append([f"<b>{_e(stage['stage'])}</b>", (_n(stage["remaining"]), stage["remaining"]),
                     (f"{stage['percent_of_input']:.2f} %", stage["percent_of_input"]),
                     (_n(stage["dropped"]) if stage["dropped"] else "", stage["dropped"]),
                     (f"{stage['drop_percent_of_stage_input']:.2f} %", stage["drop_percent_of_stage_input"])
                     if "drop_percent_of_stage_input" in stage else ("", 0)])
        for reason in stage["reasons"]:
            rows.append({"child": True, "cells": [
                f'<span class="sub">{_e(reason["reason"])}</span>', ("", -1), ("", -1),
                (f'<span class="sub">{reason["count"]:,} ({reason["percent_of_input"]:.2f} % of input)</span>',
                 reason["count"]),
                (f'<span class="sub">{reason["percent_of_stage_input"]:.2f} %</span>',
                 reason["percent_of_stage_input"])]})
    return table([("stage / rule", "text"), ("remaining", "num"), ("% of input", "num"), ("dropped", "num"),
                  ("% of stage input", "num")], rows, "funnel", table_id)


def section_funnel(data: dict[str, Any]) -> str:
    funnel = data["funnel"]
    total = data["input_pairs"] or 1
    rules = [[_e(reason), (_e(data["stages"].get(reason, "")), data["stages"].get(reason, "")),
              (_n(count), count), (f"{100 * count / total:.2f} %", count)]
             for reason, count in sorted(data["reasons"].items(), key=lambda item: -item[1])]
    rules_table = table([("rule (reason code)", "text"), ("stage", "cat"), ("pairs", "num"), ("% of input", "num")],
                        rules, "", "reasons-table")
    return (f'<section id="funnel"><h2>Funnel</h2><div class="row"><img class="plot" src="{plot_funnel(funnel)}" '
            f'alt="funnel"><div>{funnel_table(funnel)}</div></div>'
            f"<h3>Every rule</h3><div>{rules_table}</div></section>")


def section_published(data: dict[str, Any]) -> str:
    rows = []
    for row in data["published_comparison"]:
        kept_percent = row.get("kept_percent")
        kept_text = f"{kept_percent:.1f} %" if kept_percent is not None else "—"
        if row.get("kept_percent_as_published"):
            kept_text += f' <span class="sub">({_e(row["kept_percent_as_published"])})</span>'
        fetched = row.get("fetched_percent_of_attempts")
        rows.append([f"<b>{_e(row['corpus'])}</b>", (_n(row["input"]), row["input"] or 0),
                     (_n(row.get("download_attempts")), row.get("download_attempts") or 0),
                     (_n(row.get("fetched")), row.get("fetched") or 0),
                     (_pct(fetched), fetched if fetched is not None else -1),
                     (_n(row.get("kept")), row.get("kept") or 0),
                     (kept_text, kept_percent if kept_percent is not None else -1),
                     f'<span class="sub">{_e("; ".join(row.get("notes", [])))}</span>'])
    published = table([("corpus", "text"), ("input pairs", "num"), ("download attempts", "num"), ("fetched", "num"),
                       ("fetched / attempts", "num"), ("kept", "num"), ("kept / input", "num"), ("notes", "text")],
                      rows, "wide", "published-table")
    sources = "".join(f"<li><b>{_e(p['corpus'])}</b>: {_e(p['source'])}</li>" for p in data["published_funnels"])
    plot = plot_published(funnel_shares(data["funnel"], data["published_funnels"]))
    plot_html = _img(plot, "every corpus's funnel as shares of its input") if plot else ""
    return (f'<section id="published"><h2>Beside the published funnels</h2>{published}<div class="row">{plot_html}'
            f'<div><p class="sub">Each corpus with the stages its source reports, as shares of its first stage; '
            f"published figures are as the sources word them, never interpolated.</p>"
            f"<ul class='sources'>{sources}</ul></div></div></section>")


def _interval(values: list[float]) -> str:
    return f"{100 * values[0]:.1f}–{100 * values[1]:.1f} %"


def section_noise(data: dict[str, Any]) -> str:
    estimates = data["noise_estimates"]
    parts = []
    clip = estimates["clip"]
    if clip.get("computed"):
        rows = [[_e(r["group"]), (_n(r["sample"]), r["sample"]), (_n(r["kept"]), r["kept"]),
                 (f"{r['mismatched_p05']:.3f} / {r['mismatched_median']:.3f} / {r['mismatched_p95']:.3f}",
                  r["mismatched_median"]),
                 (f"{r['kept_p05']:.3f} / {r['kept_median']:.3f}", r["kept_median"]),
                 (f"{100 * r['share_below_mismatched_median']:.2f} %", r["share_below_mismatched_median"]),
                 (f"<b>{100 * r['share']:.2f} %</b>", r["share"]), (_interval(r["interval"]), r["interval"][1]),
                 (_n(r["estimated_pairs"]), r["estimated_pairs"])] for r in clip["by_group"]]
        parts.append("<h3>Mismatched captions left: kept pairs CLIP cannot tell from mismatched ones</h3>" + table(
            [("language", "text"), ("sampled", "num"), ("kept", "num"), ("mismatched p05 / median / p95", "num"),
             ("kept p05 / median", "num"), ("kept ≤ mismatched median", "num"),
             ("estimated mismatched share", "num"), ("95 % interval", "num"), ("estimated pairs", "num")],
            rows, "", "noise-clip") + f'<p class="method">{_e(clip["method"])}</p>')
    else:
        parts.append(_not_computed("Mismatched captions left", clip["why"]))
    near = estimates["near_duplicates"]
    if near.get("computed"):
        rows = []
        for r in near["by_distance"]:
            mark = " (this run's)" if r["distance"] == near["run_distance"] else (
                " (looser)" if r["distance"] == near["loose_distance"] else "")
            rows.append([(f"{r['distance']}{mark}", r["distance"]),
                         (f"{100 * r['share_near']:.2f} %", r["share_near"]),
                         (_interval(r["share_near_interval"]), r["share_near_interval"][1]),
                         (f"<b>{100 * r['share_dropped']:.2f} %</b>", r["share_dropped"]),
                         (_interval(r["share_dropped_interval"]), r["share_dropped_interval"][1]),
                         (_n(r["estimated_dropped_pairs"]), r["estimated_dropped_pairs"])])
        parts.append(f"<h3>Near duplicates left among the kept pairs (pHash; this run dropped within "
                     f"{_e(near['run_distance'] if near['run_distance'] is not None else 'no distance')}, looser: "
                     f"{near['loose_distance']})</h3>" + table(
                         [("Hamming distance d", "num"), ("kept pairs with another within d", "num"),
                          ("95 % interval", "num"), ("would be dropped at d", "num"), ("95 % interval", "num"),
                          ("estimated pairs", "num")], rows, "", "noise-phash")
                     + f'<p class="method">{_e(near["method"])}</p>')
    else:
        parts.append(_not_computed("Near duplicates at a looser pHash distance", near["why"]))
    purity = estimates["language_purity"]
    if purity.get("computed"):
        rows = [[_e(r["language"]), (_n(r["sample"]), r["sample"]), (f"<b>{100 * r['share']:.1f} %</b>", r["share"]),
                 (_interval(r["interval"]), r["interval"][0]),
                 _e(", ".join(f"{k} {v}" for k, v in r["other_labels"].items()))] for r in purity["by_language"]]
        parts.append(f"<h3>Language purity of the kept pairs (second opinion: {_e(purity['second_identifier'])})</h3>"
                     + table([("language", "text"), ("sampled", "num"), ("labelled the same", "num"),
                              ("95 % interval", "num"), ("labelled otherwise as", "text")], rows, "", "noise-purity")
                     + f'<p class="method">{_e(purity["method"])}</p>')
    else:
        parts.append(_not_computed("Language purity", purity["why"]))
    return ('<section id="noise"><h2>Remaining noise in what was kept</h2><p class="sub">Estimates, each from a '
            "sample, with a 95 % interval; how each is made is written under it.</p>" + "".join(parts) + "</section>")


def section_histograms(data: dict[str, Any]) -> str:
    items = []
    for name, hist in data["histograms"].items():
        if hist.get("computed"):
            groups = grouped(hist)
            summary = " · ".join(
                f"{group}: n {s['n']:,}, mean {s['mean']:,.3g}, min {s['min']:,.4g}, max {s['max']:,.4g}"
                for group, s in _group_summaries(hist).items())
            low, high = hist["edges"][0], hist["edges"][-1]
            tails = " · ".join(f"{g}: {p['underflow']:,} below {low:,.4g}, {p['overflow']:,} at or above {high:,.4g}"
                               for g, p in groups.items() if p["underflow"] or p["overflow"])
            items.append(f'<div class="h" id="hist-{name}">{_img(plot_histogram(hist, groups), hist["title"])}'
                         f'<div class="sub">{_e(summary)}</div>'
                         + (f'<div class="sub">overflow bins: {_e(tails)}</div>' if tails else "") + "</div>")
        else:
            items.append(f'<div class="h" id="hist-{name}">{_not_computed(hist["title"], hist["why"])}</div>')
    languages = data["languages"]
    if languages.get("computed"):
        top = languages["languages"][:15]
        groups = [g for g in ("kept", "dropped", "all") if any(g in row for row in top)]
        plot = plot_bars([row["language"] for row in top], {g: [row.get(g, 0) for row in top] for g in groups},
                         f"Languages (top {len(top)} of {languages['distinct']})", "pairs")
        items.append(f'<div class="h" id="hist-languages">{_img(plot, "languages")}</div>')
    else:
        items.append(f'<div class="h" id="hist-languages">{_not_computed("Language distribution", languages["why"])}'
                     "</div>")
    clusters = data["duplicate_clusters"]
    if clusters.get("computed") and clusters["sizes"]:
        items.append(f'<div class="h" id="hist-duplicates">{_img(plot_clusters(clusters["sizes"]), "clusters")}'
                     f'<div class="sub">{clusters["clusters"]:,} clusters, {clusters["redundant_pairs"]:,} redundant '
                     f'pairs, largest {clusters["largest"]:,}; by {_e(clusters["method"])}</div></div>')
    elif clusters.get("computed"):
        items.append(f'<div class="h" id="hist-duplicates"><div class="nc"><b>Duplicate clusters:</b> none found '
                     f'by {_e(clusters["method"])}.</div></div>')
    else:
        items.append(f'<div class="h" id="hist-duplicates">{_not_computed("Duplicate cluster sizes", clusters["why"])}'
                     "</div>")
    note = ("Bins chosen from the data: the central 99 % of the values (widened to the run's own thresholds); "
            "what lies outside is in the hatched bins at either end, labelled with its count. Solid orange: this "
            "run's thresholds (from its config); dashed grey: published ones.")
    return (f'<section id="histograms"><h2>Histograms</h2><p class="sub">{note}</p>'
            f'<div class="grid">{"".join(items)}</div></section>')


def _group_summaries(hist: dict[str, Any]) -> dict[str, dict[str, float]]:
    """n, mean, min, max of kept / dropped (or all) from the per-label summaries."""
    out: dict[str, list[float]] = {}
    for label, s in hist["summary"].items():
        group = label if label in ("kept", "all") else "dropped"
        n, total, low, high = out.get(group, [0, 0.0, float("inf"), float("-inf")])
        out[group] = [n + s["n"], total + s["mean"] * s["n"], min(low, s["min"]), max(high, s["max"])]
    return {g: {"n": int(n), "mean": total / n if n else 0.0, "min": low, "max": high}
            for g, (n, total, low, high) in out.items()}


def explore_data(data: dict[str, Any]) -> dict[str, Any]:
    """What the drill-down reads: every label's stage, and the outcome counts by domain, language and score bin."""
    stages = {label: (reasons.stage_of(label).label if label not in ("kept", "all") else label)
              for label in [*data["reasons"], "kept"]}
    out: dict[str, Any] = {"stages": stages, "domains": [], "languages": [], "scores": {}}
    if data["domains"].get("computed"):
        out["domains"] = data["domains"]["by_domain"]
    if data["languages"].get("computed"):
        out["languages"] = [{"language": r["language"], "total": r["total"], "labels": r["labels"]}
                            for r in data["languages"]["languages"]]
    for name in ("clip_score", "language_score"):
        hist = data["histograms"].get(name, {})
        if hist.get("computed"):
            out["scores"][name] = {"title": hist["title"], "edges": hist["edges"], "by_label": hist["by_label"]}
    return out


def section_explore(data: dict[str, Any]) -> str:
    dims = []
    explore = explore_data(data)
    if explore["domains"]:
        dims.append(("domain", f"domain (largest {len(explore['domains'])})"))
    if explore["languages"]:
        dims.append(("language", "language"))
    for name, score in explore["scores"].items():
        dims.append((name, f"{score['title']} range"))
    if not dims:
        return ('<section id="explore"><h2>Drill down</h2>'
                + _not_computed("Drill down", "no domains, languages or scores in this input") + "</section>")
    options = "".join(f'<option value="{d}">{_e(t)}</option>' for d, t in dims)
    return (
        '<section id="explore"><h2>Drill down</h2><p class="sub">Pick a domain, a language or a score range: the '
        "outcome of its pairs, rule by rule (exact counts; a score range snaps to the histogram's bins). "
        "'Show in gallery' filters the gallery's samples the same way.</p>"
        f'<div class="controls"><label>by <select id="explore-dim">{options}</select></label>'
        '<span id="explore-value"></span><button id="explore-gallery" type="button">Show in gallery</button></div>'
        '<div id="explore-result"></div></section>'
    )


def section_failures(data: dict[str, Any]) -> str:
    failures = data["download_failures"]
    if not failures.get("computed"):
        return (f'<section id="failures"><h2>Download failures</h2>'
                f'{_not_computed("Download failures", failures["why"])}</section>')
    total = failures["total"]
    by_reason = table([("reason", "cat"), ("pairs", "num")],
                      [[_e(r["reason"]), _bar_cell(r["count"], total, "#c62828")] for r in failures["by_reason"]],
                      "", "failures-reasons")
    by_error = table([("reason", "cat"), ("error (URLs and addresses masked)", "text"), ("pairs", "num")],
                     [[_e(r["reason"]), f"<code>{_e(r['error'])}</code>", (_n(r["count"]), r["count"])]
                      for r in failures["by_error"]], "", "failures-errors")
    domains = failures["by_domain"]
    plot = ""
    if domains:
        plot = _img(plot_bars([d["domain"] for d in domains[:15]], {"dropped": [d["count"] for d in domains[:15]]},
                              "Failed downloads by domain", "pairs"), "failures by domain")
    by_domain = table([("domain", "text"), ("failed", "num"), ("of all its pairs", "num")],
                      [[_e(d["domain"]), (_n(d["count"]), d["count"]),
                        (f"{100 * d['count'] / d['total']:.1f} %" if d["total"] else "",
                         d["count"] / (d["total"] or 1))] for d in domains], "", "failures-domains")
    return (f'<section id="failures"><h2>Download failures <small>{pairs(total)}</small></h2>'
            f'<div class="row"><div>{by_reason}</div><div>{by_error}</div></div>'
            f'<div class="row">{plot}<div>{by_domain}</div></div></section>')


def section_domains(data: dict[str, Any]) -> str:
    domains = data["domains"]
    if not domains.get("computed"):
        return f'<section id="domains"><h2>Domains</h2>{_not_computed("Domains", domains["why"])}</section>'
    tables = []
    for key, title, color in (("top_kept", "Top domains kept", "#2e7d32"),
                              ("top_dropped", "Top domains dropped", "#c62828"), ("top", "Top domains", "#1565c0")):
        if key not in domains:
            continue
        rows = domains[key]
        largest = max((r["count"] for r in rows), default=0)
        tables.append(f"<div><h3>{title}</h3>" + table(
            [("domain", "text"), ("pairs", "num"), ("of the domain's pairs", "num")],
            [[_e(r["domain"]), _bar_cell(r["count"], largest, color),
              (f"{100 * r['count'] / r['total']:.1f} %" if r["total"] else "", r["count"] / (r["total"] or 1))]
             for r in rows], "", f"domains-{key}") + "</div>")
    folded = domains["folded_rare_domains"]
    note = f"{domains['distinct']:,} distinct domains; a domain is the {domains['method']}."
    if folded["pairs"]:
        note += (f" More than the exact-count cap: the rarest were folded ({folded['pairs']:,} pairs); counts shown "
                 f"may be short by at most {folded['max_error']:,}.")
    return (f'<section id="domains"><h2>Domains</h2><p class="sub">{_e(note)}</p>'
            f'<div class="row">{"".join(tables)}</div></section>')


def _sample_meta(row: dict[str, Any]) -> str:
    parts = []
    if row.get("original_width"):
        parts.append(f"{row['original_width']}×{row['original_height']}")
    if row.get("bytes"):
        parts.append(f"{row['bytes'] / 1024:.1f} KB")
    if row.get("language"):
        score = row.get("language_score")
        parts.append(f"lang {row['language']}" + (f" {score:.2f}" if score is not None else ""))
    if row.get("clip_score") is not None:
        threshold = row.get("clip_threshold")
        parts.append(f"CLIP {row['clip_score']:.3f}" + (f" < {threshold:g}" if threshold is not None
                                                         and row["clip_score"] < threshold else ""))
    if row.get("http_status"):
        parts.append(f"HTTP {row['http_status']}")
    if row.get("other_clip_score") is not None:  # a comparison: the score in the run that dropped the pair
        parts.append(f"{row.get('other_name', 'other')}: CLIP {row['other_clip_score']:.3f}")
    if row.get("other_duplicate_of"):
        parts.append(f"{row.get('other_name', 'other')}: duplicate of {row['other_duplicate_of']}")
    return " · ".join(_e(p) for p in parts)


def _caption(text: str | None, language: str | None) -> str:
    caption = text or ""
    shown = _e(caption[:200] + ("…" if len(caption) > 200 else "")) or '<i class="sub">(empty)</i>'
    lang = f' lang="{_e(language)}"' if language and language.isalpha() and len(language) <= 3 else ""
    return f'<div class="cap"{lang}>{shown}</div>'


def sample_card(row: dict[str, Any], reason: str, images: dict[str, str], hidden: bool) -> str:
    """One sampled pair: its image (or a placeholder), and beside a duplicate the pair it duplicates."""
    uri = images.get(row.get("image") or "") or placeholder(reason, row.get("no_image_why") or "no image")
    pictures = f'<div class="pic">{_img(uri, reason, "t")}</div>'
    extra = ""
    original = row.get("original")
    if original:
        original_uri = images.get(original.get("image") or "") or placeholder("original", "image not found")
        pictures += (f'<div class="pic orig">{_img(original_uri, "original", "t")}'
                     f'<div class="sub">the pair it duplicates</div></div>')
        extra += (f'<div class="dup">duplicate of <code>{_e(original["key"])}</code> '
                  f'({_e(original.get("reason") or "kept")}): {_e((original.get("caption") or "")[:120])}</div>')
    elif row.get("duplicate_of"):
        extra += f'<div class="dup">duplicate of <code>{_e(row["duplicate_of"])}</code></div>'
    if row.get("error_message"):
        extra += f'<div class="err">{_e(str(row["error_message"])[:160])}</div>'
    clip = row.get("clip_score")
    attributes = {
        "data-reason": reason, "data-domain": row.get("domain") or "", "data-lang": row.get("language") or "",
        "data-clip": "" if clip is None else f"{clip:.5f}",
        "data-lscore": "" if row.get("language_score") is None else f"{row['language_score']:.5f}",
        "data-text": f"{row.get('caption') or ''} {row.get('url') or ''} {row.get('key') or ''}".lower(),
    }
    attrs = " ".join(f'{k}="{_e(v)}"' for k, v in attributes.items())
    css = "thumb more" if hidden else "thumb"
    return (f'<figure class="{css}" {attrs}><div class="pics">{pictures}</div><figcaption>'
            f'<span class="badge {"ok" if reason == "kept" else ""}">{_e(reason)}</span>'
            f'{_caption(row.get("caption"), row.get("language"))}<div class="meta">{_sample_meta(row)}</div>{extra}'
            f'<div class="url">{_e(str(row.get("url") or "")[:90])}</div></figcaption></figure>')


def gallery_blocks(gallery: list[dict[str, Any]], images: dict[str, str], prefix: str = "gallery") -> str:
    blocks = []
    for group in gallery:
        reason = group["reason"]
        shown = max(1, group.get("shown", 6))
        cards = "".join(sample_card(row, reason, images, index >= shown)
                        for index, row in enumerate(group["samples"]))
        title = "kept (for contrast)" if reason == "kept" else reason
        more = len(group["samples"]) - shown
        button = (f'<button type="button" class="more-button" data-step="{shown}">show {min(shown, more)} more '
                  f"(of {len(group['samples'])} sampled)</button>" if more > 0 else "")
        blocks.append(f'<div class="reason" id="{prefix}-{_e(reason)}" data-reason="{_e(reason)}"><h3>{_e(title)} '
                      f'<small>{pairs(group["count"])} · {_e(group.get("stage", ""))} · '
                      f'<span class="shown-count"></span></small></h3>'
                      f'<div class="thumbs">{cards}</div>{button}</div>')
    return "".join(blocks)


def gallery_filters(gallery: list[dict[str, Any]]) -> str:
    reasons_seen = "".join(f'<option value="{_e(g["reason"])}">{_e(g["reason"])}</option>' for g in gallery)
    languages = sorted({str(r.get("language")) for g in gallery for r in g["samples"] if r.get("language")})
    language_options = "".join(f'<option value="{_e(x)}">{_e(x)}</option>' for x in languages)
    return (
        '<div class="controls gallery-filter">'
        '<input type="search" class="g-search" placeholder="search captions, URLs, keys">'
        f'<select class="g-reason"><option value="">every reason</option>{reasons_seen}</select>'
        f'<select class="g-lang"><option value="">every language</option>{language_options}</select>'
        '<input type="search" class="g-domain" placeholder="domain">'
        '<label>CLIP <input type="number" class="g-clip-min" step="0.01" placeholder="min"> – '
        '<input type="number" class="g-clip-max" step="0.01" placeholder="max"></label>'
        '<button type="button" class="g-clear">clear</button> <span class="g-count sub"></span></div>'
    )


def section_gallery(data: dict[str, Any], images: dict[str, str]) -> str:
    note = ("A sample per reason (the smallest CRC32 of the key: the same pairs on every audit of the same corpus); "
            "'show more' pages through the rest of the sample, and the filters search all of it. Kept pairs and "
            "select-pass drops show their stored image, image- and CLIP-rule drops the thumbnail ingest kept, "
            "a duplicate the pair it duplicates beside it; for the others a dashed placeholder says why there is "
            "no image.")
    return (f'<section id="gallery" class="gallery"><h2>Pairs by reason</h2><p class="sub">{note}</p>'
            f'{gallery_filters(data["gallery"])}'
            f'<div class="reasons">{gallery_blocks(data["gallery"], images)}</div></section>')


def section_run(data: dict[str, Any]) -> str:
    run = data["run"]
    parts = []
    if run.get("note"):
        parts.append(f"<p>{_e(run['note'])}</p>")
    if run.get("tool") == "altsieve" and run.get("recipe"):
        parts.append(f"<p>Recipe <b>{_e(run['recipe'])}</b>, created {_e(run.get('created'))}, "
                     f"{_n(run.get('total_samples'))} samples, {_n(run.get('samples_per_shard'))} per shard.</p>")
        if run.get("cites"):
            parts.append("<p>The recipe cites:</p><ul>" + "".join(f"<li>{_e(c)}</li>" for c in run["cites"]) + "</ul>")
        versions = run.get("versions") or {}
        parts.append(table([("package", "text"), ("version", "text")],
                           [[_e(k), f"<code>{_e(v)}</code>"] for k, v in versions.items()], "", "versions"))
        inputs = run.get("inputs") or []
        if inputs:
            parts.append("<p>Inputs: " + ", ".join(f"<code>{_e(i.get('path'))}</code>" for i in inputs) + "</p>")
        parts.append("<details><summary>Full config</summary><pre>"
                     f"{_e(json.dumps(run.get('config'), indent=2, ensure_ascii=False))}</pre></details>")
    if "stats_json_agrees" in run:
        word = "agree" if run["stats_json_agrees"] else "DISAGREE"
        parts.append(f"<p>The run's own statistics (stats.json) and this audit {word}.</p>")
    return f'<section id="run"><h2>Recipe and versions</h2>{"".join(parts)}</section>'


def section_not_computed(data: dict[str, Any]) -> str:
    items = data["not_computed"]
    if not items:
        body = "<p>Everything was computed.</p>"
    else:
        body = "<ul>" + "".join(f"<li><b>{_e(i['what'])}</b>: {_e(i['why'])}</li>" for i in items) + "</ul>"
    return f'<section id="not-computed"><h2>Not computed</h2>{body}</section>'


def json_script(element_id: str, value: Any) -> str:
    """Data for the page's script, in a non-executed script element (``</`` escaped so it cannot close it)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


def page(title: str, subtitle: str, nav: list[tuple[str, str]], sections: list[str], data_json: Any) -> str:
    links = "".join(f'<a href="#{sid}">{_e(name)}</a>' for sid, name in nav)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>{_e(title)}</title><style>{asset('report.css')}</style></head>"
        f'<body data-images-loaded="pending"><header><h1>{_e(title)}</h1><div class="sub">{_e(subtitle)}</div></header>'
        f"<nav>{links}</nav>" + "".join(sections) + json_script("audit-data", data_json)
        + f"<script>{asset('report.js')}</script></body></html>"
    )


def render_html(data: dict[str, Any], images: dict[str, str]) -> str:
    sections = [
        section_summary(data), section_funnel(data), section_published(data), section_noise(data),
        section_histograms(data), section_explore(data), section_failures(data), section_domains(data),
        section_gallery(data, images), section_run(data), section_not_computed(data),
    ]
    subtitle = f"{data['path']} · {data['kind']} · {pairs(data['input_pairs'])} · altsieve {data['altsieve_audit']}"
    return page(f"altsieve audit: {data['path']}", subtitle, SECTIONS, sections, {"explore": explore_data(data)})


# ---------------------------------------------------------------------------------------------
# The comparison page (altsieve audit A --compare B)

COMPARE_SECTIONS = [
    ("compare-summary", "A and B"),
    ("compare-funnel", "Funnels"),
    ("compare-reasons", "Reason deltas"),
    ("compare-overlap", "Overlap"),
    ("compare-gallery-a", "Kept by A only"),
    ("compare-gallery-b", "Kept by B only"),
]


def _delta(value: int) -> Cell:
    css = "delta-up" if value > 0 else "delta-down" if value < 0 else ""
    return (f'<span class="{css}">{value:+,}</span>', value)


def render_compare(data: dict[str, Any], images: dict[str, str], audits: list[dict[str, Any]]) -> str:
    from altsieve.pipeline.audit.plots import plot_compare_funnels

    a, b, overlap = data["a"], data["b"], data["overlap"]
    cards = [("A", f"{_e(a['name'])}<br><small>{pairs(a['input_pairs'])}, {_n(a['kept'])} kept</small>"),
             ("B", f"{_e(b['name'])}<br><small>{pairs(b['input_pairs'])}, {_n(b['kept'])} kept</small>"),
             ("kept by both", _n(overlap["kept_both"])), ("kept only by A", _n(overlap["kept_only_a"])),
             ("kept only by B", _n(overlap["kept_only_b"])), ("Jaccard of the kept", f"{overlap['jaccard']:.3f}")]
    body = "".join(f'<div class="card"><div class="k">{k}</div><div class="v">{v}</div></div>' for k, v in cards)
    links = (f'<p>Each corpus\'s full audit: <a href="{_e(data["reports"]["a"])}">A</a>, '
             f'<a href="{_e(data["reports"]["b"])}">B</a>. Pairs are matched on their {_e(overlap["match_on"])}.</p>')
    summary = f'<section id="compare-summary"><h2>A and B</h2><div class="cards">{body}</div>{links}</section>'
    funnel = data["funnel"]
    plot = plot_compare_funnels([r["stage"] for r in funnel], [r["a"] for r in funnel], [r["b"] for r in funnel],
                                ("A", "B"))
    funnel_rows = [[f"<b>{_e(r['stage'])}</b>", (_n(r["a"]), r["a"]), (_n(r["b"]), r["b"]), _delta(r["delta"])]
                   for r in funnel]
    funnel_html = (f'<section id="compare-funnel"><h2>Funnels</h2><div class="row">{_img(plot, "both funnels")}<div>'
                   + table([("stage", "text"), ("A remaining", "num"), ("B remaining", "num"), ("B − A", "num")],
                           funnel_rows, "funnel", "compare-funnel-table") + "</div></div>"
                   + '<div class="row">' + "".join(
                       f'<div><h3>{side}</h3>{funnel_table(audit["funnel"], f"funnel-{side}")}</div>'
                       for side, audit in zip(("A", "B"), audits, strict=True)) + "</div></section>")
    reason_rows = [[_e(r["reason"]), (_e(r["stage"]), r["stage"]), (_n(r["a"]), r["a"]), (_n(r["b"]), r["b"]),
                    _delta(r["delta"]), (f"{r['delta_percent_of_input']:+.2f} %", r["delta_percent_of_input"])]
                   for r in data["reasons"]]
    reasons_html = ('<section id="compare-reasons"><h2>Reason deltas</h2>'
                    + table([("reason", "text"), ("stage", "cat"), ("A", "num"), ("B", "num"), ("B − A", "num"),
                             ("B − A, % of A's input", "num")], reason_rows, "", "compare-reasons-table")
                    + "</section>")
    transition_rows = [[_e(r["a"]), _e(r["b"]), (_n(r["count"]), r["count"])]
                       for r in data["transitions"][:TRANSITIONS_SHOWN]]
    overlap_rows = [["kept by both", (_n(overlap["kept_both"]), overlap["kept_both"])],
                    ["kept by A, dropped by B", (_n(overlap["kept_only_a"]), overlap["kept_only_a"])],
                    ["kept by B, dropped by A", (_n(overlap["kept_only_b"]), overlap["kept_only_b"])],
                    ["only in A's input", (_n(overlap["only_in_a"]), overlap["only_in_a"])],
                    ["only in B's input", (_n(overlap["only_in_b"]), overlap["only_in_b"])]]
    overlap_html = ('<section id="compare-overlap"><h2>Overlap of what each kept</h2><div class="row"><div>'
                    + table([("pairs", "text"), ("count", "num")], overlap_rows, "", "compare-overlap-table")
                    + "</div><div><h3>Every pair's outcome in A and in B</h3>"
                    + table([("in A", "cat"), ("in B", "cat"), ("pairs", "num")], transition_rows, "",
                            "compare-transitions") + "</div></div></section>")
    galleries = []
    for gallery in data["galleries"]:
        keeper, other = gallery["kept_by"].upper(), gallery["dropped_by"].upper()
        groups = [{**g, "stage": f"dropped by {other}"} for g in gallery["groups"]]
        blocks = gallery_blocks(groups, images, prefix=f"compare-{gallery['kept_by']}")
        empty = "" if groups else f"<p>{keeper} kept nothing that {other} dropped.</p>"
        galleries.append(
            f'<section id="compare-gallery-{gallery["kept_by"]}" class="gallery"><h2>Kept by {keeper}, dropped by '
            f'{other} <small>by {other}\'s reason; the image is {keeper}\'s</small></h2>{gallery_filters(groups)}'
            f'{empty}<div class="reasons">{blocks}</div></section>')
    sections = [summary, funnel_html, reasons_html, overlap_html, *galleries]
    return page("altsieve audit: A compared with B", f"A {a['path']} · B {b['path']}", COMPARE_SECTIONS, sections, {})

