"""The torch dataset and shard-aware sampler read exactly the corpus's bytes, split across ranks."""

from __future__ import annotations

import gc
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from spectral_corpus.catalog.bands import band_table
from spectral_corpus.pipeline.reader import CorpusReader
from spectral_corpus.training import CorpusDataset, ShardAwareSampler
from spectral_corpus.training.loader import PatchLoader
from spectral_corpus.training.transforms import Compose, RandomFlip, RandomResizedCrop, RandomRot90

AUGMENT = Compose([RandomResizedCrop(64), RandomFlip(), RandomRot90()])


def test_observation_items_equal_the_zarr_bytes(corpus: Path) -> None:
    reader = CorpusReader(corpus)
    bands = [0, 57, 201]
    dataset = CorpusDataset(corpus, split=None, unit="observation", bands=bands, normalize=False)
    assert len(dataset) == reader.manifest.n_obs
    observations = reader.table("observations").set_index("obs")
    for index in range(len(dataset)):
        item = dataset[index]
        obs = int(item["obs"])
        np.testing.assert_array_equal(item["image"].numpy(), reader.read_patch(obs)[bands].astype(np.float32))
        row = observations.loc[obs]
        assert int(item["location_id"]) == row["location_id"]
        assert float(item["x"]) == row["x"] and float(item["y"]) == row["y"]
        assert int(item["t"]) == int(row["acquired"].timestamp())
    kept = band_table()[band_table()["kept_202"]]["center_nm"].to_numpy()
    np.testing.assert_allclose(dataset[0]["wavelength"].numpy(), kept[bands] / 1000, rtol=1e-6)
    assert float(dataset[0]["res"]) == 30.0


def test_location_items_take_two_different_dates_when_the_stack_has_them(corpus: Path) -> None:
    observations = CorpusReader(corpus).table("observations")
    dates = observations.groupby("location_id")["obs"].apply(set).to_dict()
    dataset = CorpusDataset(corpus, split=None, unit="location", views=2, normalize=False)
    assert len(dataset) == len(dates)
    reader = CorpusReader(corpus)
    for epoch in range(3):
        for index in range(len(dataset)):
            item = dataset[epoch * len(dataset) + index]
            stack = dates[int(item["location_id"])]
            first = int(item["obs"])
            assert first in stack
            matches = [o for o in stack if np.array_equal(reader.read_patch(o), item["image2"].numpy())]
            assert len(matches) == 1
            assert (matches[0] != first) == (len(stack) > 1)


def test_normalisation_uses_the_stored_statistics(corpus: Path) -> None:
    stats = CorpusReader(corpus).manifest.stats
    raw = CorpusDataset(corpus, split=None, unit="observation", normalize=False)[3]["image"]
    normed = CorpusDataset(corpus, split=None, unit="observation")[3]["image"]
    mean = torch.tensor(stats.mean).view(-1, 1, 1)
    std = torch.tensor(stats.std).view(-1, 1, 1)
    torch.testing.assert_close(normed, (raw - mean) / std)


def test_split_selects_observations_of_that_split(corpus: Path) -> None:
    observations = CorpusReader(corpus).table("observations")
    for split in sorted(set(observations["split"])):
        dataset = CorpusDataset(corpus, split=split, unit="observation", normalize=False)
        expected = set(observations.loc[observations["split"] == split, "obs"])
        assert {int(dataset[i]["obs"]) for i in range(len(dataset))} == expected
    with pytest.raises(ValueError, match="no observations in split 'nope'"):
        CorpusDataset(corpus, split="nope")


