"""Plan the corpus: filter candidates, resolve duplicates, assign locations, shards and slots.

Cheap and global: works on the candidate table only (one row per cell of every inspected scene).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import Transformer

from spectral_corpus.corpus_format import FLAGS
from spectral_corpus.stages.grid import ANCHOR_M, CELL_M, PATCH_PX, cell_origin, cell_polygon_xy, central_meridian
from spectral_corpus.stages.rules import Rules
from spectral_corpus.stages.splits import assign_splits

KEY = ["epsg", "ix", "iy"]
#: Reasons an observation is dropped, in the order they are decided.
DROP_REASONS = ("nodata", "cloud", "cloudshadow", "snow", "duplicate", "zone_overlap")
#: Columns a plan holds in the narrowest integer type their values fit (pixel counts of a patch, pixel
#: offsets); the version's tables declare them int64, and ``corpus_format.to_arrow`` writes them so.
NARROW_COLUMNS = ("row", "col", "n_flagged", *(f"n_{flag}" for flag in FLAGS))


@dataclass(frozen=True)
class Plan:
    """The planned corpus: every candidate with its fate, the kept observations and their locations."""

    candidates: pd.DataFrame
    observations: pd.DataFrame
    locations: gpd.GeoDataFrame


def plan_corpus(
    candidates: pd.DataFrame,
    scenes: pd.DataFrame,
    rules: Rules,
    known_locations: pd.DataFrame | None = None,
    placed: pd.DataFrame | None = None,
    first_obs: int = 0,
) -> Plan:
    """Decide every candidate's fate and lay out the kept observations.

    ``scenes`` gives ``product``, ``datatake``, ``tile`` and ``acquired`` of each inspected scene.
    ``known_locations`` (``location_id`` + key) keeps existing ids stable; new cells get new ids.
    Observations already ``placed`` (``product`` + key -> ``obs``) keep their index; the others are
    ordered location-major, locations in spatial blocks, and numbered from ``first_obs`` (a shard
    boundary) into shards of ``rules.shard_size``.
    """
    table = _decided_by_thresholds(candidates, scenes, rules)
    _mark_duplicates(table)
    _mark_zone_overlaps(table, rules.zone_overlap)
    return _lay_out(table, rules, known_locations, placed, first_obs)


def extend_plan(
    previous: pd.DataFrame,
    new: pd.DataFrame,
    scenes: pd.DataFrame,
    rules: Rules,
    known_locations: pd.DataFrame,
    placed: pd.DataFrame,
    first_obs: int,
) -> Plan:
    """``plan_corpus`` over the ``previous`` plan's candidates (with their ``drop_reason``) and ``new`` ones,
    deciding again only the cells whose fate can change.

    Those are the cells touched: the cells of new candidates, and of previous ones whose scene is no longer
    in ``scenes`` (superseded or rejected). Their duplicates are re-decided, and zone overlaps are re-decided
    for them and for the cells of other zones that overlap them. Every other candidate keeps its fate, so
    the cost follows the new scenes, not the corpus; with the same rules the result equals ``plan_corpus``
    over all candidates.
    """
    in_use = previous["product"].isin(scenes["product"]).to_numpy()
    table = compact(pd.concat([previous[in_use], _decided_by_thresholds(new, scenes, rules)], ignore_index=True))
    touched = pd.concat([new[KEY], previous.loc[~in_use, KEY]]).drop_duplicates().astype("int64")
    at_touched = _at(table, touched)
    table.loc[at_touched & table["drop_reason"].isin(["duplicate", "zone_overlap"]), "drop_reason"] = ""
    _mark_duplicates(table, at_touched)
    _mark_zone_overlaps(table, rules.zone_overlap, touched)
    return _lay_out(table, rules, known_locations, placed, first_obs)


def _decided_by_thresholds(candidates: pd.DataFrame, scenes: pd.DataFrame, rules: Rules) -> pd.DataFrame:
    """Candidates with their scene's ``datatake``, ``tile`` and ``acquired``, dropped where a flag exceeds its rule."""
    table = joined(compact(candidates), scenes[["product", "datatake", "tile", "acquired"]], ["product"], "left")
    table["drop_reason"] = _threshold_reasons(table, rules)
    return table


