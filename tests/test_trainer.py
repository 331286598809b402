"""The reference trainer on the CPU: models, MAE masking, loss falling, MoCo, resume, saved encoders, DDP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from spectral_corpus.pipeline.reader import CorpusReader
from spectral_corpus.training.mae import MAE, random_masking
from spectral_corpus.training.moco import random_view
from spectral_corpus.training.models import (
    Attention,
    EncoderConfig,
    SpectralAdapter,
    build_encoder,
    load_encoder,
    resnet50,
    save_encoder,
    vit_small,
)
from spectral_corpus.training.train_cli import main as train_main
from spectral_corpus.training.trainer import (
    CHECKPOINT,
    ENCODER,
    LOG,
    SyntheticDataset,
    TrainConfig,
    measure_throughput,
    random_crop,
    train,
)

ROOT = Path(__file__).resolve().parents[1]


def tiny(out: Path, **changes: Any) -> TrainConfig:
    """A small, fast run (on 16 x 16 px patches): 4 px tokens, two ViT blocks, a main-process loader."""
    base = TrainConfig(token_size=4, vit_depth=2, decoder_depth=1, batch_size=8, num_workers=0, device="cpu")
    return replace(base, out=str(out), **changes)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / LOG).read_text().splitlines()]


def test_adapter_maps_bands_to_channels_pixel_by_pixel() -> None:
    adapter = SpectralAdapter(202, 128)
    x = torch.randn(2, 202, 6, 6)
    y = adapter(x)
    assert y.shape == (2, 128, 6, 6)
    x[1, :, 2, 3] += torch.randn(202)
    changed = (adapter(x) - y).abs().amax(dim=1) > 0
    assert changed[1, 2, 3] and changed.sum() == 1


def test_backbones_give_pooled_features() -> None:
    vit = vit_small(128, img_size=32, patch_size=8)
    heads = {layer.heads for layer in vit.modules() if isinstance(layer, Attention)}
    assert (vit.num_features, len(vit.blocks), heads) == (384, 12, {6})
    assert vit(torch.randn(2, 128, 32, 32)).shape == (2, 384)
    assert vit(torch.randn(1, 128, 48, 64)).shape == (1, 384)  # other sizes: positions recomputed
    assert resnet50(128)(torch.randn(2, 128, 32, 32)).shape == (2, 2048)


def test_mae_masks_round_ratio_of_tokens() -> None:
    keep, masked = random_masking(3, 64, 0.9)
    assert masked.shape == (3, round(0.9 * 64)) and keep.shape == (3, 64 - round(0.9 * 64))
    assert all(sorted(torch.cat([k, m]).tolist()) == list(range(64)) for k, m in zip(keep, masked, strict=True))


def test_mae_needs_a_vit() -> None:
    with pytest.raises(ValueError, match="MAE needs a ViT"):
        MAE(build_encoder(EncoderConfig("resnet50")))


def test_crop_and_view_move_whole_spectra() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    crop = random_crop(x, 5)
    for sample, window in zip(x, crop, strict=True):
        top, left = divmod(int(window[0, 0, 0] - sample[0, 0, 0]), 8)
        assert torch.equal(window, sample[:, top : top + 5, left : left + 5])
    view = random_view(x, scale=(1.0, 1.0))  # no crop: a flip / rotation, exact
    for sample, turned in zip(x, view, strict=True):
        candidates = [torch.rot90(s, k, (1, 2)) for s in (sample, sample.flip(2)) for k in range(4)]
        assert any(torch.allclose(turned, c, atol=1e-4) for c in candidates)


def test_mae_loss_falls(tmp_path: Path) -> None:
    config = tiny(tmp_path, lr=1e-3, max_steps=40, log_every=1)
    train(config, SyntheticDataset(64, size=16))
    losses = [r["loss"] for r in records(tmp_path)]
    assert len(losses) == 40
    assert sum(losses[-10:]) < 0.8 * sum(losses[:10])


@pytest.mark.parametrize("backbone", ["vit_s", "resnet50"])
def test_moco_trains_both_backbones(tmp_path: Path, backbone: str) -> None:
    config = tiny(tmp_path, method="moco", backbone=backbone, moco_queue=16, batch_size=4, max_steps=3, log_every=1)
    metrics = train(config, SyntheticDataset(16, size=16, views=2))
    assert metrics["step"] == 3 and torch.isfinite(torch.tensor([r["loss"] for r in records(tmp_path)])).all()
    assert load_encoder(tmp_path / ENCODER).num_features == (384 if backbone == "vit_s" else 2048)


def test_moco_asks_for_two_views(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="views=2"):
        train(tiny(tmp_path, method="moco", max_steps=1), SyntheticDataset(8, size=16))


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten MAE steps with a checkpoint every five."""
    out = tmp_path_factory.mktemp("mae")
    config = tiny(out, lr=1e-3, max_steps=10, log_every=1, checkpoint_every=5)
    train(config, SyntheticDataset(48, size=16))
    return out


