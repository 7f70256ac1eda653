"""The audit as one self-contained HTML file: plots and thumbnails inlined as data URIs.

Everything is drawn from the audit JSON, so the page and ``audit.json`` show the same numbers. The
page loads nothing from anywhere (a Content-Security-Policy allowing only inline data says so to the
browser), and a small inline script marks ``<body data-images-loaded>`` once every image decoded,
which the rendering test reads from headless Chromium.
"""

from __future__ import annotations

import base64
import html
import json
from typing import Any

from altsieve.pipeline.audit.plots import plot_bars, plot_clusters, plot_funnel, plot_histogram, plot_published

SECTIONS = [
    ("summary", "Summary"),
    ("funnel", "Funnel"),
    ("published", "Published funnels"),
    ("histograms", "Histograms"),
    ("failures", "Download failures"),
    ("domains", "Domains"),
    ("gallery", "Dropped pairs"),
    ("run", "Recipe and versions"),
    ("not-computed", "Not computed"),
]


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _n(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"
    return _e(value)


def _img(uri: str, alt: str, css: str = "plot") -> str:
    return f'<img class="{css}" src="{uri}" alt="{_e(alt)}">'


# ---------------------------------------------------------------------------------------------
# Pieces of the page


def placeholder(reason: str, why: str) -> str:
    """An inline SVG standing for a pair that has no image."""
    lines = [reason[i:i + 20] for i in range(0, min(len(reason), 60), 20)]
    text = "".join(f'<tspan x="80" dy="{0 if i == 0 else 16}">{_e(line)}</tspan>' for i, line in enumerate(lines))
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" width="160" height="160" viewBox="0 0 160 160">'
        '<rect width="160" height="160" fill="#eceff1" stroke="#b0bec5" stroke-dasharray="4 3"/>'
        '<g font-family="sans-serif" text-anchor="middle">'
        f'<text x="80" y="64" font-size="13" fill="#546e7a">{text}</text>'
        f'<text x="80" y="130" font-size="10" fill="#78909c">{_e(why)}</text></g>'
        "</svg>"
    )
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def _no_image_why(reason: str) -> str:
    if reason.startswith(("url_", "caption_")):
        return "dropped before download"
    if reason.startswith("download_"):
        return "not downloaded"
    if reason.startswith("decode_"):
        return "did not decode"
    if reason == "all":
        return "metadata only"
    return "no image stored"


def _table(headers: list[str], rows: list[list[str]], css: str = "") -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _bar_cell(count: int, total: int, color: str) -> str:
    width = 100.0 * count / total if total else 0.0
    return (f'<div class="cellbar"><span style="width:{width:.1f}%;background:{color}"></span>'
            f"<b>{count:,}</b></div>")


def _not_computed(what: str, why: str) -> str:
    return f'<div class="nc"><b>{_e(what)}: not computed.</b> {_e(why)}</div>'


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
    body = "".join(f'<div class="card"><div class="k">{k}</div><div class="v">{v}</div></div>' for k, v in cards)
    notes = "".join(f"<li>{_e(note)}</li>" for note in data["notes"])
    return (f'<section id="summary"><h2>Summary</h2><div class="cards">{body}</div>'
            f"<p>Input: <code>{_e(data['path'])}</code> ({_e(data['kind'])} output). "
            f"Statistics computed in {data['statistics_s']} s.</p><ul class='notes'>{notes}</ul></section>")


def section_funnel(data: dict[str, Any]) -> str:
    funnel = data["funnel"]
    rows = []
    for stage in funnel["stages"]:
        rows.append([f"<b>{_e(stage['stage'])}</b>", _n(stage["remaining"]), f"{stage['percent_of_input']:.2f} %",
                     _n(stage["dropped"]) if stage["dropped"] else "",
                     f"{stage['drop_percent_of_stage_input']:.2f} %" if "drop_percent_of_stage_input" in stage else ""])
        for reason in stage["reasons"]:
            rows.append([f'<span class="sub">{_e(reason["reason"])}</span>', "", "",
                         f'<span class="sub">{reason["count"]:,} ({reason["percent_of_input"]:.2f} % of input)</span>',
                         f'<span class="sub">{reason["percent_of_stage_input"]:.2f} %</span>'])
    table = _table(["stage / rule", "remaining", "% of input", "dropped", "% of stage input"], rows, "funnel")
    return (f'<section id="funnel"><h2>Funnel</h2><div class="row">{_img(plot_funnel(funnel), "funnel")}'
            f"<div>{table}</div></div></section>")


