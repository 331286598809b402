"""The stage functions one at a time, on small coded scenes, with exact expected values.

Scenes come from ``coded_scenes``: real product folders (METADATA.XML, GeoTIFFs) whose pixel values encode
band, row, column and scene, so a patch cut from a wrong window, band or scene cannot pass. Tables are
hand-made frames whose expected results follow from how they were made.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import zarr
from shapely.geometry import box

from coded_scenes import CodedScene, cell_corner, write_coded_product
from spectral_corpus.catalog.bands import NODATA, band_table, selected_bands
from spectral_corpus.catalog.product import ProductName
from spectral_corpus.catalog.rasters import encode_raster
from spectral_corpus.catalog.rejections import Rejection
from spectral_corpus.catalog.scenes import OK, REJECTED, SceneRecord, scene_table
from spectral_corpus.corpus_files import LocalFiles
from spectral_corpus.corpus_format import (
    FLAGS,
    FORMAT_NAME,
    FORMAT_VERSION,
    PATCHES,
    TABLES,
    BandStatistics,
    CorpusLayout,
    CorpusMetadata,
)
from spectral_corpus.pipeline import tables
from spectral_corpus.stages.commit import VersionTables, commit_version, read_current
from spectral_corpus.stages.grid import PATCH_PX
from spectral_corpus.stages.inspect import CANDIDATE_COLUMNS, InspectResult, inspect_scene
from spectral_corpus.stages.materialize import SceneReadError, materialize_shard, shard_marker
from spectral_corpus.stages.plan import Plan
from spectral_corpus.stages.rules import Rules
from spectral_corpus.stages.stats import moments_key
from spectral_corpus.stages.store import create_patch_array

# --- the coded scenes ------------------------------------------------------------------------------------------

#: Scene S: 392 x 290 px whose pixel (row 9, col 5) is the first pixel of cell (100, 1200), so it holds
#: 3 x 2 whole cells with margins of 5 / 3 columns and 9 / 25 rows. Its cells (pixel windows):
#:   a (100, 1200) rows 9-136, cols 5-132     b (101, 1200) cols 133-260     c (102, 1200) cols 261-388
#:   d (100, 1199) rows 137-264, cols 5-132   e (101, 1199) cols 133-260     f (102, 1199) cols 261-388
S_WIDTH, S_HEIGHT = 392, 290
S_CELLS = {  # label -> (ix, iy, row, col)
    "a": (100, 1200, 9, 5),
    "b": (101, 1200, 9, 133),
    "c": (102, 1200, 9, 261),
    "d": (100, 1199, 137, 5),
    "e": (101, 1199, 137, 133),
    "f": (102, 1199, 137, 261),
}
MARGIN_ROW = 270  # a row below every cell


def _scene_s() -> CodedScene:
    x0, y0 = cell_corner(100, 1200, col_px=5, row_px=9)
    return CodedScene(
        key=1,
        x0=x0,
        y0=y0,
        width=S_WIDTH,
        height=S_HEIGHT,
        # a: its first and last pixel; two margin pixels that count nowhere
        nodata=((9, 5), (136, 132), (0, 0), (289, 391)),
        flags={
            # a: (136, 132) again (counted once) and (20, 20); (8, 5) lies in the margin above a
            "pixelmask": ((136, 132, 1), (20, 20, 1), (8, 5, 1)),
            # a: background (nodata); f: 8 water pixels; one water pixel in the margin
            "quality_classes": ((30, 30, 3), *((150, c, 2) for c in range(300, 308)), (280, 10, 2)),
            # b: a 2 x 3 block; e: its first pixel; a whole margin row
            "quality_cloud": (
                *((r, c, 1) for r in (50, 51) for c in (140, 141, 142)),
                (137, 133, 1),
                *((MARGIN_ROW, c, 1) for c in range(S_WIDTH)),
            ),
            # b: one pixel under a cloud (flagged once), one clear
            "quality_haze": ((50, 140, 1), (60, 200, 1)),
            # c: the 4 last columns of row 100; (100, 389) is the margin east of c; e: its last pixel
            "quality_cloudshadow": (*((100, c, 1) for c in range(385, 390)), (264, 260, 1)),
            # d: 10 pixels down its first column; one margin pixel
            "quality_snow": (*((r, 5, 1) for r in range(200, 210)), (289, 391, 1)),
            # f: levels 1-3 in its last pixels
            "quality_cirrus": ((264, 388, 1), (264, 387, 2), (263, 388, 3)),
            # never read by inspect
            "quality_testflags": ((40, 40, 255), (200, 200, 7)),
        },
    )


#: What inspect must count in each cell of scene S (n_flagged: pixels with any flag but water).
S_COUNTS = {
    "a": {"n_flagged": 4, "n_nodata": 4},
    "b": {"n_flagged": 7, "n_cloud": 6, "n_haze": 2},
    "c": {"n_flagged": 4, "n_cloudshadow": 4},
    "d": {"n_flagged": 10, "n_snow": 10},
    "e": {"n_flagged": 2, "n_cloud": 1, "n_cloudshadow": 1},
    "f": {"n_flagged": 3, "n_cirrus": 3, "n_water": 8},
}


def _scene_t() -> CodedScene:
    """Scene T: another datatake as a cloud-optimized GeoTIFF, 2 x 1 cells (ix 101-102, iy 1199), 270 x 140 px."""
    x0, y0 = cell_corner(101, 1199, col_px=7, row_px=4)
    return CodedScene(key=2, x0=x0, y0=y0, width=270, height=140, datatake=5002, raster_format="COG")


def _small(n: int, **changes: object) -> CodedScene:
    """Product ``n`` of 140 x 140 px holding one cell (200, 1100) at pixel (6, 6) (datatake 6000 + n)."""
    x0, y0 = cell_corner(200, 1100, col_px=6, row_px=6)
    scene = CodedScene(key=3, x0=x0, y0=y0, width=140, height=140, datatake=6000 + n)
    return replace(scene, **changes)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("archive")


@pytest.fixture(scope="module")
def scene_s(archive: Path) -> tuple[CodedScene, SceneRecord]:
    scene = _scene_s()
    return scene, write_coded_product(archive, scene)


@pytest.fixture(scope="module")
def scene_t(archive: Path) -> tuple[CodedScene, SceneRecord]:
    scene = _scene_t()
    return scene, write_coded_product(archive, scene)


def test_coded_values_differ_for_every_other_window() -> None:
    """The helper's promise: no 2 x 2 window of another band, place or scene holds the same values."""
    scene = _scene_s()
    bands = np.arange(1, 225)

    def windows(scene: CodedScene, row: int, col: int) -> np.ndarray:
        return scene.values(bands, row, col, 2).reshape(224, 1, 4)

    here = windows(scene, 40, 50)
    assert not (here == NODATA).any()
    same = (here == windows(scene, 40, 50).transpose(1, 0, 2)).all(axis=2)
    np.testing.assert_array_equal(same, np.eye(224, dtype=bool))  # only the same band matches
    for other in (windows(scene, 40, 51), windows(scene, 41, 50), windows(replace(scene, key=2), 40, 50)):
        assert not (here == other.transpose(1, 0, 2)).all(axis=2).any()


