"""spectral-corpus report: one self-contained page whose figures hold the version's numbers, read back from
the page and compared with the tables and ``info``; opened in a real headless Chromium (Debian's package,
which ``scripts/test.sh`` installs) to check that it renders without errors, with a screenshot kept."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
from PIL import Image

from s3_server import create_bucket, s3_server, upload
from spectral_corpus.catalog.bands import band_table
from spectral_corpus.pipeline.cli import main
from spectral_corpus.pipeline.info import corpus_summary
from spectral_corpus.pipeline.reader import CorpusReader, list_versions
from spectral_corpus.pipeline.report import RGB_NM

#: The charts every page has (map, stack length, months, reasons, scenes, spectrum), before the quicklooks.
CHARTS = 6


@pytest.fixture(scope="module")
def page(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example corpus's report, written through the command line."""
    out = tmp_path_factory.mktemp("report")
    assert main(["report", str(corpus), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["index.html"]
    return out / "index.html"


def report_data(page: Path) -> dict[str, Any]:
    """The numbers the page embeds (``<script type="application/json" id="report-data">``)."""
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page.read_text(), re.S)
    assert match is not None, "the page embeds no report-data"
    data: dict[str, Any] = json.loads(match.group(1))
    return data


class _Page(HTMLParser):
    """The page's image sources and its ``data-table`` tables (rows of cell texts)."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.images.append(values["src"] or "")
        elif tag == "table":
            self._table = values.get("data-table")
            self.tables[self._table or ""] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._table and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None


def parse_page(page: Path) -> _Page:
    parser = _Page()
    parser.feed(page.read_text())
    return parser


def _number(text: str) -> int:
    return int(text.replace(",", ""))


def test_the_figures_hold_the_tables_numbers(corpus: Path, page: Path) -> None:
    data, reader = report_data(page), CorpusReader(corpus)
    locations, observations = reader.table("locations"), reader.table("observations")
    candidates, summary = reader.table("candidates"), corpus_summary(reader)

    histogram = {int(n): count for n, count in data["stack_length_histogram"].items()}
    assert histogram == locations["n_obs"].value_counts().to_dict() == {1: 3, 2: 3, 3: 1}
    assert data["dropped_by_reason"] == summary["dropped"]
    assert json.loads(json.dumps(summary, default=str)) == data["summary"]

    months = observations["acquired"].dt.strftime("%Y-%m").value_counts().to_dict()
    assert {month: n for month, n in data["observations_per_month"].items() if n} == months
    assert list(data["observations_per_month"]) == sorted(data["observations_per_month"])  # every month, in order
    assert len(data["observations_per_month"]) == 12  # 2023-06 to 2024-05, the empty months included

    by_scene = {row["product"]: row for row in data["dropped_by_scene"]}
    assert set(by_scene) == set(candidates["product"])
    for product, group in candidates.groupby("product"):
        reasons = group["drop_reason"].replace("", "kept").value_counts().to_dict()
        shown = {"kept": by_scene[product]["kept"], **by_scene[product]["dropped"]}
        assert {reason: n for reason, n in shown.items() if n} == reasons
    assert sum(sum(row["dropped"].values()) for row in data["dropped_by_scene"]) == sum(summary["dropped"].values())

    points = data["locations"]["points"]
    centroids = shapely.centroid(np.asarray(locations.geometry, dtype=object))
    assert points["location_id"] == locations["location_id"].tolist()
    np.testing.assert_allclose(points["lon"], shapely.get_x(centroids))
    np.testing.assert_allclose(points["lat"], shapely.get_y(centroids))
    assert points["n_obs"] == locations["n_obs"].tolist()

    assert data["versions"] == json.loads(json.dumps(list_versions(corpus), default=str))
    assert (data["version"], data["corpus"]) == (reader.version, str(corpus))


def test_band_statistics_wavelengths_windows_and_quicklook_bands(corpus: Path, page: Path) -> None:
    data, reader = report_data(page), CorpusReader(corpus)
    profile = data["band_statistics"]
    assert profile["wavelength_nm"] == reader.metadata.bands["center_nm"]
    np.testing.assert_allclose(profile["mean_reflectance"], np.asarray(reader.manifest.stats.mean) * 1e-4, atol=1e-6)
    np.testing.assert_allclose(profile["std_reflectance"], np.asarray(reader.manifest.stats.std) * 1e-4, atol=1e-6)
    assert profile["split"] == "train" and profile["pixels"] == max(reader.manifest.stats.count)

    # the two shaded windows hold exactly the bands the 202-band selection leaves out
    table = band_table()
    windows = data["water_vapour_windows_nm"]
    inside = [any(lo <= nm <= hi for lo, hi in windows) for nm in table["center_nm"]]
    assert len(windows) == 2
    assert table.loc[inside, "band"].tolist() == [*range(127, 142), *range(161, 168)]
    assert not any(lo <= nm <= hi for nm in profile["wavelength_nm"] for lo, hi in windows)

    centres = np.asarray(profile["wavelength_nm"])
    for nm, target in zip(data["quicklooks"]["wavelength_nm"], RGB_NM, strict=True):
        assert nm == centres[np.abs(centres - target).argmin()]
    # the longest stack, oldest first, then the newest observation of each other location
    stack = data["quicklooks"]["stack"]
    assert [q["location_id"] for q in stack] == [3, 3, 3]
    assert [q["acquired"] for q in stack] == sorted(q["acquired"] for q in stack)
    others = data["quicklooks"]["others"]
    assert sorted(q["location_id"] for q in others) == [0, 1, 2, 4, 5, 6]


def test_the_page_is_self_contained_and_its_tables_agree(corpus: Path, page: Path) -> None:
    text, parsed = page.read_text(), parse_page(page)
    data = report_data(page)
    assert not re.search(r'(src|href)="(https?:)?//', text), "the page must load nothing from the network"
    quicklooks = len(data["quicklooks"]["stack"]) + len(data["quicklooks"]["others"])
    assert len(parsed.images) == CHARTS + quicklooks
    for src in parsed.images:
        kind, payload = re.fullmatch(r"data:image/(png|svg\+xml);base64,(.+)", src).groups()  # type: ignore[union-attr]
        content = base64.b64decode(payload)
        if kind == "png":
            with Image.open(io.BytesIO(content)) as image:
                image.verify()
        else:
            assert ET.fromstring(content).tag == "{http://www.w3.org/2000/svg}svg"

    rows = parsed.tables["stack-length"][1:]
    assert {_number(n): _number(c) for n, c in rows} == {int(k): v for k, v in data["stack_length_histogram"].items()}
    rows = parsed.tables["dropped"][1:]
    assert {reason: _number(n) for reason, n in rows[1:]} == corpus_summary(CorpusReader(corpus))["dropped"]
    rows = parsed.tables["per-month"][1:]
    assert {month: _number(n) for month, n, _ in rows} == data["observations_per_month"]
    assert [row[0].split()[0] for row in parsed.tables["versions"][1:]] == ["1"]
    assert len(parsed.tables["rejected"]) == 1 + data["summary"]["scenes"]["rejected"]


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(
            "Chromium is not installed: this test opens the report in Debian's headless chromium. "
            "Run `bash scripts/test.sh` as root (it installs it), or `apt-get install -y chromium`."
        )
    return path


def _open_in_chromium(page: Path, profile: Path, *options: str) -> subprocess.CompletedProcess[str]:
    command = [
        _chromium(),
        "--headless=new",
        "--disable-gpu",
        "--no-sandbox",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *options,
        page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, f"chromium exited with {done.returncode}:\n{done.stderr[-3000:]}"
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert console == [], "the page logged to the console:\n" + "\n".join(console)
    return done


def test_chromium_renders_the_page_without_errors(page: Path, tmp_path: Path) -> None:
    images = len(parse_page(page).images)
    dom = _open_in_chromium(page, tmp_path / "profile-dom", "--dump-dom").stdout
    # the page's own check, run on load: every image decoded
    assert f'data-images-decoded="{images}/{images}"' in dom
    assert 'id="report-data"' in dom and "Corpus report:" in dom

    screenshot = tmp_path / "report.png"
    _open_in_chromium(page, tmp_path / "profile-shot", f"--screenshot={screenshot}", "--window-size=1400,3000")
    with Image.open(screenshot) as image:
        assert image.size == (1400, 3000)
        pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500, "the screenshot is nearly blank"
    # the dark header band on top, then cards of figures: a rendered page, not an error page
    assert (pixels[:40].mean(axis=(0, 1)) < 80).all()
    assert (pixels.std(axis=(1, 2)) > 10).mean() > 0.3


def test_a_corpus_in_a_bucket_reports_the_same_figures(corpus: Path, page: Path, tmp_path: Path) -> None:
    with s3_server():
        create_bucket("reports")
        url = upload(corpus, "s3://reports/enmap")
        assert main(["report", url, "--out", str(tmp_path)]) == 0
    remote, local = report_data(tmp_path / "index.html"), report_data(page)
    assert (remote.pop("corpus"), remote["summary"].pop("corpus")) == (url, url)
    local.pop("corpus"), local["summary"].pop("corpus")
    assert remote == local


def test_an_unknown_version_is_one_error_line(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(corpus), "--out", str(tmp_path), "--version", "9"]) == 2
    assert "version 9 does not exist" in capsys.readouterr().err
    assert not (tmp_path / "index.html").exists()
