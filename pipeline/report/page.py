"""The report's HTML page: the figures and the tables of their numbers in sections, with the numbers as JSON."""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from typing import Any

from spectral_corpus.pipeline.reader import CorpusReader
from spectral_corpus.pipeline.report.data import KEPT, location_points, rgb_bands, scene_label
from spectral_corpus.pipeline.report.figures import (
    OUTLINES_SOURCE,
    histogram_figure,
    map_figure,
    monthly_figure,
    quicklook_pngs,
    reasons_figure,
    scenes_figure,
    spectrum_figure,
)


def render_page(reader: CorpusReader, data: dict[str, Any]) -> str:
    """The HTML page for ``data`` (from :func:`report_data`), drawing the figures."""
    locations = reader.table("locations")
    points = location_points(locations)
    quick = data["quicklooks"]
    rgb = rgb_bands(data["band_statistics"]["wavelength_nm"])
    stack_images = quicklook_pngs(reader, [q["obs"] for q in quick["stack"]], rgb)
    other_images = quicklook_pngs(reader, [q["obs"] for q in quick["others"]], rgb)
    summary = data["summary"]
    kept = sum(row["kept"] for row in data["dropped_by_scene"])
    undated = data["observations_without_date"]
    sections = [
        _section("Key figures", _tiles(data), wide=True),
        _section(
            "Locations",
            _figure(map_figure(points, locations.geometry), "map of the locations coloured by stack length")
            if len(points)
            else "<p>No locations.</p>",
            wide=True,
            note="Each point is a location (a 3.84 km grid cell), coloured by how many observations it holds. "
            + OUTLINES_SOURCE
            + ".",
        ),
        _section(
            "Stack length",
            _figure(histogram_figure(data["stack_length_histogram"]), "stack-length histogram")
            + _numbers(
                ["observations per location", "locations"], data["stack_length_histogram"].items(), "stack-length"
            ),
        ),
        _section(
            "Acquisitions",
            (
                _figure(
                    monthly_figure(data["observations_per_month"], data["scenes_per_month"]), "observations per month"
                )
                if data["observations_per_month"]
                else "<p>No observation has a known date.</p>"
            )
            + _numbers(
                ["month", "observations", "scenes"],
                [(m, n, data["scenes_per_month"].get(m, 0)) for m, n in data["observations_per_month"].items()],
                "per-month",
            ),
            note=f"{undated:,} observations of unknown date are not counted." if undated else None,
        ),
        _section(
            "Dropped candidates",
            (
                _figure(reasons_figure(data["dropped_by_reason"], kept), "candidates dropped by reason")
                if summary["candidates"]
                else "<p>No candidates are recorded (a corpus imported from patch files has none).</p>"
            )
            + _numbers(["reason", "candidates"], [(KEPT, kept), *data["dropped_by_reason"].items()], "dropped"),
        ),
        _section("Rejected scenes", _rejected(summary["scenes"])),
        _section(
            "Candidates by scene",
            (
                _figure(scenes_figure(data["dropped_by_scene"], list(data["dropped_by_reason"])), "candidates by scene")
                if data["dropped_by_scene"]
                else "<p>No candidates.</p>"
            )
            + _numbers(
                ["scene", KEPT, *data["dropped_by_reason"]],
                [(r["product"], r["kept"], *r["dropped"].values()) for r in data["dropped_by_scene"]],
                "by-scene",
            ),
            wide=True,
        ),
        _section(
            "Reflectance per band",
            _figure(
                spectrum_figure(data["band_statistics"], data["water_vapour_windows_nm"], quick["wavelength_nm"]),
                "band mean and spread of reflectance",
            ),
            wide=True,
            note="Mean and standard deviation of each band over the training split (the manifest's band "
            "statistics, DN x 1e-4). Shaded: the two water-vapour absorption windows that the 202-band "
            "selection leaves out (bands 127-141 and 161-167).",
        ),
        _section(
            "Quicklooks",
            _quicklooks(quick, stack_images, other_images),
            wide=True,
            note="Bands {} nm as red, green, blue; every image stretched alike (2-98 percentiles of each "
            "channel over all of them).".format(", ".join(f"{w:.0f}" for w in quick["wavelength_nm"])),
        ),
        _section("Versions", _versions(data["versions"], data["version"]), wide=True),
    ]
    title = f"{data['corpus']} · version {data['version']}"
    payload = json.dumps(data, default=str, sort_keys=True).replace("</", "<\\/")
    return PAGE.format(
        title=html.escape(title),
        subtitle=html.escape(
            f"created {data['created']} · source {_version_row(data)['source'] or 'unknown'} · "
            f"spectral-corpus {data['software']}"
        ),
        sections="\n".join(sections),
        data=payload,
        style=STYLE,
        script=SCRIPT,
    )


