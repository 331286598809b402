"""Reference self-supervised trainer: MAE or MoCo-v2 on a spectral adapter + ViT-S / ResNet-50.

Plain PyTorch: AdamW with a warmup + cosine schedule, bf16 autocast on CUDA (float32 on the CPU), one
process per device under ``torchrun`` with DistributedDataParallel (NCCL on CUDA, gloo on the CPU).
``batch_size`` is per process. Everything goes to ``out``:

- ``log.jsonl``: one line per ``log_every`` steps: step, epoch, loss (mean over the window and the processes),
  samples_per_s (all processes), data_wait_share (time blocked on the data loader / wall time), lr;
- ``checkpoint.pt``: model, optimizer, scheduler, step, epoch and every process's RNG state, every
  ``checkpoint_every`` steps and at the end; ``resume=True`` continues from it (or starts afresh without one);
- ``encoder.pt``: the trained encoder alone, for :func:`training.models.load_encoder`;
- ``config.json``: the run's :class:`TrainConfig`.

Training runs for ``max_steps`` optimizer steps when set, else ``epochs`` epochs; the schedule spans that.
Every random choice of a step (crops, MAE masks, MoCo views and key shuffle) comes from a generator on the
device seeded from (seed, rank, step) (:func:`step_seed`), so a resumed run draws what an uninterrupted one
would. The dataset seeds its own per item; the global RNG (seeded from ``seed`` and the rank) initialises the weights.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from itertools import islice
from pathlib import Path
from time import perf_counter
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from spectral_corpus.training.config import VIEW_KEYS, TrainConfig
from spectral_corpus.training.errors import TrainConfigError
from spectral_corpus.training.mae import MAE
from spectral_corpus.training.moco import MoCo
from spectral_corpus.training.models import EncoderConfig, build_encoder, save_encoder

log = logging.getLogger(__name__)

#: Self-supervised methods, and the sample keys each one trains on.
CHECKPOINT, LOG, ENCODER, CONFIG = "checkpoint.pt", "log.jsonl", "encoder.pt", "config.json"
#: Batches ``measure_throughput(preload=True)`` keeps on the device.
PRELOAD_BATCHES = 2

#: ``(dataset, rank, world_size, seed) -> sampler``; ``set_epoch(epoch)`` is called when it has one.
SamplerFactory = Callable[[Any, int, int, int], Sampler[int]]


@dataclass(frozen=True)
class _Context:
    """Where this process runs: its rank among ``world_size`` processes and its device."""

    rank: int
    world_size: int
    device: torch.device


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainConfigError("device cuda requested, but this PyTorch sees no CUDA device: use --device cpu")
    return torch.device("cuda", local_rank) if name == "cuda" else torch.device("cpu")


@contextmanager
def _distributed(device: str) -> Iterator[_Context]:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE > 1``), and leave it afterwards."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    target = _device(device, int(os.environ.get("LOCAL_RANK", "0")))
    if target.type == "cuda":
        torch.cuda.set_device(target)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if dist.is_initialized():  # the caller runs the process group
        yield _Context(dist.get_rank(), dist.get_world_size(), target)
        return
    if world_size == 1:
        yield _Context(0, 1, target)
        return
    dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
    try:
        yield _Context(dist.get_rank(), world_size, target)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def default_sampler(dataset: Any, rank: int, world_size: int, seed: int) -> Sampler[int]:
    """Seeded per-epoch shuffling split by rank (a ``DistributedSampler`` even for one process: exact resumes)."""
    return DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)


def corpus_dataset(config: TrainConfig) -> Dataset[dict[str, Any]]:
    """The corpus's training split with as many views as ``config.method`` needs."""
    if config.corpus is None:
        raise TrainConfigError("no training data: set the corpus or pass a dataset")
    from spectral_corpus.training.dataset import CorpusDataset

    return CorpusDataset(config.corpus, split="train", views=len(VIEW_KEYS[config.method]), seed=config.seed)


def shard_aware_sampler(dataset: Any, rank: int, world_size: int, seed: int) -> Sampler[int]:
    """The corpus loader's sampler: shuffled shards, then items within them, split by rank."""
    from spectral_corpus.training.sampler import ShardAwareSampler

    return ShardAwareSampler(dataset, shuffle=True, seed=seed, rank=rank, world_size=world_size)


