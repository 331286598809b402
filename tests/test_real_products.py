"""Products built around DLR's real files: the real METADATA.XML on its own grid, and DLR's real STAC item."""

from __future__ import annotations

import gzip
import json
import math
import re
import zipfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from pyproj import Transformer
from rasterio.features import geometry_mask

from conftest import TEST_RULES, build
from spectral_corpus.catalog.archive import index_archive
from spectral_corpus.catalog.bands import N_BANDS, NODATA, band_table, selected_bands
from spectral_corpus.catalog.metadata import parse_metadata
from spectral_corpus.catalog.product import ASSET_SUFFIXES, product_filename
from spectral_corpus.catalog.rasters import encode_raster
from spectral_corpus.catalog.scenes import OK, REJECTED
from spectral_corpus.catalog.stac import record_from_item
from spectral_corpus.pipeline.reader import CorpusReader
from spectral_corpus.stages.grid import PATCH_PX, PIXEL_M

REAL = Path(__file__).parent / "data" / "real"
XML_PRODUCT = "ENMAP01-____L2A-DT0000326721_20170626T102020Z_001_V000204_20200406T201930Z"
ITEM_PRODUCT = "ENMAP01-____L2A-DT0000080454_20240630T082045Z_001_V010402_20240701T122237Z"
ORDER = Path("dims_op_oc_oc-en_701000123_1", "ENMAP.HSI.L2A")


def real_xml(n_bands: int = 218) -> bytes:
    """The real METADATA.XML; with 224 bands, its band table replaced by the operational one (same format)."""
    data = gzip.decompress((REAL / f"{XML_PRODUCT}-METADATA.XML.gz").read_bytes())
    if n_bands == 218:
        return data
    table = band_table()
    bands = "".join(
        f'\n      <bandID number="{b}">\n        <wavelengthCenterOfBand>{c:.2f}</wavelengthCenterOfBand>\n'
        f"        <FWHMOfBand>{w:.2f}</FWHMOfBand>\n        <GainOfBand>0.0001</GainOfBand>\n"
        "        <OffsetOfBand>0</OffsetOfBand>\n      </bandID>"
        for b, c, w in zip(table["band"], table["center_nm"], table["fwhm_nm"], strict=True)
    )
    data = re.sub(rb"<bandCharacterisation>.*?</bandCharacterisation>", f"<bandCharacterisation>{bands}\n    "
                  "</bandCharacterisation>".encode(), data, count=1, flags=re.S)  # fmt: skip
    return data.replace(b"<channels>218</channels>", b"<channels>224</channels>", 1)


def xml_grid() -> tuple[Affine, int, int, shapely.Polygon]:
    """The real product's raster grid (UTM 32 N, corners on the 15 m lattice) and its valid swath there."""
    meta = parse_metadata(real_xml(), "real")
    xs, ys = Transformer.from_crs(4326, 32632, always_xy=True).transform(*zip(*meta.corners, strict=True))
    swath = shapely.Polygon(zip(xs, ys, strict=True))
    x0 = 30 * math.floor((min(xs) - 15) / 30) + 15
    y0 = 30 * math.ceil((max(ys) - 15) / 30) + 15
    assert (meta.width, meta.height) == (1128, 1212)
    return Affine(PIXEL_M, 0, x0, 0, -PIXEL_M, y0), 1128, 1212, swath


