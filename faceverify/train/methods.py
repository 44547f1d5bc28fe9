"""Training methods by name: supervised metric learning, or one of the self-supervised ones.

`Supervised` scores one view per image with a metric-learning objective over identity labels (and
adds a `Distillation` term when teachers are configured). The pretraining methods (SimCLR, MoCo,
BYOL, SwAV) live in `pretraining.py`; `build_method` picks one by the recipe's `mode`.
"""
from __future__ import annotations

from torch import nn

from .distill import Distillation
from .losses import Objective
from .method import Method
from .pretraining import BYOL, MoCo, PretrainConfig, SimCLR, SwAV

PRETRAINING = {"simclr": SimCLR, "moco": MoCo, "byol": BYOL, "swav": SwAV}
MODES = ("supervised", *PRETRAINING)


class Supervised(Method):
    """Embedder + identity objective (+ distillation projectors) as one module, so DDP
    synchronises all of them (arcface and the projectors have weights)."""

    def __init__(self, model: nn.Module, objective: Objective, channels_last: bool = False,
                 distillation: Distillation | None = None):
        super().__init__(model, channels_last)
        self.objective, self.distillation = objective, distillation

    def forward(self, views, labels, autocast, targets=None):
        embeddings = self.embed(views[0], autocast)
        loss, stats = self.objective(embeddings, labels)
        if self.distillation is not None:
            stats["supervised_loss"] = loss.detach()
            extra, distill_stats = self.distillation(embeddings, targets)
            loss = loss + extra
            stats.update(distill_stats)
        return loss, stats


def build_method(mode: str, model: nn.Module, objective: Objective | None, cfg: PretrainConfig,
                 channels_last: bool = False, distillation: Distillation | None = None,
                 total_steps: int = 1) -> Method:
    """The method for `mode`; `total_steps` sets schedules that span the run (BYOL's momentum)."""
    if mode not in MODES:
        raise ValueError(f"unknown training mode {mode!r}; choose one of {MODES}")
    if distillation is not None and mode != "supervised":
        raise ValueError("distillation combines with a supervised objective, not with pretraining")
    if mode == "supervised":
        return Supervised(model, objective, channels_last, distillation)
    if mode == "byol":
        return BYOL(model, cfg, channels_last, total_steps)
    return PRETRAINING[mode](model, cfg, channels_last)
