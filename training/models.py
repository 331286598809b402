"""Encoders for hyperspectral patches: a spectral adapter in front of a ViT-S or a ResNet-50.

Input is a normalised patch ``(B, bands, H, W)``. :class:`SpectralAdapter` mixes only along the
spectral axis (each pixel's output depends on that pixel's spectrum alone) and turns the 202 EnMAP
bands into 128 channels; a 2D backbone then sees an ordinary 128-channel image.

A trained encoder is saved with :func:`save_encoder` and loaded without the trainer::

    from spectral_corpus.training.models import load_encoder
    encoder = load_encoder("runs/mae/encoder.pt")   # eval mode, on the CPU
    features = encoder(images)                      # (B, 384) for vit_s, (B, 2048) for resnet50
    tokens = encoder.backbone.forward_features(encoder.adapter(images))  # ViT: (B, N, 384) per-token

``images`` must be normalised the way the corpus loader normalises them (``CorpusDataset(normalize=True)``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spectral_corpus.training.config import BACKBONES
from spectral_corpus.training.errors import TrainConfigError

#: Backbone names accepted by :class:`EncoderConfig`.

#: Format tag written into every saved encoder file.
ENCODER_FORMAT = "spectral-corpus-encoder/1"

#: (kernel, stride) of the adapter's spectral convolutions, as in SpectralEarth's adapter.
_SPECTRAL_CONVS = ((7, 5), (7, 5), (5, 3))


class SpectralAdapter(nn.Module):
    """Per-pixel 1D convolutions along the spectral axis, then a 1x1 projection to ``out_channels``.

    Three strided ``Conv3d`` layers with ``(k, 1, 1)`` kernels run over ``(B, 1, bands, H, W)``, their
    spectral positions are averaged, and a 1x1 convolution projects to ``out_channels``. There is no batch
    normalisation, so no pixel ever sees another one, in training or in evaluation.
    """

    def __init__(self, in_bands: int = 202, out_channels: int = 128, widths: tuple[int, ...] = (32, 64, 128)) -> None:
        super().__init__()
        if len(widths) != len(_SPECTRAL_CONVS):
            raise ValueError(f"widths needs {len(_SPECTRAL_CONVS)} entries, got {widths!r}")
        self.in_bands = in_bands
        self.out_channels = out_channels
        layers: list[nn.Module] = []
        length, channels = in_bands, 1
        for width, (kernel, stride) in zip(widths, _SPECTRAL_CONVS, strict=True):
            layers += [nn.Conv3d(channels, width, (kernel, 1, 1), (stride, 1, 1), (1, 0, 0)), nn.ReLU(inplace=True)]
            length, channels = (length + 2 - kernel) // stride + 1, width
        if length < 1:
            raise TrainConfigError(f"the spectral adapter needs more than {in_bands} bands")
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(channels, out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(B, in_bands, H, W)`` to ``(B, out_channels, H, W)``."""
        if x.ndim != 4 or x.shape[1] != self.in_bands:
            raise ValueError(f"expected (B, {self.in_bands}, H, W), got {tuple(x.shape)}")
        return self.proj(self.convs(x.unsqueeze(1)).mean(dim=2))


def grid_pos_embed(cached: Tensor, rows: int, cols: int) -> Tensor:
    """``cached`` ``(1, N, dim)`` when it fits a ``rows`` x ``cols`` token grid, else a fresh sincos embedding."""
    if cached.shape[1] == rows * cols:
        return cached
    return sincos_pos_embed(cached.shape[-1], rows, cols).to(cached.device)[None]


def sincos_pos_embed(dim: int, rows: int, cols: int) -> Tensor:
    """Fixed 2D sine-cosine position embedding, ``(rows * cols, dim)``, row-major like the patch tokens."""
    if dim % 4:
        raise ValueError(f"sincos position embedding needs a dimension divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    row, col = torch.meshgrid(
        torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64), indexing="ij"
    )
    parts = [torch.outer(axis.flatten(), omega) for axis in (row, col)]
    return torch.cat([fn(part) for part in parts for fn in (torch.sin, torch.cos)], dim=1).float()


