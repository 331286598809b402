"""The grid and the plan stage on hand-made candidate tables (pure logic, no I/O)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from affine import Affine
from pyproj import CRS, Transformer

from spectral_corpus.stages.grid import CELL_M, GridError, cell_origin, cell_windows, central_meridian, check_lattice
from spectral_corpus.stages.inspect import CANDIDATE_COLUMNS
from spectral_corpus.stages.plan import (
    KEY,
    cell_footprints,
    cross_zone_neighbours,
    extend_plan,
    plan_corpus,
    zone_overlap_losers,
)
from spectral_corpus.stages.rules import Rules


def test_cells_wholly_inside_a_raster_and_their_pixel_windows() -> None:
    x0, y0 = cell_origin(10, 20)
    # 10 px west of cell 10's edge and 5 px north of row 20's top; 128*3 + 30 px wide, 128*2 + 10 tall.
    transform = Affine(30, 0, x0 - 300, 0, -30, y0 + 150)
    grid = cell_windows(transform, 128 * 3 + 30, 128 * 2 + 10)
    assert grid.cells() == [
        (10, 20, 5, 10),
        (11, 20, 5, 138),
        (12, 20, 5, 266),
        (10, 19, 133, 10),
        (11, 19, 133, 138),
        (12, 19, 133, 266),
    ]
    # A raster one pixel short of the last column loses that column of cells.
    assert cell_windows(transform, 128 * 3 + 9, 128 * 2 + 10).n_cols == 2


@pytest.mark.parametrize(
    ("transform", "crs", "message"),
    [
        (Affine(30, 0, 20, 0, -30, 15), "EPSG:32632", "off the EnMAP lattice"),
        (Affine(30, 0.5, 15, 0, -30, 15), "EPSG:32632", "not a north-up 30 m grid"),
        (Affine(60, 0, 15, 0, -60, 15), "EPSG:32632", "not a north-up 30 m grid"),
        (Affine(0.0003, 0, 9, 0, -0.0003, 52), "EPSG:4326", "not a projected UTM CRS"),
        (Affine(30, 0, 15, 0, -30, 15), "EPSG:3035", "not a WGS 84 UTM zone"),
    ],
)
def test_check_lattice_names_the_problem(transform: Affine, crs: str, message: str) -> None:
    with pytest.raises(GridError, match=message) as error:
        check_lattice(transform, CRS.from_user_input(crs), "scene.tif")
    assert str(error.value).startswith("scene.tif: ")


def test_central_meridians() -> None:
    assert central_meridian(32632) == 9.0
    assert central_meridian(32633) == 15.0
    assert central_meridian(32733) == 15.0


def _candidate(product: str, ix: int, iy: int, epsg: int = 32632, **counts: int) -> dict[str, object]:
    row: dict[str, object] = {c: 0 for c in CANDIDATE_COLUMNS}
    row.update(product=product, epsg=epsg, ix=ix, iy=iy, row=0, col=0, **{f"n_{k}": v for k, v in counts.items()})
    row["n_flagged"] = sum(v for k, v in counts.items() if k != "water")
    return row


def _scenes(*specs: tuple[str, int, int, str]) -> pd.DataFrame:
    return pd.DataFrame([{"product": p, "datatake": d, "tile": t, "acquired": pd.Timestamp(a)} for p, d, t, a in specs])


def test_thresholds_drop_exactly_the_cells_beyond_them() -> None:
    candidates = pd.DataFrame(
        [
            _candidate("a", 0, 0, nodata=1),
            _candidate("a", 1, 0, cloud=163),  # 0.995 % <= 1 %
            _candidate("a", 2, 0, cloud=164),  # 1.001 % > 1 %
            _candidate("a", 3, 0, cloudshadow=163),
            _candidate("a", 4, 0, cloudshadow=164),
            _candidate("a", 5, 0, snow=1638),  # 9.998 % <= 10 %
            _candidate("a", 6, 0, snow=1639),
            _candidate("a", 7, 0, haze=9000, cirrus=9000, water=16384),  # not rules
            _candidate("a", 8, 0, nodata=1, cloud=500),  # the first rule broken names the reason
        ]
    )
    plan = plan_corpus(candidates, _scenes(("a", 1, 1, "2023-06-29T11:00:00Z")), Rules())
    reasons = plan.candidates.set_index("ix")["drop_reason"].to_dict()
    assert reasons == {0: "nodata", 1: "", 2: "cloud", 3: "", 4: "cloudshadow", 5: "", 6: "snow", 7: "", 8: "nodata"}
    loose = plan_corpus(candidates, _scenes(("a", 1, 1, "2023-06-29T11:00:00Z")), Rules(max_nodata=0.5, max_cloud=1))
    assert loose.candidates.set_index("ix")["drop_reason"].to_dict()[8] == ""


def test_overlapping_tiles_of_a_datatake_keep_one_observation_per_cell() -> None:
    candidates = pd.DataFrame(
        [
            _candidate("t1", 0, 0, haze=100),
            _candidate("t2", 0, 0),  # fewer flagged pixels: wins although its tile is higher
            _candidate("t1", 1, 0),
            _candidate("t2", 1, 0),  # tie: the lower tile wins
            _candidate("other", 1, 0),  # another datatake: a second date, not a duplicate
        ]
    )
    scenes = _scenes(
        ("t1", 7, 1, "2023-06-29T11:00:00Z"),
        ("t2", 7, 2, "2023-06-29T11:00:04Z"),
        ("other", 8, 1, "2023-08-01T10:00:00Z"),
    )
    plan = plan_corpus(candidates, scenes, Rules())
    fate = {(p, ix): r for p, ix, r in plan.candidates[["product", "ix", "drop_reason"]].itertuples(index=False)}
    assert fate == {("t1", 0): "duplicate", ("t2", 0): "", ("t1", 1): "", ("t2", 1): "duplicate", ("other", 1): ""}
    stacks = plan.observations.groupby("ix")["product"].apply(list).to_dict()
    assert stacks == {0: ["t2"], 1: ["t1", "other"]}  # date order within a location


def _cell_at(epsg: int, lon: float, lat: float) -> tuple[int, int]:
    x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
    return int((x - 15) // CELL_M), int((y - 15) // CELL_M)


@pytest.mark.parametrize(("lon", "loser"), [(11.9, 32633), (12.1, 32632)])
def test_zone_overlap_keeps_the_zone_with_the_nearer_central_meridian(lon: float, loser: int) -> None:
    cells = pd.DataFrame([(epsg, *_cell_at(epsg, lon, 52.0)) for epsg in (32632, 32633)], columns=["epsg", "ix", "iy"])
    losers = zone_overlap_losers(cells, 0.01)
    assert losers["epsg"].tolist() == [loser]
    assert zone_overlap_losers(cells, 1.0).empty  # no overlap is more than a whole cell


@pytest.mark.parametrize(("lon", "loser"), [(179.9, 32601), (179.99, 32601), (-179.99, 32660), (-179.9, 32660)])
def test_zone_overlap_across_180_degrees_keeps_the_nearer_zone(lon: float, loser: int) -> None:
    cells = pd.DataFrame([(epsg, *_cell_at(epsg, lon, 65.0)) for epsg in (32660, 32601)], columns=["epsg", "ix", "iy"])
    assert zone_overlap_losers(cells, 0.01)["epsg"].tolist() == [loser]


def test_a_cell_astride_180_degrees_runs_past_it() -> None:
    cells = pd.DataFrame([(32660, *_cell_at(32660, 180.0, 65.0))], columns=["epsg", "ix", "iy"])
    (footprint,) = cell_footprints(cells).geometry
    assert footprint.is_valid and footprint.bounds[0] < 180.0 < footprint.bounds[2] < 180.1
    assert footprint.area == pytest.approx(
        cell_footprints(cells.assign(ix=cells["ix"] - 3)).geometry.iloc[0].area, 0.01
    )


def test_cells_far_apart_in_two_zones_are_both_kept() -> None:
    cells = pd.DataFrame(
        [(32632, *_cell_at(32632, 10.0, 52.0)), (32633, *_cell_at(32633, 14.0, 52.0))], columns=["epsg", "ix", "iy"]
    )
    assert zone_overlap_losers(cells, 0.01).empty


def test_location_ids_are_stable_and_new_cells_get_new_ids() -> None:
    candidates = pd.DataFrame([_candidate("a", ix, 0) for ix in range(4)])
    scenes = _scenes(("a", 1, 1, "2023-06-29"))
    known = pd.DataFrame({"location_id": [7, 3], "epsg": [32632, 32632], "ix": [2, 0], "iy": [0, 0]})
    plan = plan_corpus(candidates, scenes, Rules(shard_size=3), known_locations=known, first_obs=6)
    ids = plan.locations.set_index("ix")["location_id"].to_dict()
    assert ids == {0: 3, 1: 8, 2: 7, 3: 9}
    assert plan.observations["obs"].tolist() == [6, 7, 8, 9]
    assert plan.observations["shard"].tolist() == [2, 2, 2, 3]
    assert plan.observations["slot"].tolist() == [0, 1, 2, 0]


def test_known_cells_keep_their_outline_and_new_cells_get_theirs() -> None:
    candidates = pd.DataFrame([_candidate("a", ix, 0) for ix in range(3)])
    scenes = _scenes(("a", 1, 1, "2023-06-29"))
    fresh = plan_corpus(candidates, scenes, Rules()).locations
    known = fresh.iloc[[1]].copy()
    replanned = plan_corpus(candidates, scenes, Rules(), known_locations=known).locations
    assert replanned.geometry.geom_equals_exact(fresh.geometry, tolerance=0).all()  # as reprojected afresh
    known.geometry = known.geometry.translate(1.0, 0.0)  # an outline the plan could not have made itself
    reused = plan_corpus(candidates, scenes, Rules(), known_locations=known).locations.set_index("ix").geometry
    assert reused[1].equals(known.geometry.iloc[0]) and reused[0].equals(fresh.set_index("ix").geometry[0])


def _zone_edge_world(n_datatakes: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Datatakes of two overlapping tiles (6 x 6 cells, a cell apart) around 12 E, where zones 32 and 33
    meet, some cells cloudy: duplicates, zone overlaps and threshold drops all happen."""
    rng = np.random.default_rng(seed)
    candidates, scenes = [], []
    for datatake in range(n_datatakes):
        lon, lat = rng.uniform(11.8, 12.2), rng.uniform(45.0, 45.25)
        epsg = 32632 if lon < 12.0 else 32633
        acquired = pd.Timestamp("2023-01-01", tz="UTC") + pd.Timedelta(days=int(rng.integers(0, 600)))
        for tile in (1, 2):
            product = f"d{datatake:03d}t{tile}"
            scenes.append({"product": product, "datatake": datatake, "tile": tile, "acquired": acquired})
            ix, iy = _cell_at(epsg, lon, lat - 0.035 * tile)
            for dx in range(-3, 3):
                for dy in range(-3, 3):
                    cloud = int(rng.integers(200, 400)) if rng.random() < 0.1 else 0
                    candidates.append(
                        _candidate(product, ix + dx, iy + dy, epsg, cloud=cloud, haze=int(rng.integers(3)))
                    )
    return pd.DataFrame(candidates), pd.DataFrame(scenes)


