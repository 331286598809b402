"""End to end: example products -> corpus, checked against how the products were made."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import xarray as xr
from rasterio.windows import from_bounds

from conftest import TEST_RULES, build, copy_corpus, dask_scheduler, kill_after_first_shard
from spectral_corpus.catalog.bands import selected_bands
from spectral_corpus.catalog.query import SceneQuery
from spectral_corpus.catalog.synth import Example
from spectral_corpus.pipeline.build import BuildOptions, build_corpus
from spectral_corpus.pipeline.cli import main
from spectral_corpus.pipeline.info import corpus_summary
from spectral_corpus.pipeline.outcomes import Published
from spectral_corpus.pipeline.reader import CorpusReader
from spectral_corpus.pipeline.verify import verify_corpus
from spectral_corpus.stages.rules import Rules

# What the example scenario makes (catalog/synth.py): 5 scenes of 2 x 2 cells in UTM 32N, one in 33N,
# an older processor version of one of them, and one event per cell testing a rule on either side.
EXPECTED = {
    "locations": 7,
    "observations": 12,
    "multitemporal_locations": 4,
    "longest_stack": 3,
    "candidates": 20,
    "dropped": {"nodata": 1, "cloud": 1, "cloudshadow": 1, "snow": 1, "duplicate": 2, "zone_overlap": 2},
}


def _summary(path: Path) -> dict:
    return corpus_summary(CorpusReader(path))


def test_counts_follow_from_the_scenario(corpus: Path) -> None:
    summary = _summary(corpus)
    assert {k: summary[k] for k in EXPECTED} == EXPECTED
    assert summary["scenes"]["total"] == 6 and summary["scenes"]["used"] == 5
    (reason,) = summary["scenes"]["rejected_scenes"].values()
    assert reason.startswith("superseded by newer processor version ENMAP01-____L2A-DT0000001003_")
    assert summary["bands"] == 202
    assert summary["shards"] == 3  # 12 observations, 4 per shard


def test_the_reprocessed_product_replaces_the_older_one(corpus: Path) -> None:
    observations = CorpusReader(corpus).table("observations")
    datatake_1003 = observations[observations["product"].str.contains("DT0000001003")]
    assert set(datatake_1003["product"].str.extract(r"_V(\d{6})_")[0]) == {"010500"}
    assert len(datatake_1003) == 4  # all four cells, including the one the old version had clouded


def test_observations_hold_the_source_pixels(corpus: Path) -> None:
    reader = CorpusReader(corpus)
    scenes = reader.table("scenes").set_index("product")
    bands = [int(b) for b in selected_bands(202)]
    for row in reader.table("observations").itertuples():
        href = dict(scenes.loc[row.product, "assets"])["image"]
        with rasterio.open(href) as image:
            expected = image.read(bands, window=((row.row, row.row + 128), (row.col, row.col + 128)))
        np.testing.assert_array_equal(reader.read_patch(row.obs), expected, err_msg=f"obs {row.obs}")


def test_stacks_are_ordered_by_time_and_locations_are_unique(corpus: Path) -> None:
    reader = CorpusReader(corpus)
    observations = reader.table("observations")
    for _, stack in observations.groupby("location_id"):
        assert stack["acquired"].is_monotonic_increasing
        assert stack["obs"].diff().dropna().eq(1).all()  # a stack is contiguous
    locations = reader.table("locations")
    assert not locations.duplicated(["epsg", "ix", "iy"]).any()
    assert locations.crs.to_epsg() == 4326


def test_xarray_opens_the_store_lazily_with_coordinates(corpus: Path) -> None:
    ds = xr.open_zarr(corpus / "patches.zarr")
    patches = ds["patches"]
    assert patches.dims == ("obs", "band", "y", "x")
    assert patches.shape == (12, 202, 128, 128)
    assert patches.chunks is not None  # dask-backed: nothing read yet
    assert ds["wavelength"].dims == ("band",)
    np.testing.assert_allclose(ds["wavelength"].values[[0, -1]], [0.4182, 2.4455])
    assert np.issubdtype(ds["time"].dtype, np.datetime64)
    observations = CorpusReader(corpus).table("observations")
    np.testing.assert_array_equal(ds["location_id"].values, observations["location_id"].to_numpy())


def test_export_spectralearth_matches_the_source_at_the_same_coordinates(corpus: Path, tmp_path: Path) -> None:
    assert main(["export-spectralearth", str(corpus), str(tmp_path)]) == 0
    reader = CorpusReader(corpus)
    observations = reader.table("observations")
    scenes = reader.table("scenes").set_index("scene_id")
    files = sorted((tmp_path / "enmap").glob("*/*.tif"))
    assert len(files) == len(observations)
    bands = [int(b) for b in selected_bands(202)]
    for row in observations.itertuples():
        path = tmp_path / "enmap" / f"{row.location_id:07d}" / f"{row.scene_id:05d}.tif"
        with rasterio.open(path) as patch:
            assert (patch.count, patch.dtypes[0], patch.nodata) == (202, "int16", -32768)
            assert patch.crs.to_epsg() == row.epsg
            assert patch.descriptions[0] == "band 1 (418.2 nm)"
            exported, bounds = patch.read(), patch.bounds
        href = dict(scenes.loc[row.scene_id, "assets"])["image"]
        with rasterio.open(href) as image:
            source = image.read(bands, window=from_bounds(*bounds, transform=image.transform))
        np.testing.assert_array_equal(exported, source)


def test_verify_passes_and_catches_a_flipped_byte(corpus: Path, tmp_path: Path, capsys) -> None:
    corpus = copy_corpus(corpus, tmp_path / "corpus")
    assert main(["verify", str(corpus)]) == 0
    shard = CorpusReader(corpus).paths.shard_file(1)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert main(["verify", str(corpus)]) == 1
    assert f"shard 1: checksum of {shard} differs from the shards table" in capsys.readouterr().err


def _content(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    reader = CorpusReader(path)
    columns = ["obs", "location_id", "product", "epsg", "ix", "iy", "row", "col", "frac_cloud", "frac_snow"]
    return reader.table("observations")[columns], np.asarray(reader.patches[:])


def _assert_same_corpus(a: Path, b: Path) -> None:
    table_a, patches_a = _content(a)
    table_b, patches_b = _content(b)
    pd.testing.assert_frame_equal(table_a, table_b)
    np.testing.assert_array_equal(patches_a, patches_b)


def test_static_stac_and_live_api_give_the_same_corpus(
    example: Example, stac_url: str, corpus: Path, tmp_path: Path
) -> None:
    _assert_same_corpus(corpus, build(example.stac_items, tmp_path / "static"))
    _assert_same_corpus(corpus, build(stac_url, tmp_path / "api"))


def test_scene_cloud_filter_on_the_live_api(stac_url: str, tmp_path: Path) -> None:
    summary = _summary(build(stac_url, tmp_path / "clear", query=SceneQuery.from_options(max_cloud=10)))
    # Product C (scene cloud cover > 10 %) is left out: its two kept cells and two dropped cells go.
    assert summary["observations"] == 10 and summary["locations"] == 7
    assert summary["multitemporal_locations"] == 3
    assert summary["dropped"]["cloud"] == 0 and summary["dropped"]["snow"] == 0


def test_rule_options_move_the_thresholds(example: Example, tmp_path: Path) -> None:
    summary = _summary(build(example.archive, tmp_path / "loose", Rules(max_cloud=0.02, max_snow=0.2, shard_size=8)))
    # C01 (snow 1639 px) comes back; C10 (cloud 164 px) is now dropped by its 200 px shadow instead.
    assert summary["dropped"]["cloud"] == 0 and summary["dropped"]["snow"] == 0
    assert summary["dropped"]["cloudshadow"] == 2
    assert summary["observations"] == 13


def test_bad_products_are_skipped_with_reasons(tmp_path: Path) -> None:
    from spectral_corpus.catalog.synth import write_bad_products, write_example

    example = write_example(tmp_path / "products", seed=1)
    write_bad_products(example.archive, seed=1)
    summary = _summary(build(example.archive, tmp_path / "corpus"))
    assert {k: summary[k] for k in EXPECTED} == EXPECTED  # every good scene built, nothing else
    reasons = {p.split("-DT")[1][:10]: r for p, r in summary["scenes"]["rejected_scenes"].items()}
    assert "file is truncated" in reasons["0000009001"]
    assert "no METADATA.XML" in reasons["0000009002"]
    assert "unsafe ZIP member '../evil.txt'" in reasons["0000009003"]
    assert "spectral image has 200 bands, expected 224" in reasons["0000009004"]
    assert summary["scenes"]["rejected_by_reason"] == {
        "missing or bad METADATA.XML": 1,
        "superseded by a newer processor version": 1,
        "truncated file": 1,
        "unsafe archive member": 1,
        "wrong band count": 1,
    }


def test_build_on_an_existing_dask_scheduler_reports_its_progress(
    example: Example, corpus: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The session's cluster: a scheduler and two worker processes that outlive any build.
    out = tmp_path / "remote"
    calls: list[tuple[str, int, int]] = []
    with caplog.at_level(logging.INFO, logger="spectral_corpus.pipeline"):
        result = build_corpus(
            BuildOptions(
                source=str(example.archive),
                out=out,
                query=SceneQuery(),
                rules=TEST_RULES,
                scheduler=dask_scheduler(),
                progress=lambda stage, done, total: calls.append((stage, done, total)),
            )
        )
    _assert_same_corpus(corpus, out)  # built on a local cluster of its own
    reader = CorpusReader(out)
    assert result == Published(reader.manifest)
    n_scenes, n_shards = len(reader.table("scenes")), reader.manifest.n_shards
    n_inspected = n_scenes - 1  # the superseded product is never inspected
    assert calls == [
        ("index", 0, 1),  # the example's products, read in one task on the cluster
        ("index", 1, 1),
        *[("inspect", done, n_inspected) for done in range(n_inspected + 1)],
        *[("materialize", done, n_shards) for done in range(n_shards + 1)],
        ("stats", 0, 0),  # every shard's moments were taken while it was written
    ]
    assert [record.getMessage().split()[0] for record in caplog.records] == ["catalog", "plan", "commit"]
    assert caplog.records[-1].getMessage() == "commit      version 1 published"


def test_build_killed_midway_resumes_to_the_same_corpus(example: Example, corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "spectral_corpus.pipeline.cli",
        "build",
        "--source",
        str(example.archive),
        "--out",
        str(out),
        "--shard-size",
        str(TEST_RULES.shard_size),
        "--split-block-cells",
        str(TEST_RULES.split_block_cells),
        "--workers",
        "1",
        "--quiet",
    ]
    kill_after_first_shard(command, out)
    assert not (out / "CURRENT").exists(), "the build finished before it could be killed"
    assert len(list((out / "_build" / "shards").iterdir())) < 3
    build(example.archive, out)
    assert verify_corpus(CorpusReader(out)) == []
    _assert_same_corpus(corpus, out)


def test_max_quality_keeps_nominal_scenes_and_the_old_option_is_refused(
    example: Example, tmp_path: Path, capsys
) -> None:
    # Scene C is the one of reduced quality (overallQuality 1); 0 is nominal, lower is better.
    summary = _summary(build(example.archive, tmp_path / "nominal", query=SceneQuery(max_quality=0)))
    assert summary["observations"] == 10 and summary["scenes"]["total"] == 5
    assert _summary(build(example.archive, tmp_path / "all", query=SceneQuery(max_quality=1)))["observations"] == 12
    assert main(["build", "--source", str(example.archive), "--out", str(tmp_path / "x"), "--min-quality", "1"]) == 2
    err = capsys.readouterr().err
    assert "--min-quality was replaced by --max-quality" in err and "lower is better" in err
    assert not (tmp_path / "x").exists()


def test_a_build_that_makes_nothing_fails_first_and_says_why(tmp_path: Path, capsys) -> None:
    from spectral_corpus.catalog.synth import write_bad_products

    archive = tmp_path / "archive"
    write_bad_products(archive)  # 9001 truncated, 9002 no METADATA.XML, 9003 unsafe ZIP, 9004 200 bands
    argv = ["build", "--source", str(archive), "--out", str(tmp_path / "corpus"), "--quiet"]
    argv += ["--scheduler", dask_scheduler()]
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "spectral-corpus build: error: no observations: 4 of 4 scenes were rejected"
    assert "  1 truncated file" in err and "  1 wrong band count" in err and "  1 unsafe archive member" in err
    assert not (tmp_path / "corpus" / "CURRENT").exists() and not (tmp_path / "corpus" / "_build").exists()
    # Rejected while indexing: stopped before any Dask task, with the same first line.
    for product in [p for p in archive.iterdir() if "DT0000009001" in p.name or "DT0000009004" in p.name]:
        shutil.rmtree(product)
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines()[0].endswith("no observations: 2 of 2 scenes were rejected")


def test_info_says_how_far_scene_band_centres_deviate(corpus: Path, capsys) -> None:
    deviation = _summary(corpus)["band_centre_deviation_nm"]
    assert deviation["scenes"] == 5 and 0 < deviation["median"] <= deviation["max"] < 0.5
    assert main(["info", str(corpus)]) == 0
    assert f"5 scenes deviate from the nominal table by at most {deviation['max']} nm" in capsys.readouterr().out


def test_nothing_built_says_what_dropped_the_patches() -> None:
    from spectral_corpus.pipeline.build import _nothing_built

    scenes = pd.DataFrame(
        {
            "product": ["p1", "p2"],
            "status": ["ok", "rejected"],
            "rejection": [None, "truncated"],
            "reason": ["", "/x: file is truncated"],
        }
    )
    candidates = pd.DataFrame(
        {"product": ["p1", "p1", "p1", "p0"], "drop_reason": ["cloud", "cloud", "snow", "nodata"]}  # p0: another scene
    )
    assert _nothing_built(scenes, candidates).splitlines() == [
        "no observations: 1 of 2 scenes were rejected",
        "  1 truncated file",
        "and all 3 candidate patches of the others were dropped:",
        "  2 by cloud",
        "  1 by snow",
        "    p2: /x: file is truncated",
    ]
