"""Train / val / test splits by spatial blocks.

A location's split is a pure function of its block ``(epsg, ix // B, iy // B)`` and a seed, so all
observations of a location, and all locations of a block, share a split; neighbours inside a block
cannot leak between training and evaluation; and a location keeps its split when the corpus is
extended, because nothing about it changes. Fractions are met in expectation over blocks.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from spectral_corpus.stages.errors import RulesError

SPLITS = ("train", "val", "test")


def block_uniform(epsg: int, bx: int, by: int, seed: int) -> float:
    """A uniform number in [0, 1) fixed by the block and the seed (stable across platforms)."""
    digest = hashlib.blake2b(f"{seed}:{epsg}:{bx}:{by}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def assign_splits(
    locations: pd.DataFrame, block_cells: int, val_fraction: float, test_fraction: float, seed: int
) -> pd.Series:
    """The split of each location (``epsg``, ``ix``, ``iy`` columns), as a Series of split names."""
    if block_cells < 1 or val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction > 1:
        raise RulesError(f"bad split settings: block of {block_cells} cells, val {val_fraction}, test {test_fraction}")
    blocks = pd.DataFrame(
        {"epsg": locations["epsg"], "bx": locations["ix"] // block_cells, "by": locations["iy"] // block_cells}
    )
    unique = blocks.drop_duplicates()
    unique["u"] = [block_uniform(int(e), int(x), int(y), seed) for e, x, y in unique.itertuples(index=False)]
    u = blocks.merge(unique, on=["epsg", "bx", "by"], how="left")["u"].to_numpy()
    names = np.where(u < 1 - val_fraction - test_fraction, "train", np.where(u < 1 - test_fraction, "val", "test"))
    return pd.Series(names, index=locations.index, name="split")
