"""Masked autoencoder (MAE) pretraining of a spectral adapter + ViT encoder.

The adapter runs on the whole image (it is per-pixel, so masked pixels cannot leak into visible tokens),
the ViT sees only the visible tokens, a light decoder fills in mask tokens, and the loss is the mean
squared error on the masked tokens' pixels of the normalised input, all bands.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spectral_corpus.training.errors import TrainConfigError
from spectral_corpus.training.models import Block, Encoder, VisionTransformer, grid_pos_embed, sincos_pos_embed


def random_masking(
    batch: int,
    tokens: int,
    mask_ratio: float,
    device: torch.device | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-sample random split of token indices: ``(keep, masked)``, ``round(mask_ratio * tokens)`` masked.

    At least one token is always kept. The draw comes from ``generator`` (on ``device``), the global RNG without one.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise TrainConfigError(f"mask ratio must lie in [0, 1), got {mask_ratio}")
    n_masked = min(round(mask_ratio * tokens), tokens - 1)
    order = torch.rand(batch, tokens, device=device, generator=generator).argsort(dim=1)
    return order[:, : tokens - n_masked], order[:, tokens - n_masked :]


def patchify(x: Tensor, patch: int) -> Tensor:
    """``(B, C, H, W)`` to ``(B, N, patch * patch * C)``, tokens in the ViT's row-major order."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def _take(tokens: Tensor, index: Tensor) -> Tensor:
    """Rows ``index`` ``(B, K)`` of each sample's tokens ``(B, N, D)``."""
    return torch.gather(tokens, 1, index[..., None].expand(-1, -1, tokens.shape[-1]))


class MAE(nn.Module):
    """MAE around an :class:`~training.models.Encoder` with a ViT backbone; ``forward(image)`` returns the loss."""

    decoder_pos: Tensor

    def __init__(
        self,
        encoder: Encoder,
        mask_ratio: float = 0.9,
        decoder_dim: int = 256,
        decoder_depth: int = 4,
        decoder_heads: int = 8,
    ) -> None:
        super().__init__()
        if not isinstance(encoder.backbone, VisionTransformer):
            raise TrainConfigError(
                f"MAE needs a ViT backbone, got {type(encoder.backbone).__name__}: "
                "use --backbone vit_s, or --method moco, which works with resnet50"
            )
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        vit = encoder.backbone
        self.patch = vit.patch_size
        self.decoder_embed = nn.Linear(vit.num_features, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_blocks = nn.ModuleList(Block(decoder_dim, decoder_heads) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch**2 * encoder.adapter.in_bands)
        pos = sincos_pos_embed(decoder_dim, vit.grid, vit.grid)[None]
        self.register_buffer("decoder_pos", pos, persistent=False)
        nn.init.normal_(self.mask_token, std=0.02)

    @property
    def vit(self) -> VisionTransformer:
        """The encoder's backbone."""
        backbone = self.encoder.backbone
        assert isinstance(backbone, VisionTransformer)  # checked in __init__
        return backbone

    def forward(self, image: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Mean squared error on the masked tokens of a normalised batch ``(B, bands, H, W)``.

        ``generator`` (on ``image``'s device) draws the mask; the global RNG without one.
        """
        tokens = self.vit.embed(self.encoder.adapter(image))
        b, n, _ = tokens.shape
        keep, masked = random_masking(b, n, self.mask_ratio, tokens.device, generator)
        latent = self.vit.encode(_take(tokens, keep))
        grid = (image.shape[-2] // self.patch, image.shape[-1] // self.patch)
        hidden = self._decode(latent, keep, n, grid)
        prediction = self.decoder_pred(_take(hidden, masked))
        target = _take(patchify(image, self.patch), masked)
        return F.mse_loss(prediction.float(), target.float())

    def _decode(self, latent: Tensor, keep: Tensor, tokens: int, grid: tuple[int, int]) -> Tensor:
        """Decoder states for all ``tokens`` positions: visible latents in place, mask tokens elsewhere."""
        visible = self.decoder_embed(latent)
        full = self.mask_token.to(visible.dtype).expand(visible.shape[0], tokens, -1)
        full = full.scatter(1, keep[..., None].expand(-1, -1, visible.shape[-1]), visible)
        x = full + grid_pos_embed(self.decoder_pos, *grid).to(full.dtype)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_norm(x)