class SyntheticDataset(Dataset[dict[str, Tensor]]):
    """Deterministic stand-in for the corpus: smooth spectra of a few endmembers mixed by smooth abundance maps.

    Samples follow the loader's keys (``image``, ``image2`` when ``views=2``, ``x``, ``y``, ``t``,
    ``wavelength``, ``res``, ``location_id``); images are float32 ``(bands, size, size)`` of about unit
    scale, and ``image2`` is another "date" of the same place (new gain and noise). Indices past ``n``
    wrap around (samplers may add ``epoch * n``, as the corpus's sampler does).
    """

    def __init__(self, n: int, bands: int = 202, size: int = 32, views: int = 1, seed: int = 0, endmembers: int = 4):
        generator = torch.Generator().manual_seed(seed)
        self.n, self.size, self.views, self.seed = n, size, views, seed
        self.wavelength = torch.linspace(0.42, 2.45, bands)  # micrometres, like the corpus loader
        centres = torch.rand(endmembers, 3, 1, generator=generator)
        axis = torch.linspace(0.0, 1.0, bands)
        slopes = torch.randn(endmembers, 1, generator=generator)
        spectra = torch.exp(-(((axis - centres) / 0.15) ** 2)).sum(dim=1) + axis * slopes
        self.spectra = (spectra - spectra.mean(dim=0)) / (spectra.std(dim=0) + 1e-3)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        index = int(index) % self.n
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        coarse = 2.0 * torch.randn(1, len(self.spectra), 4, 4, generator=generator)
        abundance = F.interpolate(coarse, size=(self.size, self.size), mode="bilinear").softmax(dim=1)[0]
        sample = {
            "image": self._observe(abundance, generator),
            "x": torch.tensor(3840.0 * index),
            "y": torch.tensor(0.0),
            "t": torch.tensor(index, dtype=torch.int64),
            "wavelength": self.wavelength,
            "res": torch.tensor(30.0),
            "location_id": torch.tensor(index, dtype=torch.int64),
        }
        if self.views == 2:
            sample["image2"] = self._observe(abundance, generator)
        return sample

    def _observe(self, abundance: Tensor, generator: torch.Generator) -> Tensor:
        gain = 1.0 + 0.1 * torch.randn(1, generator=generator)
        noise = 0.05 * torch.randn(len(self.wavelength), self.size, self.size, generator=generator)
        return torch.einsum("khw,kc->chw", abundance, self.spectra) * gain + noise


def step_seed(seed: int, rank: int, step: int) -> int:
    """Seed of the generator for step ``step`` on process ``rank`` of a run seeded with ``seed``."""
    return hash((seed, rank, step)) & 0x7FFF_FFFF_FFFF_FFFF


def random_crop(x: Tensor, size: int, generator: torch.Generator | None = None) -> Tensor:
    """An independent random ``size`` x ``size`` window of each image in ``(B, C, H, W)``.

    Draws come from ``generator`` (on ``x``'s device), the global RNG without one.
    """
    b, c, h, w = x.shape
    if (h, w) == (size, size):
        return x
    if size > min(h, w):
        raise TrainConfigError(f"crop size {size} exceeds the {h} x {w} images")
    top, left = (torch.randint(0, extent - size + 1, (b, 1), device=x.device, generator=generator) for extent in (h, w))
    span = torch.arange(size, device=x.device)
    index = ((top + span)[:, :, None] * w + (left + span)[:, None, :]).flatten(1)
    return x.flatten(2).gather(2, index[:, None, :].expand(-1, c, -1)).view(b, c, size, size)


def cosine_with_warmup(total: int, warmup: int) -> Callable[[int], float]:
    """Learning-rate factor: linear warmup over ``warmup`` steps, then cosine decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return factor


class _Stack:
    """Collate only the views a method trains on: one stacked tensor per key."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = tuple(keys)

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
        return {key: torch.stack([torch.as_tensor(sample[key]) for sample in samples]) for key in self.keys}