def test_two_ranks_get_disjoint_shards_covering_the_split_and_epochs_reshuffle(corpus: Path) -> None:
    dataset = CorpusDataset(corpus, split=None, unit="observation")
    shard_of = {index: int(dataset[index]["obs"]) // 4 for index in range(len(dataset))}
    samplers = [ShardAwareSampler(dataset, seed=1, rank=r, world_size=2) for r in range(2)]
    seen = [[i % len(dataset) for i in sampler] for sampler in samplers]
    assert len(seen[0]) == len(seen[1])  # equal steps for DDP
    shards = [{shard_of[i] for i in items} for items in seen]
    assert shards[0].isdisjoint(shards[1])
    assert set(seen[0]) | set(seen[1]) == set(range(len(dataset)))
    orders = []
    for epoch in range(4):
        samplers[0].set_epoch(epoch)
        orders.append([i % len(dataset) for i in samplers[0]])
    assert len({tuple(o) for o in orders}) > 1
    for items in seen:  # shard-major: each shard's items are contiguous (padding may repeat the first shard)
        unique = list(dict.fromkeys(items))
        runs = [shard_of[i] for i in unique]
        assert sum(a != b for a, b in itertools.pairwise(runs)) == len(set(runs)) - 1


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_with_workers_sees_every_item_once(corpus: Path, workers: int) -> None:
    transforms = Compose([RandomResizedCrop(64), RandomFlip(), RandomRot90()])
    dataset = CorpusDataset(corpus, split=None, unit="location", views=2, transforms=transforms)
    sampler = ShardAwareSampler(dataset, seed=0)
    loader = DataLoader(dataset, batch_size=3, sampler=sampler, num_workers=workers, persistent_workers=workers > 0)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(loader)
        ids = torch.cat([b["location_id"] for b in batches]).tolist()
        assert sorted(ids) == sorted(set(ids)) and len(ids) == len(dataset)
        assert batches[0]["image"].shape[1:] == (202, 64, 64)
        assert batches[0]["image2"].shape == batches[0]["image"].shape


def flip_a_shard_index_byte(shard: Path) -> None:
    """Corrupt one byte inside the shard index at the end of ``shard`` (before its CRC32C)."""
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))


def expected_batches(dataset: CorpusDataset, order: list[int], size: int) -> list[dict[str, torch.Tensor]]:
    """What a plain DataLoader makes of the sampler's order: ``default_collate`` of the items."""
    return [default_collate([dataset[i] for i in order[start : start + size]]) for start in range(0, len(order), size)]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize(
    ("unit", "views", "transforms", "normalize"),
    [("observation", 1, None, False), ("location", 2, AUGMENT, False), ("location", 2, AUGMENT, True)],
)
def test_patch_loader_batches_equal_the_items(
    corpus: Path, workers: int, unit: str, views: int, transforms: Compose | None, normalize: bool
) -> None:
    dataset = CorpusDataset(corpus, split=None, unit=unit, views=views, transforms=transforms, normalize=normalize)
    sampler = ShardAwareSampler(dataset, seed=3)
    loader = PatchLoader(dataset, 3, sampler, num_workers=workers, persistent_workers=workers > 0)
    for epoch in range(2):
        loader.set_epoch(epoch)
        expected = expected_batches(dataset, list(sampler), 3)
        assert len(loader) == len(expected)
        for batch, reference in zip(loader, expected, strict=True):  # compared as drawn: raw batches are ring views
            assert batch.keys() == reference.keys()
            for key, value in reference.items():
                assert batch[key].shape == value.shape, key
                torch.testing.assert_close(batch[key].to(value.dtype), value, rtol=0, atol=0)
            image_type = torch.float32 if normalize else torch.int16
            assert batch["image"].dtype == image_type
    side = 64 if transforms else 128
    item_bytes = 4 if normalize else 2  # without an accelerator the workers normalise into a float32 ring
    assert loader.ring_bytes == views * (2 * workers + 2) * 3 * 202 * side * side * item_bytes


def cloned(loader: PatchLoader) -> list[dict[str, torch.Tensor]]:
    """Every batch of one pass, copied as drawn (batches without an accelerator are views into the ring)."""
    return [{key: value.clone() for key, value in batch.items()} for batch in loader]