def joined(left: pd.DataFrame, right: pd.DataFrame, on: list[str], how: str) -> pd.DataFrame:
    """``left.merge(right, on=on, how=how)`` (``how`` left or inner), each row of ``left`` looking its key up
    in ``right``, which holds each key once: only ``right``'s columns are taken. A join's working copies (a
    million rows: several hundred MB) are never made, nor a copy of ``left``. Keys compared as Python objects
    (a key of strings held as object values is not turned into another string type first)."""
    added = [column for column in right.columns if column not in on]
    keys = right[on[0]].to_numpy(dtype=object) if len(on) == 1 else pd.MultiIndex.from_frame(right[on])
    index = pd.Index(keys, dtype=object) if len(on) == 1 else keys
    if not index.is_unique or set(added) & set(left.columns):  # rows repeated, names suffixed: a join's rules
        return left.merge(right, on=on, how=how)
    wanted = pd.Index(left[on[0]].to_numpy(dtype=object), dtype=object) if len(on) == 1 else left[on]
    at = index.get_indexer(wanted if len(on) == 1 else pd.MultiIndex.from_frame(wanted))
    if how == "inner" and (at < 0).any():
        left, at = left[at >= 0], at[at >= 0]
    taken = {column: pd.api.extensions.take(right[column].array, at, allow_fill=True) for column in added}
    return left.reset_index(drop=True).assign(**taken)


