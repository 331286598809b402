"""import-spectralearth: an exported corpus comes back equal, a published-style tree (pixels and
georeferencing only) comes in with what it does not say left unknown, and export -> import -> export
gives the same files, byte for byte."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine

from conftest import dask_scheduler, patch_content
from spectral_corpus.pipeline.cli import main
from spectral_corpus.pipeline.reader import CorpusReader
from spectral_corpus.pipeline.verify import verify_corpus


def _import(source: Path, out: Path, *options: str) -> int:
    return main(
        ["import-spectralearth", str(source), "--out", str(out), "--scheduler", dask_scheduler(), "--quiet", *options]
    )


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def exported(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("exported")
    assert main(["export-spectralearth", str(corpus), str(dest)]) == 0
    return dest


@pytest.fixture(scope="module")
def imported(exported: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("imported") / "corpus"
    assert _import(exported, out, "--shard-size", "4") == 0
    return out


def _plain_tree(exported: Path, dest: Path, shift: dict[str, tuple[int, int]] | None = None) -> Path:
    """The export as the published files are: pixels, CRS and transform only (no tags, no index);
    ``shift`` moves a file's patch by (dx, dy) metres, off the corpus grid."""
    for source in sorted((exported / "enmap").glob("*/*.tif")):
        name = str(source.relative_to(exported))
        with rasterio.open(source) as patch:
            profile = {k: patch.profile[k] for k in ("driver", "width", "height", "count", "dtype", "crs", "transform")}
            pixels = patch.read()
        dx, dy = (shift or {}).get(name, (0, 0))
        t = profile["transform"]
        profile["transform"] = Affine(t.a, t.b, t.c + dx, t.d, t.e, t.f + dy)
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(dest / name, "w", **profile) as out:
            out.write(pixels)
    return dest


def test_an_imported_export_equals_the_source(corpus: Path, imported: Path) -> None:
    source, copy = CorpusReader(corpus), CorpusReader(imported)
    assert verify_corpus(copy) == []
    key = ["product", "epsg", "ix", "iy"]
    a = source.table("observations").sort_values(key).reset_index(drop=True)
    b = copy.table("observations").sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)  # every column: ids, splits, times, windows, fractions (and order)
    patches_a, patches_b = patch_content(corpus), patch_content(imported)
    assert patches_a.keys() == patches_b.keys()
    for k, pixels in patches_a.items():
        np.testing.assert_array_equal(pixels, patches_b[k])
    locations_a, locations_b = source.table("locations"), copy.table("locations")
    pd.testing.assert_frame_equal(
        pd.DataFrame(locations_a.drop(columns="geometry")), pd.DataFrame(locations_b.drop(columns="geometry"))
    )
    assert locations_a.geometry.geom_equals_exact(locations_b.geometry, 0).all()
    assert copy.manifest.stats == source.manifest.stats
    assert copy.metadata.bands == source.metadata.bands
    scenes_a = source.table("scenes").query("n_observations > 0").set_index("scene_id")
    scenes_b = copy.table("scenes").set_index("scene_id")
    columns = ["product", "datatake", "tile", "version", "acquired", "processed", "epsg", "n_observations"]
    pd.testing.assert_frame_equal(scenes_a[columns], scenes_b[columns], check_dtype=False)
    assert scenes_b["cloud_cover"].isna().all() and copy.table("candidates").empty  # not in the files: unknown


def test_export_import_export_gives_the_same_files_byte_for_byte(
    exported: Path, imported: Path, tmp_path: Path
) -> None:
    assert main(["export-spectralearth", str(imported), str(tmp_path)]) == 0
    first, second = _files(exported), _files(tmp_path)
    assert first.keys() == second.keys() and len(first) == 13  # 12 patches and the index
    assert [name for name in first if first[name] != second[name]] == []


