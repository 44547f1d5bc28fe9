"""The embedding network: pixel normalisation + ResNet trunk + embedding head + L2 normalisation.

Normalisation lives inside the module, so the torch model, the ONNX graph and the training loop all
take the same input: aligned RGB faces, NCHW, values 0..255 (uint8 or float).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import ResNetTrunk

PIXEL_MEAN = 127.5
PIXEL_STD = 127.5
INPUT_FORMAT = {"color": "RGB", "layout": "NCHW", "range": [0, 255],
                "mean": [PIXEL_MEAN] * 3, "std": [PIXEL_STD] * 3}


class EmbeddingHead(nn.Module):
    """Global depthwise conv over the 7×7 map (keeps where features are, unlike average pooling),
    then BN + linear projection + BN, as in MobileFaceNet / ArcFace heads."""

    def __init__(self, channels: int, dim: int, spatial: int = 7, dropout: float = 0.0):
        super().__init__()
        self.pool = nn.Sequential(nn.Conv2d(channels, channels, spatial, groups=channels, bias=False),
                                  nn.BatchNorm2d(channels))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, dim, bias=False)
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x):
        return self.bn(self.fc(self.dropout(torch.flatten(self.pool(x), 1))))


class Embedder(nn.Module):
    """Aligned faces (N, 3, 112, 112, values 0..255) → L2-normalised embeddings (N, dim)."""

    def __init__(self, arch: str = "resnet18", embedding_dim: int = 512, dropout: float = 0.0):
        super().__init__()
        self.arch, self.embedding_dim = arch, embedding_dim
        self.trunk = ResNetTrunk(arch)
        self.head = EmbeddingHead(self.trunk.out_channels, embedding_dim,
                                  spatial=self.trunk.out_size, dropout=dropout)

    def trunk_parts(self) -> list[nn.Module]:
        """The stem, then each residual stage: what fine-tuning freezes from the input up."""
        return [self.trunk.stem, *self.trunk.stages]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.to(self.head.fc.weight.dtype) - PIXEL_MEAN) / PIXEL_STD  # float32, or float16 if halved
        return F.normalize(self.head(self.trunk(x)).float(), dim=1)
