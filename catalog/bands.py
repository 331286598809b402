"""The EnMAP L2A band table (224 bands; 202 kept by SpectralEarth and HySpecNet-11k).

Source: EnMAP spectral response functions shipped with the EnMAP-Box example data; the 22 dropped
water-vapour bands are 1-based 127-141 and 161-167, as in HySpecNet-11k and torchgeo's ``EnMAP``.
"""

from functools import cache
from importlib.resources import files

import numpy as np
import pandas as pd

N_BANDS = 224
NODATA = -32768
REFLECTANCE_SCALE = 1e-4


@cache
def band_table() -> pd.DataFrame:
    """All 224 bands: ``band`` (1-based), ``center_nm``, ``fwhm_nm``, ``kept_202`` (bool)."""
    with files(__package__).joinpath("data/enmap_bands.csv").open() as f:
        table = pd.read_csv(f)
    table["kept_202"] = table["kept_202"].astype(bool)
    return table


def selected_bands(n_bands: int) -> np.ndarray:
    """1-based band numbers for a corpus of ``n_bands`` bands (202: SpectralEarth's set, 224: all)."""
    table = band_table()
    if n_bands == N_BANDS:
        return table["band"].to_numpy()
    if n_bands == int(table["kept_202"].sum()):
        return table.loc[table["kept_202"], "band"].to_numpy()
    raise ValueError(f"bands must be 202 or 224, got {n_bands}")
