"""Augmentations that keep spectra intact: geometry only, the same for every band.

Each transform is a callable ``(image (C, H, W), generator) -> image`` so every random draw comes
from the generator the dataset seeds per item.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[object]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for transform in self.transforms:
            image = transform(image, generator)  # type: ignore[operator]
        return image


class RandomFlip:
    """Flip left-right and/or up-down, each with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        draws = torch.rand(2, generator=generator)
        dims = [d for d, u in zip((-1, -2), draws.tolist(), strict=True) if u < self.p]
        return image.flip(dims) if dims else image


class RandomRot90:
    """Rotate by a random multiple of 90 degrees."""

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        k = int(torch.randint(4, (1,), generator=generator))
        return torch.rot90(image, k, dims=(-2, -1))


class RandomResizedCrop:
    """Crop a random square of ``scale`` of the area and resize it to ``size`` (bilinear, all bands alike).

    Integer counts are resampled in float32 and rounded back to their dtype.
    """

    def __init__(self, size: int, scale: tuple[float, float] = (0.5, 1.0)) -> None:
        self.size, self.scale = size, scale

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        height, width = image.shape[-2:]
        low, high = self.scale
        area = low + (high - low) * float(torch.rand(1, generator=generator))
        side = max(1, min(height, width, round((area * height * width) ** 0.5)))
        top = int(torch.randint(height - side + 1, (1,), generator=generator))
        left = int(torch.randint(width - side + 1, (1,), generator=generator))
        crop = image[..., top : top + side, left : left + side].unsqueeze(0)
        size = (self.size, self.size)
        if image.is_floating_point():
            return F.interpolate(crop, size=size, mode="bilinear", align_corners=False)[0]
        resized = F.interpolate(crop.float(), size=size, mode="bilinear", align_corners=False)[0]
        return resized.round_().to(image.dtype)