def _version_row(data: dict[str, Any]) -> dict[str, Any]:
    return next((row for row in data["versions"] if row["version"] == data["version"]), {"source": None})


def _section(title: str, body: str, wide: bool = False, note: str | None = None) -> str:
    slug = title.lower().replace(" ", "-")
    note_html = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return (
        f'<section id="{slug}" class="card{" wide" if wide else ""}"><h2>{html.escape(title)}</h2>'
        f"{body}{note_html}</section>"
    )


def _figure(src: str, alt: str) -> str:
    return f'<img class="figure" src="{src}" alt="{html.escape(alt)}">'


def _table(
    header: Sequence[str], rows: Iterable[Sequence[Any]], name: str, marked: int | None = None, css: str = ""
) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        f"<tr{' class=current' if marked is not None and i == marked else ''}>"
        + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row)
        + "</tr>"
        for i, row in enumerate(rows)
    )
    return f'<table class="{css}" data-table="{name}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _numbers(header: Sequence[str], rows: Iterable[Sequence[Any]], name: str) -> str:
    return f"<details><summary>numbers</summary>{_table(header, rows, name)}</details>"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "" if value is None else str(value)


def _tiles(data: dict[str, Any]) -> str:
    summary = data["summary"]
    scenes = summary["scenes"]
    ratio = summary["compression_ratio"]
    tiles = [
        ("observations", f"{summary['observations']:,}", "patches"),
        ("locations", f"{summary['locations']:,}", f"{summary['multitemporal_locations']:,} with several dates"),
        ("longest stack", f"{summary['longest_stack']}", "observations"),
        ("scenes", f"{scenes['used']:,}", f"used of {scenes['total']:,} ({scenes['rejected']} rejected)"),
        ("candidates", f"{summary['candidates']:,}", f"{sum(summary['dropped'].values()):,} dropped"),
        ("bands", f"{summary['bands']}", "per patch"),
        (
            "on disk",
            _bytes(summary["bytes_on_disk"]),
            f"{summary['shards']} shard{'s' if summary['shards'] != 1 else ''}, "
            + (f"{ratio:.0%} of raw int16" if ratio is not None else "no shards"),
        ),
    ]
    return (
        '<div class="tiles">'
        + "".join(
            f'<div class="tile" data-figure="{html.escape(name)}"><div class="label">{html.escape(name)}</div>'
            f'<div class="value">{html.escape(value)}</div><div class="sub">{html.escape(sub)}</div></div>'
            for name, value, sub in tiles
        )
        + "</div>"
    )


def _bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{count} B"  # pragma: no cover


def _rejected(scenes: dict[str, Any]) -> str:
    if not scenes["rejected"]:
        return "<p>No scene was rejected.</p>"
    rows = [(product, scenes["rejected_as"][product], reason) for product, reason in scenes["rejected_scenes"].items()]
    groups = ", ".join(f"{n} {group}" for group, n in scenes["rejected_by_reason"].items())
    return f"<p>{scenes['rejected']} of {scenes['total']} scenes: {html.escape(groups)}.</p>" + _table(
        ["scene", "rejected as", "detail"], rows, "rejected", css="products"
    )


def _quicklooks(quick: dict[str, Any], stack_images: list[str], other_images: list[str]) -> str:
    if not stack_images:
        return "<p>No observations.</p>"
    stack = quick["stack"]
    parts = [
        f"<h3>The longest stack: location {stack[0]['location_id']}, {len(stack)} dates</h3>",
        _gallery(stack, stack_images),
    ]
    if other_images:
        parts += ["<h3>Other locations (newest observation of each)</h3>", _gallery(quick["others"], other_images)]
    return "".join(parts)


def _gallery(facts: list[dict[str, Any]], images: list[str]) -> str:
    items = "".join(
        f'<figure data-obs="{f["obs"]}"><img src="{src}" alt="quicklook of observation {f["obs"]}">'
        f"<figcaption><b>location {f['location_id']}</b> · {html.escape(f['split'])}"
        f'<br><span title="{html.escape(f["product"])}">{html.escape(_caption_scene(f))}</span>'
        "</figcaption></figure>"
        for f, src in zip(facts, images, strict=True)
    )
    return f'<div class="gallery">{items}</div>'


