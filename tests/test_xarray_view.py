"""The corpus in xarray: coordinate names that do not collide with the pixel dimensions, and selections of
``open_patches`` that carry their patch's CRS and transform, checked against ``export-spectralearth``'s
GeoTIFFs of the same observations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import xarray as xr
import zarr
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from conftest import copy_corpus
from spectral_corpus.corpus_format import OBS_COORDINATES, CorpusLayout
from spectral_corpus.pipeline.build import write_coordinates
from spectral_corpus.pipeline.export import export_spectralearth
from spectral_corpus.pipeline.reader import CorpusReader
from spectral_corpus.pipeline.xarray_view import open_patches


@pytest.fixture(scope="module")
def exported(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("exported")
    export_spectralearth(CorpusReader(corpus), dest)
    return dest


def _file(exported: Path, row: pd.Series) -> Path:
    return exported / "enmap" / f"{row['location_id']:07d}" / f"{row['scene_id']:05d}.tif"


def _some(observations: pd.DataFrame) -> pd.DataFrame:
    """The first and last observation of each UTM zone."""
    return observations.groupby("epsg").nth([0, -1])


def _assert_per_observation_coordinates(ds: xr.Dataset, observations: pd.DataFrame) -> None:
    for name, column in (("location_id", "location_id"), ("scene_id", "scene_id"), ("epsg", "epsg")):
        np.testing.assert_array_equal(ds[name].values, observations[column].to_numpy(), err_msg=name)
    np.testing.assert_array_equal(ds["centre_x"].values, observations["x"].to_numpy())
    np.testing.assert_array_equal(ds["centre_y"].values, observations["y"].to_numpy())
    acquired = observations["acquired"].dt.tz_convert(None).to_numpy()
    np.testing.assert_array_equal(ds["time"].values.astype("datetime64[s]"), acquired.astype("datetime64[s]"))


def test_the_store_opens_in_xarray_without_coordinates_named_like_the_pixel_dimensions(corpus: Path) -> None:
    store = xr.open_zarr(CorpusLayout(corpus).zarr, consolidated=True)
    per_obs = {name for name, variable in store.variables.items() if variable.dims == ("obs",)}
    assert per_obs == set(OBS_COORDINATES)
    assert not per_obs & set(store["patches"].dims)
    assert store["centre_x"].attrs == {
        "long_name": "patch centre easting in the patch's UTM zone (EPSG code in `epsg`)",
        "units": "m",
    }
    observations = CorpusReader(corpus).table("observations").sort_values("obs", ignore_index=True)
    _assert_per_observation_coordinates(store.isel(obs=observations["obs"].to_numpy()), observations)
    view = open_patches(corpus, version=1)
    assert view.attrs["version"] == 1 and list(view["obs"].values) == list(observations["obs"])
    _assert_per_observation_coordinates(view, observations)
    assert list(view["split"].values) == list(observations["split"])


def test_a_selected_patch_has_the_crs_transform_and_pixels_of_its_exported_geotiff(
    corpus: Path, exported: Path
) -> None:
    ds = open_patches(corpus)
    observations = CorpusReader(corpus).table("observations").sort_values("obs", ignore_index=True)
    assert observations["epsg"].nunique() > 1  # the corpus spans zones: one CRS per patch
    for position, row in _some(observations).iterrows():
        patch = ds.patches.isel(obs=position)
        with rasterio.open(_file(exported, row)) as geotiff:
            assert patch.rio.crs.to_epsg() == geotiff.crs.to_epsg() == row["epsg"]
            assert patch.rio.transform() == geotiff.transform
            assert patch.rio.bounds() == tuple(geotiff.bounds)
            np.testing.assert_array_equal(patch.values, geotiff.read())
        assert patch.rio.nodata == -32768
        assert ds.patches.sel(obs=row["obs"]).rio.transform() == patch.rio.transform()


def test_rio_to_raster_writes_the_exported_geotiff_s_georeferencing_and_pixels(
    corpus: Path, exported: Path, tmp_path: Path
) -> None:
    ds = open_patches(corpus)
    observations = CorpusReader(corpus).table("observations").sort_values("obs", ignore_index=True)
    for position, row in _some(observations).iterrows():
        patch = ds.patches.isel(obs=position)
        patch.rio.to_raster(tmp_path / "patch.tif")
        window = Window(col_off=10, row_off=20, width=64, height=32)
        patch.isel(x=slice(10, 74), y=slice(20, 52)).rio.to_raster(tmp_path / "window.tif")
        with (
            rasterio.open(_file(exported, row)) as geotiff,
            rasterio.open(tmp_path / "patch.tif") as written,
            rasterio.open(tmp_path / "window.tif") as part,
        ):
            assert (written.crs, written.transform, written.nodata) == (geotiff.crs, geotiff.transform, -32768)
            np.testing.assert_array_equal(written.read(), geotiff.read())
            assert (part.crs, part.transform) == (geotiff.crs, window_transform(window, geotiff.transform))
            np.testing.assert_array_equal(part.read(), geotiff.read(window=window))


def test_selections_on_one_grid_are_georeferenced_and_selections_across_grids_are_not(
    corpus: Path, exported: Path
) -> None:
    ds = open_patches(corpus)
    observations = CorpusReader(corpus).table("observations").sort_values("obs", ignore_index=True)
    stack = observations.groupby("location_id").filter(lambda dates: len(dates) > 1)
    dates = stack[stack["location_id"] == stack["location_id"].iloc[0]]
    series = ds.patches.isel(obs=dates.index.to_numpy())  # the dates of one location share its grid
    with rasterio.open(_file(exported, dates.iloc[0])) as geotiff:
        assert (series.rio.crs, series.rio.transform()) == (geotiff.crs, geotiff.transform)
        x, y = geotiff.xy(5, 7)  # pixel centre of row 5, column 7
    np.testing.assert_array_equal(series.sel(x=x, y=y).values, series.values[:, :, 5, 7])
    zones = ds.patches.isel(obs=_some(observations).index.to_numpy())
    assert zones.rio.crs is None and np.isnan(zones["x"].values).all()
    with pytest.raises(KeyError, match="select a patch first"):
        zones.sel(x=x)
    patch = ds.patches.isel(obs=0)
    padded = patch.corpus.standalone().rio.pad_box(*np.add(patch.rio.bounds(), (-60, 0, 0, 0)))
    assert padded.sizes["x"] == 130 and padded.rio.crs == patch.rio.crs


@pytest.mark.filterwarnings("ignore:Consolidated metadata:UserWarning")
def test_the_legacy_x_y_arrays_of_an_older_store_go_when_the_coordinates_are_written_again(
    corpus: Path, tmp_path: Path
) -> None:
    old = copy_corpus(corpus, tmp_path / "corpus")
    layout, reader = CorpusLayout(old), CorpusReader(old)
    observations = reader.table("observations").sort_values("obs", ignore_index=True)
    root = zarr.open_group(layout.zarr, mode="a", zarr_format=3, use_consolidated=False)
    for legacy, new, column in (("x", "centre_x", "x"), ("y", "centre_y", "y")):  # as stores were written before
        del root[new]
        array = root.create_array(legacy, shape=(len(observations),), dtype="float64", dimension_names=["obs"])
        array[:] = observations[column].to_numpy()
    root["patches"].attrs["coordinates"] = "wavelength fwhm band time location_id scene_id epsg x y"
    zarr.consolidate_metadata(layout.zarr)
    assert xr.open_zarr(layout.zarr)["x"].dims == ("obs",)  # the collision the store used to have
    assert (
        open_patches(old).patches.isel(obs=0).rio.transform()
        == open_patches(corpus).patches.isel(obs=0).rio.transform()
    )

    write_coordinates(reader.files, observations)  # what a build, an extension and an import do

    assert {p.name for p in layout.zarr.iterdir()} >= {"centre_x", "centre_y"}
    assert not {p.name for p in layout.zarr.iterdir()} & {"x", "y"}
    assert not {"x", "y"} & set(zarr.open_group(layout.zarr, mode="r").metadata.consolidated_metadata.metadata)
    store = xr.open_zarr(layout.zarr, consolidated=True)
    assert "x" not in store.variables and "y" not in store.variables
    _assert_per_observation_coordinates(store, observations)