# --- inspect ---------------------------------------------------------------------------------------------------


def test_inspect_counts_each_flag_in_each_cell(scene_s: tuple[CodedScene, SceneRecord]) -> None:
    scene, record = scene_s
    result = inspect_scene(record)
    assert (result.product, result.status, result.reason, result.epsg) == (scene.name, OK, "", 32632)
    expected = pd.DataFrame(
        [
            {"product": scene.name, "epsg": 32632, **dict(zip(("ix", "iy", "row", "col"), S_CELLS[label], strict=True))}
            | {column: 0 for column in CANDIDATE_COLUMNS[6:]}
            | S_COUNTS[label]
            for label in "abcdef"  # north to south, west to east
        ],
        columns=CANDIDATE_COLUMNS,
    )
    expected[CANDIDATE_COLUMNS[1:]] = expected[CANDIDATE_COLUMNS[1:]].astype("int64")
    pd.testing.assert_frame_equal(result.candidates.reset_index(drop=True), expected)


def test_inspect_finds_no_cells_in_a_scene_smaller_than_one(archive: Path) -> None:
    record = write_coded_product(archive, _small(3, width=100, height=100))
    result = inspect_scene(record)
    assert (result.status, result.epsg) == (OK, 32632)
    assert result.candidates.empty and list(result.candidates.columns) == CANDIDATE_COLUMNS