def _caption_scene(facts: dict[str, Any]) -> str:
    """The scene of a quicklook: its short label, or its date where the product name is not DLR's."""
    label = scene_label(facts["product"])
    return facts["acquired"] if label == facts["product"] else label


def _versions(rows: list[dict[str, Any]], shown: int) -> str:
    header = ["version", "created", "observations", "locations", "shards", "retired", "source"]
    values = [[f"{r['version']}{' (current)' if r['current'] else ''}", *(r[h] for h in header[1:])] for r in rows]
    marked = next((i for i, r in enumerate(rows) if r["version"] == shown), None)
    return _table(header, values, "versions", marked) + f'<p class="note">This report shows version {shown}.</p>'


STYLE = """
:root { --ink:#1d2733; --muted:#5d6b7a; --line:#e1e6ec; --bg:#f5f7fa; --accent:#2f6690; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 "DejaVu Sans", "Segoe UI", Helvetica, Arial, sans-serif; color:var(--ink);
       background:var(--bg); }
header { background:#1d2f44; color:#fff; padding:22px 32px 18px; }
header h1 { margin:0 0 4px; font-size:22px; font-weight:600; word-break:break-all; }
header p { margin:0; color:#c5d3e2; font-size:13px; }
main { display:grid; grid-template-columns:repeat(2, minmax(0, 1fr)); gap:18px; padding:20px 32px 32px;
       max-width:1500px; margin:0 auto; }
.card { background:#fff; border:1px solid var(--line); border-radius:8px; padding:14px 18px 16px; min-width:0; }
.card.wide { grid-column:1 / -1; }
h2 { margin:0 0 10px; font-size:16px; color:var(--accent); }
h3 { margin:14px 0 8px; font-size:13.5px; color:var(--muted); font-weight:600; }
img.figure { display:block; max-width:100%; height:auto; margin:0 auto; }
.note { color:var(--muted); font-size:12.5px; margin:8px 0 0; }
.tiles { display:grid; grid-template-columns:repeat(auto-fit, minmax(170px, 1fr)); gap:12px; }
.tile { border:1px solid var(--line); border-radius:6px; padding:10px 12px; background:#fafbfd; }
.tile .label { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.tile .value { font-size:26px; font-weight:600; margin:2px 0; }
.tile .sub { color:var(--muted); font-size:12px; }
table { border-collapse:collapse; width:100%; font-size:12.5px; margin-top:6px; }
th, td { text-align:left; padding:4px 8px; border-bottom:1px solid var(--line); vertical-align:top;
         word-break:break-word; }
th { color:var(--muted); font-weight:600; }
table.products td { font-size:11.5px; word-break:break-all; }
tr.current td { background:#eef5fb; font-weight:600; }
details { margin-top:8px; } summary { cursor:pointer; color:var(--muted); font-size:12.5px; }
.gallery { display:flex; flex-wrap:wrap; gap:12px; }
.gallery figure { margin:0; width:170px; }
.gallery img { width:170px; height:170px; image-rendering:pixelated; border-radius:4px; display:block;
               background:#000; }
.gallery figcaption { font-size:11.5px; color:var(--muted); margin-top:4px; line-height:1.35; }
footer { text-align:center; color:var(--muted); font-size:12px; padding:0 0 24px; }
@media (max-width: 900px) { main { grid-template-columns:1fr; padding:12px; } }
"""

#: Reports an image that did not decode on the browser's console, and counts the decoded ones.
SCRIPT = """
window.addEventListener("load", function () {
  var images = document.querySelectorAll("img"), decoded = 0;
  images.forEach(function (img) {
    if (img.complete && img.naturalWidth > 0) { decoded += 1; }
    else { console.error("spectral-corpus report: image did not load: " + img.alt); }
  });
  document.body.setAttribute("data-images-decoded", String(decoded) + "/" + String(images.length));
});
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Corpus report: {title}</title>
<style>{style}</style>
</head>
<body>
<header><h1>Corpus report: {title}</h1><p>{subtitle}</p></header>
<main>
{sections}
</main>
<footer>Written by spectral-corpus report. The numbers behind the figures are in this page: JSON in
<code>#report-data</code>, and a table under each chart.</footer>
<script type="application/json" id="report-data">{data}</script>
<script>{script}</script>
</body>
</html>
"""