class Attention(nn.Module):
    """Multi-head self-attention on ``scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """Attend over the tokens of ``(B, N, dim)``."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: attention and a GELU MLP, each with a residual connection."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        """Transform ``(B, N, dim)`` tokens."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT without a class token: patch embedding, fixed sincos positions, blocks, final norm, mean pooling."""

    pos_embed: Tensor

    def __init__(
        self, in_chans: int, img_size: int = 128, patch_size: int = 16, dim: int = 384, depth: int = 12, heads: int = 6
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise TrainConfigError(f"image size {img_size} is not a multiple of the token size {patch_size}")
        self.patch_size = patch_size
        self.num_features = dim
        self.patch_embed = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.grid = img_size // patch_size
        self.register_buffer("pos_embed", sincos_pos_embed(dim, self.grid, self.grid)[None], persistent=False)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        _init_transformer(self)

    def embed(self, x: Tensor) -> Tensor:
        """Patch tokens with their position embedding, ``(B, N, dim)``, N in row-major patch order."""
        tokens = self.patch_embed(x)
        pos = grid_pos_embed(self.pos_embed, *tokens.shape[-2:])
        return tokens.flatten(2).transpose(1, 2) + pos.to(tokens.dtype)

    def encode(self, tokens: Tensor) -> Tensor:
        """Run embedded tokens (all of them, or a subset as in MAE) through the blocks and the final norm."""
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def forward_features(self, x: Tensor) -> Tensor:
        """Per-token features ``(B, N, dim)`` of an adapted image ``(B, in_chans, H, W)``."""
        return self.encode(self.embed(x))

    def forward(self, x: Tensor) -> Tensor:
        """Mean-pooled features ``(B, dim)``."""
        return self.forward_features(x).mean(dim=1)


def _init_transformer(module: nn.Module) -> None:
    """Xavier-uniform linear and patch-embedding weights with zero biases, as in MAE."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear | nn.Conv2d):
            nn.init.xavier_uniform_(layer.weight.view(layer.weight.shape[0], -1))
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def vit_small(in_chans: int = 128, img_size: int = 128, patch_size: int = 16, depth: int = 12) -> VisionTransformer:
    """ViT-S: dimension 384, 6 heads, 12 blocks (``depth`` is a knob for tests), ``patch_size`` px tokens."""
    return VisionTransformer(in_chans, img_size, patch_size, dim=384, depth=depth, heads=6)


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1x1, 3x3 (strided), 1x1 convolutions with batch norm and a projection shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out = width * self.expansion
        last_conv, last_norm = _conv_bn(width, out, 1)
        nn.init.zeros_(last_norm.weight)  # each block starts as the identity
        self.body = nn.Sequential(
            *_conv_bn(in_channels, width, 1),
            nn.ReLU(inplace=True),
            *_conv_bn(width, width, 3, stride),
            nn.ReLU(inplace=True),
            last_conv,
            last_norm,
        )
        self.shortcut = (
            nn.Sequential(*_conv_bn(in_channels, out, 1, stride)) if stride != 1 or in_channels != out else None
        )

    def forward(self, x: Tensor) -> Tensor:
        """Residual update of ``(B, C, H, W)``."""
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(self.body(x) + identity)


def _conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv, nn.BatchNorm2d(out_channels)


class ResNet(nn.Module):
    """Bottleneck ResNet with a 7x7 stride-2 stem and max pooling; ``forward`` returns pooled features."""

    def __init__(self, in_chans: int, layers: tuple[int, ...]) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(in_chans, 64, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        stages: list[nn.Module] = []
        channels = 64
        for index, count in enumerate(layers):
            width = 64 * 2**index
            for block in range(count):
                stages.append(Bottleneck(channels, width, stride=2 if index and not block else 1))
                channels = width * Bottleneck.expansion
        self.stages = nn.Sequential(*stages)
        self.num_features = channels

    def forward(self, x: Tensor) -> Tensor:
        """Global-average-pooled features ``(B, num_features)``."""
        return self.stages(self.stem(x)).mean(dim=(2, 3))


def resnet50(in_chans: int = 128) -> ResNet:
    """ResNet-50 (bottleneck blocks [3, 4, 6, 3]) giving 2048-d pooled features."""
    return ResNet(in_chans, (3, 4, 6, 3))


@dataclass(frozen=True)
class EncoderConfig:
    """Everything needed to rebuild an :class:`Encoder`; saved next to its weights."""

    backbone: str = "vit_s"
    in_bands: int = 202
    adapter_channels: int = 128
    image_size: int = 128
    #: ViT token (patch) size in pixels.
    patch_size: int = 16
    #: ViT blocks.
    depth: int = 12

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise TrainConfigError(f"unknown backbone {self.backbone!r}: expected one of {', '.join(BACKBONES)}")


class Encoder(nn.Module):
    """Spectral adapter followed by a 2D backbone: ``(B, bands, H, W)`` to pooled features ``(B, num_features)``."""

    def __init__(self, adapter: SpectralAdapter, backbone: VisionTransformer | ResNet) -> None:
        super().__init__()
        self.adapter = adapter
        self.backbone = backbone
        self.num_features: int = backbone.num_features

    def forward(self, x: Tensor) -> Tensor:
        """Pooled features of a normalised image batch."""
        return self.backbone(self.adapter(x))


def build_encoder(config: EncoderConfig) -> Encoder:
    """A freshly initialised encoder for ``config``."""
    adapter = SpectralAdapter(config.in_bands, config.adapter_channels)
    if config.backbone == "resnet50":
        return Encoder(adapter, resnet50(config.adapter_channels))
    return Encoder(adapter, vit_small(config.adapter_channels, config.image_size, config.patch_size, config.depth))


def save_encoder(path: str | Path, encoder: Encoder, config: EncoderConfig, meta: dict[str, Any] | None = None) -> None:
    """Write the encoder's weights, the config that rebuilds it and free-form ``meta`` (JSON-like values)."""
    state = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    document = {"format": ENCODER_FORMAT, "config": asdict(config), "meta": meta or {}, "state_dict": state}
    torch.save(document, Path(path))


def load_encoder(path: str | Path, map_location: str | torch.device = "cpu") -> Encoder:
    """Rebuild a saved encoder, in eval mode; needs nothing from the trainer."""
    document = torch.load(Path(path), map_location=map_location, weights_only=True)
    if document.get("format") != ENCODER_FORMAT:
        raise TrainConfigError(
            f"{path!s} is not a saved encoder (format {document.get('format')!r}, expected {ENCODER_FORMAT})"
        )
    encoder = build_encoder(EncoderConfig(**document["config"]))
    encoder.load_state_dict(document["state_dict"])
    return encoder.to(map_location).eval()