def test_an_extension_decides_again_only_what_it_touches_and_equals_a_whole_plan() -> None:
    candidates, scenes = _zone_edge_world(16, seed=1)
    rules = Rules(shard_size=8)
    previous_products = scenes.sort_values("acquired")["product"].iloc[:22]
    base = plan_corpus(candidates[candidates["product"].isin(previous_products)], scenes, rules)
    fates = base.candidates.set_index(["product", *KEY])["drop_reason"]
    # one earlier scene leaves the corpus (superseded): the tile it beat takes its cells back
    beaten = base.candidates[base.candidates["drop_reason"] == "duplicate"]
    gone = base.candidates.merge(beaten[["datatake", *KEY]], on=["datatake", *KEY]).query("drop_reason == ''")
    gone_product = gone["product"].iloc[0]
    now = scenes[scenes["product"] != gone_product]
    new = candidates[~candidates["product"].isin(previous_products)]
    first_obs = (int(base.observations["shard"].max()) + 1) * rules.shard_size
    layout = {"known_locations": base.locations, "placed": base.observations, "first_obs": first_obs}
    extended = extend_plan(base.candidates, new, now, rules, **layout)  # type: ignore[arg-type]
    whole = plan_corpus(candidates[candidates["product"].isin(now["product"])], now, rules, **layout)  # type: ignore[arg-type]

    by_candidate = ["product", *KEY]
    assert (
        extended.candidates[[*by_candidate, "drop_reason"]]
        .reset_index(drop=True)
        .equals(whole.candidates[[*by_candidate, "drop_reason"]].reset_index(drop=True))
    )
    columns = ["obs", "product", *KEY, "location_id", "split", "shard", "slot"]
    assert extended.observations[columns].equals(whole.observations[columns])
    assert extended.locations.drop(columns="geometry").equals(whole.locations.drop(columns="geometry"))
    assert extended.locations.geometry.geom_equals_exact(whole.locations.geometry, tolerance=0).all()
    # the test covers what it claims: earlier candidates changed fate by both rules the new scenes decide again
    changed = extended.candidates.set_index(by_candidate)["drop_reason"].reindex(fates.index).dropna()
    moved = pd.DataFrame({"was": fates[changed.index], "now": changed})[lambda t: t["was"] != t["now"]]
    assert {"zone_overlap", "duplicate"} <= set(moved["was"]) | set(moved["now"]), moved
    assert (extended.candidates["drop_reason"] == "cloud").any()


@pytest.mark.parametrize(("lon", "lat", "zones"), [(12.0, 45.0, (32632, 32633)), (180.0, 65.0, (32660, 32601))])
def test_cross_zone_neighbours_include_every_cell_that_overlaps(lon: float, lat: float, zones: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    points = [(lon + rng.uniform(-0.15, 0.15), lat + rng.uniform(-0.1, 0.1)) for _ in range(60)]
    cells = pd.DataFrame(
        [(epsg, *_cell_at(epsg, x, y)) for x, y in points for epsg in zones], columns=KEY
    ).drop_duplicates(ignore_index=True)
    footprints = cell_footprints(cells)
    for i, cell in cells.iterrows():
        others = cells[cells["epsg"] != cell["epsg"]]
        touching = others[footprints.loc[others.index].intersects(footprints.geometry[i])]
        found = cross_zone_neighbours(cells.loc[[i]], cells)
        assert set(map(tuple, touching[KEY].to_numpy())) <= set(map(tuple, found[KEY].to_numpy()))
        assert (found["epsg"] != cell["epsg"]).all()
    assert len(cross_zone_neighbours(cells, cells)) > 0