def test_a_published_tree_is_imported_with_unknowns_left_unknown(corpus: Path, exported: Path, tmp_path: Path) -> None:
    off_grid = "enmap/0000006/00005.tif"
    tree = _plain_tree(exported, tmp_path / "published", shift={off_grid: (300, -90)})
    out = tmp_path / "corpus"
    assert _import(tree / "enmap", out, "--split-block-cells", "1") == 0
    reader = CorpusReader(out)
    assert verify_corpus(reader) == []
    observations = reader.table("observations")
    assert len(observations) == 12
    assert observations["product"].isna().all() and observations["acquired"].isna().all()  # never invented
    assert observations["row"].isna().all() and observations["frac_cloud"].isna().all()
    source = CorpusReader(corpus).table("observations")
    assert observations.groupby("location_id").size().equals(source.groupby("location_id").size())
    # splits drawn by the same block rule as the source's (one cell per block, seed 0)
    splits = observations.groupby("location_id")["split"].first()
    assert splits.equals(source.groupby("location_id")["split"].first())
    assert reader.manifest.run["split_from_source"] == 0
    by_file = {(r.location_id, r.scene_id): r.obs for r in observations.itertuples()}
    for path in sorted((tree / "enmap").glob("*/*.tif")):
        with rasterio.open(path) as patch:
            pixels = patch.read()
        obs = by_file[(int(path.parent.name), int(path.stem))]
        np.testing.assert_array_equal(reader.read_patch(obs), pixels)
    # the patch moved off the grid keeps its own georeferencing through a re-export
    assert main(["export-spectralearth", str(out), str(tmp_path / "again")]) == 0
    with rasterio.open(tree / off_grid) as a, rasterio.open(tmp_path / "again" / off_grid) as b:
        assert (b.transform, b.crs) == (a.transform, a.crs)
        np.testing.assert_array_equal(a.read(), b.read())
        assert "ACQUISITION_TIME" not in b.tags() and b.tags()["SPLIT"] == splits[6]


def test_an_index_table_supplies_what_the_files_lack(corpus: Path, exported: Path, tmp_path: Path) -> None:
    tree = _plain_tree(exported, tmp_path / "published")
    scenes = CorpusReader(corpus).table("scenes").query("n_observations > 0")
    known = scenes.iloc[:2]
    pd.DataFrame({"scene_id": known["scene_id"], "product": known["product"]}).to_csv(
        tmp_path / "scenes.csv", index=False
    )
    out = tmp_path / "corpus"
    assert _import(tree, out, "--index", str(tmp_path / "scenes.csv")) == 0
    observations = CorpusReader(out).table("observations")
    named = observations[observations["scene_id"].isin(known["scene_id"])]
    assert set(named["product"]) == set(known["product"])
    # the acquisition time is what the product name says; other scenes stay unknown
    expected = named["product"].str.extract(r"_(\d{8}T\d{6}Z)_")[0].map(lambda t: pd.Timestamp(t).tz_convert("UTC"))
    assert named["acquired"].tolist() == expected.tolist()
    others = observations[~observations["scene_id"].isin(known["scene_id"])]
    assert len(others) and others["product"].isna().all() and others["acquired"].isna().all()


def test_an_index_that_disagrees_with_the_tags_is_refused(exported: Path, tmp_path: Path, capsys) -> None:
    index = pd.read_parquet(exported / "index.parquet")
    index.loc[0, "split"] = "val" if index.loc[0, "split"] != "val" else "train"
    index.to_parquet(tmp_path / "index.parquet")
    assert _import(exported, tmp_path / "corpus", "--index", str(tmp_path / "index.parquet")) == 2
    err = capsys.readouterr().err
    assert f"{index.loc[0, 'path']}: its tags give split" in err and "the index" in err


def test_what_is_not_a_spectralearth_tree_is_refused_with_a_message(
    imported: Path, exported: Path, tmp_path: Path, capsys
) -> None:
    assert _import(tmp_path, tmp_path / "corpus") == 2
    assert "has no enmap/ folder" in capsys.readouterr().err
    (tmp_path / "enmap" / "somewhere").mkdir(parents=True)
    (tmp_path / "enmap" / "somewhere" / "patch.tif").write_bytes(b"")
    assert _import(tmp_path, tmp_path / "corpus") == 2
    assert "a patch is <location id>/<scene id>.tif with numbers for both" in capsys.readouterr().err
    assert _import(exported, imported) == 2
    assert "already holds a corpus (version 1); import into a new folder" in capsys.readouterr().err
