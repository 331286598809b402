"""MoCo-v2 on a spectral adapter + backbone, with two dates of one location as the two views.

The query encoder sees ``image``, the momentum (key) encoder sees ``image2``: another date of the same
location, or the same date again when the location has only one. Each view also gets its own random
resized crop, flip and rotation here, on the device (:func:`random_view`), so the loader's workers
do no augmentation work. Keys of all processes fill one queue of negatives.
A BatchNorm backbone computes keys in shuffled sub-batches (MoCo's shuffle-BN, done within a process)
so that batch statistics cannot tell the positive apart.
"""

from __future__ import annotations

import copy
import math
from itertools import chain

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from spectral_corpus.training.errors import TrainConfigError
from spectral_corpus.training.models import Encoder


def projection_head(in_features: int, hidden: int = 2048, dim: int = 128) -> nn.Sequential:
    """MoCo-v2's two-layer MLP head."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))


def random_view(x: Tensor, scale: tuple[float, float] = (0.5, 1.0), generator: torch.Generator | None = None) -> Tensor:
    """Per-sample random resized crop, flip and 90-degree rotation of ``(B, C, H, W)``, in one bilinear resampling.

    Each crop is a square covering a share in ``scale`` of the image, resized back to ``H`` x ``W``;
    all bands move together, so spectra stay intact. Draws come from ``generator`` (on ``x``'s device),
    the global RNG without one.
    """
    b, device = x.shape[0], x.device
    side = torch.empty(b, device=device).uniform_(*scale, generator=generator).sqrt()
    centre = (2 * torch.rand(b, 2, device=device, generator=generator) - 1) * (1 - side)[:, None]
    angle = torch.randint(0, 4, (b,), device=device, generator=generator) * (math.pi / 2)
    cos, sin = angle.cos().round(), angle.sin().round()
    flip = torch.where(torch.rand(b, device=device, generator=generator) < 0.5, -1.0, 1.0)
    rows = [torch.stack(row, dim=1) for row in ((cos * flip, -sin, centre[:, 0]), (sin * flip, cos, centre[:, 1]))]
    theta = torch.stack(rows, dim=1) * torch.stack([side, side, torch.ones_like(side)], dim=1)[:, None]
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _gather(keys: Tensor) -> Tensor:
    """Keys of all processes, concatenated in rank order (the local keys when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return keys
    parts = [torch.empty_like(keys) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, keys.contiguous())
    return torch.cat(parts)


def _has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(layer, nn.modules.batchnorm._BatchNorm) for layer in module.modules())


class MoCo(nn.Module):
    """MoCo-v2; ``forward(view1, view2, generator)`` returns the InfoNCE loss and updates the queue."""

    queue: Tensor
    queue_ptr: Tensor

    def __init__(
        self,
        encoder: Encoder,
        dim: int = 128,
        hidden: int = 2048,
        queue_size: int = 4096,
        momentum: float = 0.99,
        temperature: float = 0.2,
        key_splits: int = 2,
    ) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise TrainConfigError(f"momentum must lie in [0, 1), got {momentum}")
        self.encoder = encoder
        self.head = projection_head(encoder.num_features, hidden, dim)
        self.key_encoder = copy.deepcopy(encoder)
        self.key_head = copy.deepcopy(self.head)
        for parameter in self._key_parameters():
            parameter.requires_grad_(False)
        self.momentum = momentum
        self.temperature = temperature
        self.key_splits = key_splits if _has_batch_norm(encoder) else 1
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def _key_parameters(self) -> chain[nn.Parameter]:
        return chain(self.key_encoder.parameters(), self.key_head.parameters())

    def forward(self, view1: Tensor, view2: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """InfoNCE loss of queries from ``view1`` against keys from ``view2`` and the queue.

        ``generator`` (on the views' device) draws the augmentations and the key shuffle.
        """
        query = F.normalize(self.head(self.encoder(random_view(view1, generator=generator))).float(), dim=1)
        with torch.no_grad():
            self._momentum_update()
            key = self._keys(random_view(view2, generator=generator), generator)
        positive = (query * key).sum(dim=1, keepdim=True)
        negative = query @ self.queue.clone().T
        logits = torch.cat([positive, negative], dim=1).float() / self.temperature
        loss = F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))
        self._enqueue(key)
        return loss

    @torch.no_grad()
    def _momentum_update(self) -> None:
        online = chain(self.encoder.parameters(), self.head.parameters())
        for source, target in zip(online, self._key_parameters(), strict=True):
            target.lerp_(source.detach(), 1.0 - self.momentum)

    def _embed_keys(self, x: Tensor) -> Tensor:
        return F.normalize(self.key_head(self.key_encoder(x)).float(), dim=1)

    def _keys(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """Normalised keys; with BatchNorm, computed on ``key_splits`` sub-batches shuffled by ``generator``."""
        if self.key_splits == 1 or len(x) < 2 * self.key_splits:
            return self._embed_keys(x)
        order = torch.randperm(len(x), device=x.device, generator=generator)
        keys = torch.cat([self._embed_keys(part) for part in x[order].chunk(self.key_splits)])
        return keys[order.argsort()]

    @torch.no_grad()
    def _enqueue(self, key: Tensor) -> None:
        keys = _gather(key)[-len(self.queue) :]
        slots = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % len(self.queue)
        self.queue[slots] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % len(self.queue))