class _Resumable(Sampler[int]):
    """A sampler whose epoch can start ``skip`` indices in, to resume in the middle of an epoch."""

    def __init__(self, inner: Sampler[int]) -> None:
        self.inner = inner
        self.skip = 0

    def start(self, epoch: int, skip: int) -> None:
        """Position at ``skip`` indices into ``epoch``."""
        set_epoch = getattr(self.inner, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return islice(iter(self.inner), self.skip, None)

    def __len__(self) -> int:
        return len(self.inner) - self.skip  # type: ignore[arg-type]


class _Cycle:
    """Stands in for the data loader: the same few batches, already on the device, for one epoch of steps."""

    def __init__(self, batches: list[dict[str, Tensor]], steps: int) -> None:
        self.batches, self.steps = batches, steps

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        return (self.batches[i % len(self.batches)] for i in range(self.steps))


class _Meter:
    """Loss, throughput and data-wait share over the current logging window and the whole run."""

    def __init__(self, samples_per_step: int) -> None:
        self.samples_per_step = samples_per_step
        self.run_steps, self.run_time, self.run_wait = 0, 0.0, 0.0
        self.restart()

    def restart(self) -> None:
        """Open a new window now (time before it is counted nowhere)."""
        self.start, self.steps, self.wait = perf_counter(), 0, 0.0
        self.loss_sum: Tensor | None = None

    def pause(self, seconds: float) -> None:
        """Leave ``seconds`` (spent checkpointing) out of the window."""
        self.start += seconds

    def update(self, loss: Tensor, wait: float) -> None:
        """Count one step; ``loss`` stays on the device (no synchronisation)."""
        self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
        self.steps += 1
        self.wait += wait

    def flush(self) -> dict[str, float]:
        """Close the window: its mean loss over all processes, samples/s and data-wait share."""
        elapsed = perf_counter() - self.start
        assert self.loss_sum is not None, "flush() needs at least one step"
        loss = self.loss_sum.detach().float() / self.steps
        if dist.is_initialized():
            dist.all_reduce(loss)
            loss /= dist.get_world_size()
        window = {
            "loss": loss.item(),
            "samples_per_s": self.steps * self.samples_per_step / elapsed,
            "data_wait_share": self.wait / elapsed,
        }
        self.run_steps += self.steps
        self.run_time += elapsed
        self.run_wait += self.wait
        self.restart()
        return window


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices and kernels only, not on biases and norms."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in trainable if p.ndim > 1], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0},
    ]


def _build_method(config: TrainConfig, encoder_config: EncoderConfig) -> MAE | MoCo:
    encoder = build_encoder(encoder_config)
    if config.method == "mae":
        return MAE(encoder, config.mask_ratio, config.decoder_dim, config.decoder_depth)
    return MoCo(
        encoder, queue_size=config.moco_queue, momentum=config.moco_momentum, temperature=config.moco_temperature
    )


def _probe(dataset: Any, keys: Sequence[str]) -> tuple[int, int]:
    """Bands and (smaller) side of the dataset's images, checking that samples carry ``keys``."""
    sample = dataset[0]
    missing = [key for key in keys if key not in sample]
    if missing:
        raise TrainConfigError(f"samples lack {missing}: MoCo trains on two views, build the dataset with views=2")
    bands, height, width = sample["image"].shape
    return int(bands), int(min(height, width))


