"""GPU benchmark: trainer samples/s with the real loader against synthetic tensors already on the GPU.

    python bench/trainer_gpu.py --replicas 8 --method mae --backbone vit_s --batch-size 64 --workers 8

Builds (or reuses) an example corpus, then measures ``training.trainer.measure_throughput`` twice on
the same model and settings: fed by ``CorpusDataset`` through the DataLoader, and fed by a few batches
preloaded on the device (the trainer's speed with no data loading). Target: ratio >= 0.95. Needs a
CUDA device; writes one JSON line per run to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from catalog.query import SceneQuery
from catalog.synth import write_example
from pipeline.build import BuildOptions, build_corpus
from stages.rules import Rules
from training import CorpusDataset
from training.trainer import TrainConfig, measure_throughput


def _corpus(root: Path, replicas: int) -> Path:
    corpus = root / f"corpus-{replicas}"
    if not (corpus / "CURRENT").exists():
        example = write_example(root / f"products-{replicas}", seed=0, replicas=replicas)
        rules = Rules(shard_size=16, split_block_cells=1, val_fraction=0.0, test_fraction=0.0)
        build_corpus(BuildOptions(str(example.archive), corpus, SceneQuery(), rules, workers=4, progress=False))
    return corpus


def main() -> None:
    """Measure and print the loader-fed and preloaded throughput and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--method", default="mae", choices=("mae", "moco"))
    parser.add_argument("--backbone", default="vit_s", choices=("vit_s", "resnet50"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "spectral-corpus-bench")
    parser.add_argument("--out", type=Path, default=Path("bench/results/trainer_gpu.jsonl"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark measures the trainer on a GPU")
    corpus = _corpus(args.workdir, args.replicas)
    config = TrainConfig(
        method=args.method, backbone=args.backbone, batch_size=args.batch_size, device="cuda", num_workers=args.workers
    )
    views = 2 if args.method == "moco" else 1
    dataset = CorpusDataset(corpus, split="train", unit="location" if views == 2 else "observation", views=views)
    loader_rate = measure_throughput(config, dataset, args.steps)
    preloaded_rate = measure_throughput(config, dataset, args.steps, preload=True)
    row = {
        "date": time.strftime("%Y-%m-%d"),
        "gpu": torch.cuda.get_device_name(),
        "cpu": platform.processor(),
        "method": args.method,
        "backbone": args.backbone,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "patches": len(dataset),
        "loader_samples_per_s": round(loader_rate, 1),
        "preloaded_samples_per_s": round(preloaded_rate, 1),
        "ratio": round(loader_rate / preloaded_rate, 3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
