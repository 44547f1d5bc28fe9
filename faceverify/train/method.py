"""What every training method is: the embedder plus whatever one step needs around it.

A method is called as `method(views, labels, autocast, targets) -> (loss, stats)`: `views` are the
augmented batches (`views` of them per image), `targets` the batch's teacher embeddings by teacher
name (empty unless distilling); `after_step()` runs once the optimiser has stepped (momentum
encoders follow there).
"""
from __future__ import annotations

import torch
from torch import nn


class Method(nn.Module):
    """The embedder plus whatever one training step needs around it (objective, heads, queue)."""

    views = 1  # augmented views drawn of each image

    def __init__(self, model: nn.Module, channels_last: bool = False):
        super().__init__()
        self.model, self.channels_last = model, channels_last

    def embed(self, images: torch.Tensor, autocast) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast:
            return self.model(images)

    def after_step(self) -> None:
        """Called after each optimiser step."""
