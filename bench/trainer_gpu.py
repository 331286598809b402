"""GPU benchmark: trainer samples/s with the real loader against synthetic tensors already on the GPU.

    python bench/trainer_gpu.py --replicas 8 --method mae --backbone vit_s --batch-size 64 --workers 12

Builds (or reuses) an example corpus, then measures ``training.trainer.measure_throughput`` twice on
the same model and settings: fed by the corpus's :class:`~training.loader.PatchLoader` (workers decode
int16 batches into the shared ring, the batch is pinned, copied and normalised on the GPU), and fed by
a few batches preloaded on the device (the trainer's speed with no data loading). Target: ratio >=
0.95. The small example corpus is cycled: one trainer epoch walks ``--passes`` shuffled epochs of the
corpus, so workers never drain at epoch ends. ``--device cpu`` runs the same code on the CPU (a smoke
run; its figures say nothing about a GPU). Appends one JSON line per run to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Sampler

from spectral_corpus.catalog.query import SceneQuery
from spectral_corpus.catalog.synth import write_example
from spectral_corpus.pipeline.build import BuildOptions, build_corpus
from spectral_corpus.stages.rules import Rules
from spectral_corpus.training import CorpusDataset, ShardAwareSampler
from spectral_corpus.training.trainer import TrainConfig, measure_throughput


class Passes(Sampler[int]):
    """``passes`` consecutive epochs of a :class:`ShardAwareSampler` as one epoch (indices stay epoch-encoded)."""

    def __init__(self, inner: ShardAwareSampler, passes: int) -> None:
        self.inner, self.passes, self.epoch = inner, passes, 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch: it covers the inner epochs ``epoch * passes`` onwards."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        for k in range(self.passes):
            self.inner.set_epoch(self.epoch * self.passes + k)
            yield from self.inner

    def __len__(self) -> int:
        return len(self.inner) * self.passes


def example_corpus(root: Path, replicas: int) -> Path:
    """A corpus of ``write_example(replicas)`` with every location in the training split (cached under ``root``)."""
    corpus = root / f"corpus-{replicas}"
    if not (corpus / "CURRENT").exists():
        example = write_example(root / f"products-{replicas}", seed=0, replicas=replicas)
        rules = Rules(shard_size=16, split_block_cells=1, val_fraction=0.0, test_fraction=0.0)
        workers = min(4, os.cpu_count() or 1)
        build_corpus(BuildOptions(str(example.archive), corpus, SceneQuery(), rules, workers=workers))
    return corpus


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Loader-fed and preloaded samples/s on the same model and settings, and their ratio."""
    corpus = args.corpus or example_corpus(args.workdir, args.replicas)
    config = TrainConfig(
        method=args.method,
        backbone=args.backbone,
        batch_size=args.batch_size,
        device=args.device,
        num_workers=args.workers,
        image_size=args.image_size,
        token_size=args.token_size,
        vit_depth=args.vit_depth,
    )
    views = 2 if args.method == "moco" else 1
    dataset = CorpusDataset(corpus, split="train", unit="location" if views == 2 else "observation", views=views)

    def passes(dataset: Any, rank: int, world_size: int, seed: int) -> Sampler[int]:
        return Passes(ShardAwareSampler(dataset, seed=seed, rank=rank, world_size=world_size), args.passes)

    loader_rate = measure_throughput(config, dataset, args.steps, sampler_factory=passes)
    preloaded_rate = measure_throughput(config, dataset, args.steps, preload=True, sampler_factory=passes)
    cuda = args.device == "cuda"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(["bench/trainer_gpu.py", *args.argv]),
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({platform.processor() or platform.machine()})",
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "method": args.method,
        "backbone": args.backbone,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "workers": args.workers,
        "patches": len(dataset),
        "loader_samples_per_s": round(loader_rate, 1),
        "preloaded_samples_per_s": round(preloaded_rate, 1),
        "ratio": round(loader_rate / preloaded_rate, 3),
        "target": 0.95,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print and append the result."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, help="an existing corpus (default: build the example corpus)")
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--method", default="mae", choices=("mae", "moco"))
    parser.add_argument("--backbone", default="vit_s", choices=("vit_s", "resnet50"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=min(12, max(1, (os.cpu_count() or 2) - 2)))
    parser.add_argument("--steps", type=int, default=30, help="timed steps (after as many warm-up steps)")
    parser.add_argument("--passes", type=int, default=50, help="corpus epochs per trainer epoch")
    parser.add_argument("--image-size", type=int, default=None, help="random crop side (default: whole patch)")
    parser.add_argument("--token-size", type=int, default=16)
    parser.add_argument("--vit-depth", type=int, default=12)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "spectral-corpus-bench")
    parser.add_argument("--out", type=Path, default=Path("bench/results/trainer_gpu.jsonl"))
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark measures the trainer on a GPU (--device cpu for a smoke run)")
    row = measure(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
