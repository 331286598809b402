"""A map-style torch dataset over a corpus version, read through its public format only.

The index (observations of the split, grouped by location) is built once from the version's
observations table; ``__getitem__`` makes one Zarr read per view and never lists directories.
Each process (every DataLoader worker) makes its own patch reader (``training.shards``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from training.shards import PatchReader

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
_UNITS = ("location", "observation")
_PIXEL_M = 30.0


class CorpusDataset(Dataset[dict[str, Any]]):
    """Patches of one split of a corpus, as torchgeo-style sample dicts.

    ``unit="location"``: one item per location (a random date per item, two different dates when
    ``views=2`` and the stack has them, else the same date twice); ``unit="observation"``: one item
    per patch. Items: ``image`` float32 (C, H, W) (normalised with the corpus statistics when
    ``normalize``), ``image2`` when ``views=2``, ``x``/``y`` (patch centre, map units of ``epsg``),
    ``t`` (acquisition, seconds since 1970), ``wavelength`` (micrometres), ``res`` (m),
    ``location_id``, ``obs``. ``bands`` selects corpus band positions (0-based). Randomness is seeded
    from (seed, epoch, index): a sampler may pass ``epoch * len(dataset) + index`` to vary it by epoch.
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
        self.root = Path(corpus)
        self.unit, self.views, self.normalize, self.transforms, self.seed = unit, views, normalize, transforms, seed
        manifest = _manifest(self.root, version)
        self.version = int(manifest["version"])
        observations = _observations(self.root, self.version, split)
        self._obs = observations["obs"].to_numpy(np.int64)
        self._meta = observations[["location_id", "x", "y", "t", "epsg", "shard"]].to_numpy(np.int64)
        starts = np.flatnonzero(np.r_[True, np.diff(observations["location_id"].to_numpy()) != 0])
        self._stack_start = starts
        self._stack_size = np.diff(np.r_[starts, len(observations)])
        metadata = json.loads((self.root / "corpus.json").read_text())
        all_bands = np.asarray(metadata["bands"]["center_nm"], dtype=np.float32) / 1000
        self.bands = np.arange(len(all_bands)) if bands is None else np.asarray(bands, dtype=np.int64)
        self.wavelength = torch.from_numpy(all_bands[self.bands])
        stats = manifest["stats"]
        self._mean = np.asarray(stats["mean"], dtype=np.float32)[self.bands].reshape(-1, 1, 1)
        self._inv_std = 1 / np.maximum(np.asarray(stats["std"], dtype=np.float32)[self.bands], 1e-6).reshape(-1, 1, 1)
        self._reader: PatchReader | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self._stack_start) if self.unit == "location" else len(self._obs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        epoch, index = divmod(int(index), len(self))
        generator = torch.Generator().manual_seed(hash((self.seed, epoch, index)) & 0x7FFFFFFF)
        rows = self._pick_rows(index, generator)
        sample = self._metadata(rows[0])
        for key, row in zip(("image", "image2"), rows, strict=False):
            image = self._read(int(self._obs[row]))
            sample[key] = self.transforms(image, generator) if self.transforms else image
        return sample

    def shard_groups(self) -> list[np.ndarray]:
        """Item indices grouped by the shard that holds them (a location by its first date's shard)."""
        first_rows = self._stack_start if self.unit == "location" else np.arange(len(self._obs))
        shards = self._meta[first_rows, 5]
        order = np.argsort(shards, kind="stable")
        bounds = np.flatnonzero(np.diff(shards[order])) + 1
        return [group for group in np.split(order, bounds) if len(group)]

    def _pick_rows(self, index: int, generator: torch.Generator) -> list[int]:
        if self.unit == "observation":
            return [index] * self.views
        start, size = int(self._stack_start[index]), int(self._stack_size[index])
        if self.views == 2 and size > 1:
            first, second = torch.randperm(size, generator=generator)[:2].tolist()
            return [start + first, start + second]
        return [start + int(torch.randint(size, (1,), generator=generator))] * self.views

    def _metadata(self, row: int) -> dict[str, Any]:
        location_id, x, y, t, epsg, _ = (int(v) for v in self._meta[row])
        return {
            "x": torch.tensor(float(x)),
            "y": torch.tensor(float(y)),
            "t": torch.tensor(t),
            "epsg": torch.tensor(epsg),
            "wavelength": self.wavelength,
            "res": torch.tensor(_PIXEL_M),
            "location_id": torch.tensor(location_id),
            "obs": torch.tensor(int(self._obs[row])),
        }

    def _read(self, obs: int) -> torch.Tensor:
        patch = self._patches().read(obs)
        if len(self.bands) != patch.shape[0]:
            patch = patch[self.bands]
        image = patch.astype(np.float32)
        if self.normalize:  # in place, in numpy: one pass each, no temporaries
            image -= self._mean
            image *= self._inv_std
        return torch.from_numpy(image)

    def _patches(self) -> PatchReader:
        """The patch reader, made once per process (never shared across a fork)."""
        if self._reader is None or self._pid != os.getpid():
            self._reader = PatchReader(self.root / "patches.zarr" / "patches")
            self._pid = os.getpid()
        return self._reader

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_reader"] = None
        return state


def _manifest(root: Path, version: int | None) -> dict[str, Any]:
    if not (root / "corpus.json").exists():
        raise FileNotFoundError(f"{root} is not a corpus: corpus.json is missing")
    if version is None:
        version = int(json.loads((root / "CURRENT").read_text())["version"])
    path = root / "versions" / f"v{version:04d}" / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{root}: version {version} does not exist")
    manifest: dict[str, Any] = json.loads(path.read_text())
    return manifest


def _observations(root: Path, version: int, split: str | None) -> pd.DataFrame:
    """Observations of the split, location-major and by date, with time in seconds."""
    path = root / "versions" / f"v{version:04d}" / "observations.parquet"
    columns = ["obs", "shard", "location_id", "split", "acquired", "epsg", "x", "y"]
    table = pd.read_parquet(path, columns=columns)
    if split is not None:
        if split not in set(table["split"]):
            raise ValueError(f"{root}: version {version} has no observations in split {split!r}")
        table = table[table["split"] == split]
    table = table.assign(t=table["acquired"].astype("datetime64[s, UTC]").astype("int64"))
    return table.sort_values(["location_id", "acquired", "obs"]).reset_index(drop=True)