def test_resume_continues_from_the_saved_step(mae_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(mae_run, out)
    first = records(out)
    assert [r["step"] for r in first] == list(range(1, 11))
    assert torch.load(out / CHECKPOINT, weights_only=True)["step"] == 10
    config = tiny(out, lr=1e-3, max_steps=20, log_every=1, resume=True)
    metrics = train(config, SyntheticDataset(48, size=16))
    resumed = records(out)[10:]
    assert metrics["step"] == 20 and [r["step"] for r in resumed] == list(range(11, 21))
    assert resumed[0]["loss"] < first[0]["loss"]  # the model went on learning, not from scratch
    checkpoint = torch.load(out / CHECKPOINT, weights_only=True)
    adam_steps = {float(state["step"]) for state in checkpoint["optimizer"]["state"].values()}
    assert adam_steps == {20.0} and checkpoint["scheduler"]["last_epoch"] == 20  # restored, then 10 more


def test_saved_encoder_loads_alone(mae_run: Path, tmp_path: Path) -> None:
    checkpoint = torch.load(mae_run / CHECKPOINT, weights_only=True)
    trained = build_encoder(EncoderConfig(in_bands=202, image_size=16, patch_size=4, depth=2))
    prefix = "encoder."
    trained.load_state_dict({k[len(prefix) :]: v for k, v in checkpoint["model"].items() if k.startswith(prefix)})
    loaded = load_encoder(mae_run / ENCODER)
    x = torch.randn(3, 202, 16, 16)
    assert torch.equal(loaded(x), trained.eval()(x))
    save_encoder(tmp_path / "again.pt", loaded, EncoderConfig(in_bands=202, image_size=16, patch_size=4, depth=2))
    assert torch.equal(load_encoder(tmp_path / "again.pt")(x), loaded(x))


def test_throughput_with_loader_and_preloaded(tmp_path: Path) -> None:
    config = tiny(tmp_path)
    dataset = SyntheticDataset(32, size=16)
    assert measure_throughput(config, dataset, steps=2) > 0
    assert measure_throughput(config, dataset, steps=2, preload=True) > 0


def test_cli_trains_on_synthetic_patches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--synthetic", "8", "--image-size", "16", "--token-size", "4", "--batch-size", "4"]
    argv += ["--max-steps", "2", "--num-workers", "1", "--device", "cpu", "--out", str(tmp_path)]
    assert train_main(argv) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 2
    assert (tmp_path / ENCODER).exists()


def test_trains_on_a_corpus(corpus: Path, tmp_path: Path) -> None:
    config = tiny(tmp_path, corpus=str(corpus), method="moco", moco_queue=8, image_size=16, batch_size=2, max_steps=2)
    assert train(replace(config, num_workers=1, vit_depth=1))["step"] == 2


def test_gpu_benchmark_script_runs_on_the_cpu(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "trainer_gpu.jsonl"
    argv = ["--corpus", str(corpus), "--device", "cpu", "--batch-size", "2", "--workers", "1", "--steps", "2"]
    argv += ["--passes", "2", "--image-size", "16", "--token-size", "4", "--vit-depth", "1", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "bench/trainer_gpu.py", *argv], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    train_patches = (CorpusReader(corpus).table("observations")["split"] == "train").sum()
    assert row["patches"] == train_patches and row["device"].startswith("cpu")
    assert row["loader_samples_per_s"] > 0 and row["preloaded_samples_per_s"] > 0
    assert row["ratio"] == pytest.approx(row["loader_samples_per_s"] / row["preloaded_samples_per_s"], abs=0.01)


DDP_SCRIPT = """
import json, os, sys
from spectral_corpus.training.trainer import SyntheticDataset, TrainConfig, default_sampler, train

class Recording:
    def __init__(self, inner):
        self.inner, self.seen = inner, []
    def set_epoch(self, epoch):
        self.inner.set_epoch(epoch)
    def __iter__(self):
        for index in self.inner:
            self.seen.append(index)
            yield index
    def __len__(self):
        return len(self.inner)

samplers = []
def factory(dataset, rank, world_size, seed):
    samplers.append(Recording(default_sampler(dataset, rank, world_size, seed)))
    return samplers[-1]

out = sys.argv[1]
config = TrainConfig(method="moco", moco_queue=16, token_size=4, vit_depth=1, batch_size=4, num_workers=0,
                     device="cpu", max_steps=3, log_every=1, out=out)
train(config, SyntheticDataset(64, size=16, views=2), factory)
with open(os.path.join(out, f"seen-{os.environ['RANK']}.json"), "w") as stream:
    json.dump(samplers[0].seen, stream)
"""


def torchrun_two(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node 2 ARGS`` with this checkout importable; it must succeed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_torchrun_trains_on_a_corpus_with_the_patch_loader(corpus: Path, tmp_path: Path) -> None:
    options = ["--corpus", str(corpus), "--device", "cpu", "--out", str(tmp_path), "--batch-size", "1"]
    options += ["--max-steps", "2", "--log-every", "1", "--num-workers", "1", "--image-size", "16", "--token-size", "4"]
    done = torchrun_two("-m", "spectral_corpus.training.train_cli", *options, timeout=300)
    assert [r["step"] for r in records(tmp_path)] == [1, 2]
    assert json.loads(done.stdout)["step"] == 2


def test_torchrun_two_processes(tmp_path: Path) -> None:
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    torchrun_two(str(script), str(tmp_path), timeout=180)
    seen = [set(json.loads((tmp_path / f"seen-{rank}.json").read_text())) for rank in (0, 1)]
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert [r["step"] for r in records(tmp_path)] == [1, 2, 3]
    assert (tmp_path / ENCODER).exists()