@pytest.mark.parametrize(
    ("n", "changes", "reason"),
    [
        (4, {"x0": _small(0).x0 + 10}, r"pixel corners \(\d+(\.0)?, \d+(\.0)?\) are off the EnMAP lattice"),
        (5, {"n_bands": 200}, r"spectral image has 200 bands, expected 224$"),
        (6, {"meta_width": 150}, r"METADATA.XML disagrees with the image: width 150 in METADATA.XML, 140 in the image"),
    ],
    ids=["off-lattice", "band-count", "metadata-width"],
)
def test_inspect_rejects_a_bad_image_naming_it(archive: Path, n: int, changes: dict[str, object], reason: str) -> None:
    record = write_coded_product(archive, _small(n, **changes))
    assert record.status == OK  # the catalog accepted it: only the image tells
    result = inspect_scene(record)
    image = record.asset_map["image"]
    assert (result.product, result.status, result.epsg) == (record.product, REJECTED, None)
    assert result.reason.startswith(f"{image}: "), result.reason
    assert re.search(reason, result.reason), result.reason
    assert result.candidates.empty


def test_inspect_rejects_a_quality_layer_on_another_grid_naming_it(archive: Path) -> None:
    scene = _small(7)
    record = write_coded_product(archive, scene)
    cloud = Path(record.asset_map["quality_cloud"])
    files = encode_raster(cloud.stem, np.zeros((1, 139, 140), np.uint8), crs="EPSG:32632", transform=scene.transform,
                          nodata=None, fmt="GTiff")  # fmt: skip
    cloud.write_bytes(files[cloud.name])
    result = inspect_scene(record)
    assert (result.status, result.epsg) == (REJECTED, None)
    assert result.reason == f"{cloud}: quality layer grid (139, 140) differs from the image (140, 140)"


def test_inspect_rejects_a_scene_without_a_quality_layer(archive: Path) -> None:
    record = write_coded_product(archive, _small(8))
    result = inspect_scene(replace(record, assets=tuple(a for a in record.assets if a[0] != "quality_snow")))
    assert (result.status, result.reason) == (REJECTED, f"{record.product}: missing quality layer(s) quality_snow")


# --- materialize -----------------------------------------------------------------------------------------------

SHARD_SIZE = 4


def _corpus(root: Path, bands: np.ndarray, n_obs: int) -> Path:
    """A corpus folder with an empty patch array of ``n_obs`` rows, as a build prepares it."""
    table = band_table().set_index("band").loc[bands]
    wavelengths, fwhm = table["center_nm"].to_numpy(), table["fwhm_nm"].to_numpy()
    create_patch_array(LocalFiles(root), n_obs, wavelengths, fwhm, bands, SHARD_SIZE)
    return root


def _shard_rows(obs: list[int], windows: list[tuple[SceneRecord, int, int]], train: list[bool]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "obs": obs,
            "href": [record.asset_map["image"] for record, _, _ in windows],
            "row": [row for _, row, _ in windows],
            "col": [col for _, _, col in windows],
            "train": train,
        }
    )


