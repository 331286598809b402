"""Every random choice of training comes from a generator passed in: the same seed draws the same crops, masks,
views and augmentations, another seed others, the global RNG is never touched, and a resumed run redraws them."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from spectral_corpus.training import mae
from spectral_corpus.training.mae import MAE, random_masking
from spectral_corpus.training.moco import MoCo, random_view
from spectral_corpus.training.models import Encoder, EncoderConfig, ResNet, SpectralAdapter, build_encoder
from spectral_corpus.training.trainer import (
    CHECKPOINT,
    LOG,
    SyntheticDataset,
    TrainConfig,
    random_crop,
    step_seed,
    train,
)
from spectral_corpus.training.transforms import Compose, RandomFlip, RandomResizedCrop, RandomRot90

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def check_draws(draw: Callable[[torch.Generator], Tensor]) -> None:
    """``draw`` repeats itself for one seed, changes with the seed, and leaves the global RNG alone."""
    state = torch.get_rng_state()
    first, again, other = draw(generator(1)), draw(generator(1)), draw(generator(2))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert torch.equal(torch.get_rng_state(), state)


IMAGES = torch.randn(4, 3, 12, 12, generator=generator(0))
AUGMENT = Compose([RandomResizedCrop(8), RandomFlip(), RandomRot90()])
DRAWS: dict[str, Callable[[torch.Generator], Tensor]] = {
    "mae_mask": lambda g: torch.cat(random_masking(4, 64, 0.75, generator=g), dim=1),
    "trainer_crop": lambda g: random_crop(IMAGES, 5, g),
    "moco_view": lambda g: random_view(IMAGES, generator=g),
    "dataset_transforms": lambda g: torch.stack([AUGMENT(image, g) for image in IMAGES]),
}


@pytest.mark.parametrize("name", DRAWS)
def test_a_seed_fixes_the_draws(name: str) -> None:
    check_draws(DRAWS[name])


def test_mae_masks_come_from_the_generator() -> None:
    torch.manual_seed(0)
    model = MAE(build_encoder(EncoderConfig(image_size=16, patch_size=4, depth=1)), 0.75, 32, 1)
    image = torch.randn(2, 202, 16, 16, generator=generator(0))
    check_draws(lambda g: model(image, g).detach())


def test_moco_views_and_key_shuffle_come_from_the_generator() -> None:
    torch.manual_seed(0)
    small_resnet = ResNet(128, (1,))  # batch norm: keys in shuffled sub-batches
    model = MoCo(Encoder(SpectralAdapter(202, 128), small_resnet), hidden=64, dim=16, queue_size=8)
    assert model.key_splits == 2
    views = torch.randn(2, 4, 202, 16, 16, generator=generator(0))

    def loss_and_keys(g: torch.Generator) -> Tensor:
        fresh = copy.deepcopy(model)  # forward updates the queue and the key encoder
        loss = fresh(*views, generator=g).detach()
        return torch.cat([loss[None], fresh.queue.flatten()])

    check_draws(loss_and_keys)


def test_step_seeds_differ_by_seed_rank_and_step() -> None:
    seeds = [step_seed(seed, rank, step) for seed in (0, 1) for rank in range(3) for step in range(100)]
    assert len(set(seeds)) == len(seeds) and all(0 <= seed < 2**63 for seed in seeds)
    assert step_seed(3, 1, 7) == step_seed(3, 1, 7)


class Masks:
    """Stands in for ``random_masking`` in the trainer's MAE, records the masks and can crash the run."""

    def __init__(self, crash_at: int | None = None) -> None:
        self.kept: list[Tensor] = []
        self.crash_at = crash_at

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        if len(self.kept) == self.crash_at:
            raise Crash
        keep, masked = random_masking(*args, **kwargs)
        self.kept.append(keep)
        return keep, masked


class Crash(Exception):
    pass


def tiny(out: Path, **changes: Any) -> TrainConfig:
    """Six steps on 20 px patches cropped to 16 px, 4 px tokens, one ViT block, a checkpoint every three steps."""
    base = TrainConfig(token_size=4, vit_depth=1, decoder_depth=1, decoder_dim=32, batch_size=4, num_workers=0)
    base = replace(base, device="cpu", image_size=16, max_steps=6, log_every=1, checkpoint_every=3, lr=1e-3)
    return replace(base, out=str(out), **changes)


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / LOG).read_text().splitlines()]


def mae_run(out: Path, monkeypatch: pytest.MonkeyPatch, masks: Masks, **changes: Any) -> Masks:
    monkeypatch.setattr(mae, "random_masking", masks)
    train(tiny(out, **changes), SyntheticDataset(16, size=20))
    return masks


def test_runs_with_one_seed_repeat_and_a_resume_redraws_the_masks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = mae_run(tmp_path / "first", monkeypatch, Masks())
    again = mae_run(tmp_path / "again", monkeypatch, Masks())
    other = mae_run(tmp_path / "other", monkeypatch, Masks(), seed=1)
    assert len(first.kept) == 6 and all(map(torch.equal, first.kept, again.kept))
    assert losses(tmp_path / "first") == losses(tmp_path / "again")
    assert not any(map(torch.equal, first.kept, other.kept))
    assert not any(map(torch.equal, first.kept[:3], first.kept[3:]))  # steps draw afresh

    crashed = tmp_path / "crashed"
    with pytest.raises(Crash):
        mae_run(crashed, monkeypatch, Masks(crash_at=4))  # dies in step 5, after the step-3 checkpoint
    checkpoint = torch.load(crashed / CHECKPOINT, weights_only=True)
    assert checkpoint["step"] == 3
    checkpoint["rng"] = [{"cpu": generator(99).get_state()}]  # the global RNG plays no part
    torch.save(checkpoint, crashed / CHECKPOINT)
    resumed = mae_run(crashed, monkeypatch, Masks(), resume=True)
    assert len(resumed.kept) == 3 and all(map(torch.equal, first.kept[3:], resumed.kept))
    assert losses(crashed)[-3:] == losses(tmp_path / "first")[3:]


def test_moco_runs_with_one_seed_repeat(tmp_path: Path) -> None:
    config = tiny(tmp_path, method="moco", moco_queue=8, max_steps=3)
    for out in ("first", "again"):
        train(replace(config, out=str(tmp_path / out)), SyntheticDataset(16, size=20, views=2))
    assert losses(tmp_path / "first") == losses(tmp_path / "again")
