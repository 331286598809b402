"""Assemble a version's tables from the previous version and this run's results (pure pandas)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from spectral_corpus.catalog.rejections import Rejection
from spectral_corpus.catalog.scenes import OK, REJECTED, keep_newest, records_from_table, scene_table
from spectral_corpus.corpus_format import PATCH_PX, SCHEMAS
from spectral_corpus.stages.inspect import InspectResult
from spectral_corpus.stages.plan import KEY, Plan, joined

#: The public observation columns, in the format's order.
OBSERVATION_COLUMNS = SCHEMAS["observations"].names


def merge_scenes(base: pd.DataFrame | None, found: pd.DataFrame) -> pd.DataFrame:
    """The next version's scene table: known scenes keep their id and state, new ones are added.

    Products already known are not looked at again; the newest processor version of each
    (datatake, tile) wins across old and new scenes (the loser is marked superseded).
    """
    query = found.attrs.get("query", {})
    if base is None:
        table = scene_table(keep_newest(records_from_table(found)), query)
        table.insert(0, "scene_id", np.arange(len(table), dtype=np.int64))
        return _band_lists_held_once(table)
    new = found[~found["product"].isin(base["product"])]
    table = scene_table(keep_newest(records_from_table(base) + records_from_table(new)), query)
    ids = dict(zip(base["product"], base["scene_id"], strict=True))
    fresh = [p for p in table["product"] if p not in ids]
    start = int(base["scene_id"].max()) + 1 if len(base) else 0
    ids.update({p: start + i for i, p in enumerate(fresh)})
    table.insert(0, "scene_id", table["product"].map(ids).astype("int64"))
    return _band_lists_held_once(table)


#: The scene table's lists of per-band figures.
BAND_LISTS = ("wavelengths_nm", "fwhm_nm")


def _band_lists_held_once(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (changed in place) with one list object for each distinct list of per-band figures: a
    scene's own pair is about 15 kB of Python floats, and the scenes of one calibration list the same.
    Lists are the same when their floats are, bit for bit (0.0 and -0.0 differ; NaN equals NaN)."""
    for column in BAND_LISTS:
        if column not in table.columns:
            continue
        held: dict[bytes, list[float]] = {}
        lists = np.empty(len(table), dtype=object)
        for row, values in enumerate(table[column]):
            if isinstance(values, list) and all(type(value) is float for value in values):
                values = held.setdefault(np.array(values, dtype=np.float64).tobytes(), values)
            lists[row] = values
        table[column] = lists
    return table


def apply_inspection(scenes: pd.DataFrame, inspected: list[InspectResult]) -> pd.DataFrame:
    """Mark scenes that failed inspection as rejected and fill in CRS codes read from the files."""
    failed = {r.product: (r.rejection or Rejection.UNREADABLE, r.reason) for r in inspected if r.status == REJECTED}
    scenes = reject(scenes, failed)
    epsg = {r.product: r.epsg for r in inspected if r.epsg is not None}
    scenes["epsg"] = scenes["product"].map(epsg).astype("Int64").fillna(scenes["epsg"])
    return scenes


def reject(scenes: pd.DataFrame, reasons: dict[str, tuple[Rejection, str]]) -> pd.DataFrame:
    """The scene table with the named products rejected: product -> (code, reason)."""
    scenes = scenes.copy()
    failed = scenes["product"].isin(list(reasons))
    scenes.loc[failed, "status"] = REJECTED
    scenes.loc[failed, "rejection"] = scenes.loc[failed, "product"].map(lambda p: str(reasons[p][0]))
    scenes.loc[failed, "reason"] = scenes.loc[failed, "product"].map(lambda p: reasons[p][1])
    return scenes


def count_per_scene(scenes: pd.DataFrame, plan: Plan) -> pd.DataFrame:
    """Add each scene's number of candidate patches and of observations in this version."""
    return scenes.assign(
        n_candidates=scenes["product"].map(plan.candidates["product"].value_counts()).fillna(0).astype(int),
        n_observations=scenes["product"].map(plan.observations["product"].value_counts()).fillna(0).astype(int),
    )


def observation_table(observations: pd.DataFrame, scenes: pd.DataFrame) -> pd.DataFrame:
    """Public observation columns: ids, placement, time, pixel window and flag fractions, in ``obs`` order.

    Made column by column: the plan's observations are not copied whole (merged, then sorted) beside it,
    and not at all when they are in ``obs`` order already (as a plan lays them out): the columns are shared.
    """
    order = observations["obs"].reset_index(drop=True).sort_values().index.to_numpy()
    in_order = bool((order == np.arange(len(order))).all())
    scene_ids = joined(observations[["product"]], scenes[["product", "scene_id"]], ["product"], "left")
    columns = {}
    for column in OBSERVATION_COLUMNS:
        if column == "scene_id":
            values = scene_ids["scene_id"]
        elif column.startswith("frac_"):
            values = (observations[f"n_{column.removeprefix('frac_')}"] / PATCH_PX**2).astype("float32")
        else:
            values = observations[column]
        columns[column] = (values if in_order else values.iloc[order]).reset_index(drop=True)
    return pd.DataFrame(columns, copy=False)


def location_table(plan: Plan, base: pd.DataFrame | None) -> pd.DataFrame:
    """Every location ever assigned (ids are never reused), with its number of observations now."""
    counts = plan.observations["location_id"].value_counts()
    current = plan.locations.assign(n_obs=plan.locations["location_id"].map(counts).astype("int64"))
    if base is None:
        return current
    gone = base[~base["location_id"].isin(current["location_id"])].assign(n_obs=0)
    return pd.concat([current, gone[current.columns]], ignore_index=True).sort_values("location_id")


#: Why an observation leaves the corpus when its cell is dropped by a rule that sees the new scenes.
CELL_RETIRED = {
    "zone_overlap": "zone_overlap: a new cell of another UTM zone, nearer its central meridian, covers this one",
}


def retired_table(
    base_obs: pd.DataFrame | None, plan: Plan, scenes: pd.DataFrame, version: int, base_retired: pd.DataFrame | None
) -> pd.DataFrame:
    """Observations of the previous version that this one no longer lists, and why."""
    columns = ["obs", "product", "epsg", "ix", "iy", "retired_in", "reason"]
    if base_obs is None:
        return pd.DataFrame(columns=columns).astype({"obs": "int64", "retired_in": "int64"})
    gone = base_obs.loc[~base_obs["obs"].isin(plan.observations["obs"]), ["obs", "product", *KEY]]
    cells = plan.candidates[["product", *KEY, "drop_reason"]].drop_duplicates(["product", *KEY])
    gone = gone.merge(cells, on=["product", *KEY], how="left")
    by_product = scenes.set_index("product")
    superseded = gone["product"].map(by_product["rejection"] == Rejection.SUPERSEDED).fillna(False)
    why = [
        by_product.at[product, "reason"]
        if was_superseded
        else CELL_RETIRED.get(cell, "displaced by a better observation")
        for product, was_superseded, cell in zip(gone["product"], superseded, gone["drop_reason"], strict=True)
    ]
    retired = gone[["obs", "product", *KEY]].assign(retired_in=version, reason=why)
    frames = [f for f in (base_retired, retired) if f is not None and len(f)]
    return pd.concat(frames, ignore_index=True)[columns] if frames else retired[columns]


def ok_scenes(scenes: pd.DataFrame) -> pd.DataFrame:
    """The scenes in use."""
    return scenes[scenes["status"] == OK]