def test_materialize_cuts_every_patch_from_its_window(
    tmp_path: Path, scene_s: tuple[CodedScene, SceneRecord], scene_t: tuple[CodedScene, SceneRecord]
) -> None:
    (s, s_record), (t, t_record) = scene_s, scene_t
    bands = selected_bands(202)  # the default corpus: both water-vapour gaps left out
    corpus = _corpus(tmp_path / "corpus", bands, 3 * SHARD_SIZE)
    layout = CorpusLayout(corpus)
    cell = {label: (s_record, row, col) for label, (_, _, row, col) in S_CELLS.items()}
    windows = {
        # obs -> (scene, record, row, col, train): cells of S and T in no particular order, and windows of S
        # off the grid, at its corners
        0: (s, *cell["f"], True),
        1: (s, *cell["a"], False),
        2: (t, t_record, 4, 135, True),
        3: (s, *cell["e"], True),
        4: (s, s_record, S_HEIGHT - PATCH_PX, S_WIDTH - PATCH_PX, True),
        5: (t, t_record, 4, 7, True),
        6: (s, s_record, 0, 0, False),
        7: (s, *cell["b"], True),
    }
    results = []
    for shard in (1, 0):
        obs = [o for o in windows if o // SHARD_SIZE == shard][::-1]  # rows come in any order
        rows = _shard_rows(obs, [windows[o][1:4] for o in obs], [windows[o][4] for o in obs])
        results.append(materialize_shard(LocalFiles(corpus), shard, rows, bands))

    patches = np.asarray(zarr.open_array(layout.zarr, path=PATCHES, mode="r")[:])
    assert patches.shape == (12, 202, PATCH_PX, PATCH_PX)
    for o, (scene, _, row, col, _) in windows.items():
        np.testing.assert_array_equal(patches[o], scene.values(bands, row, col, PATCH_PX), err_msg=f"obs {o}")
    assert patches[1, 0, 0, 0] == patches[1, 0, -1, -1] == NODATA  # band 1 of cell a: nodata planted in S
    assert (patches[8:] == NODATA).all() and not layout.shard_file(2).exists()  # shard 2 was never written

    for result in results:
        shard, obs = result.shard, [o for o in windows if o // SHARD_SIZE == result.shard]
        data = layout.shard_file(shard).read_bytes()
        assert (result.first_obs, result.n_obs, result.nbytes) == (SHARD_SIZE * shard, 4, len(data))
        assert result.raw_bytes == 4 * 202 * PATCH_PX * PATCH_PX * 2
        assert result.sha256 == hashlib.sha256(data).hexdigest()
        marker = json.loads((corpus / shard_marker(shard)).read_text())
        assert {k: marker[k] for k in ("shard", "first_obs", "n_obs", "nbytes", "raw_bytes", "sha256")} == {
            "shard": shard, "first_obs": result.first_obs, "n_obs": 4, "nbytes": len(data),
            "raw_bytes": result.raw_bytes, "sha256": result.sha256,
        }  # fmt: skip
        # band moments of the shard's training patches, from the source windows
        train = [o for o in obs if windows[o][4]]
        assert marker["moments"]["key"] == moments_key(train)
        values = np.stack([windows[o][0].values(bands, *windows[o][2:4], PATCH_PX) for o in train], axis=1)
        values = values.reshape(202, -1).astype(np.float64)
        valid = values != NODATA
        count = valid.sum(axis=1)
        mean = np.where(valid, values, 0).sum(axis=1) / count
        m2 = np.where(valid, values - mean[:, None], 0) ** 2
        assert marker["moments"]["count"] == count.tolist()
        np.testing.assert_allclose(marker["moments"]["mean"], mean, rtol=1e-12)
        np.testing.assert_allclose(marker["moments"]["m2"], m2.sum(axis=1), rtol=1e-9)


def test_materialize_writes_the_bands_asked_for_in_their_order(
    tmp_path: Path, scene_s: tuple[CodedScene, SceneRecord]
) -> None:
    scene, record = scene_s
    bands = np.array([224, 2, 1, 130])  # any order, gap bands included
    corpus = _corpus(tmp_path / "corpus", bands, SHARD_SIZE)
    rows = _shard_rows([0, 1], [(record, 9, 5), (record, 137, 261)], [False, False])
    result = materialize_shard(LocalFiles(corpus), 0, rows, bands)
    patches = np.asarray(zarr.open_array(CorpusLayout(corpus).zarr, path=PATCHES, mode="r")[:])
    np.testing.assert_array_equal(patches[0], scene.values(bands, 9, 5, PATCH_PX))
    np.testing.assert_array_equal(patches[1], scene.values(bands, 137, 261, PATCH_PX))
    assert patches[0, 2, 0, 0] == NODATA and patches[0, 0, 0, 0] != NODATA  # band 1 is third here
    assert (patches[2:] == NODATA).all()  # the shard's unused slots keep the fill value
    assert result.n_obs == 2
    assert json.loads((corpus / shard_marker(0)).read_text())["moments"]["count"] == [0, 0, 0, 0]


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_materialize_names_an_unreadable_image(
    tmp_path: Path, scene_s: tuple[CodedScene, SceneRecord], damage: str
) -> None:
    _, record = scene_s
    good = Path(record.asset_map["image"])
    bad = tmp_path / good.name
    if damage == "truncated":  # DLR's band-interleaved strips: the last bands lie past the cut
        data = good.read_bytes()
        bad.write_bytes(data[: len(data) * 6 // 10])
    bands = selected_bands(202)
    corpus = _corpus(tmp_path / "corpus", bands, SHARD_SIZE)
    rows = _shard_rows([0, 1], [(record, 9, 5), (record, 137, 261)], [True, True])
    rows.loc[1, "href"] = str(bad)
    with pytest.raises(SceneReadError, match=f"^{re.escape(str(bad))}: ") as error:
        materialize_shard(LocalFiles(corpus), 0, rows, bands)
    assert error.value.href == str(bad)
    layout = CorpusLayout(corpus)
    assert not layout.shard_file(0).exists() and not (corpus / shard_marker(0)).exists()


def test_materialize_refuses_rows_it_cannot_place(tmp_path: Path, scene_s: tuple[CodedScene, SceneRecord]) -> None:
    _, record = scene_s
    bands = np.array([1, 2])
    corpus = _corpus(tmp_path / "corpus", bands, 2 * SHARD_SIZE)
    gap = _shard_rows([4, 6], [(record, 9, 5), (record, 9, 133)], [True, True])
    with pytest.raises(ValueError, match=r"^shard 1: observations are not contiguous$"):
        materialize_shard(LocalFiles(corpus), 1, gap, bands)
    lost = _shard_rows([4, 5], [(record, 9, 5), (record, 9, 133)], [True, True])
    lost.loc[1, "href"] = None
    with pytest.raises(ValueError, match=r"^shard 1: observations \[5\] have no image$"):
        materialize_shard(LocalFiles(corpus), 1, lost, bands)
    assert not CorpusLayout(corpus).shard_file(1).exists()


# --- commit ----------------------------------------------------------------------------------------------------

T0 = datetime(2024, 5, 10, 10, 0, tzinfo=UTC)


def _record(
    datatake: int, version: str = "010402", status: str = OK, reason: str = "", **changes: object
) -> SceneRecord:
    """A scene record as a catalog gives it (no files behind it), acquired on day ``datatake`` of May 2024."""
    acquired = T0.replace(day=datatake)
    processed = datetime(2024, 7, 1 + int(version[2:4]), tzinfo=UTC)
    name = str(ProductName(datatake, acquired, 1, version, processed))
    record = SceneRecord(
        product=name, source=f"/archive/{name}", datatake=datatake, tile=1, version=version, acquired=acquired,
        processed=processed, epsg=32632, width=300, height=300, described_by="METADATA.XML",
        footprint=box(9.0, 50.0, 9.1, 50.1), assets=(("image", f"/archive/{name}/{name}-SPECTRAL_IMAGE.TIF"),),
        status=status, reason=reason,
    )  # fmt: skip
    return replace(record, **changes)  # type: ignore[arg-type]


def _version_tables(retired: list[tuple[int, int]]) -> VersionTables:
    """Tiny tables of one version: 2 scenes, 3 locations (one without observations), 3 observations, 1 shard;
    ``retired`` lists (obs, retired_in)."""
    records = [_record(1), _record(2)]
    scenes = scene_table(records).assign(n_candidates=[2, 1], n_observations=[2, 1])
    scenes.insert(0, "scene_id", np.arange(2, dtype=np.int64))
    key = {"epsg": 32632, "ix": [100, 101, 102], "iy": 1200}
    locations = gpd.GeoDataFrame(
        {**key, "location_id": [0, 1, 2], "split": ["train", "val", "train"], "x": [1.0, 2.0, 3.0], "y": 4.0,
         "n_obs": [1, 2, 0]},
        geometry=[box(9.0 + i / 10, 50.0, 9.1 + i / 10, 50.1) for i in range(3)], crs="EPSG:4326",
    )  # fmt: skip
    flags = {f"frac_{flag}": np.zeros(3, np.float32) for flag in FLAGS}
    observations = pd.DataFrame(
        {"obs": [0, 1, 2], "shard": 0, "slot": [0, 1, 2], "location_id": [0, 1, 1], "split": ["train", "val", "val"],
         "scene_id": [0, 0, 1], "product": [records[i].product for i in (0, 0, 1)], "acquired": [T0, T0, T0],
         "epsg": 32632, "ix": [100, 101, 101], "iy": 1200, "row": [9, 9, 4], "col": [5, 133, 7], "x": [1.0, 2.0, 2.0],
         "y": 4.0, **flags}
    )  # fmt: skip
    candidates = pd.DataFrame(
        {"product": [records[i].product for i in (0, 0, 1, 1)], "epsg": 32632, "ix": [100, 101, 101, 102],
         "iy": 1200, "row": [9, 9, 4, 4], "col": [5, 133, 7, 135], "n_flagged": [0, 0, 0, 200],
         **{f"n_{flag}": [0, 0, 0, 200 if flag == "cloud" else 0] for flag in FLAGS}, "datatake": [1, 1, 2, 2],
         "tile": 1, "acquired": T0, "drop_reason": ["", "", "", "cloud"]}
    )  # fmt: skip
    shards = pd.DataFrame(
        {"shard": [0], "first_obs": [0], "n_obs": [3], "nbytes": [1000], "raw_bytes": [4000], "sha256": ["ab" * 32],
         "read_seconds": [0.5], "write_seconds": [0.25], "peak_rss_mb": [100.0]}
    )  # fmt: skip
    moments = pd.DataFrame({"shard": [0], "key": ["k"], "count": [[3, 3]], "mean": [[1.0, 2.0]], "m2": [[0.5, 0.5]]})
    retired_rows = pd.DataFrame(
        {"obs": [o for o, _ in retired], "product": records[0].product, "epsg": 32632, "ix": 103, "iy": 1200,
         "retired_in": [v for _, v in retired], "reason": "displaced by a better observation"},
        columns=["obs", "product", "epsg", "ix", "iy", "retired_in", "reason"],
    )  # fmt: skip
    return VersionTables(scenes, locations, observations, candidates, shards, moments, retired_rows)


def _metadata(shard_size: int) -> CorpusMetadata:
    return CorpusMetadata(
        format="", format_version=0, software_version="0.1.0", source="/archive", query={"max_cloud_cover": 50},
        rules=Rules(shard_size=shard_size).as_dict(), bands={"band": [1, 2], "center_nm": [420.0, 424.0]},
    )  # fmt: skip


STATS = BandStatistics(split="train", units="DN", count=[3, 3], mean=[1.0, 2.0], std=[0.5, 0.5])


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_commit_publishes_a_version_and_leaves_the_previous_one_intact(tmp_path: Path) -> None:
    layout = CorpusLayout(tmp_path / "corpus")
    assert read_current(LocalFiles(layout.root)) is None
    before = datetime.now(UTC).replace(microsecond=0)
    first = commit_version(LocalFiles(layout.root), 1, _version_tables([]), _metadata(4), STATS, {"source": "/archive"})

    assert (first.format, first.format_version, first.version, first.parent) == (FORMAT_NAME, FORMAT_VERSION, 1, None)
    assert (first.n_obs, first.n_locations, first.n_retired, first.n_shards) == (3, 2, 0, 1)
    assert (first.stats, first.run, first.rules) == (STATS, {"source": "/archive"}, Rules(shard_size=4).as_dict())
    assert before <= datetime.fromisoformat(first.created) <= datetime.now(UTC)
    assert json.loads(layout.manifest(1).read_text()) == json.loads(json.dumps(first.to_json()))
    assert sorted(first.tables) == sorted(TABLES)
    for name in TABLES:
        data = layout.table(1, name).read_bytes()
        assert first.tables[name] == hashlib.sha256(data).hexdigest(), name
    assert pd.read_parquet(layout.table(1, "observations"))["obs"].tolist() == [0, 1, 2]
    assert json.loads(layout.current.read_text()) == {"version": 1} and read_current(LocalFiles(layout.root)) == 1
    corpus_json = json.loads(layout.metadata.read_text())
    assert corpus_json == {**asdict(_metadata(4)), "format": FORMAT_NAME, "format_version": FORMAT_VERSION}
    assert sorted(p.name for p in layout.versions.iterdir()) == ["v0001"]

    # A killed commit of version 2 left its folders behind; the next commit of version 2 replaces them.
    v1 = _files(layout.version_dir(1))
    for leftover in (layout.version_dir(2), layout.versions / "v0002.staging"):
        leftover.mkdir()
        (leftover / "observations.parquet").write_bytes(b"half written")
    tables = _version_tables([(7, 1), (3, 2)])
    second = commit_version(LocalFiles(layout.root), 2, tables, _metadata(8), STATS, {"source": "/new"})

    assert (second.version, second.parent, second.n_retired, second.rules["shard_size"]) == (2, 1, 1, 8)
    assert _files(layout.version_dir(1)) == v1  # byte for byte
    assert json.loads(layout.manifest(1).read_text())["rules"]["shard_size"] == 4
    assert sorted(p.name for p in layout.versions.iterdir()) == ["v0001", "v0002"]
    for name in TABLES:
        assert second.tables[name] == hashlib.sha256(layout.table(2, name).read_bytes()).hexdigest(), name
    assert pd.read_parquet(layout.table(2, "retired"))[["obs", "retired_in"]].values.tolist() == [[7, 1], [3, 2]]
    assert read_current(LocalFiles(layout.root)) == 2
    assert json.loads(layout.metadata.read_text())["rules"]["shard_size"] == 8  # corpus.json: the current rules


# --- tables ----------------------------------------------------------------------------------------------------


def test_merge_scenes_numbers_scenes_and_keeps_the_newest_version() -> None:
    old, new, other = _record(1), _record(1, version="010500"), _record(2)
    broken = _record(3, status=REJECTED, reason="no METADATA.XML")
    found = scene_table([other, broken, new, old], {"bbox": [9, 50, 10, 51]})
    first = tables.merge_scenes(None, found)
    assert first["product"].tolist() == [old.product, new.product, other.product, broken.product]
    assert first["scene_id"].tolist() == [0, 1, 2, 3]
    assert first["status"].tolist() == [REJECTED, OK, OK, REJECTED]
    assert first["reason"].tolist() == [f"superseded by newer processor version {new.product}", "", "", broken.reason]
    assert first.attrs["query"] == {"bbox": [9, 50, 10, 51]}

    # Known products keep their id and their row (a copy found elsewhere is not looked at); new ones are numbered
    # on, in product order; a newer version of a known product supersedes it.
    newer, fourth = _record(2, version="010500"), _record(4)
    again = scene_table([replace(other, source="/elsewhere"), fourth, newer], {"bbox": [0, 0, 1, 1]})
    second = tables.merge_scenes(first, again)
    assert second["product"].tolist() == [p.product for p in (old, new, other, newer, broken, fourth)]
    assert second["scene_id"].tolist() == [0, 1, 2, 4, 3, 5]
    assert second["status"].tolist() == [REJECTED, OK, REJECTED, OK, REJECTED, OK]
    assert second.loc[2, "reason"] == f"superseded by newer processor version {newer.product}"
    assert second.loc[2, "source"] == other.source
    assert second.attrs["query"] == {"bbox": [0, 0, 1, 1]}


def test_reject_and_apply_inspection() -> None:
    a, b, c = _record(1), _record(2), _record(3, epsg=None)  # c: a STAC item without proj:epsg
    scenes = tables.merge_scenes(None, scene_table([a, b, c]))
    rejected = tables.reject(scenes, {b.product: (Rejection.UNREADABLE, "image.tif: not recognized")})
    assert rejected["status"].tolist() == [OK, REJECTED, OK]
    assert rejected["rejection"].tolist() == [None, "unreadable", None]
    assert rejected["reason"].tolist() == ["", "image.tif: not recognized", ""]
    assert scenes["status"].tolist() == [OK, OK, OK]  # the input is left as it was
    pd.testing.assert_frame_equal(rejected.drop(index=1), scenes.drop(index=1))

    inspected = [
        InspectResult(a.product, OK, epsg=32633),  # the file says another zone than the catalog
        InspectResult(b.product, REJECTED, Rejection.BAND_COUNT, "image.tif: spectral image has 200 bands"),
        InspectResult(c.product, OK, epsg=32632),
    ]
    applied = tables.apply_inspection(scenes, inspected)
    assert applied["status"].tolist() == [OK, REJECTED, OK]
    assert applied["reason"].tolist() == ["", inspected[1].reason, ""]
    assert applied["epsg"].tolist() == [32633, 32632, 32632] and applied["epsg"].dtype == "Int64"
    assert tables.ok_scenes(applied)["product"].tolist() == [a.product, c.product]


def _observations(rows: list[tuple[int, str, int, int]]) -> pd.DataFrame:
    """Planned observations (obs, product, location_id, ix) as ``plan_corpus`` lays them out, flags counted."""
    frame = pd.DataFrame(rows, columns=["obs", "product", "location_id", "ix"])
    n = len(frame)
    return frame.assign(
        shard=frame["obs"] // 4, slot=frame["obs"] % 4, split="train", acquired=T0, epsg=32632, iy=1200,
        row=9, col=5 + 128 * (frame["ix"] - 100), x=1.0, y=2.0, datatake=1, tile=1, n_flagged=0,
        **{f"n_{flag}": np.zeros(n, np.int64) for flag in FLAGS},
    )  # fmt: skip


def test_count_per_scene_and_observation_table() -> None:
    a, b, c = _record(1), _record(2), _record(3)
    scenes = tables.merge_scenes(None, scene_table([a, b, c]))
    observations = _observations([(2, b.product, 1, 101), (0, a.product, 0, 100), (1, b.product, 0, 100)])
    observations.loc[0, ["n_cloud", "n_water"]] = [163, 16384]
    observations.loc[2, "n_nodata"] = 1
    candidates = pd.DataFrame({"product": [a.product, a.product, a.product, b.product, b.product]})
    plan = Plan(candidates, observations, gpd.GeoDataFrame())
    counted = tables.count_per_scene(scenes, plan)
    assert counted["n_candidates"].tolist() == [3, 2, 0]
    assert counted["n_observations"].tolist() == [1, 2, 0]

    table = tables.observation_table(observations, counted)
    assert list(table.columns) == tables.OBSERVATION_COLUMNS
    assert table["obs"].tolist() == [0, 1, 2]
    assert table["scene_id"].tolist() == [0, 1, 1]
    assert table["col"].tolist() == [5, 5, 133]
    fractions = table[[f"frac_{flag}" for flag in FLAGS]]
    assert (fractions.dtypes == "float32").all()
    assert fractions.loc[2, "frac_cloud"] == np.float32(163 / 16384) and fractions.loc[2, "frac_water"] == 1
    assert fractions.loc[1, "frac_nodata"] == np.float32(1 / 16384)
    assert np.count_nonzero(fractions.to_numpy()) == 3  # the others are 0


def test_location_table_keeps_every_location_ever_assigned() -> None:
    key = {"epsg": 32632, "iy": 1200, "x": 1.0, "y": 2.0, "split": "train"}
    locations = gpd.GeoDataFrame({"location_id": [0, 2, 3], "ix": [100, 102, 103], **key},
                                 geometry=[box(i, 0, i + 1, 1) for i in range(3)], crs="EPSG:4326")  # fmt: skip
    observations = _observations([(0, "a", 0, 100), (1, "b", 0, 100), (2, "b", 2, 102), (3, "c", 3, 103)])
    plan = Plan(pd.DataFrame(), observations, locations)
    first = tables.location_table(plan, None)
    assert first["location_id"].tolist() == [0, 2, 3] and first["n_obs"].tolist() == [2, 1, 1]

    base = gpd.GeoDataFrame({"location_id": [0, 1, 2], "ix": [100, 101, 102], **key, "n_obs": [5, 5, 5]},
                            geometry=[box(i, 0, i + 1, 1) for i in range(3)], crs="EPSG:4326")  # fmt: skip
    merged = tables.location_table(plan, base)
    assert merged["location_id"].tolist() == [0, 1, 2, 3]  # location 1 lost its observations but keeps its id
    assert merged["ix"].tolist() == [100, 101, 102, 103]
    assert merged["n_obs"].tolist() == [2, 0, 1, 1]


def test_retired_table_says_why_each_observation_left() -> None:
    kept, moved, stale = _record(1), _record(2), _record(3)
    newer = _record(3, version="010500")
    scenes = tables.merge_scenes(None, scene_table([kept, moved, stale, newer]))
    base_obs = _observations(
        [(0, kept.product, 0, 100), (1, moved.product, 1, 101), (2, stale.product, 2, 102), (3, moved.product, 3, 103)]
    )
    plan_obs = _observations([(0, kept.product, 0, 100), (4, newer.product, 2, 102)])
    candidates = pd.DataFrame(
        {"product": [kept.product, moved.product, moved.product, newer.product], "epsg": 32632,
         "ix": [100, 101, 103, 102], "iy": 1200, "drop_reason": ["", "zone_overlap", "duplicate", ""]}
    )  # fmt: skip
    plan = Plan(candidates, plan_obs, gpd.GeoDataFrame())

    empty = tables.retired_table(None, plan, scenes, 1, None)
    assert empty.empty and list(empty.columns) == ["obs", "product", "epsg", "ix", "iy", "retired_in", "reason"]
    assert (empty["obs"].dtype, empty["retired_in"].dtype) == ("int64", "int64")

    earlier = pd.DataFrame([{"obs": 9, "product": "p", "epsg": 32632, "ix": 1, "iy": 2, "retired_in": 1,
                             "reason": "displaced by a better observation"}])  # fmt: skip
    retired = tables.retired_table(base_obs, plan, scenes, 2, earlier)
    assert retired["obs"].tolist() == [9, 1, 2, 3]
    assert retired["retired_in"].tolist() == [1, 2, 2, 2]
    assert retired["product"].tolist() == ["p", moved.product, stale.product, moved.product]
    assert retired["ix"].tolist() == [1, 101, 102, 103]
    assert retired["reason"].tolist() == [
        "displaced by a better observation",
        tables.CELL_RETIRED["zone_overlap"],
        f"superseded by newer processor version {newer.product}",
        "displaced by a better observation",
    ]