def pixel_values(n_bands: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Spectral values that encode (band, row, col) of the source raster: (97 band + 13 row + 7 col) mod 20000.

    Made band by band from the (row, col) part, in 16 bits: a whole scene at once in 32 bits takes seconds.
    """
    place = ((rows * 13 + cols * 7) % 20000).astype(np.uint16)
    values = np.empty((n_bands, *place.shape), np.int16)
    for band in range(n_bands):
        value = place + np.uint16(band * 97 % 20000)  # < 40000: no uint16 overflow
        value[value >= 20000] -= 20000
        values[band] = value
    return values


def write_xml_product(archive: Path, n_bands: int) -> Path:
    """The real product as DLR delivers it (a ZIP in an order folder), rasters on its grid."""
    transform, width, height, swath = xml_grid()
    outside = geometry_mask([swath], (height, width), transform)  # True outside the valid swath
    rows, cols = np.mgrid[0:height, 0:width]
    image = pixel_values(n_bands, rows, cols)
    image[:, outside] = NODATA
    classes = np.where(outside, 3, 1).astype(np.uint8)
    layers = {key: np.zeros((height, width), np.uint8) for key in ASSET_SUFFIXES if key.startswith(("quality", "pix"))}
    layers["quality_classes"] = classes
    files = {product_filename(XML_PRODUCT, "metadata"): real_xml(n_bands)}
    stem = f"{XML_PRODUCT}-"
    files |= encode_raster(stem + "SPECTRAL_IMAGE", image, crs="EPSG:32632", transform=transform, nodata=NODATA,
                           fmt="GTiff")  # fmt: skip
    for key, layer in layers.items():
        files |= encode_raster(stem + ASSET_SUFFIXES[key], layer[None], crs="EPSG:32632", transform=transform,
                               nodata=None, fmt="GTiff")  # fmt: skip
    path = archive / ORDER / XML_PRODUCT / f"{XML_PRODUCT}.ZIP"
    path.parent.mkdir(parents=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(f"{XML_PRODUCT}/{name}", data)
    (archive / ORDER.parent / "readme.html").write_text("<html>order</html>")
    (archive / ORDER.parent / "iif").mkdir()
    return path


def test_real_218_band_product_is_rejected_for_its_band_count_only(tmp_path: Path) -> None:
    path = write_xml_product(tmp_path, 218)
    (record,) = index_archive(tmp_path)
    assert (record.product, record.status, record.source) == (XML_PRODUCT, REJECTED, str(path))
    assert record.reason == (
        f"{path}: product has 218 bands (218 characterised in METADATA.XML); operational EnMAP L2A products have 224"
    )


@pytest.fixture(scope="module")
def real_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("real_xml")
    write_xml_product(root / "archive", N_BANDS)
    return build(root / "archive", root / "corpus", rules=replace(TEST_RULES, shard_size=64))


def test_real_224_band_product_builds_with_source_pixels(real_corpus: Path) -> None:
    reader = CorpusReader(real_corpus)
    scenes = reader.table("scenes")
    assert list(scenes["status"]) == [OK] and int(scenes["epsg"].iloc[0]) == 32632
    assert scenes["acquired"].iloc[0].isoformat() == "2017-06-26T10:20:20.999936+00:00"
    observations = reader.table("observations")
    transform, _, _, swath = xml_grid()
    inside = [shapely.box(x - 1920, y - 1920, x + 1920, y + 1920).within(swath)
              for x, y in zip(observations["x"], observations["y"], strict=True)]  # fmt: skip
    assert len(observations) >= 30 and all(inside)
    kept = selected_bands(202) - 1
    for obs, x, y in zip(observations["obs"], observations["x"], observations["y"], strict=True):
        col, row = ~transform @ (x - PATCH_PX * PIXEL_M / 2, y + PATCH_PX * PIXEL_M / 2)
        rows, cols = np.mgrid[0:PATCH_PX, 0:PATCH_PX]
        expected = pixel_values(N_BANDS, rows + round(row), cols + round(col))[kept]
        assert np.array_equal(reader.read_patch(int(obs)), expected), obs


# --- DLR's real STAC item ------------------------------------------------------------------------


def real_item() -> dict[str, object]:
    item: dict[str, object] = json.loads((REAL / f"{ITEM_PRODUCT}.stac-item.json").read_text())
    return item


def write_item_product(archive: Path) -> Path:
    """The item's product as a local folder: METADATA.XML from what the item says, rasters on its grid."""
    from spectral_corpus.catalog.metadata import Bands, ProductMetadata, metadata_xml, parse_time

    item = real_item()
    props, image = item["properties"], item["assets"]["image"]  # type: ignore[index]
    bands = image["eo:bands"]
    meta = ProductMetadata(
        name=ITEM_PRODUCT, level="L2A", datatake=80454, tile=1, processor=props["version"],
        acquired=parse_time(props["start_datetime"]), processed=parse_time(props["enmap:processingDate"]),
        n_bands=len(bands), corners=tuple(tuple(p) for p in item["geometry"]["coordinates"][0][:4]),  # type: ignore[index]
        bands=Bands(tuple(b["center_wavelength"] for b in bands),  # nanometres in DLR's items
                    tuple(b["full_width_half_max"] for b in bands),
                    (1e-4,) * len(bands), (0.0,) * len(bands)),
        width=1517, height=1220, product_format="GeoTIFF+Metadata", quality=int(props["enmap:overallQuality"]),
        cloud_cover=float(props["eo:cloud_cover"]), cloud_shadow=float(props["enmap:cloud_shadow"]),
        snow_cover=float(props["eo:snow_cover"]), haze_cover=float(props["enmap:haze_cover"]),
        cirrus_cover=float(props["enmap:cirrus_cover"]), water_cover=float(props["enmap:water_cover"]),
        projection="UTM_Zone36_South",
    )  # fmt: skip
    folder = archive / ITEM_PRODUCT
    folder.mkdir(parents=True)
    (folder / product_filename(ITEM_PRODUCT, "metadata")).write_bytes(metadata_xml(meta))
    transform = Affine(*image["proj:transform"][:6])
    for key in ASSET_SUFFIXES:
        if key != "metadata":
            array = np.zeros((N_BANDS if key == "image" else 1, 1220, 1517), np.int16 if key == "image" else np.uint8)
            with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"):  # tiles deflated in parallel: the same bytes, sooner
                files = encode_raster(f"{ITEM_PRODUCT}-{ASSET_SUFFIXES[key]}", array, crs="EPSG:32736",
                                      transform=transform, nodata=None, fmt="COG")  # fmt: skip
            for name, data in files.items():
                (folder / name).write_bytes(data)
    return folder


def test_real_stac_item_gives_the_archive_record(tmp_path: Path) -> None:
    folder = write_item_product(tmp_path)
    item = real_item()
    for asset in item["assets"].values():  # type: ignore[attr-defined]
        asset["href"] = str(folder / asset["href"].rsplit("/", 1)[-1])
    from_stac = record_from_item(item, "stac")
    (from_archive,) = index_archive(tmp_path)
    assert from_stac.status == OK, from_stac.reason
    assert from_stac.epsg == 32736  # proj:epsg is null on the item, set on its assets
    assert from_stac.asset_map["pixelmask"].endswith("-QL_PIXELMASK_COG.TIF")  # DLR's key defective_pixel_mask
    assert from_stac.asset_map["quality_cloudshadow"].endswith("-QL_QUALITY_CLOUDSHADOW_COG.TIF")
    assert from_stac.updated == datetime(2024, 7, 1, 17, 10, 34, 815000, tzinfo=UTC)  # the item's "updated"
    assert replace(from_stac, source="", updated=None) == replace(from_archive, source="")  # a folder: unknown
    assert (from_archive.width, from_archive.height) == (1517, 1220)
    assert from_archive.wavelengths_nm[0] == pytest.approx(418.416)  # this scene's own band centre


def test_real_stac_item_without_local_metadata_reads_its_properties() -> None:
    item = real_item()
    record = record_from_item(item, "https://geoservice.dlr.de/eoc/ogc/stac/v1")
    assert record.status == OK, record.reason
    assert (record.datatake, record.tile, record.version, record.epsg) == (80454, 1, "010402", 32736)
    assert (record.cloud_cover, record.snow_cover, record.quality, record.water_cover) == (0.0, 0.0, 0.0, 2.0)
    assert len(record.wavelengths_nm) == N_BANDS and record.wavelengths_nm[0] == pytest.approx(418.416)
    assert record.asset_map["image"].endswith("-SPECTRAL_IMAGE_COG.TIF")
    assert set(record.asset_map) == set(ASSET_SUFFIXES)
