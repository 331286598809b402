"""Write the patch array of a corpus (Zarr v3, layout in ``spectral_corpus.corpus_format``) and its documents."""

from __future__ import annotations

import hashlib
import warnings
from typing import Any

import numpy as np
import zarr
from zarr.abc.store import Store
from zarr.codecs import BloscCodec, BloscShuffle, BytesCodec
from zarr.core.buffer import Buffer
from zarr.storage import WrapperStore

from spectral_corpus.corpus_files import CorpusFiles
from spectral_corpus.corpus_format import PATCH_PX, PATCHES, ZARR, FormatError

#: Inner-chunk compression: blosc zstd with byte shuffle (lossless; any Zarr v3 reader decodes it).
PATCH_COMPRESSOR = BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.shuffle, typesize=2)


def create_patch_array(
    files: CorpusFiles, n_obs: int, wavelengths: np.ndarray, fwhm: np.ndarray, bands: np.ndarray, shard_size: int
) -> zarr.Array:
    """Create the patch array and its band coordinates, or grow an existing one to ``n_obs`` rows.

    Growing rewrites only the array's metadata document (atomically): existing shards stay as they are.
    """
    root = _open_group(files)
    if PATCHES in root:
        array = root[PATCHES]
        assert isinstance(array, zarr.Array)
        if array.shape[1:] != (len(bands), PATCH_PX, PATCH_PX) or (array.shards or (0,))[0] != shard_size:
            raise FormatError(f"{files.root}/{ZARR}: existing patch array {array.shape} has another layout")
        if array.shape[0] < n_obs:
            array.resize((n_obs, *array.shape[1:]))
        _band_coordinates(root, wavelengths, fwhm, bands)  # a creation killed midway may have missed them
        return array
    array = root.create_array(
        PATCHES,
        shape=(n_obs, len(bands), PATCH_PX, PATCH_PX),
        chunks=(1, len(bands), PATCH_PX, PATCH_PX),
        shards=(shard_size, len(bands), PATCH_PX, PATCH_PX),
        dtype="int16",
        fill_value=-32768,
        serializer=BytesCodec(endian="little"),
        compressors=[PATCH_COMPRESSOR],
        dimension_names=["obs", "band", "y", "x"],
        attributes={"units": "reflectance x 10000", "scale_factor_reflectance": 1e-4, "nodata": -32768},
    )
    _band_coordinates(root, wavelengths, fwhm, bands)
    return array


def _band_coordinates(root: zarr.Group, wavelengths: np.ndarray, fwhm: np.ndarray, bands: np.ndarray) -> None:
    """Write the per-band coordinates that are missing."""
    for name, values, attributes in (
        ("wavelength", wavelengths / 1000.0, {"units": "micrometre"}),
        ("fwhm", fwhm / 1000.0, {"units": "micrometre"}),
        ("band", bands.astype("int16"), {"long_name": "EnMAP L2A band number (1-based)"}),
    ):
        if name not in root:
            _band_coordinate(root, name, values, attributes)


def _band_coordinate(root: zarr.Group, name: str, values: np.ndarray, attributes: dict[str, Any]) -> None:
    array = root.create_array(
        name, shape=values.shape, dtype=values.dtype, dimension_names=["band"], attributes=attributes, compressors=None
    )
    array[:] = values


def _open_group(files: CorpusFiles) -> zarr.Group:
    """The corpus's zarr group, opened in a store of its own: nothing is written above it."""
    return zarr.open_group(files.zarr_store(writable=True, under=ZARR), mode="a", zarr_format=3, use_consolidated=False)


def write_obs_coordinates(
    files: CorpusFiles, obs: np.ndarray, columns: dict[str, np.ndarray], attributes: dict[str, dict[str, Any]]
) -> None:
    """Write per-observation coordinates (one value per row of the patch array; -1 where no row is listed).

    Arrays are grown in place and their chunks replaced file by file (atomically), so a reader opening the
    store meanwhile always finds them. Any other array along ``obs`` alone is stale (such as the ``x``, ``y``
    that stores held before the patch centre became ``centre_x``, ``centre_y``): it is removed once the new
    arrays are written, and the consolidated metadata lists only what remains.
    """
    root = _open_group(files)
    patches = root[PATCHES]
    assert isinstance(patches, zarr.Array)
    n_rows = patches.shape[0]
    for name, values in columns.items():
        full = np.full(n_rows, -1, dtype=values.dtype)
        full[obs] = values
        if name in root:
            array = root[name]
            assert isinstance(array, zarr.Array)
            array.resize((n_rows,))
        else:
            array = root.create_array(
                name,
                shape=(n_rows,),
                dtype=values.dtype,
                dimension_names=["obs"],
                chunks=(1 << 16,),
                fill_value=-1,
                attributes=attributes.get(name, {}),
            )
        array[:] = full
    patches.attrs["coordinates"] = " ".join(["wavelength", "fwhm", "band", *columns])
    for name, other in list(root.arrays()):
        if name not in columns and getattr(other.metadata, "dimension_names", None) == ("obs",):
            del root[name]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(files.zarr_store(writable=True, under=ZARR))


class DigestingStore(WrapperStore[Store]):
    """A zarr store that remembers the size and SHA-256 of each value written through it: a shard's
    checksum without reading the shard back (from a bucket, a second transfer of it)."""

    def __init__(self, store: Store, written: dict[str, tuple[int, str]] | None = None) -> None:
        super().__init__(store)
        #: Key -> (size in bytes, hex SHA-256) of the last value written.
        self.written = {} if written is None else written

    def _with_store(self, store: Store) -> DigestingStore:
        return type(self)(store, self.written)

    async def set(self, key: str, value: Buffer) -> None:
        data = value.to_bytes()
        self.written[key] = (len(data), hashlib.sha256(data).hexdigest())
        await self._store.set(key, value)
