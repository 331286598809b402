"""export-spectralearth: the published layout, with each patch's facts as GDAL metadata and an index table.

The layout follows the SpectralEarth authors' loader (``pipeline/spectralearth_layout.py`` says where it
was checked); pixels against the source products are checked in ``test_build.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio

from spectral_corpus.pipeline.cli import main
from spectral_corpus.pipeline.reader import CorpusReader
from spectral_corpus.stages.grid import cell_transform


def _path(row) -> str:
    return f"enmap/{row.location_id:07d}/{row.scene_id:05d}.tif"


@pytest.fixture(scope="module")
def exported(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example corpus exported with the defaults (uncompressed strips, every split)."""
    dest = tmp_path_factory.mktemp("exported")
    assert main(["export-spectralearth", str(corpus), str(dest)]) == 0
    return dest


def test_each_file_carries_its_observation_and_band_facts_as_gdal_metadata(corpus: Path, exported: Path) -> None:
    reader = CorpusReader(corpus)
    bands = reader.metadata.bands
    for row in reader.table("observations").itertuples():
        with rasterio.open(exported / _path(row)) as patch:
            tags = patch.tags()
            assert tags["ACQUISITION_TIME"] == row.acquired.strftime("%Y-%m-%dT%H:%M:%SZ")
            assert pd.Timestamp(tags["ACQUISITION_TIME"]) == row.acquired
            assert tags["PRODUCT"] == row.product
            assert (int(tags["LOCATION_ID"]), int(tags["SCENE_ID"])) == (row.location_id, row.scene_id)
            assert tags["SPLIT"] == row.split
            assert (int(tags["PRODUCT_ROW"]), int(tags["PRODUCT_COL"])) == (row.row, row.col)
            assert np.float32(tags["FRACTION_CLOUD"]) == row.frac_cloud
            assert np.float32(tags["FRACTION_WATER"]) == row.frac_water
            assert float(tags["REFLECTANCE_SCALE"]) == 1e-4 and tags["REFLECTANCE_OFFSET"] == "0"
            assert set(patch.scales) == {1e-4} and set(patch.offsets) == {0.0}
            assert patch.crs.to_epsg() == row.epsg and patch.transform == cell_transform(row.ix, row.iy)
            assert (patch.count, patch.dtypes[0], patch.nodata, patch.profile.get("compress")) == (
                202,
                "int16",
                -32768,
                None,
            )
            for i in (1, 100, 202):
                assert patch.descriptions[i - 1] == f"band {bands['band'][i - 1]} ({bands['center_nm'][i - 1]:.1f} nm)"
                assert float(patch.tags(i)["wavelength"]) == bands["center_nm"][i - 1]
                assert float(patch.tags(i)["fwhm"]) == bands["fwhm_nm"][i - 1]
                assert patch.tags(i)["wavelength_units"] == "nm"
                imagery = patch.tags(i, ns="IMAGERY")  # GDAL's own band-level names (micrometres)
                assert float(imagery["CENTRAL_WAVELENGTH_UM"]) == pytest.approx(bands["center_nm"][i - 1] / 1000)
                assert float(imagery["FWHM_UM"]) == pytest.approx(bands["fwhm_nm"][i - 1] / 1000)


def test_the_index_has_one_row_per_file_equal_to_the_observations(corpus: Path, exported: Path) -> None:
    observations = CorpusReader(corpus).table("observations")
    index = pd.read_parquet(exported / "index.parquet")
    files = sorted(str(p.relative_to(exported)) for p in (exported / "enmap").glob("*/*.tif"))
    assert index["path"].tolist() == files
    by_obs = index.sort_values("obs").reset_index(drop=True)
    columns = ["obs", "location_id", "scene_id", "product", "acquired", "split", "epsg", "ix", "iy", "row", "col"]
    columns += [c for c in observations.columns if c.startswith("frac_")]
    pd.testing.assert_frame_equal(by_obs[columns], observations[columns], check_dtype=False)
    assert by_obs["path"].tolist() == [_path(row) for row in observations.itertuples()]
    for path, transform in zip(index["path"], index["transform"], strict=True):
        with rasterio.open(exported / path) as patch:
            assert tuple(transform) == tuple(patch.transform)[:6]


@pytest.mark.parametrize("split", ["train", "test"])
def test_split_exports_that_split_only(corpus: Path, tmp_path: Path, split: str) -> None:
    observations = CorpusReader(corpus).table("observations")
    assert main(["export-spectralearth", str(corpus), str(tmp_path), "--split", split]) == 0
    expected = sorted(_path(row) for row in observations[observations["split"] == split].itertuples())
    assert 0 < len(expected) < len(observations)
    assert sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "enmap").glob("*/*.tif")) == expected
    index = pd.read_parquet(tmp_path / "index.parquet")
    assert index["path"].tolist() == expected and set(index["split"]) == {split}


@pytest.mark.parametrize(
    ("options", "profile"),
    [
        (["--compress", "deflate"], {"compress": "deflate", "tiled": False}),
        (["--compress", "zstd", "--tiled", "--tile-size", "64"], {"compress": "zstd", "tiled": True, "blockxsize": 64}),
    ],
)
def test_compression_and_tiling_give_smaller_files_with_the_same_pixels_and_tags(
    exported: Path, corpus: Path, tmp_path: Path, options: list[str], profile: dict
) -> None:
    assert main(["export-spectralearth", str(corpus), str(tmp_path), *options]) == 0
    files = sorted(p.relative_to(exported) for p in (exported / "enmap").glob("*/*.tif"))
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "enmap").glob("*/*.tif")) == files
    plain = sum((exported / f).stat().st_size for f in files)
    packed = sum((tmp_path / f).stat().st_size for f in files)
    assert packed < 0.9 * plain
    for name in files:
        with rasterio.open(exported / name) as a, rasterio.open(tmp_path / name) as b:
            np.testing.assert_array_equal(a.read(), b.read())
            assert (a.tags(), a.tags(7), a.transform, a.crs) == (b.tags(), b.tags(7), b.transform, b.crs)
            assert {key: b.profile.get(key) for key in profile} == profile


def test_bad_export_options_are_refused_with_a_message(corpus: Path, tmp_path: Path, capsys) -> None:
    assert main(["export-spectralearth", str(corpus), str(tmp_path), "--tiled", "--tile-size", "100"]) == 2
    assert "tile size 100: GeoTIFF tiles are multiples of 16, at most 128" in capsys.readouterr().err
