"""The ``train`` sub-command: ``spectral-corpus train``, or under ``torchrun`` its module entry point::

    spectral-corpus train --corpus CORPUS --method mae --backbone vit_s --out runs/mae
    torchrun --nproc_per_node 4 -m spectral_corpus.training.train_cli --corpus CORPUS --method moco \
        --backbone resnet50 --out runs/moco

``--synthetic N`` trains on N generated patches instead of a corpus (smoke tests, benchmarks).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from spectral_corpus.errors import SpectralCorpusError
from spectral_corpus.training.config import BACKBONES, VIEW_KEYS, TrainConfig

HELP = "Pretrain a spectral adapter + ViT-S / ResNet-50 encoder with MAE or MoCo-v2."
#: Side of ``--synthetic`` patches when ``--image-size`` is not given.
SYNTHETIC_SIZE = 128


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``train`` sub-command (running :func:`run_train`) to an ``add_subparsers()`` object."""
    parser = subparsers.add_parser("train", help="pretrain an encoder (MAE or MoCo-v2) on a corpus", description=HELP)
    add_train_options(parser)
    parser.set_defaults(run=run_train)
    return parser


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """The training options, shared by the sub-command and the standalone entry point."""
    defaults = TrainConfig()
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--corpus", help="corpus to train on (its train split)")
    data.add_argument("--synthetic", type=int, metavar="N", help="train on N synthetic 202-band patches instead")
    parser.add_argument("--method", choices=tuple(VIEW_KEYS), default=defaults.method)
    parser.add_argument("--backbone", choices=BACKBONES, default=defaults.backbone)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--max-steps", type=int, help="optimizer steps to run (overrides --epochs)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="per process")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak AdamW learning rate")
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=defaults.device)
    parser.add_argument("--out", default=defaults.out, help="checkpoint, log and encoder directory")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt when it exists")
    parser.add_argument("--num-workers", type=int, default=defaults.num_workers, help="data loader processes")
    parser.add_argument("--token-size", type=int, default=defaults.token_size, help="ViT token size in pixels")
    parser.add_argument("--mask-ratio", type=float, default=defaults.mask_ratio, help="MAE share of masked tokens")
    parser.add_argument("--image-size", type=int, help="random crop side (default: whole patches)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--log-every", type=int, default=defaults.log_every)
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` that parsed options describe."""
    return TrainConfig(
        corpus=args.corpus,
        method=args.method,
        backbone=args.backbone,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        device=args.device,
        out=args.out,
        resume=args.resume,
        num_workers=args.num_workers,
        token_size=args.token_size,
        mask_ratio=args.mask_ratio,
        seed=args.seed,
        max_steps=args.max_steps,
        log_every=args.log_every,
        checkpoint_every=args.checkpoint_every,
        image_size=args.image_size,
    )


def run_train(args: argparse.Namespace) -> int:
    """Train as the options say; rank 0 prints the final metrics as JSON."""
    from spectral_corpus.training.trainer import SyntheticDataset, train  # torch is loaded only when training

    logging.getLogger("spectral_corpus.training").setLevel(logging.INFO)
    config = config_from_args(args)
    dataset = None  # the corpus's train split, read by the trainer (training.dataset.CorpusDataset)
    if args.synthetic:
        views = len(VIEW_KEYS[config.method])
        dataset = SyntheticDataset(args.synthetic, size=args.image_size or SYNTHETIC_SIZE, views=views, seed=args.seed)
    metrics = train(config, dataset)
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(metrics))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (``python -m spectral_corpus.training.train_cli``, e.g. under ``torchrun``)."""
    parser = argparse.ArgumentParser(prog="python -m spectral_corpus.training.train_cli", description=HELP)
    add_train_options(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return run_train(args)
    except SpectralCorpusError as error:
        print(f"train: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