def section_published(data: dict[str, Any]) -> str:
    rows = []
    for row in data["published_comparison"]:
        name = f"<b>{_e(row['corpus'])}</b>"
        kept_percent = row.get("kept_percent")
        kept_text = f"{kept_percent:.1f} %" if kept_percent is not None else "—"
        if row.get("kept_percent_as_published"):
            kept_text += f' <span class="sub">({_e(row["kept_percent_as_published"])})</span>'
        fetched = row.get("fetched_percent_of_attempts")
        rows.append([name, _n(row["input"]), _n(row.get("download_attempts")), _n(row.get("fetched")),
                     f"{fetched:.1f} %" if fetched is not None else "—", _n(row.get("kept")), kept_text,
                     f'<span class="sub">{_e("; ".join(row.get("notes", [])))}</span>'])
    table = _table(["corpus", "input pairs", "download attempts", "fetched", "fetched / attempts", "kept",
                    "kept / input", "notes"], rows, "wide")
    sources = "".join(f"<li><b>{_e(p['corpus'])}</b>: {_e(p['source'])}</li>" for p in data["published_funnels"])
    plot = plot_published(data["published_comparison"])
    plot_html = _img(plot, "kept share per corpus") if plot else ""
    return (f'<section id="published"><h2>Beside the published funnels</h2>{table}<div class="row">{plot_html}'
            f'<div><p class="sub">Published figures are as the sources word them, never interpolated: '
            f"a corpus reports the stages it reports.</p><ul class='sources'>{sources}</ul></div></div></section>")


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
        parts.append(f"CLIP {row['clip_score']:.3f}")
    if row.get("http_status"):
        parts.append(f"HTTP {row['http_status']}")
    return " · ".join(_e(p) for p in parts)


def section_gallery(data: dict[str, Any], thumbs: dict[str, str]) -> str:
    blocks = []
    for group in data["gallery"]:
        reason = group["reason"]
        cards = []
        for row in group["samples"]:
            key = str(row.get("key"))
            uri = thumbs.get(key) or placeholder(reason, _no_image_why(reason))
            caption = row.get("caption") or ""
            caption_html = _e(caption[:200] + ("…" if len(caption) > 200 else "")) or '<i class="sub">(empty)</i>'
            extra = ""
            if row.get("error_message"):
                extra += f'<div class="err">{_e(str(row["error_message"])[:160])}</div>'
            if row.get("duplicate_of"):
                extra += f'<div class="sub">duplicate of {_e(row["duplicate_of"])}</div>'
            cards.append(
                f'<figure class="thumb">{_img(uri, reason, "t")}<figcaption>'
                f'<span class="badge {"ok" if reason == "kept" else ""}">{_e(reason)}</span>'
                f'<div class="cap">{caption_html}</div><div class="meta">{_sample_meta(row)}</div>{extra}'
                f'<div class="url">{_e(str(row.get("url") or "")[:90])}</div></figcaption></figure>')
        title = "kept (for contrast)" if reason == "kept" else reason
        blocks.append(f'<div class="reason" id="gallery-{_e(reason)}"><h3>{_e(title)} '
                      f'<small>{group["count"]:,} pairs, {len(group["samples"])} shown</small></h3>'
                      f'<div class="thumbs">{"".join(cards)}</div></div>')
    note = ("A sample per reason (the same pairs on every audit of the same corpus). Only pairs that passed "
            "ingest have an image in the tars (kept pairs and duplicates); for the others a dashed placeholder "
            "says why there is none.")
    return (f'<section id="gallery"><h2>Dropped pairs, by reason</h2><p class="sub">{note}</p>'
            f'<div class="reasons">{"".join(blocks)}</div></section>')


def section_histograms(data: dict[str, Any]) -> str:
    items = []
    for name, hist in data["histograms"].items():
        if hist.get("computed"):
            summary = " · ".join(f"{group}: mean {s['mean']:,.3g}, min {s['min']:,.4g}, max {s['max']:,.4g}"
                                 for group, s in hist["summary"].items())
            items.append(f'<div class="h" id="hist-{name}">{_img(plot_histogram(hist), hist["title"])}'
                         f'<div class="sub">{_e(summary)}</div></div>')
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
        missing = _not_computed("Language distribution", languages["why"])
        items.append(f'<div class="h" id="hist-languages">{missing}</div>')
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
    return f'<section id="histograms"><h2>Histograms</h2><div class="grid">{"".join(items)}</div></section>'