def compact(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` as a plan holds it: ``product`` as Python strings shared by the rows of a scene (8 bytes a
    row, not a copy of the name), and the ``NARROW_COLUMNS`` in the narrowest integer type their values fit.

    Only the columns that change are copied; values, order and index stay as they are.
    """
    changed: dict[str, pd.Series] = {}
    if "product" in table.columns and table["product"].dtype != object:
        changed["product"] = shared_strings(table["product"])
    for column in NARROW_COLUMNS:
        if column in table.columns and isinstance(table[column].dtype, np.dtype):  # not the nullable types
            narrow = narrowest_ints(table[column].to_numpy())
            if narrow.dtype != table[column].dtype:
                changed[column] = pd.Series(narrow, index=table.index)
    return table.assign(**changed) if changed else table


def shared_strings(values: pd.Series) -> pd.Series:
    """String ``values`` as an object Series whose equal values are one Python string (missing ones NaN)."""
    codes, uniques = pd.factorize(values)
    strings = np.append(np.asarray(uniques, dtype=object), np.nan)  # code -1 (missing) takes the last
    return pd.Series(strings[codes], index=values.index, dtype=object, name=values.name)


def narrowest_ints(values: np.ndarray) -> np.ndarray:
    """Signed integer ``values`` as int16 or int32 when they fit; else, or when not wider, as they are."""
    if values.dtype.kind != "i" or values.dtype.itemsize <= 2:
        return values
    low, high = (int(values.min()), int(values.max())) if len(values) else (0, 0)
    for dtype in (np.int16, np.int32):
        if np.iinfo(dtype).min <= low and high <= np.iinfo(dtype).max:
            return values.astype(dtype) if values.dtype.itemsize > np.dtype(dtype).itemsize else values
    return values


def _lay_out(
    table: pd.DataFrame,
    rules: Rules,
    known_locations: pd.DataFrame | None,
    placed: pd.DataFrame | None,
    first_obs: int,
) -> Plan:
    """Locations, splits and observation numbers of the candidates kept."""
    kept = table[table["drop_reason"] == ""]
    locations = _assign_locations(kept, known_locations)
    locations.insert(
        4,
        "split",
        assign_splits(locations, rules.split_block_cells, rules.val_fraction, rules.test_fraction, rules.split_seed),
    )
    observations = _layout(kept, locations, rules, placed, first_obs)
    return Plan(table.sort_values(["product", "iy", "ix"], ascending=[True, False, True]), observations, locations)


def _at(table: pd.DataFrame, cells: pd.DataFrame) -> np.ndarray:
    """Whether each row of ``table`` lies in one of ``cells`` (both keyed by ``epsg, ix, iy``)."""
    return np.asarray(pd.MultiIndex.from_frame(table[KEY]).isin(pd.MultiIndex.from_frame(cells[KEY])))


def _threshold_reasons(table: pd.DataFrame, rules: Rules) -> pd.Series:
    reasons = pd.Series("", index=table.index, dtype=object)
    for flag, maximum in reversed(list(rules.thresholds().items())):
        reasons[table[f"n_{flag}"] / PATCH_PX**2 > maximum] = flag
    return reasons


def _mark_duplicates(table: pd.DataFrame, where: np.ndarray | None = None) -> None:
    """Overlapping tiles of one datatake: keep the cell with fewest flagged pixels, then lowest tile.

    Only the rows ``where`` is true are decided (a cell's rows are all in or all out)."""
    undecided = table["drop_reason"] == ""
    columns = ["n_flagged", "tile", "product", "datatake", *KEY]  # the rest is not copied
    alive = table.loc[undecided if where is None else undecided & where, columns]
    alive = alive.sort_values(["n_flagged", "tile", "product"])
    losers = alive.duplicated(subset=["datatake", *KEY], keep="first")
    table.loc[losers[losers].index, "drop_reason"] = "duplicate"


def _mark_zone_overlaps(table: pd.DataFrame, min_share: float, touched: pd.DataFrame | None = None) -> None:
    """Cells of different UTM zones overlapping by more than ``min_share``: keep the nearer zone's.

    With ``touched`` cells, only they and the cells of other zones that overlap them are decided again;
    the overlaps that decide those are looked for among their own cross-zone neighbours.
    """
    passed = table["drop_reason"].isin(["", "zone_overlap"])  # by thresholds and duplicates
    cells = table.loc[passed, KEY].drop_duplicates()
    region = np.ones(len(table), dtype=bool)
    if touched is not None:
        decided = pd.concat([touched, cross_zone_neighbours(touched, cells)]).drop_duplicates()
        looked_at = pd.concat([decided, cross_zone_neighbours(decided, cells)])
        cells = cells[_at(cells, looked_at)]
        region = _at(table, decided)
    losers = zone_overlap_losers(cells, min_share)
    table.loc[region & (table["drop_reason"] == "zone_overlap"), "drop_reason"] = ""
    lost = region & _at(table, losers) & (table["drop_reason"] == "").to_numpy()
    table.loc[lost, "drop_reason"] = "zone_overlap"


#: How far apart (degrees) the central meridians of two zones whose cells may overlap can be: neighbours,
#: with room to spare (a scene reaches at most tens of km past its zone's edge).
ZONE_REACH_DEG = 12.0
#: Slack (m) around a cell's corners projected into another zone: the edges between them bend by far less.
BOUNDS_SLACK_M = 100.0


def cross_zone_neighbours(cells: pd.DataFrame, among: pd.DataFrame) -> pd.DataFrame:
    """The cells of ``among`` in other zones that may overlap a cell of ``cells`` (a superset of those that do).

    Each cell's corners are projected into the nearby zones of ``among``, and the grid squares under their
    bounds there are looked up: no outline of ``among`` is made, so the cost follows ``cells``.
    """
    found = []
    zones = among["epsg"].unique()
    meridians = _meridians(zones)
    for epsg, group in cells.groupby("epsg", sort=False):
        nearby = zones[(zones != epsg) & (_degrees_apart(meridians, central_meridian(int(epsg))) <= ZONE_REACH_DEG)]
        if len(nearby):
            lon, lat = _to_lonlat(int(epsg)).transform(*_corners(group).transpose(2, 0, 1))
            found += [_squares_under(*_from_lonlat(int(other)).transform(lon, lat), int(other)) for other in nearby]
    if not found:
        return among.iloc[0:0][KEY]
    return pd.concat(found).drop_duplicates().merge(among[KEY].drop_duplicates(), on=KEY)


def _corners(cells: pd.DataFrame) -> np.ndarray:
    """The four corners of each cell in its zone's map coordinates (n x 4 x 2)."""
    x0, y1 = cell_origin(cells["ix"].to_numpy(), cells["iy"].to_numpy())
    x = np.column_stack([x0, x0 + CELL_M, x0 + CELL_M, x0])
    y = np.column_stack([y1, y1, y1 - CELL_M, y1 - CELL_M])
    return np.stack([x, y], axis=2).astype(np.float64)


def _squares_under(x: np.ndarray, y: np.ndarray, epsg: int) -> pd.DataFrame:
    """The cells of zone ``epsg`` under the bounds of each row of corner coordinates ``x``, ``y`` (n x 4)."""
    low = np.floor((np.column_stack([x.min(axis=1), y.min(axis=1)]) - BOUNDS_SLACK_M - ANCHOR_M) / CELL_M)
    high = np.floor((np.column_stack([x.max(axis=1), y.max(axis=1)]) + BOUNDS_SLACK_M - ANCHOR_M) / CELL_M)
    low, span = low.astype(np.int64), (high - low).astype(np.int64) + 1
    size = span[:, 0] * span[:, 1]
    rows = np.repeat(np.arange(len(low)), size)
    k = np.arange(len(rows)) - np.repeat(np.cumsum(size) - size, size)
    return pd.DataFrame({"epsg": epsg, "ix": low[rows, 0] + k % span[rows, 0], "iy": low[rows, 1] + k // span[rows, 0]})


def zone_overlap_losers(cells: pd.DataFrame, min_share: float) -> pd.DataFrame:
    """The cells (``epsg, ix, iy``) that overlap a cell of another zone whose meridian is nearer.

    Footprints astride 180 degrees run past it (``cell_footprints``); each is also looked at one turn of
    the globe west or east, so that cells of zones 60 and 1 meet where they touch. Only the cells near
    another zone's (``_near_other_zones``) are outlined.
    """
    cells = cells[_near_other_zones(cells)]
    if cells["epsg"].nunique() < 2:
        return cells.iloc[0:0][KEY]
    footprints = cell_footprints(cells)
    left, right, overlap = _overlapping_pairs(footprints)
    a, b = footprints.loc[left, KEY].to_numpy(), footprints.loc[right, KEY].to_numpy()
    lon = _degrees_east(shapely.get_x(shapely.centroid(overlap)), 0.0)
    a_far = _degrees_apart(lon, _meridians(a[:, 0])) > _degrees_apart(lon, _meridians(b[:, 0]))
    large = _shares_of_cell(overlap, a[:, 0]) > min_share
    losers = np.where(a_far[:, None], a, b)[large]
    return pd.DataFrame(losers, columns=KEY).drop_duplicates().astype("int64").reset_index(drop=True)


#: Slack (degrees) around the bounds of a cell's corners in lon/lat: its densified outline bulges past them
#: by far less (metres at most).
CORNER_SLACK_DEG = 0.01


def _near_other_zones(cells: pd.DataFrame) -> np.ndarray:
    """Whether each cell's bounds in lon/lat meet the bounds of all the cells of another zone: a superset of
    the cells that overlap a cell of another zone, found from their corners, without outlines.

    Longitudes are counted east of the cell's zone's central meridian (one turn of the globe never splits a
    zone's cells), and another zone's shifted by the difference of the two meridians.
    """
    near = np.zeros(len(cells), dtype=bool)
    epsg = cells["epsg"].to_numpy()
    zones = pd.unique(epsg)
    if len(zones) < 2:
        return near
    bounds = np.empty((len(cells), 4))  # west, south, east, north; degrees east of the meridian, degrees north
    rows = {int(zone): np.flatnonzero(epsg == zone) for zone in zones}
    for zone, at in rows.items():
        lon, lat = _to_lonlat(zone).transform(*_corners(cells.iloc[at]).transpose(2, 0, 1))
        east = _degrees_east(lon, central_meridian(zone))
        bounds[at] = np.column_stack([east.min(axis=1), lat.min(axis=1), east.max(axis=1), lat.max(axis=1)])
    bounds += np.array([-1.0, -1.0, 1.0, 1.0]) * CORNER_SLACK_DEG
    extent = {zone: np.r_[bounds[at, :2].min(axis=0), bounds[at, 2:].max(axis=0)] for zone, at in rows.items()}
    for zone, at in rows.items():
        for other in rows:
            if other == zone:
                continue
            shift = _degrees_east(central_meridian(other), central_meridian(zone))
            west, south, east, north = extent[other] + np.array([shift, 0.0, shift, 0.0])
            mine = extent[zone]
            if mine[0] > east or mine[2] < west or mine[1] > north or mine[3] < south:
                continue
            box = bounds[at]
            near[at] |= (box[:, 0] <= east) & (box[:, 2] >= west) & (box[:, 1] <= north) & (box[:, 3] >= south)
    return near


def _degrees_east(lon: Any, meridian: Any) -> Any:
    """Longitude east of ``meridian`` (negative: west), in [-180, 180)."""
    return (lon - meridian + 180.0) % 360.0 - 180.0


def _overlapping_pairs(footprints: gpd.GeoDataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of footprints of different zones that intersect (left's EPSG code below right's): their index
    labels and the overlaps, the globe's longitudes wrapped."""
    turned = []
    for turn in (-360.0, 360.0):  # copies of the cells near 180 degrees, one turn away
        near = footprints.bounds["maxx"] > 180.0 if turn < 0 else footprints.bounds["minx"] < -174.0
        moved = footprints[near].copy()
        moved.geometry = shapely.transform(moved.geometry.to_numpy(), lambda xy, t=turn: xy + np.array([t, 0.0]))
        turned.append(moved)
    everywhere = pd.concat([footprints, *turned])
    everywhere["cell"] = everywhere.index
    joined = gpd.sjoin(everywhere.reset_index(drop=True), footprints, predicate="intersects")
    joined = joined[joined["epsg_left"] < joined["epsg_right"]]
    overlap = shapely.intersection(
        joined.geometry.to_numpy(), footprints.geometry.loc[joined["index_right"]].to_numpy()
    )
    pairs = pd.DataFrame(
        {"left": joined["cell"].to_numpy(), "right": joined["index_right"].to_numpy(), "overlap": overlap}
    )
    pairs = pairs[~shapely.is_empty(overlap)].drop_duplicates(["left", "right"])  # a pair seen again one turn away
    return pairs["left"].to_numpy(), pairs["right"].to_numpy(), pairs["overlap"].to_numpy()


def _meridians(epsg: np.ndarray) -> np.ndarray:
    return np.array([central_meridian(int(code)) for code in epsg], dtype=np.float64)


def _degrees_apart(lon: Any, meridian: Any) -> Any:
    return abs(_degrees_east(lon, meridian))


def cell_footprints(cells: pd.DataFrame) -> gpd.GeoDataFrame:
    """Cell outlines in lon/lat (densified), one row per ``epsg, ix, iy``, in ``cells``' order and index.

    A cell astride 180 degrees runs past it (longitudes above 180), so that every outline is valid.
    Outlines are made ``FOOTPRINT_BATCH`` cells at a time (see there).
    """
    epsg, ix, iy = (cells[column].to_numpy(dtype=np.int64) for column in KEY)
    outlines = np.empty(len(cells), dtype=object)
    for zone in pd.unique(epsg):
        rows = np.flatnonzero(epsg == zone)
        for start in range(0, len(rows), FOOTPRINT_BATCH):
            batch = rows[start : start + FOOTPRINT_BATCH]
            outlines[batch] = _outlines(int(zone), ix[batch], iy[batch])
    return gpd.GeoDataFrame(cells[KEY], geometry=outlines, crs="EPSG:4326", index=cells.index)


#: Cells outlined at a time: bounds the coordinates held at once (about 2 kB a cell) and the memory that
#: making polygons leaves unused (GEOS copies each ring into its polygon: about 1 kB a cell).
FOOTPRINT_BATCH = 8192


def _outlines(epsg: int, ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    """The lon/lat outlines of cells ``ix``, ``iy`` of zone ``epsg`` (polygons)."""
    template = cell_polygon_xy(0, 0) - np.array(cell_origin(0, 0))
    origins = np.column_stack(cell_origin(ix, iy)).astype(float)
    corners = (origins[:, None, :] + template[None, :, :]).reshape(-1, 2)
    lon, lat = _to_lonlat(epsg).transform(corners[:, 0], corners[:, 1])
    rings = np.column_stack([lon, lat]).reshape(len(ix), len(template), 2)
    astride = rings[:, :, 0].max(axis=1) - rings[:, :, 0].min(axis=1) > 180.0
    rings[astride, :, 0] = np.where(rings[astride, :, 0] < 0, rings[astride, :, 0] + 360.0, rings[astride, :, 0])
    return shapely.polygons(rings)


@functools.lru_cache(maxsize=128)
def _to_lonlat(epsg: int) -> Transformer:
    return Transformer.from_crs(epsg, 4326, always_xy=True)


@functools.lru_cache(maxsize=128)
def _from_lonlat(epsg: int) -> Transformer:
    return Transformer.from_crs(4326, epsg, always_xy=True)


def _shares_of_cell(overlap_lonlat: np.ndarray, epsg: np.ndarray) -> np.ndarray:
    """Each overlap's area in zone ``epsg`` (per overlap) as a share of a cell's."""
    area = np.zeros(len(overlap_lonlat))
    for code in np.unique(epsg):
        to_utm, mine = _from_lonlat(int(code)), epsg == code
        projected = shapely.transform(
            overlap_lonlat[mine], lambda xy, t=to_utm: np.column_stack(t.transform(xy[:, 0], xy[:, 1]))
        )
        area[mine] = shapely.area(projected)
    return area / CELL_M**2


def _assign_locations(kept: pd.DataFrame, known: pd.DataFrame | None) -> gpd.GeoDataFrame:
    """Known cells keep their ``location_id`` (and their outline, when ``known`` has one: only new cells'
    are reprojected); new cells get the next ids in key order."""
    cells = kept[KEY].drop_duplicates().sort_values(KEY)
    if known is None:
        known = pd.DataFrame(columns=["location_id", *KEY])
    outlines = known.set_index(KEY).geometry if isinstance(known, gpd.GeoDataFrame) else None
    cells = cells.merge(known[["location_id", *KEY]].astype("int64"), on=KEY, how="left").reset_index(drop=True)
    new = cells["location_id"].isna()
    start = int(known["location_id"].max()) + 1 if len(known) else 0
    cells.loc[new, "location_id"] = np.arange(start, start + int(new.sum()))
    cells["location_id"] = cells["location_id"].astype("int64")
    x0, y1 = cell_origin(cells["ix"].to_numpy(dtype=np.int64), cells["iy"].to_numpy(dtype=np.int64))
    cells["x"] = x0 + CELL_M / 2
    cells["y"] = y1 - CELL_M / 2
    geometry = pd.Series(None, index=cells.index, dtype=object)
    if outlines is not None:
        geometry[~new] = outlines.reindex(pd.MultiIndex.from_frame(cells.loc[~new, KEY])).to_numpy()
    missing = geometry.isna()
    geometry[missing] = cell_footprints(cells.loc[missing, KEY]).geometry.to_numpy()
    return gpd.GeoDataFrame(cells, geometry=geometry.to_list(), crs="EPSG:4326")


def _layout(
    kept: pd.DataFrame, locations: pd.DataFrame, rules: Rules, placed: pd.DataFrame | None, first_obs: int
) -> pd.DataFrame:
    """Keep placed observations where they are; order the new ones and number shards and slots."""
    table = joined(kept, locations[["location_id", *KEY, "x", "y", "split"]], KEY, "inner")
    table = table.drop(columns=["drop_reason"])
    if placed is None or placed.empty:
        return _number(table, rules, first_obs)
    table = table.merge(placed[["product", *KEY, "obs"]], on=["product", *KEY], how="left")
    old = table[table["obs"].notna()].astype({"obs": "int64"})
    old = old.assign(shard=old["obs"] // rules.shard_size, slot=old["obs"] % rules.shard_size)
    new = _number(table[table["obs"].isna()].drop(columns=["obs"]), rules, first_obs)
    return pd.concat([old, new], ignore_index=True).sort_values("obs").reset_index(drop=True)


def _number(table: pd.DataFrame, rules: Rules, first_obs: int) -> pd.DataFrame:
    """Order observations location-major in spatial blocks of cells, then number shards and slots."""
    block = rules.block_cells
    table = table.assign(_by=-(table["iy"] // block), _bx=table["ix"] // block, _iy=-table["iy"])
    table = table.sort_values(["epsg", "_by", "_bx", "_iy", "ix", "acquired", "product"])
    table = table.drop(columns=["_by", "_bx", "_iy"]).reset_index(drop=True)
    table["obs"] = np.arange(first_obs, first_obs + len(table), dtype=np.int64)
    table["shard"] = table["obs"] // rules.shard_size
    table["slot"] = table["obs"] % rules.shard_size
    return table
