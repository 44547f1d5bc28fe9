"""Training methods: what one step does with a batch of augmented views.

`Supervised` scores one view per image with a metric-learning objective over identity labels.
`SimCLR` and `MoCo` pretrain without labels: two augmented views of each image are the only
positive pair, every other image is a negative. Both put a projection head on the embedding
(used only while pretraining: checkpoints hold the embedder alone) and take their losses from
pytorch-metric-learning: NT-Xent for SimCLR, and for MoCo the same loss against a
`CrossBatchMemory` that keeps momentum-encoder keys as a queue of negatives (InfoNCE).

A method is called as `method(views, labels, autocast, targets) -> (loss, stats)`, `targets` being
the batch's teacher embeddings by teacher name (empty unless distilling: `Supervised` adds a
`Distillation` term); `after_step()` runs once the optimiser has stepped (MoCo's momentum update).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pytorch_metric_learning import losses
from torch import nn

from .distill import Distillation
from .losses import Objective

MODES = ("supervised", "simclr", "moco")


@dataclass
class PretrainConfig:
    batch_size: int = 64  # images per batch (each seen as two views)
    projection_hidden: int = 512
    projection_dim: int = 128
    temperature: float = 0.2  # NT-Xent / InfoNCE
    queue_size: int = 4096  # moco: keys kept as negatives
    momentum: float = 0.99  # moco: key encoder ← momentum · key + (1 − momentum) · query


class ProjectionHead(nn.Sequential):
    """SimCLR's MLP between the embedding and the contrastive loss; thrown away after pretraining
    (the layer before it transfers better than its output)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__(nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden),
                         nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


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


class Pretraining(Method):
    """Self-supervised: two views of each image, compared through a projection head."""

    views = 2

    def __init__(self, model: nn.Module, cfg: PretrainConfig, channels_last: bool = False):
        super().__init__(model, channels_last)
        self.projector = ProjectionHead(model.embedding_dim, cfg.projection_hidden, cfg.projection_dim)


class SimCLR(Pretraining):
    """Both views through one encoder + projection head; NT-Xent over the 2N projections."""

    def __init__(self, model: nn.Module, cfg: PretrainConfig, channels_last: bool = False):
        super().__init__(model, cfg, channels_last)
        self.loss = losses.NTXentLoss(temperature=cfg.temperature)

    def forward(self, views, labels, autocast, targets=None):
        projections = self.projector(self.embed(torch.cat(views), autocast)).float()
        first, second = projections.chunk(2)
        loss = self.loss(projections, torch.cat([labels, labels]))
        return loss, view_stats(first.detach(), second.detach())


class MoCo(Pretraining):
    """Query encoder (trained) + key encoder (its exponential moving average, never trained by
    gradients); each step's keys join a fixed-size queue whose older keys are the negatives."""

    def __init__(self, model: nn.Module, cfg: PretrainConfig, channels_last: bool = False):
        super().__init__(model, cfg, channels_last)
        self.momentum = cfg.momentum
        self.key_encoder = nn.Sequential(copy.deepcopy(model), copy.deepcopy(self.projector))
        self.key_encoder.requires_grad_(False)
        # labels are image indices: a query's positive is its own key (and any older key of the
        # same image still queued); every other queued key is a negative
        self.queue = losses.CrossBatchMemory(losses.NTXentLoss(temperature=cfg.temperature),
                                             cfg.projection_dim, memory_size=cfg.queue_size)

    def forward(self, views, labels, autocast, targets=None):
        queries = self.projector(self.embed(views[0], autocast)).float()
        with torch.no_grad(), autocast:
            keys = self.key_encoder(views[1]).float()
        stats = view_stats(queries.detach(), keys)
        # under DDP every rank enqueues every rank's keys, so all ranks share one queue
        keys, key_labels = _all_gather(keys), _all_gather(labels)
        is_key = torch.arange(len(queries) + len(keys), device=labels.device) >= len(queries)
        loss = self.queue(torch.cat([queries, keys]), torch.cat([labels, key_labels]), enqueue_mask=is_key)
        return loss, stats

    @torch.no_grad()
    def after_step(self) -> None:
        trained = [*self.model.parameters(), *self.projector.parameters()]
        for key, query in zip(self.key_encoder.parameters(), trained, strict=True):
            key.lerp_(query, 1.0 - self.momentum)

    # the queue's write position is a plain attribute: keep it in state_dict for exact resume
    def get_extra_state(self) -> dict:
        return {"queue_idx": int(self.queue.queue_idx), "filled": bool(self.queue.has_been_filled)}

    def set_extra_state(self, state: dict) -> None:
        self.queue.queue_idx, self.queue.has_been_filled = state["queue_idx"], state["filled"]


def _all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` from every DDP rank, concatenated in rank order (as is, without DDP)."""
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def view_stats(first: torch.Tensor, second: torch.Tensor) -> dict:
    """How well the two views find each other: mean cosine of the positive pair, and the fraction
    of first views whose nearest second view in the batch is their own (instance accuracy)."""
    first, second = F.normalize(first, dim=1), F.normalize(second, dim=1)
    similarity = first @ second.T
    target = torch.arange(len(first), device=first.device)
    # tensors, not floats: converting here would synchronise the GPU on every step
    return {"positive_cosine": similarity.diagonal().mean(),
            "view_match": (similarity.argmax(1) == target).float().mean()}


def build_method(mode: str, model: nn.Module, objective: Objective | None, cfg: PretrainConfig,
                 channels_last: bool = False, distillation: Distillation | None = None) -> Method:
    if mode not in MODES:
        raise ValueError(f"unknown training mode {mode!r}; choose one of {MODES}")
    if distillation is not None and mode != "supervised":
        raise ValueError("distillation combines with a supervised objective, not with pretraining")
    if mode == "supervised":
        return Supervised(model, objective, channels_last, distillation)
    return (SimCLR if mode == "simclr" else MoCo)(model, cfg, channels_last)