def bits(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """The float32 values as their bit patterns, so that equality means bit for bit (-0.0 != 0.0)."""
    values = image.numpy() if isinstance(image, torch.Tensor) else image
    assert values.dtype == np.float32
    return values.view(np.int32)


@pytest.mark.parametrize(
    ("unit", "views", "transforms", "bands"),
    [
        ("observation", 1, None, None),  # stored patches, decoded into the worker's reused buffer
        ("observation", 1, None, [201, 0, 57]),  # a band selection
        ("location", 2, AUGMENT, None),  # two dates, transformed counts
    ],
)
def test_normalised_batches_from_0_1_and_2_workers_equal_raw_ones_normalised_by_hand(
    corpus: Path, unit: str, views: int, transforms: Compose | None, bands: list[int] | None
) -> None:
    stats = CorpusReader(corpus).manifest.stats
    chosen = list(range(len(stats.mean))) if bands is None else bands
    # the manifest's statistics as the loader applies them: float32 (count - mean) * (1 / std)
    mean = np.asarray(stats.mean, dtype=np.float32)[chosen].reshape(-1, 1, 1)
    inv_std = (1 / np.asarray(stats.std, dtype=np.float32)[chosen]).reshape(-1, 1, 1)
    mean64, std64 = (np.asarray(v, dtype=np.float64)[chosen].reshape(-1, 1, 1) for v in (stats.mean, stats.std))
    options: dict[str, Any] = {"split": None, "unit": unit, "views": views, "transforms": transforms, "bands": bands}
    raw = CorpusDataset(corpus, normalize=False, **options)
    raw_batches = cloned(PatchLoader(raw, 3, ShardAwareSampler(raw, seed=4)))
    passes = {}
    for workers in (0, 1, 2):
        dataset = CorpusDataset(corpus, **options)
        loader = PatchLoader(dataset, 3, ShardAwareSampler(dataset, seed=4), num_workers=workers)
        assert loader.normalises_in_workers
        passes[workers] = cloned(loader)
    for workers, batches in passes.items():
        assert len(batches) == len(raw_batches) > 1
        for batch, counts, first in zip(batches, raw_batches, passes[0], strict=True):
            assert torch.equal(batch["obs"], counts["obs"]) and torch.equal(batch["location_id"], counts["location_id"])
            for key in raw.view_keys:
                assert counts[key].dtype == torch.int16 and batch[key].dtype == torch.float32
                by_hand = (counts[key].numpy().astype(np.float32) - mean) * inv_std
                np.testing.assert_array_equal(bits(batch[key]), bits(by_hand), err_msg=f"{workers} workers, {key}")
                np.testing.assert_array_equal(bits(batch[key]), bits(first[key]))  # the same as in-process
                formula = (counts[key].numpy() - mean64) / std64  # (DN - mean) / std, in float64
                np.testing.assert_allclose(batch[key].numpy(), formula, rtol=1e-6, atol=1e-6)


def test_normalised_batches_hold_the_stored_counts_normalised_at_known_pixels(corpus: Path) -> None:
    reader = CorpusReader(corpus)
    stats = reader.manifest.stats
    dataset = CorpusDataset(corpus, split=None, unit="observation")
    loader = PatchLoader(dataset, 4, ShardAwareSampler(dataset, shuffle=False), num_workers=2)
    pixels = [(0, 0, 0), (57, 64, 3), (100, 5, 120), (201, 127, 127)]  # (band, row, col)
    seen = 0
    for batch in loader:
        for k, obs in enumerate(batch["obs"].tolist()):
            patch = reader.read_patch(obs)  # through zarr-python, not the loader's reader
            for band, row, col in pixels:
                count, value = int(patch[band, row, col]), batch["image"][k, band, row, col].item()
                mean, std = np.float32(stats.mean[band]), np.float32(stats.std[band])
                assert value == float((np.float32(count) - mean) * (np.float32(1) / std)), (obs, band, row, col)
                assert value == pytest.approx((count - stats.mean[band]) / stats.std[band], rel=1e-6, abs=1e-6)
            seen += 1
    assert seen == len(dataset)


def test_with_an_accelerator_the_ring_keeps_counts_and_the_device_normalises(corpus: Path) -> None:
    dataset = CorpusDataset(corpus, split=None, unit="observation")
    raw = CorpusDataset(corpus, split=None, unit="observation", normalize=False)
    loader = PatchLoader(dataset, 3, ShardAwareSampler(dataset, shuffle=False), device="meta")  # a device, no GPU
    assert not loader.normalises_in_workers
    assert loader.ring_bytes == PatchLoader(raw, 3).ring_bytes  # int16, half a normalising CPU loader's
    batch = next(iter(loader))
    assert batch["image"].device.type == "meta" and batch["image"].dtype == torch.float32
    with pytest.raises(TypeError, match="as int16 counts or normalised float32, not float64"):
        dataset.read_batch([0], {"image": np.zeros((1, 202, 128, 128), dtype=np.float64)})


def assert_images(batch: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    np.testing.assert_array_equal(batch["image"].numpy(), reference["image"].numpy())


@pytest.mark.parametrize("persistent", [False, True])
def test_patch_loader_keeps_the_last_two_batches_across_an_early_end(corpus: Path, persistent: bool) -> None:
    dataset = CorpusDataset(corpus, split=None, unit="observation", normalize=False)
    sampler = ShardAwareSampler(dataset, shuffle=False)
    loader = PatchLoader(dataset, 2, sampler, num_workers=2, prefetch_factor=1, persistent_workers=persistent)
    reference = expected_batches(dataset, list(sampler), 2)
    children = {child.pid for child in psutil.Process().children()}
    held: list[dict[str, torch.Tensor]] = []
    for number, batch in enumerate(loader):
        held = [*held[-1:], batch]  # this batch and the one before, both views into the ring
        for back, kept in enumerate(reversed(held)):
            assert_images(kept, reference[number - back])
        if number == 2:
            break
    gc.collect()
    workers = {child.pid for child in psutil.Process().children()} - children
    assert bool(workers) == persistent  # the abandoned pass stopped its own workers
    for number, batch in enumerate(loader):  # compared as drawn; the previous pass's last batch stays valid
        assert_images(batch, reference[number])
        if number == 0:
            assert_images(held[-1], reference[2])


class FailsInEpochZero(CorpusDataset):
    """Raises in the worker for one batch of epoch 0 (indices below ``len``), reads normally afterwards."""

    def read_batch(self, indices: Sequence[int], out: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        if 3 in list(indices):
            raise ValueError("unreadable batch")
        return super().read_batch(indices, out)


def test_a_pass_that_fails_stops_its_workers_before_the_next_pass(corpus: Path) -> None:
    dataset = FailsInEpochZero(corpus, split=None, unit="observation", normalize=False)
    sampler = ShardAwareSampler(dataset, shuffle=False)
    loader = PatchLoader(dataset, 1, sampler, num_workers=2)
    children = {child.pid for child in psutil.Process().children()}
    with pytest.raises(ValueError, match="unreadable batch") as failure:
        list(loader)
    assert failure.value.__traceback__ is not None  # kept, as a notebook keeps it: it holds the failed pass
    assert not {child.pid for child in psutil.Process().children()} - children
    sampler.set_epoch(1)  # indices len .. 2 len - 1: no failure
    reference = expected_batches(dataset, [i % len(dataset) for i in sampler], 1)
    for batch, expected in zip(loader, reference, strict=True):
        assert_images(batch, expected)


def test_a_ring_larger_than_the_shared_memory_is_refused_before_allocation(corpus: Path) -> None:
    dataset = CorpusDataset(corpus, split=None, unit="observation")
    with pytest.raises(MemoryError, match=r"GiB of shared memory for its ring .* /dev/shm has .* GiB free"):
        PatchLoader(dataset, 10**6, num_workers=1)  # 4 slots of a million 6.6 MB patches


def test_transforms_must_return_counts(corpus: Path) -> None:
    def halve(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return image / 2

    dataset = CorpusDataset(corpus, split=None, unit="observation", transforms=halve)
    with pytest.raises(TypeError, match=r"returned torch\.float32: transforms act on the raw int16 counts"):
        dataset[0]


def test_bands_in_another_order_are_reordered(corpus: Path) -> None:
    reader = CorpusReader(corpus)
    bands = list(range(201, -1, -1))
    dataset = CorpusDataset(corpus, split=None, unit="observation", bands=bands, normalize=False)
    item = dataset[0]
    np.testing.assert_array_equal(item["image"].numpy(), reader.read_patch(int(item["obs"]))[bands])
    batch = next(iter(PatchLoader(dataset, 1, ShardAwareSampler(dataset, shuffle=False))))
    np.testing.assert_array_equal(batch["image"][0].numpy(), reader.read_patch(int(batch["obs"][0]))[bands])


def test_patch_loader_works_with_spawned_workers(corpus: Path) -> None:
    dataset = CorpusDataset(corpus, split=None, unit="location", views=2, transforms=AUGMENT, normalize=False)
    sampler = ShardAwareSampler(dataset, seed=5)
    loader = PatchLoader(dataset, 3, sampler, num_workers=2, multiprocessing_context="spawn")
    expected = expected_batches(dataset, list(sampler), 3)
    for batch, reference in zip(loader, expected, strict=True):  # the ring reaches the workers by pickling
        for key in ("image", "image2", "location_id"):
            torch.testing.assert_close(batch[key].to(reference[key].dtype), reference[key], rtol=0, atol=0)


def test_patch_loader_names_a_corrupt_shard(corpus: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "corpus"
    shutil.copytree(corpus, copy)
    flip_a_shard_index_byte(copy / "patches.zarr" / "patches" / "c" / "1" / "0" / "0" / "0")
    dataset = CorpusDataset(copy, split=None, unit="observation")
    with pytest.raises(OSError, match=r"c/1/0/0/0: shard index checksum mismatch"):
        list(PatchLoader(dataset, 4, num_workers=1))


def test_transforms_keep_spectra_intact() -> None:
    image = torch.arange(3 * 8 * 8, dtype=torch.float32).view(3, 8, 8)
    generator = torch.Generator().manual_seed(0)
    for transform in (RandomFlip(p=1.0), RandomRot90()):
        out = transform(image, generator)
        # every output pixel's spectrum is some input pixel's spectrum
        spectra = {tuple(image[:, r, c].tolist()) for r in range(8) for c in range(8)}
        assert all(tuple(out[:, r, c].tolist()) in spectra for r in range(8) for c in range(8))
    assert RandomResizedCrop(4)(image, generator).shape == (3, 4, 4)
    counts = torch.full((3, 8, 8), 1234, dtype=torch.int16)
    resized = RandomResizedCrop(5)(counts, generator)
    assert resized.dtype == torch.int16 and bool((resized == 1234).all())


def test_patch_reader_equals_zarr_and_checks_the_shard_index(corpus: Path, tmp_path: Path) -> None:
    import shutil

    import zarr

    from spectral_corpus.training.shards import PatchReader

    reader = PatchReader(corpus / "patches.zarr" / "patches")
    array = zarr.open_array(corpus / "patches.zarr", path="patches", mode="r")
    for obs in range(array.shape[0]):
        np.testing.assert_array_equal(reader.read(obs), np.asarray(array[obs]))
    copy = tmp_path / "patches"
    shutil.copytree(corpus / "patches.zarr" / "patches", copy)
    flip_a_shard_index_byte(copy / "c" / "0" / "0" / "0" / "0")
    with pytest.raises(OSError, match="shard index checksum mismatch"):
        PatchReader(copy).read(0)


def test_patch_reader_falls_back_to_zarr_for_other_layouts(tmp_path: Path) -> None:
    import zarr

    from spectral_corpus.training.shards import PatchReader

    values = np.arange(2 * 3 * 4 * 4, dtype=np.int16).reshape(2, 3, 4, 4)
    array = zarr.create_array(tmp_path / "plain", shape=values.shape, chunks=(1, 3, 4, 4), dtype="int16")
    array[:] = values
    np.testing.assert_array_equal(PatchReader(tmp_path / "plain").read(1), values[1])


def test_every_rank_gets_items_when_there_are_fewer_shards_than_ranks(corpus: Path) -> None:
    dataset = CorpusDataset(corpus, split=None, unit="observation")
    world = len(dataset.shard_groups()) + 2
    lengths = {len(list(ShardAwareSampler(dataset, rank=r, world_size=world))) for r in range(world)}
    assert len(lengths) == 1 and lengths.pop() > 0
