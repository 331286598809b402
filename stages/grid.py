"""The location grid: 128 x 128 px cells (3,840 m) per UTM zone, anchored on the EnMAP 30 m lattice.

A cell ``(epsg, ix, iy)`` covers ``x`` in ``[15 + 3840 ix, 15 + 3840 (ix + 1))`` and ``y`` likewise, so
repeat acquisitions in one zone cut the same pixels from every scene: cells are integer keys, never
compared as floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from affine import Affine
from pyproj import CRS

from spectral_corpus.corpus_format import PATCH_PX, PIXEL_M
from spectral_corpus.stages.errors import GridError

CELL_M = PATCH_PX * PIXEL_M
Index = TypeVar("Index", int, np.ndarray)
ANCHOR_M = 15


@dataclass(frozen=True)
class CellWindows:
    """The cells wholly inside a raster: cell ``k`` of row ``r`` is ``(ix0 + k, iy_top - r)``.

    Its pixels are rows ``row0 + 128 r``..``+128`` and columns ``col0 + 128 k``..``+128``.
    """

    ix0: int
    iy_top: int
    row0: int
    col0: int
    n_rows: int
    n_cols: int

    def cells(self) -> list[tuple[int, int, int, int]]:
        """``(ix, iy, row_off, col_off)`` for every cell, north to south, west to east."""
        return [
            (self.ix0 + k, self.iy_top - r, self.row0 + PATCH_PX * r, self.col0 + PATCH_PX * k)
            for r in range(self.n_rows)
            for k in range(self.n_cols)
        ]


def cell_origin(ix: Index, iy: Index) -> tuple[Index, Index]:
    """Map coordinates of the upper-left corner of cell ``(ix, iy)`` (of each cell, given arrays)."""
    return ANCHOR_M + CELL_M * ix, ANCHOR_M + CELL_M * (iy + 1)


def cell_transform(ix: int, iy: int) -> Affine:
    """The 30 m north-up geotransform of the patch of cell ``(ix, iy)``."""
    x, y = cell_origin(ix, iy)
    return Affine(PIXEL_M, 0, x, 0, -PIXEL_M, y)


def cell_windows(transform: Affine, width: int, height: int) -> CellWindows:
    """The cells that lie wholly inside a raster on the lattice (see ``check_lattice``)."""
    x0, y0 = transform.c, transform.f
    ix0 = math.ceil((x0 - ANCHOR_M) / CELL_M)
    ix1 = math.floor((x0 + width * PIXEL_M - ANCHOR_M) / CELL_M)  # exclusive
    iy_top = math.floor((y0 - ANCHOR_M) / CELL_M) - 1
    iy_bottom = math.ceil((y0 - height * PIXEL_M - ANCHOR_M) / CELL_M)
    cx, cy = cell_origin(ix0, iy_top)
    return CellWindows(
        ix0=ix0,
        iy_top=iy_top,
        row0=round((y0 - cy) / PIXEL_M),
        col0=round((cx - x0) / PIXEL_M),
        n_rows=max(0, iy_top - iy_bottom + 1),
        n_cols=max(0, ix1 - ix0),
    )


def check_lattice(transform: Affine, crs: CRS | None, source: str) -> int:
    """Return the UTM EPSG code of a raster; raise GridError naming ``source`` if it is off the lattice."""
    if crs is None or not crs.is_projected:
        raise GridError(f"{source}: CRS {crs} is not a projected UTM CRS")
    epsg = crs.to_epsg()
    if epsg is None or utm_zone(epsg) is None:
        raise GridError(f"{source}: CRS {crs.to_string()} is not a WGS 84 UTM zone")
    if (transform.b, transform.d) != (0, 0) or (transform.a, transform.e) != (PIXEL_M, -PIXEL_M):
        raise GridError(f"{source}: geotransform {tuple(transform)[:6]} is not a north-up 30 m grid")
    if (transform.c - ANCHOR_M) % PIXEL_M or (transform.f - ANCHOR_M) % PIXEL_M:
        raise GridError(
            f"{source}: pixel corners ({transform.c}, {transform.f}) are off the EnMAP lattice "
            f"(x = y = 15 mod 30 m); resampling is never done"
        )
    return epsg


def utm_zone(epsg: int) -> int | None:
    """The UTM zone number of a WGS 84 UTM EPSG code (326zz north, 327zz south), else None."""
    if 32601 <= epsg <= 32660 or 32701 <= epsg <= 32760:
        return epsg % 100
    return None


def central_meridian(epsg: int) -> float:
    """Longitude of the central meridian of a UTM zone."""
    zone = utm_zone(epsg)
    if zone is None:
        raise ValueError(f"EPSG:{epsg} is not a WGS 84 UTM zone")
    return -183.0 + 6.0 * zone


def cell_polygon_xy(ix: int, iy: int, points_per_side: int = 8) -> np.ndarray:
    """The cell outline in map coordinates, densified so it reprojects faithfully (closed ring)."""
    x0, y1 = cell_origin(ix, iy)
    x1, y0 = x0 + CELL_M, y1 - CELL_M
    t = np.linspace(0.0, 1.0, points_per_side, endpoint=False)
    xs = np.concatenate([x0 + (x1 - x0) * t, np.full_like(t, x1), x1 - (x1 - x0) * t, np.full_like(t, x0)])
    ys = np.concatenate([np.full_like(t, y1), y1 - (y1 - y0) * t, np.full_like(t, y0), y0 + (y1 - y0) * t])
    return np.column_stack([np.append(xs, xs[0]), np.append(ys, ys[0])])
