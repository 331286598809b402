"""DLR's raster delivery formats: every format reads back exactly, with GDAL, from a folder and from ZIPs."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import Compression, Interleaving
from rasterio.windows import Window

from spectral_corpus.catalog.product import ASSET_SUFFIXES, asset_key
from spectral_corpus.catalog.rasters import RASTER_FORMATS, encode_raster

PRODUCT = "ENMAP01-____L2A-DT0000326721_20170626T102020Z_001_V000204_20200406T201930Z"
#: 30 m pixels whose corners lie at 15 mod 30 m, as on EnMAP's grid.
TRANSFORM = Affine(30, 0, 454245, 0, -30, 7246185)
NODATA = -32768
#: JPEG2000 keeps neither the nodata value nor band descriptions.
KEEPS_METADATA = {"GTiff", "COG", "BSQ", "BIL", "BIP"}
ENVI = ("BSQ", "BIL", "BIP")
EXPECTED_NAMES = {
    "GTiff": ("{}.TIF",),
    "COG": ("{}_COG.TIF",),
    "BSQ": ("{}.BSQ", "{}.HDR"),
    "BIL": ("{}.BIL", "{}.HDR"),
    "BIP": ("{}.BIP", "{}.HDR"),
    "JP2": ("{}.JP2",),
}
WINDOWS = (Window(0, 0, 56, 40), Window(3, 2, 17, 11), Window(50, 35, 6, 5), Window(9, 4, 1, 1))


def _image() -> np.ndarray:
    """224 x 40 x 56 int16 whose values encode (band, row, col), with nodata pixels."""
    band, row, col = np.indices((224, 40, 56))
    image = (((band * 40 + row) * 56 + col) % 65535 - 32767).astype(np.int16)
    image[:, 5:8, 10:13] = NODATA
    image[17, 30, 50] = NODATA
    return image


IMAGE = _image()
DESCRIPTIONS = tuple(f"band {band} ({400 + 10 * band} nm)" for band in range(1, 225))
LAYER = (np.arange(40 * 56).reshape(1, 40, 56) % 256).astype(np.uint8)
#: Product file suffix -> (array, nodata, band descriptions).
LAYERS = {"SPECTRAL_IMAGE": (IMAGE, NODATA, DESCRIPTIONS), "QL_QUALITY_CLOUD": (LAYER, None, ())}


def _encode(fmt: str, epsg: int) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for suffix, (array, nodata, descriptions) in LAYERS.items():
        stem = f"{PRODUCT}-{suffix}"
        files |= encode_raster(
            stem, array, crs=f"EPSG:{epsg}", transform=TRANSFORM, nodata=nodata, fmt=fmt, descriptions=descriptions
        )
    return files


def _data_name(files: dict[str, bytes], suffix: str) -> str:
    """The file the product reader takes as the raster (``catalog.product.asset_key``), never its header."""
    key = next(key for key, value in ASSET_SUFFIXES.items() if value == suffix)
    (name,) = (name for name in files if asset_key(name, PRODUCT) == key)
    return name


def _headers(data: str) -> tuple[str, ...]:
    """The names an ENVI header of data file ``data`` may have: extension replaced, or appended."""
    base, _, ext = data.rpartition(".")
    return (f"{base}.HDR", f"{data}.HDR") if ext.upper() in ENVI else ()


def _write(files: dict[str, bytes], root: Path) -> dict[str, str]:
    """The files in a product folder, a ZIP of that folder and a flat ZIP; location -> path prefix."""
    (root / PRODUCT).mkdir()
    with zipfile.ZipFile(root / f"{PRODUCT}.zip", "w") as nested, zipfile.ZipFile(root / "flat.zip", "w") as flat:
        for name, data in files.items():
            (root / PRODUCT / name).write_bytes(data)
            nested.writestr(f"{PRODUCT}/{name}", data)
            flat.writestr(name, data)
    return {
        "folder": f"{root}/{PRODUCT}/",
        "zip": f"/vsizip/{root}/{PRODUCT}.zip/{PRODUCT}/",
        "flat zip": f"/vsizip/{root}/flat.zip/",
    }


@pytest.mark.parametrize("fmt", RASTER_FORMATS)
def test_file_names_are_dlrs_and_readers_tell_data_from_header(fmt: str) -> None:
    files = _encode(fmt, 32632)
    stems = [f"{PRODUCT}-{suffix}" for suffix in LAYERS]
    assert sorted(files) == sorted(pattern.format(stem) for stem in stems for pattern in EXPECTED_NAMES[fmt])
    for suffix in LAYERS:
        headers = set(_headers(_data_name(files, suffix))) & set(files)
        assert len(headers) == (fmt in ENVI)


@pytest.mark.parametrize("location", ["folder", "zip", "flat zip"])
@pytest.mark.parametrize("epsg", [32632, 32736])
@pytest.mark.parametrize("fmt", RASTER_FORMATS)
def test_round_trip_is_exact(fmt: str, epsg: int, location: str, tmp_path: Path) -> None:
    files = _encode(fmt, epsg)
    prefix = _write(files, tmp_path)[location]
    for suffix, (array, nodata, descriptions) in LAYERS.items():
        with rasterio.open(prefix + _data_name(files, suffix)) as src:
            assert (src.count, src.height, src.width) == array.shape
            assert src.dtypes == (array.dtype.name,) * array.shape[0]
            assert src.crs.to_epsg() == epsg
            assert src.transform == TRANSFORM
            assert src.nodata == (nodata if fmt in KEEPS_METADATA else None)
            if descriptions:
                assert src.descriptions == (descriptions if fmt in KEEPS_METADATA else (None,) * src.count)
            np.testing.assert_array_equal(src.read(), array)
            _check_windows(src, array)


def _check_windows(src: rasterio.DatasetReader, array: np.ndarray) -> None:
    subsets = [[1], [array.shape[0]], [array.shape[0], 1, (array.shape[0] + 1) // 2]]
    for window in WINDOWS:
        rows, cols = window.toslices()
        for indexes in subsets:
            expected = array[[index - 1 for index in indexes], rows, cols]
            np.testing.assert_array_equal(src.read(indexes, window=window), expected)


@pytest.mark.parametrize("fmt", RASTER_FORMATS)
def test_encoding_is_deterministic_and_names_no_memory_path(fmt: str) -> None:
    files = _encode(fmt, 32736)
    assert files == _encode(fmt, 32736)
    assert not any(b"/vsimem/" in data for data in files.values())


@pytest.mark.parametrize("fmt", ENVI)
@pytest.mark.parametrize("readdir", ["FALSE", "TRUE"])
def test_envi_header_is_found_under_each_name(fmt: str, readdir: str, tmp_path: Path) -> None:
    """Replaced or appended extension, either case, in a folder and a ZIP, with or without directory listings."""
    stem = f"{PRODUCT}-QL_QUALITY_CLOUD"
    files = encode_raster(stem, LAYER, crs="EPSG:32632", transform=TRANSFORM, nodata=None, fmt=fmt)
    data = f"{stem}.{fmt}"
    header = files[f"{stem}.HDR"]
    names = [*_headers(data), *(name.replace(".HDR", ".hdr") for name in _headers(data))]
    for index, name in enumerate(names):
        root = tmp_path / str(index)
        root.mkdir()
        for prefix in _write({data: files[data], name: header}, root).values():
            with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN=readdir), rasterio.open(prefix + data) as src:
                assert src.driver == "ENVI"
                np.testing.assert_array_equal(src.read(), LAYER)


def test_geotiff_is_stripped_and_uncompressed_as_dlr_writes_it(tmp_path: Path) -> None:
    """libtiff's default strips, at most 8 KB per band: 7 rows of a 1,170-column uint8 layer, 3 of int16."""
    for dtype, bands, rows_per_strip in ((np.uint8, 1, 7), (np.int16, 224, 3)):
        array = np.zeros((bands, 20, 1170), dtype)
        path = tmp_path / f"{bands}.TIF"
        files = encode_raster(path.stem, array, crs="EPSG:32632", transform=TRANSFORM, nodata=None, fmt="GTiff")
        path.write_bytes(files[path.name])
        with rasterio.open(path) as src:
            assert src.block_shapes == [(rows_per_strip, 1170)] * bands
            assert src.compression is None
            assert not src.profile["tiled"]
            assert src.interleaving == Interleaving.band
            assert src.nodata is None


def test_cog_is_tiled_deflated_and_has_no_overviews(tmp_path: Path) -> None:
    files = encode_raster("S", IMAGE, crs="EPSG:32632", transform=TRANSFORM, nodata=NODATA, fmt="COG")
    path = tmp_path / "S_COG.TIF"
    path.write_bytes(files[path.name])
    with rasterio.open(path) as src:
        assert src.compression == Compression.deflate
        assert src.block_shapes[0] == (512, 512)
        assert src.overviews(1) == []


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown raster format"):
        encode_raster("S", LAYER, crs="EPSG:32632", transform=TRANSFORM, nodata=None, fmt="ENVI")
