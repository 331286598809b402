"""Per-band mean and standard deviation, shard by shard, merged with the pooled-variance formula.

Each patch's moments come from exact integer sums (int16 values, int64 sums), so its mean and sum of
squared deviations carry no rounding beyond one float conversion; patches and then shards are merged
with the pooled-variance formula (Chan et al.), exact in exact arithmetic and stable in floating point.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import zarr

from spectral_corpus.catalog.bands import NODATA
from spectral_corpus.corpus_files import CorpusFiles
from spectral_corpus.corpus_format import PATCH_ARRAY


@dataclass(frozen=True)
class Moments:
    """Per-band pixel count, mean and sum of squared deviations (M2)."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, n_bands: int) -> Moments:
        return cls(np.zeros(n_bands, np.int64), np.zeros(n_bands), np.zeros(n_bands))

    def merge(self, other: Moments) -> Moments:
        """The moments of both sets together (pooled variance)."""
        count = self.count + other.count
        safe = np.maximum(count, 1)
        delta = other.mean - self.mean
        mean = self.mean + delta * other.count / safe
        m2 = self.m2 + other.m2 + delta**2 * self.count * other.count / safe
        return Moments(count, mean, m2)

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation per band."""
        return np.sqrt(self.m2 / np.maximum(self.count, 1))


def patch_moments(patch: np.ndarray) -> Moments:
    """Moments of one int16 patch (band, y, x), ignoring nodata pixels, from exact integer sums."""
    values = patch.reshape(patch.shape[0], -1)
    valid = values != NODATA
    wide = np.where(valid, values, 0).astype(np.int64)
    count = valid.sum(axis=1, dtype=np.int64)
    s1 = wide.sum(axis=1)
    s2 = (wide * wide).sum(axis=1)
    safe = np.maximum(count, 1)
    mean = s1 / safe
    # n * M2 = n * S2 - S1^2 exactly in integers (python ints: no overflow), then one division.
    m2 = np.array([(int(n) * int(q) - int(s) ** 2) / max(int(n), 1) for n, q, s in zip(count, s2, s1, strict=True)])
    return Moments(count, mean, m2)


def moments_key(observations: list[int]) -> str:
    """A key naming a set of observations, to reuse their moments when the set has not changed."""
    return hashlib.sha256(json.dumps(sorted(observations)).encode()).hexdigest()


def moments_of(patches: np.ndarray, n_bands: int) -> Moments:
    """The moments of patches (obs, band, y, x) already in memory."""
    total = Moments.empty(n_bands)
    for patch in patches:
        total = total.merge(patch_moments(patch))
    return total


def shard_moments(files: CorpusFiles, observations: list[int], n_bands: int) -> Moments:
    """Dask task: the moments of some observations (one shard's), reading one patch at a time."""
    array = zarr.open_array(files.zarr_store(), path=PATCH_ARRAY, mode="r")
    return merge_all([moments_of(np.asarray(array[obs : obs + 1]), n_bands) for obs in observations], n_bands)


def merge_all(parts: list[Moments], n_bands: int) -> Moments:
    """Merge shard moments pairwise (a balanced tree keeps rounding small)."""
    if not parts:
        return Moments.empty(n_bands)
    while len(parts) > 1:
        parts = [parts[i].merge(parts[i + 1]) if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)]
    return parts[0]