def section_failures(data: dict[str, Any]) -> str:
    failures = data["download_failures"]
    if not failures.get("computed"):
        return (f'<section id="failures"><h2>Download failures</h2>'
                f'{_not_computed("Download failures", failures["why"])}</section>')
    total = failures["total"]
    by_reason = _table(["reason", "pairs"], [[_e(r["reason"]), _bar_cell(r["count"], total, "#c62828")]
                                             for r in failures["by_reason"]])
    by_error = _table(["reason", "error (URLs and addresses masked)", "pairs"],
                      [[_e(r["reason"]), f"<code>{_e(r['error'])}</code>", _n(r["count"])]
                       for r in failures["by_error"]])
    domains = failures["by_domain"]
    plot = ""
    if domains:
        plot = _img(plot_bars([d["domain"] for d in domains[:15]], {"dropped": [d["count"] for d in domains[:15]]},
                              "Failed downloads by domain", "pairs"), "failures by domain")
    by_domain = _table(["domain", "failed", "of all its pairs"],
                       [[_e(d["domain"]), _n(d["count"]),
                         f"{100 * d['count'] / d['total']:.1f} %" if d["total"] else ""] for d in domains])
    return (f'<section id="failures"><h2>Download failures <small>{total:,} pairs</small></h2>'
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
        tables.append(f"<div><h3>{title}</h3>" + _table(
            ["domain", "pairs", "of the domain's pairs"],
            [[_e(r["domain"]), _bar_cell(r["count"], largest, color),
              f"{100 * r['count'] / r['total']:.1f} %" if r["total"] else ""] for r in rows]) + "</div>")
    folded = domains["folded_rare_domains"]
    note = f"{domains['distinct']:,} distinct domains."
    if folded["pairs"]:
        note += (f" More than the exact-count cap: the rarest were folded ({folded['pairs']:,} pairs); counts shown "
                 f"may be short by at most {folded['max_error']:,}.")
    return (f'<section id="domains"><h2>Domains</h2><p class="sub">{_e(note)}</p>'
            f'<div class="row">{"".join(tables)}</div></section>')


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
        parts.append(_table(["package", "version"], [[_e(k), f"<code>{_e(v)}</code>"] for k, v in versions.items()]))
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


CSS = """
body{font-family:-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:0;color:#212121;background:#fafafa}
header{background:#263238;color:#fff;padding:14px 28px}
header h1{margin:0;font-size:20px}
header .sub{color:#b0bec5}
nav{background:#37474f;padding:6px 28px;position:sticky;top:0;z-index:2}
nav a{color:#eceff1;margin-right:16px;font-size:13px;text-decoration:none}
section{background:#fff;margin:16px 28px;padding:12px 20px;border-radius:6px;box-shadow:0 1px 3px #0002}
h2{font-size:17px;margin:6px 0 12px}
h3{font-size:14px;margin:14px 0 6px}
h3 small,h2 small{color:#757575;font-weight:normal}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#eceff1;border-radius:6px;padding:10px 16px;min-width:130px}
.card .k{font-size:11px;color:#607d8b;text-transform:uppercase}
.card .v{font-size:20px;font-weight:600}
.card small{font-size:12px;color:#607d8b}
.row{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
table{border-collapse:collapse;font-size:12px;margin:4px 0}
th,td{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}
th{background:#f5f5f5}
table.funnel td:nth-child(n+2){text-align:right}
.sub{color:#757575;font-size:12px}
td .sub{padding-left:14px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:16px}
img.plot{max-width:100%}
.nc{background:#fff8e1;border:1px dashed #ffb300;padding:10px;border-radius:4px;font-size:13px}
.reasons{display:flex;flex-wrap:wrap;gap:4px 22px}
.reason{flex:0 1 auto;max-width:100%}
.thumbs{display:flex;flex-wrap:wrap;gap:10px}
figure.thumb{width:180px;margin:0;background:#f5f5f5;padding:8px;border-radius:4px}
img.t{width:160px;height:160px;object-fit:contain;background:#fff;display:block;margin:0 auto}
figcaption{font-size:11px;margin-top:4px;overflow-wrap:anywhere}
.badge{background:#c62828;color:#fff;border-radius:3px;padding:1px 5px}
.badge.ok{background:#2e7d32}
.cap{margin:4px 0}
.meta{color:#455a64}
.err{color:#b71c1c}
.url{color:#9e9e9e;font-family:monospace}
.cellbar{position:relative;min-width:160px}
.cellbar span{position:absolute;left:0;top:1px;bottom:1px;opacity:.25}
.cellbar b{position:relative;font-weight:normal}
pre{font-size:11px;background:#f5f5f5;padding:8px;overflow:auto;max-height:400px}
"""

# Marks the body once every image has decoded: the rendering test reads this attribute.
SCRIPT = """
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var ok = images.filter(function (i) { return i.complete && i.naturalWidth > 0 && i.src.indexOf('data:') === 0; });
  document.body.setAttribute('data-images-total', String(images.length));
  document.body.setAttribute('data-images-ok', String(ok.length));
  document.body.setAttribute('data-images-loaded', ok.length === images.length ? 'true' : 'false');
});
"""


def render_html(data: dict[str, Any], thumbs: dict[str, str]) -> str:
    nav = "".join(f'<a href="#{sid}">{title}</a>' for sid, title in SECTIONS)
    sections = [
        section_summary(data), section_funnel(data), section_published(data), section_histograms(data),
        section_failures(data), section_domains(data), section_gallery(data, thumbs), section_run(data),
        section_not_computed(data),
    ]
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        f"<title>altsieve audit: {_e(data['path'])}</title><style>{CSS}</style></head>"
        f'<body data-images-loaded="pending"><header><h1>altsieve audit</h1>'
        f'<div class="sub">{_e(data["path"])} · {_e(data["kind"])} · {data["input_pairs"]:,} pairs · '
        f'altsieve {_e(data["altsieve_audit"])}</div></header><nav>{nav}</nav>'
        + "".join(sections)
        + f"<script>{SCRIPT}</script></body></html>"
    )
