"""The corpus in xarray: one version's patches, whose selections carry their CRS and transform for rioxarray.

The store cannot carry them itself: CF gives a variable one grid mapping, while a corpus spans many UTM
zones with one transform per patch. So ``patches.zarr`` keeps each patch's EPSG code and centre along
``obs`` (``corpus_format.OBS_COORDINATES``), and ``open_patches`` puts them behind two kinds of xarray index
that follow every ``isel`` and ``sel``:

- ``spatial_ref`` (rioxarray's name for the CF grid mapping) holds each patch's EPSG code; once a selection
  has one code, its attributes are that CRS's (``crs_wkt``, ``spatial_ref``, the CF parameters);
- ``x`` and ``y`` hold pixel-centre map coordinates once a selection has one patch centre (NaN while it
  has several), derived from ``centre_x`` and ``centre_y``.

So one patch, or the dates of one location, is georeferenced as it is selected::

    ds = open_patches("CORPUS")
    patch = ds.patches.isel(obs=0)             # or .sel(obs=n), n as in the observations table
    patch.rio.crs, patch.rio.transform()       # EPSG:326zz and the patch's 30 m transform
    patch.rio.to_raster("patch.tif")

``x`` and ``y`` stay tied to their centre: an operation that replaces them (``assign_coords(x=...)``,
``rio.pad_box``) needs ``.corpus.standalone()`` first, the selection with ordinary indexes.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from xarray.indexes import PandasIndex

from spectral_corpus.corpus_format import PATCH_PX, PIXEL_M, ZARR
from spectral_corpus.pipeline.reader import CorpusReader

if TYPE_CHECKING:
    from xarray.core.indexing import IndexSelResult

OBS = "obs"
#: The grid-mapping coordinate: rioxarray's default name.
GRID_MAPPING = "spatial_ref"
#: Pixel axes and how their map coordinate runs with the pixel index (x east with columns, y south with rows).
AXES = {"x": 1, "y": -1}
_CENTRE = "patch centre {} in the patch's UTM zone (EPSG code in `epsg`)"
_PIXEL = "pixel-centre {} in the patch's UTM zone (NaN while the selection spans several patch centres)"

Indexer = int | slice | np.ndarray | xr.Variable
T = TypeVar("T", xr.DataArray, xr.Dataset)


def open_patches(corpus: Path | str, version: int | None = None) -> xr.Dataset:
    """The patches of a corpus version (the current one by default), georeferenced per selection.

    ``patches`` has dimensions ``obs`` (the version's observations in ``obs`` order; coordinate ``obs`` is the
    observations table's), ``band``, ``y``, ``x``. Per observation, from the version's own table: ``time``,
    ``location_id``, ``scene_id``, ``split``, ``epsg``, ``centre_x``, ``centre_y`` and ``spatial_ref``.
    ``corpus`` is a folder or an object-store URL; stores of any format version open.

    Patches are read lazily, by xarray's lazy indexing rather than Dask: a selection reads its patches only,
    and leaving out the rows the version does not list costs nothing (Dask's fancy indexing over one chunk
    per patch took 27 s for 200,000 patches). ``.chunk(obs=N)`` makes them Dask arrays.
    """
    reader = CorpusReader(corpus, version)
    table = reader.table("observations").sort_values("obs")
    store = xr.open_zarr(reader.files.zarr_store(under=ZARR), chunks=None)
    per_obs = [name for name, variable in store.variables.items() if variable.dims == (OBS,)]  # newest version's
    ds = store.drop_vars(per_obs).isel({OBS: table["obs"].to_numpy()})
    ds["patches"].encoding.pop("coordinates", None)
    crs = _CrsIndex(table["epsg"].to_numpy(np.int64))
    axes = [_AxisIndex(axis, table[axis].to_numpy(np.float64), np.arange(ds.sizes[axis])) for axis in AXES]
    grid = xr.Coordinates(
        {name: variable for index in (crs, *axes) for name, variable in index.create_variables().items()},
        indexes={GRID_MAPPING: crs, **{name: axis for axis in axes for name in axis.names}},
    )
    per_observation = {
        OBS: table["obs"].to_numpy(),
        "time": (OBS, table["acquired"].dt.tz_convert(None).to_numpy()),
        **{name: (OBS, table[name].to_numpy()) for name in ("location_id", "scene_id", "split", "epsg")},
    }
    return ds.assign_coords(per_observation).assign_coords(grid).assign_attrs(version=reader.version)


@xr.register_dataset_accessor("corpus")
@xr.register_dataarray_accessor("corpus")
class CorpusAccessor(Generic[T]):
    """``.corpus`` of what ``open_patches`` gives, and of its selections."""

    def __init__(self, obj: T) -> None:
        self._obj: T = obj

    def standalone(self) -> T:
        """The selection with ordinary indexes: ``x``, ``y`` pandas-indexed, ``spatial_ref``, ``centre_x`` and
        ``centre_y`` plain coordinates (values and attributes as they are), so ``x`` and ``y`` can be replaced."""
        ours = [name for name, index in self._obj.xindexes.items() if isinstance(index, _CrsIndex | _AxisIndex)]
        plain = self._obj.drop_indexes(ours)
        return plain.assign_coords({axis: plain[axis].variable for axis in AXES if axis in plain.dims})


class _CrsIndex(xr.Index):
    """Index of ``spatial_ref``, each patch's EPSG code: the CRS's attributes once the selection has one code."""

    def __init__(self, epsg: np.ndarray) -> None:
        self.epsg = epsg

    def create_variables(self, variables: Mapping[Any, xr.Variable] | None = None) -> dict[Hashable, xr.Variable]:
        code = _single(self.epsg)
        attrs = dict(_crs_attrs(int(code))) if code is not None else {"long_name": "EPSG code of the patch's CRS"}
        return {GRID_MAPPING: xr.Variable(_dims(self.epsg, OBS), self.epsg, attrs)}

    def isel(self, indexers: Mapping[Any, Indexer]) -> Self | None:
        epsg = _take(self.epsg, indexers[OBS], OBS)
        return None if epsg is None else type(self)(epsg)

    def equals(self, other: xr.Index, **kwargs: Any) -> bool:
        return isinstance(other, _CrsIndex) and np.array_equal(self.epsg, other.epsg)

    def to_pandas_index(self) -> pd.Index:
        return pd.Index(self.epsg.reshape(-1), name=GRID_MAPPING)


class _AxisIndex(xr.Index):
    """Index of ``x`` (or ``y``) and the patch centres ``centre_x`` (``centre_y``) it derives from."""

    def __init__(self, axis: str, centres: np.ndarray, pixels: np.ndarray) -> None:
        self.axis, self.centres, self.pixels = axis, centres, pixels
        self.names = (f"centre_{axis}", axis)

    def coordinates(self) -> np.ndarray:
        """Map coordinates of the pixel centres; NaN unless the selection has one patch centre."""
        centre = _single(self.centres)
        if centre is None:
            return np.full(self.pixels.shape, np.nan)
        return centre + AXES[self.axis] * (PIXEL_M * (self.pixels + 0.5) - PATCH_PX * PIXEL_M / 2)

    def create_variables(self, variables: Mapping[Any, xr.Variable] | None = None) -> dict[Hashable, xr.Variable]:
        direction = "easting" if self.axis == "x" else "northing"
        centre_attrs = {"long_name": _CENTRE.format(direction), "units": "m"}
        pixel_attrs = {"long_name": _PIXEL.format(direction), "units": "m"}
        centres, pixels = self.names
        return {
            centres: xr.Variable(_dims(self.centres, OBS), self.centres, centre_attrs),
            pixels: xr.Variable(_dims(self.pixels, self.axis), self.coordinates(), pixel_attrs),
        }

    def isel(self, indexers: Mapping[Any, Indexer]) -> Self | None:
        centres = _take(self.centres, indexers[OBS], OBS) if OBS in indexers else self.centres
        pixels = _take(self.pixels, indexers[self.axis], self.axis) if self.axis in indexers else self.pixels
        return None if centres is None or pixels is None else type(self)(self.axis, centres, pixels)

    def sel(self, labels: dict[Any, Any], method: Any = None, tolerance: Any = None) -> IndexSelResult:
        if set(labels) != {self.axis}:
            raise KeyError(f"select patches by their centre with isel or where, not sel({', '.join(labels)}=...)")
        if _single(self.centres) is None:
            raise KeyError(f"{self.axis} is known once the selection has one patch centre: select a patch first")
        return PandasIndex(self.to_pandas_index(), self.axis).sel(labels, method=method, tolerance=tolerance)

    def equals(self, other: xr.Index, **kwargs: Any) -> bool:
        return (
            isinstance(other, _AxisIndex)
            and other.axis == self.axis
            and np.array_equal(self.centres, other.centres)
            and np.array_equal(self.pixels, other.pixels)
        )

    def to_pandas_index(self) -> pd.Index:
        return pd.Index(self.coordinates().reshape(-1), name=self.axis)


@lru_cache
def _crs_attrs(epsg: int) -> dict[str, Any]:
    """The attributes rioxarray gives the grid mapping of a CRS (CF parameters, ``crs_wkt``, ``spatial_ref``)."""
    return dict(xr.DataArray(0).rio.write_crs(f"EPSG:{epsg}").coords[GRID_MAPPING].attrs)


def _single(values: np.ndarray) -> Any:
    """The one value all of ``values`` hold, or None when they differ."""
    flat = values.reshape(-1)
    return flat[0].item() if flat.size and (flat == flat[0]).all() else None


def _take(values: np.ndarray, indexer: Indexer, dim: str) -> np.ndarray | None:
    """``values`` selected as ``isel`` selects along ``dim``; None for vectorised indexing onto new dimensions."""
    if isinstance(indexer, xr.Variable):
        if indexer.ndim and indexer.dims != (dim,):
            return None
        indexer = indexer.data
    return np.asarray(values[indexer])


def _dims(values: np.ndarray, dim: str) -> tuple[str, ...]:
    return (dim,) if values.ndim else ()
