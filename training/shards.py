"""Read one patch from a sharded Zarr v3 array with one positioned read and one decode.

The corpus's patch array uses the standard ``sharding_indexed`` codec (Zarr v3 spec): each shard
file ends with an index of (offset, nbytes) uint64 pairs, one per inner chunk, followed by its
CRC32C. A loader reads one inner chunk (one patch) per item, so the per-read overhead of a general
Zarr library dominates: zarr-python, the zarrs pipeline and tensorstore all cost several
milliseconds per patch on top of the blosc decode (see bench/README.md). This reader caches each
shard's index, reads the chunk's bytes with one ranged read (``os.pread`` on disk, one ranged GET from an
object store; see ``corpus_files``) and decodes them with numcodecs into a fresh array or the caller's
buffer. Stores with any other layout are read through zarr-python.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import google_crc32c
import numcodecs
import numpy as np
import zarr

from spectral_corpus.corpus_files import corpus_files
from spectral_corpus.corpus_format import shard_key
from spectral_corpus.training.errors import CorruptShardError

_EMPTY = np.uint64(2**64 - 1)


class PatchReader:
    """Patches (band, y, x) of a patch array by observation index; safe to create per process."""

    def __init__(self, array: str | Path) -> None:
        self.files = corpus_files(array)
        meta = json.loads(self.files.read("zarr.json"))
        self.patch_shape = tuple(meta["shape"][1:])
        self.dtype = np.dtype(meta["data_type"])
        self.fill_value = meta["fill_value"]
        self._fast = _fast_layout(meta)
        self._array: zarr.Array | None = None
        if self._fast is None:
            self._array = zarr.open_array(self.files.zarr_store(), mode="r")
        self._index = lru_cache(maxsize=64)(self._read_index)

    def read(self, obs: int, out: np.ndarray | None = None) -> np.ndarray:
        """The patch of observation ``obs``, decoded into ``out`` when given (C-contiguous, patch shape)."""
        out = np.empty(self.patch_shape, dtype=self.dtype) if out is None else out
        if self._fast is None:
            assert self._array is not None
            out[...] = self._array[obs]
            return out
        shard_size, codec = self._fast
        shard, slot = divmod(obs, shard_size)
        index = self._index(shard)
        offset, nbytes = index[slot]
        if offset == _EMPTY:
            out.fill(self.fill_value)
            return out
        codec.decode(self.files.read_range(shard_key(shard), int(offset), int(nbytes)), out=out)
        return out

    def _read_index(self, shard: int) -> np.ndarray:
        shard_size = self._fast[0] if self._fast else 0
        size, key = shard_size * 16 + 4, shard_key(shard)
        raw = self.files.read_range(key, self.files.size(key) - size, size)
        body, crc = raw[:-4], int.from_bytes(raw[-4:], "little")
        if google_crc32c.value(body) != crc:
            raise CorruptShardError(f"{self.files.root}/{key}: shard index checksum mismatch (corrupt shard)")
        return np.frombuffer(body, dtype="<u8").reshape(shard_size, 2)


def _fast_layout(meta: dict) -> tuple[int, numcodecs.abc.Codec] | None:
    """(shard size, inner codec) when the array has exactly the corpus's layout, else None."""
    try:
        (sharding,) = meta["codecs"]
        config = sharding["configuration"]
        inner, blosc = config["codecs"]
        index_codecs = [c["name"] for c in config["index_codecs"]]
        shape, chunk = meta["chunk_grid"]["configuration"]["chunk_shape"], config["chunk_shape"]
        fits = (
            sharding["name"] == "sharding_indexed"
            and config.get("index_location", "end") == "end"
            and index_codecs == ["bytes", "crc32c"]
            and inner["name"] == "bytes"
            and inner["configuration"]["endian"] == "little"
            and blosc["name"] == "blosc"
            and chunk[0] == 1
            and list(chunk[1:]) == list(shape[1:]) == list(meta["shape"][1:])
            and meta["chunk_key_encoding"]["name"] == "default"
        )
    except (KeyError, ValueError, TypeError):
        return None
    if not fits:
        return None
    return int(shape[0]), numcodecs.Blosc(cname=blosc["configuration"]["cname"])
