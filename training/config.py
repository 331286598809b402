"""Training settings, importable without torch (the command line builds its options from them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from spectral_corpus.training.errors import TrainConfigError

BACKBONES = ("vit_s", "resnet50")
#: The views each method takes from a sample.
VIEW_KEYS = {"mae": ("image",), "moco": ("image", "image2")}


@dataclass
class TrainConfig:
    """One training run; ``corpus`` is only read when no dataset is passed to :func:`train`."""

    corpus: str | None = None
    method: str = "mae"
    backbone: str = "vit_s"
    epochs: int = 1
    #: Samples per step and process.
    batch_size: int = 64
    #: Peak AdamW learning rate.
    lr: float = 1.5e-4
    weight_decay: float = 0.05
    #: Share of the steps spent warming the learning rate up linearly.
    warmup_frac: float = 0.05
    #: ``auto`` (CUDA when available), ``cpu`` or ``cuda``; each process takes ``cuda:LOCAL_RANK``.
    device: str = "auto"
    out: str = "runs/train"
    resume: bool = False
    num_workers: int = 4
    #: ViT token size in pixels.
    token_size: int = 16
    mask_ratio: float = 0.9
    #: Seeds the weights, the shuffle, the dataset's per-item draws and each step's crops, masks and views.
    seed: int = 0
    #: Optimizer steps to run (overrides ``epochs``).
    max_steps: int | None = None
    log_every: int = 20
    checkpoint_every: int = 1000
    #: Side of an independent random crop per view; None trains on the whole patch.
    image_size: int | None = None
    vit_depth: int = 12
    decoder_dim: int = 256
    decoder_depth: int = 4
    moco_queue: int = 4096
    moco_momentum: float = 0.99
    moco_temperature: float = 0.2
    #: Free-form notes copied into ``encoder.pt``'s metadata.
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in VIEW_KEYS:
            raise TrainConfigError(f"unknown method {self.method!r}: expected one of {', '.join(VIEW_KEYS)}")
        if self.backbone not in BACKBONES:
            raise TrainConfigError(f"unknown backbone {self.backbone!r}: expected one of {', '.join(BACKBONES)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise TrainConfigError(f"unknown device {self.device!r}: expected auto, cpu or cuda")
        if min(self.batch_size, self.epochs, self.log_every, self.checkpoint_every) < 1:
            raise TrainConfigError("batch_size, epochs, log_every and checkpoint_every must be positive")