def _gather_objects(value: Any) -> list[Any]:
    """``value`` from every process, in rank order."""
    if not dist.is_initialized():
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def _rng_state(device: torch.device) -> dict[str, Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class _Trainer:
    """The state of one run on one process: model, optimizer, schedule, data and step counter."""

    def __init__(
        self, config: TrainConfig, ctx: _Context, dataset: Any, sampler_factory: SamplerFactory, preload: bool = False
    ) -> None:
        self.config, self.ctx, self.dataset = config, ctx, dataset
        self.out = Path(config.out)
        self.collate = _Stack(VIEW_KEYS[config.method])
        bands, side = _probe(dataset, self.collate.keys)
        self.crop = config.image_size or side
        self.encoder_config = EncoderConfig(
            config.backbone, bands, image_size=self.crop, patch_size=config.token_size, depth=config.vit_depth
        )
        self.model = _build_method(config, self.encoder_config).to(ctx.device)
        self.wrapped: nn.Module = self.model
        if ctx.world_size > 1:
            devices = [ctx.device] if ctx.device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(self.model, device_ids=devices)
        self.sampler = _Resumable(sampler_factory(dataset, ctx.rank, ctx.world_size, config.seed))
        self.steps_per_epoch = len(self.sampler.inner) // config.batch_size  # type: ignore[arg-type]
        if self.steps_per_epoch == 0:
            batch = config.batch_size
            raise TrainConfigError(f"{len(self.sampler)} samples per process do not fill one batch of {batch}")
        self.loader = self._preloaded(PRELOAD_BATCHES) if preload else self._loader()
        self.total = config.max_steps or config.epochs * self.steps_per_epoch
        cuda = ctx.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.model, config.weight_decay), lr=config.lr, betas=(0.9, 0.95), fused=cuda or None
        )
        warmup = round(config.warmup_frac * self.total)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cosine_with_warmup(self.total, warmup))
        self.step = self.saved_step = 0
        self.generator = torch.Generator(ctx.device)  # reseeded every step
        self.meter = _Meter(config.batch_size * ctx.world_size)

    @property
    def is_main(self) -> bool:
        return self.ctx.rank == 0

    def _loader(self) -> Iterable[dict[str, Tensor]]:
        """The corpus's :class:`PatchLoader` (normalising on the device), or a DataLoader for other datasets."""
        from spectral_corpus.training.dataset import CorpusDataset
        from spectral_corpus.training.loader import PatchLoader

        workers, size = self.config.num_workers, self.config.batch_size
        options: dict[str, Any] = {"num_workers": workers, "drop_last": True, "persistent_workers": workers > 0}
        options["pin_memory"] = self.ctx.device.type == "cuda"
        if isinstance(self.dataset, CorpusDataset):
            return PatchLoader(self.dataset, size, self.sampler, device=self.ctx.device, **options)
        prefetch = 4 if workers else None
        return DataLoader(
            self.dataset, size, sampler=self.sampler, collate_fn=self.collate, prefetch_factor=prefetch, **options
        )

    def _preloaded(self, count: int) -> _Cycle:
        """``count`` batches collated once and kept on the device, cycled for an epoch of steps."""
        size = self.config.batch_size
        indices = list(islice(iter(self.sampler.inner), count * size))
        chunks = [indices[i : i + size] for i in range(0, len(indices) - size + 1, size)]
        batches = [self.collate([self.dataset[i] for i in chunk]) for chunk in chunks]
        on_device = [{key: view.to(self.ctx.device).float() for key, view in batch.items()} for batch in batches]
        return _Cycle(on_device, self.steps_per_epoch)

    def fit(self) -> dict[str, float]:
        """Train up to the last step; return the final metrics."""
        self._open()
        last: dict[str, float] = {"loss": math.nan, "samples_per_s": math.nan, "data_wait_share": math.nan}
        while self.step < self.total:
            epoch, offset = divmod(self.step, self.steps_per_epoch)
            self.sampler.start(epoch, offset * self.config.batch_size)
            before = self.step
            last = self._epoch(epoch) or last
            if self.step == before:
                raise RuntimeError(f"epoch {epoch} gave rank {self.ctx.rank} no batch: its sampler yields too few")
        return self._close(last)

    def _epoch(self, epoch: int) -> dict[str, float] | None:
        """Run steps until the epoch's data or the step budget ends; return the last logged window."""
        last = None
        batches = iter(self.loader)
        while self.step < self.total:
            started = perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            waited = perf_counter() - started
            self.meter.update(self._train_step(batch), waited)
            self.step += 1
            if self.step % self.config.log_every == 0 or self.step == self.total:
                last = self._log(epoch)
            if self.step % self.config.checkpoint_every == 0:
                saving = perf_counter()
                self._save()
                self.meter.pause(perf_counter() - saving)
        return last

    def _train_step(self, batch: dict[str, Tensor]) -> Tensor:
        generator = self.generator.manual_seed(step_seed(self.config.seed, self.ctx.rank, self.step))
        views = [batch[key].to(self.ctx.device, non_blocking=True).float() for key in self.collate.keys]
        views = [random_crop(view, self.crop, generator) for view in views]
        device_type = self.ctx.device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=device_type == "cuda"):
            loss = self.wrapped(*views, generator=generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach()

    def _log(self, epoch: int) -> dict[str, float]:
        window = self.meter.flush()
        if not math.isfinite(window["loss"]):
            raise FloatingPointError(f"loss became {window['loss']} at step {self.step}: lower the learning rate")
        record = {"step": self.step, "epoch": epoch, **window, "lr": self.scheduler.get_last_lr()[0]}
        if self.is_main:
            with (self.out / LOG).open("a") as stream:
                stream.write(json.dumps(record) + "\n")
            log.info(
                "step %d epoch %d loss %.4f samples/s %.1f data wait %.1f%% lr %.2e",
                *(record[key] for key in ("step", "epoch", "loss", "samples_per_s")),
                100 * window["data_wait_share"],
                record["lr"],
            )
        return window

    def _open(self) -> None:
        """Resume from the checkpoint when asked and one exists; otherwise start a fresh log."""
        checkpoint = self.out / CHECKPOINT
        if self.config.resume and checkpoint.exists():
            self._load(checkpoint)
        elif self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / LOG).write_text("")
            (self.out / CONFIG).write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        self.meter.restart()

    def _save(self) -> None:
        """Write the checkpoint atomically (rank 0), with every process's RNG state."""
        rng = _gather_objects(_rng_state(self.ctx.device))
        self.saved_step = self.step
        if not self.is_main:
            return
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "rng": rng,
            "config": json.dumps(asdict(self.config)),
        }
        partial = self.out / f"{CHECKPOINT}.partial"
        torch.save(state, partial)
        partial.replace(self.out / CHECKPOINT)

    def _load(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = self.saved_step = int(state["step"])
        if len(state["rng"]) == self.ctx.world_size:
            _set_rng_state(state["rng"][self.ctx.rank], self.ctx.device)
        log.info("resumed from %s at step %d", path, self.step)

    def _close(self, last: dict[str, float]) -> dict[str, float]:
        """Final checkpoint and encoder; the run's metrics."""
        if self.step != self.saved_step:
            self._save()
        if self.is_main:
            meta = {"method": self.config.method, "step": self.step, "corpus": self.config.corpus, **self.config.notes}
            save_encoder(self.out / ENCODER, self.model.encoder, self.encoder_config, meta)
        run_time = self.meter.run_time or math.nan
        return {
            "step": self.step,
            "epoch": self.step / self.steps_per_epoch,
            **last,
            "run_samples_per_s": self.meter.run_steps * self.meter.samples_per_step / run_time,
            "run_data_wait_share": self.meter.run_wait / run_time,
        }


def _run(config: TrainConfig, dataset: Any, sampler_factory: SamplerFactory | None, preload: bool) -> dict[str, float]:
    with _distributed(config.device) as ctx:
        torch.manual_seed(config.seed + ctx.rank)
        if dataset is None:
            dataset, sampler_factory = corpus_dataset(config), sampler_factory or shard_aware_sampler
        elif callable(dataset) and not hasattr(dataset, "__getitem__"):
            dataset = dataset(config)
        return _Trainer(config, ctx, dataset, sampler_factory or default_sampler, preload).fit()


def train(
    config: TrainConfig,
    dataset: Dataset[Any] | Callable[[TrainConfig], Dataset[Any]] | None = None,
    sampler_factory: SamplerFactory | None = None,
) -> dict[str, float]:
    """Train as ``config`` says on ``dataset`` (a map-style dataset of sample dicts, or ``make_dataset(config)``).

    Without a dataset, the corpus's training split is read (:func:`corpus_dataset`, sampled by
    :func:`shard_aware_sampler` unless ``sampler_factory`` says otherwise); other datasets default to
    :func:`default_sampler`. Under ``torchrun``
    (``WORLD_SIZE > 1``) every process calls this; rank 0 writes the files. Returns the final metrics:
    step, epoch, the last logging window's loss / samples_per_s / data_wait_share, and run-wide
    run_samples_per_s / run_data_wait_share.
    """
    return _run(config, dataset, sampler_factory, preload=False)


def measure_throughput(
    config: TrainConfig,
    dataset: Any,
    steps: int,
    preload: bool = False,
    sampler_factory: SamplerFactory | None = None,
) -> float:
    """Training samples/s (all processes) over ``steps`` steps that follow ``steps`` warm-up steps.

    ``preload=True`` collates a few batches once and keeps them on the device: the trainer's speed with
    no data loading, to compare the real loader against. Files go to a temporary directory.
    """
    with tempfile.TemporaryDirectory() as scratch:
        run = replace(config, out=scratch, resume=False, log_every=steps)
        run.max_steps = run.checkpoint_every = 2 * steps  # one checkpoint, after the timed window
        return _run(run, dataset, sampler_factory, preload)["samples_per_s"]
