"""A map-style torch dataset over a corpus version, read through its public format only.

The index (observations of the split, grouped by location) is built once from the version's
observations table; ``__getitem__`` makes one Zarr read per view and never lists directories.
``read_batch`` fills caller-owned buffers with a whole batch, as raw int16 counts or as normalised
float32 (what :class:`training.loader.PatchLoader`'s workers do). Each process (every DataLoader
worker) makes its own patch reader (``training.shards``); in a worker blosc decodes on the worker's
own thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset, get_worker_info

from spectral_corpus.corpus_files import CorpusFiles, corpus_files, is_object_store
from spectral_corpus.corpus_format import (
    PATCH_ARRAY,
    PIXEL_M,
    current_version,
    read_manifest,
    read_metadata,
    read_table,
    table_key,
)
from spectral_corpus.training.errors import TrainConfigError
from spectral_corpus.training.shards import PatchReader

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
_UNITS = ("location", "observation")
#: Sample keys of the views, in order.
VIEW_KEYS = ("image", "image2")


class CorpusDataset(Dataset[dict[str, Any]]):
    """Patches of one split of a corpus, as torchgeo-style sample dicts.

    ``unit="location"``: one item per location (a random date per item, two different dates when
    ``views=2`` and the stack has them, else the same date twice); ``unit="observation"``: one item
    per patch. Items: ``image`` float32 (C, H, W) (normalised with the corpus statistics when
    ``normalize``), ``image2`` when ``views=2``, ``x``/``y`` (patch centre, map units of ``epsg``),
    ``t`` (acquisition, seconds since 1970), ``wavelength`` (micrometres), ``res`` (m),
    ``location_id``, ``obs``. ``bands`` selects corpus band positions (0-based). ``transforms`` act on
    the raw int16 counts, before normalisation, and must return int16. Randomness is seeded from (seed, epoch, index): a
    sampler may pass ``epoch * len(dataset) + index`` to vary it by epoch.
    """

    def __init__(
        self,
        corpus: str | Path,
        split: str | None = "train",
        unit: str = "location",
        views: int = 1,
        bands: Sequence[int] | None = None,
        normalize: bool = True,
        transforms: Transform | None = None,
        version: int | None = None,
        seed: int = 0,
    ) -> None:
        if unit not in _UNITS or views not in (1, 2):
            raise ValueError(f"unit must be one of {_UNITS} and views 1 or 2; got unit={unit!r}, views={views}")
        self.root = corpus if is_object_store(corpus) else Path(corpus)
        files = corpus_files(self.root)
        self.unit, self.normalize, self.transforms, self.seed = unit, normalize, transforms, seed
        self.view_keys = VIEW_KEYS[:views]
        metadata = read_metadata(files)
        self.version = current_version(files) if version is None else version
        manifest = read_manifest(files, self.version)
        observations = _observations(files, self.version, manifest.format_version, split)
        self._obs = observations["obs"].to_numpy(np.int64)
        self._meta = observations[["location_id", "x", "y", "t", "epsg", "shard"]].to_numpy(np.int64)
        starts = np.flatnonzero(np.r_[True, np.diff(observations["location_id"].to_numpy()) != 0])
        self._stack_start = starts
        self._stack_size = np.diff(np.r_[starts, len(observations)])
        all_bands = np.asarray(metadata.bands["center_nm"], dtype=np.float32) / 1000
        self.bands = np.arange(len(all_bands)) if bands is None else np.asarray(bands, dtype=np.int64)
        self.wavelength = torch.from_numpy(all_bands[self.bands])
        #: The band positions to take from a stored patch, or None when it is every band in order.
        self._band_take = None if np.array_equal(self.bands, np.arange(len(all_bands))) else self.bands
        stats = manifest.stats
        self._mean = np.asarray(stats.mean, dtype=np.float32)[self.bands].reshape(-1, 1, 1)
        self._inv_std = 1 / np.maximum(np.asarray(stats.std, dtype=np.float32)[self.bands], 1e-6).reshape(-1, 1, 1)
        self._normalize = Normalize(self._mean, self._inv_std)  # the same arithmetic as PatchLoader's
        self._reader: PatchReader | None = None
        self._patch_buffer: np.ndarray | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self._stack_start) if self.unit == "location" else len(self._obs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rows, generator = self._draw(index)
        sample = self._metadata(rows[0])
        for key, row in zip(self.view_keys, rows, strict=True):
            image = self._raw(row, generator)
            sample[key] = self._normalize(image) if self.normalize else image.float()
        return sample

    def read_batch(self, indices: Sequence[int], out: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Write the images of the items at ``indices`` into ``out[key][k]`` for each view key.

        The items are those ``__getitem__`` gives (same dates, same transforms). An int16 ``out[key]``
        receives the raw counts; a float32 one the counts normalised with the corpus statistics, patch
        by patch as each is decoded (:meth:`normalizer`'s arithmetic: bit for bit what ``__getitem__``
        gives with ``normalize=True``), whatever this dataset's ``normalize``. Returns the batch's
        other keys, stacked as ``default_collate`` would.
        """
        for key in self.view_keys:
            if out[key].dtype not in (np.int16, np.float32):
                raise TypeError(
                    f"read_batch writes {key!r} as int16 counts or normalised float32, not {out[key].dtype}"
                )
        first_rows = []
        for k, index in enumerate(indices):
            rows, generator = self._draw(index)
            first_rows.append(rows[0])
            for key, row in zip(self.view_keys, rows, strict=True):
                target = out[key][k]
                if target.dtype == np.float32:
                    self._normalize(self._counts(row, generator), out=torch.from_numpy(target))
                else:
                    self._raw(row, generator, target)
        return self._batch_metadata(np.asarray(first_rows, dtype=np.int64))

    def image_shape(self) -> tuple[int, ...]:
        """Shape (C, H, W) of an item's images: the selected bands, after the transforms."""
        patch_shape = self._patches().patch_shape
        probe = torch.zeros((len(self.bands), *patch_shape[1:]), dtype=torch.int16)
        if self.transforms:
            probe = self.transforms(probe, torch.Generator().manual_seed(0))
        return tuple(probe.shape)

    def normalizer(self) -> Normalize:
        """The corpus statistics as a module that turns raw counts into normalised float32 images."""
        return Normalize(self._mean, self._inv_std)

    def shard_groups(self) -> list[np.ndarray]:
        """Item indices grouped by the shard that holds them (a location by its first date's shard)."""
        first_rows = self._stack_start if self.unit == "location" else np.arange(len(self._obs))
        shards = self._meta[first_rows, 5]
        order = np.argsort(shards, kind="stable")
        bounds = np.flatnonzero(np.diff(shards[order])) + 1
        return [group for group in np.split(order, bounds) if len(group)]

    def _draw(self, index: int) -> tuple[list[int], torch.Generator]:
        """The observation rows of item ``index`` (one per view) and the generator for its transforms."""
        epoch, index = divmod(int(index), len(self))
        generator = torch.Generator().manual_seed(hash((self.seed, epoch, index)) & 0x7FFFFFFF)
        return self._pick_rows(index, generator), generator

    def _pick_rows(self, index: int, generator: torch.Generator) -> list[int]:
        views = len(self.view_keys)
        if self.unit == "observation":
            return [index] * views
        start, size = int(self._stack_start[index]), int(self._stack_size[index])
        if views == 2 and size > 1:
            first, second = torch.randperm(size, generator=generator)[:2].tolist()
            return [start + first, start + second]
        return [start + int(torch.randint(size, (1,), generator=generator))] * views

    def _metadata(self, row: int) -> dict[str, Any]:
        return {key: value[0] for key, value in self._batch_metadata(np.asarray([row])).items()}

    def _batch_metadata(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        location_id, x, y, t, epsg, _ = torch.from_numpy(self._meta[rows]).T
        return {
            "x": x.float(),
            "y": y.float(),
            "t": t.clone(),
            "epsg": epsg.clone(),
            "wavelength": self.wavelength.expand(len(rows), -1).clone(),
            "res": torch.full((len(rows),), float(PIXEL_M)),
            "location_id": location_id.clone(),
            "obs": torch.from_numpy(self._obs[rows]),
        }

    def _raw(self, row: int, generator: torch.Generator, out: np.ndarray | None = None) -> torch.Tensor:
        """Raw int16 counts of observation row ``row``: selected bands, transformed (into ``out`` if given)."""
        direct = out is not None and not self.transforms and self._band_take is None
        patch = self._patches().read(int(self._obs[row]), out if direct else None)
        if self._band_take is not None:
            patch = patch[self._band_take]
        image = counts = torch.from_numpy(patch)
        if self.transforms:
            image = self.transforms(counts, generator)
            if image.dtype != counts.dtype:
                raise TypeError(
                    f"transform {self.transforms!r} returned {image.dtype}: transforms act on the raw "
                    f"{patch.dtype} counts and must return that dtype (normalisation comes after them)"
                )
        if out is not None and not direct:
            out[...] = image.numpy()
        return image

    def _counts(self, row: int, generator: torch.Generator) -> torch.Tensor:
        """What ``_raw`` gives, in this process's reused patch buffer when nothing reshapes the patch.

        Without a band selection or transforms the patch is decoded straight into that buffer, and the
        result is valid until the next call.
        """
        plain = not self.transforms and self._band_take is None
        return self._raw(row, generator, self._patch_scratch() if plain else None)

    def _patch_scratch(self) -> np.ndarray:
        """One stored patch's worth of counts, allocated once per process (never shared across a fork)."""
        reader = self._patches()
        if self._patch_buffer is None:
            self._patch_buffer = np.empty(reader.patch_shape, dtype=reader.dtype)
        return self._patch_buffer

    def _patches(self) -> PatchReader:
        """The patch reader, made once per process (never shared across a fork)."""
        if self._reader is None or self._pid != os.getpid():
            if get_worker_info() is not None:
                numcodecs.blosc.use_threads = False  # one decode thread per worker, like torch's own ops
            root = self.root
            self._reader = PatchReader(f"{root}/{PATCH_ARRAY}" if isinstance(root, str) else root / PATCH_ARRAY)
            self._patch_buffer = None
            self._pid = os.getpid()
        return self._reader

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_reader"] = state["_patch_buffer"] = None
        return state


class Normalize(nn.Module):
    """``(x - mean) / std`` per band, as float32, on whatever device the module and input are on."""

    mean: torch.Tensor
    inv_std: torch.Tensor

    def __init__(self, mean: np.ndarray, inv_std: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1))
        self.register_buffer("inv_std", torch.as_tensor(inv_std, dtype=torch.float32).reshape(-1, 1, 1))

    def forward(self, image: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Normalise raw counts (C, H, W) or (B, C, H, W) into a new float32 tensor, or into ``out``.

        ``out``: float32, the shape of ``image``, on its device (a ring slot, say); it is returned.
        Each element is ``(float32(count) - mean) * inv_std``, rounded after each step, wherever it runs.
        """
        if out is None:
            if image.device.type == "cpu":
                # numpy asks for transparent huge pages on large arrays: a fresh batch faults far fewer pages
                out = torch.from_numpy(np.empty(tuple(image.shape), dtype=np.float32))
            else:
                out = torch.empty_like(image, dtype=torch.float32)
        out.copy_(image)  # torch has no fast kernel for int16 - float32 with broadcasting: convert, then in place
        return out.sub_(self.mean).mul_(self.inv_std)


def _observations(files: CorpusFiles, version: int, format_version: int, split: str | None) -> pd.DataFrame:
    """Observations of the split, location-major and by date, with time in seconds."""
    columns = ["obs", "shard", "location_id", "split", "acquired", "epsg", "x", "y"]
    table = read_table(files, table_key(version, "observations"), "observations", format_version, columns)
    if split is not None:
        if split not in set(table["split"]):
            raise TrainConfigError(f"{files.root}: version {version} has no observations in split {split!r}")
        table = table[table["split"] == split]
    table = table.assign(t=table["acquired"].astype("datetime64[s, UTC]").astype("int64"))
    return table.sort_values(["location_id", "acquired", "obs"]).reset_index(drop=True)
