"""Band statistics and spatial-block splits: the pure functions and the built corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import dask_scheduler, sha256_file
from spectral_corpus.pipeline.reader import CorpusReader
from spectral_corpus.stages.splits import assign_splits
from spectral_corpus.stages.stats import Moments, merge_all, patch_moments


def _grid(n: int) -> pd.DataFrame:
    ix, iy = np.meshgrid(np.arange(n), np.arange(n))
    return pd.DataFrame({"epsg": 32632, "ix": ix.ravel(), "iy": iy.ravel()})


def test_splits_follow_blocks_and_fractions() -> None:
    locations = _grid(200)
    splits = assign_splits(locations, block_cells=4, val_fraction=0.1, test_fraction=0.2, seed=3)
    per_block = splits.groupby([locations["ix"] // 4, locations["iy"] // 4]).nunique()
    assert (per_block == 1).all()  # neighbours within a block share a split
    shares = splits.value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.7, abs=0.04)
    assert shares["val"] == pytest.approx(0.1, abs=0.03)
    assert shares["test"] == pytest.approx(0.2, abs=0.04)


def test_splits_are_stable_under_extension_and_change_with_the_seed() -> None:
    small, large = _grid(40), _grid(80)
    first = assign_splits(small, 4, 0.1, 0.1, seed=0)
    extended = assign_splits(large, 4, 0.1, 0.1, seed=0)
    merged = small.assign(split=first).merge(large.assign(split2=extended), on=["epsg", "ix", "iy"])
    assert (merged["split"] == merged["split2"]).all()
    assert (assign_splits(small, 4, 0.1, 0.1, seed=1) != first).any()
    with pytest.raises(ValueError, match="bad split settings"):
        assign_splits(small, 4, 0.6, 0.5, seed=0)


def test_pooled_moments_equal_numpy() -> None:
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 12000, size=(7, 5, 16, 16)).astype(np.int16)
    patches[2, :, 3, 4] = -32768  # nodata is left out
    merged = merge_all([patch_moments(p) for p in patches], 5)
    values = np.ma.masked_equal(patches.astype(np.float64), -32768).transpose(1, 0, 2, 3).reshape(5, -1)
    np.testing.assert_allclose(merged.mean, values.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(merged.std, values.std(axis=1), rtol=1e-12)
    assert merged.count.tolist() == [7 * 256 - 1] * 5
    assert merge_all([], 5).count.sum() == 0
    assert isinstance(Moments.empty(3).merge(patch_moments(patches[0, :3])), Moments)


def test_corpus_statistics_equal_numpy_over_the_training_split(corpus: Path) -> None:
    reader = CorpusReader(corpus)
    observations = reader.table("observations")
    train = observations.loc[observations["split"] == "train", "obs"].to_numpy()
    assert 0 < len(train) < len(observations)  # the test corpus has more than one split
    values = np.asarray(reader.patches[:])[train].astype(np.float64)  # zarr's oindex on shards takes seconds
    stats = reader.manifest.stats
    np.testing.assert_allclose(stats.mean, values.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(stats.std, values.std(axis=(0, 2, 3)), rtol=1e-6)
    assert stats.count == [len(train) * 128 * 128] * 202


def test_every_observation_of_a_location_is_in_its_location_split(corpus: Path) -> None:
    reader = CorpusReader(corpus)
    locations = reader.table("locations").set_index("location_id")["split"]
    observations = reader.table("observations")
    assert (observations["split"].to_numpy() == locations.loc[observations["location_id"]].to_numpy()).all()
    assert set(locations) <= {"train", "val", "test"}


def test_resplit_publishes_new_splits_and_statistics(corpus: Path, tmp_path: Path) -> None:
    import os
    import shutil

    from spectral_corpus.pipeline.cli import main

    copy = tmp_path / "corpus"
    shutil.copytree(corpus, copy, copy_function=os.link)  # safe: a corpus's files are replaced, never rewritten
    before = CorpusReader(copy)
    shard_digests = [sha256_file(before.paths.shard_file(int(s))) for s in before.table("shards")["shard"]]
    on_the_cluster = ["--scheduler", dask_scheduler()]
    assert main(["resplit", str(copy), "--split-seed", "7", "--val-fraction", "0.3", "--quiet", *on_the_cluster]) == 0
    after = CorpusReader(copy)
    assert after.version == 2 and after.metadata.rules["split_seed"] == 7
    locations = after.table("locations")
    expected = assign_splits(locations, 1, 0.3, 0.1, seed=7)
    assert (locations["split"] == expected).all()
    observations = after.table("observations")
    train = np.sort(observations.loc[observations["split"] == "train", "obs"].to_numpy())
    values = np.asarray(after.patches[:])[train].astype(np.float64)
    np.testing.assert_allclose(after.manifest.stats.mean, values.mean(axis=(0, 2, 3)), rtol=1e-6)
    assert [sha256_file(after.paths.shard_file(int(s))) for s in after.table("shards")["shard"]] == shard_digests
    assert CorpusReader(copy, 1).table("locations")["split"].tolist() == before.table("locations")["split"].tolist()
    assert main(["resplit", str(copy), "--split-seed", "7", "--quiet", *on_the_cluster]) == 0  # same: nothing new
    assert CorpusReader(copy).version == 2
