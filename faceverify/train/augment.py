"""Batch augmentation for aligned faces, on whatever device the batch is on (no loader workers).

Supervised recipes use only transforms that keep the five-point alignment meaningful: mirror, small
scale/shift, colour, grayscale and blur. Self-supervised pretraining adds SimCLR's random
crop-resize (`crop_area`), still inside the aligned frame. Randomness comes from an explicit
generator so a resumed run is reproducible.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    flip: float = 0.5
    scale: float = 0.06  # ± relative zoom
    shift: float = 0.05  # ± fraction of the crop
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    grayscale: float = 0.1
    blur: float = 0.1
    crop_area: float = 0.0  # > 0: crop a random square of [crop_area, 1] of the frame, resize back


def augment(batch: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """(N, 3, H, W) values 0..255 → augmented float batch, same range."""
    x = batch.float()
    n, dev = x.shape[0], x.device

    def uniform(low, high, *shape):
        return torch.rand(n, *shape, generator=generator, device="cpu").to(dev) * (high - low) + low

    def chance(p):
        return (torch.rand(n, generator=generator, device="cpu") < p).to(dev)

    if cfg.scale or cfg.shift or cfg.flip or cfg.crop_area:
        # crop: a square of random area whose centre keeps it inside the frame; else a small zoom
        side = (uniform(cfg.crop_area, 1.0).sqrt() if cfg.crop_area
                else 1.0 / uniform(1 - cfg.scale, 1 + cfg.scale))
        mirror = torch.where(chance(cfg.flip), -1.0, 1.0).to(dev)
        offset = (uniform(-1.0, 1.0, 2) * (1 - side)[:, None] if cfg.crop_area
                  else uniform(-cfg.shift, cfg.shift, 2) * 2)
        theta = torch.zeros(n, 2, 3, device=dev)
        theta[:, 0, 0] = mirror * side
        theta[:, 1, 1] = side
        theta[:, :, 2] = offset
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    x = x * uniform(1 - cfg.brightness, 1 + cfg.brightness)[:, None, None, None]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * uniform(1 - cfg.contrast, 1 + cfg.contrast)[:, None, None, None] + mean
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    x = (x - gray) * uniform(1 - cfg.saturation, 1 + cfg.saturation)[:, None, None, None] + gray
    x = torch.where(chance(cfg.grayscale)[:, None, None, None], gray.expand_as(x), x)
    if cfg.blur:
        kernel = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=dev)
        kernel = (kernel[:, None] * kernel[None, :]) / 256.0
        blurred = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"),
                           kernel.expand(3, 1, 5, 5).contiguous(), groups=3)
        x = torch.where(chance(cfg.blur)[:, None, None, None], blurred, x)
    return x.clamp_(0, 255)
