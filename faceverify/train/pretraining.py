"""Self-supervised pretraining: identity labels ignored, two augmented views of each image.

Four methods, one small class each, all behind the `Method` call of `methods.py`:
- `SimCLR`: both views through one encoder + projection head; NT-Xent over the 2N projections
  (pytorch-metric-learning), every other image a negative.
- `MoCo`: a query encoder and a momentum (EMA) key encoder; each step's keys join a queue whose
  older keys are the negatives (PML `CrossBatchMemory` around NT-Xent = InfoNCE).
- `BYOL`: no negatives at all. The online network + a predictor regresses the projection of a
  momentum target network for the other view (symmetrised); the target's momentum rises from
  `momentum` to 1 along a cosine over the run.
- `SwAV`: no pairwise comparisons. Projections are scored against learned prototypes; the codes of
  one view (Sinkhorn-Knopp equipartition over the batch, plus a queue of earlier projections when
  batches are small) are the targets of the other view's softmax ("swapped prediction").

The projection head (and BYOL's predictor, SwAV's prototypes) exist only in training: checkpoints
hold the embedder alone, so `--init-from` a pretraining run takes the embedder.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pytorch_metric_learning import losses
from torch import nn

from .method import Method


@dataclass
class PretrainConfig:
    batch_size: int = 64  # images per batch (each seen as two views)
    projection_hidden: int = 512
    projection_dim: int = 128
    temperature: float = 0.2  # NT-Xent / InfoNCE; SwAV's softmax over prototypes
    queue_size: int = 4096  # moco: keys kept as negatives; swav: projections kept for Sinkhorn
    momentum: float = 0.99  # moco: key ← momentum · key + (1 − momentum) · query; byol: its start
    prototypes: int = 512  # swav
    sinkhorn_epsilon: float = 0.05  # swav: entropy regularisation of the code assignment
    sinkhorn_iterations: int = 3  # swav


class ProjectionHead(nn.Sequential):
    """SimCLR's MLP between the embedding and the loss (BYOL's predictor has the same shape);
    thrown away after pretraining (the layer before it transfers better than its output)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__(nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden),
                         nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


class Pretraining(Method):
    """Self-supervised: two views of each image, compared through a projection head."""

    views = 2

    def __init__(self, model: nn.Module, cfg: PretrainConfig, channels_last: bool = False):
        super().__init__(model, channels_last)
        self.projector = ProjectionHead(model.embedding_dim, cfg.projection_hidden, cfg.projection_dim)

    def project(self, images: torch.Tensor, autocast) -> torch.Tensor:
        return self.projector(self.embed(images, autocast)).float()


class SimCLR(Pretraining):
    """Both views through one encoder + projection head; NT-Xent over the 2N projections."""

    def __init__(self, model: nn.Module, cfg: PretrainConfig, channels_last: bool = False):
        super().__init__(model, cfg, channels_last)
        self.loss = losses.NTXentLoss(temperature=cfg.temperature)

    def forward(self, views, labels, autocast, targets=None):
        projections = self.project(torch.cat(views), autocast)
        first, second = projections.chunk(2)
        loss = self.loss(projections, torch.cat([labels, labels]))
        return loss, view_stats(first.detach(), second.detach())


class MomentumPretraining(Pretraining):
    """Pretraining with a second encoder (+ projector) that is never trained by gradients: after
    every optimiser step it moves towards the trained one, `target ← m · target + (1 − m) · online`."""

    def __init__(self, model: nn.Module, cfg: PretrainConfig, channels_last: bool = False):
        super().__init__(model, cfg, channels_last)
        self.base_momentum = cfg.momentum
        self.target_encoder = nn.Sequential(copy.deepcopy(model), copy.deepcopy(self.projector))
        self.target_encoder.requires_grad_(False)

    def momentum(self) -> float:
        return self.base_momentum

    def target_projection(self, images: torch.Tensor, autocast) -> torch.Tensor:
        with torch.no_grad(), autocast:
            return self.target_encoder(images).float()

    @torch.no_grad()
    def after_step(self) -> None:
        weight = 1.0 - self.momentum()
        online = [*self.model.parameters(), *self.projector.parameters()]
        for target, trained in zip(self.target_encoder.parameters(), online, strict=True):
            target.lerp_(trained, weight)


class MoCo(MomentumPretraining):
    """Query encoder (trained) + key encoder (its moving average); each step's keys join a
    fixed-size queue whose older keys are the negatives."""

    def __init__(self, model: nn.Module, cfg: PretrainConfig, channels_last: bool = False):
        super().__init__(model, cfg, channels_last)
        # labels are image indices: a query's positive is its own key (and any older key of the
        # same image still queued); every other queued key is a negative
        self.queue = losses.CrossBatchMemory(losses.NTXentLoss(temperature=cfg.temperature),
                                             cfg.projection_dim, memory_size=cfg.queue_size)

    def forward(self, views, labels, autocast, targets=None):
        queries = self.project(views[0], autocast)
        keys = self.target_projection(views[1], autocast)
        stats = view_stats(queries.detach(), keys)
        # under DDP every rank enqueues every rank's keys, so all ranks share one queue
        keys, key_labels = _all_gather(keys), _all_gather(labels)
        is_key = torch.arange(len(queries) + len(keys), device=labels.device) >= len(queries)
        loss = self.queue(torch.cat([queries, keys]), torch.cat([labels, key_labels]), enqueue_mask=is_key)
        return loss, stats

    # the queue's write position is a plain attribute: keep it in state_dict for exact resume
    def get_extra_state(self) -> dict:
        return {"queue_idx": int(self.queue.queue_idx), "filled": bool(self.queue.has_been_filled)}

    def set_extra_state(self, state: dict) -> None:
        self.queue.queue_idx, self.queue.has_been_filled = state["queue_idx"], state["filled"]


class BYOL(MomentumPretraining):
    """Online encoder + projector + predictor regress the target network's projection of the other
    view: `2 − 2 cos`, both ways round. Nothing pushes images apart; the predictor and the slowly
    moving target are what keep the embedding from collapsing."""

    def __init__(self, model: nn.Module, cfg: PretrainConfig, channels_last: bool = False,
                 total_steps: int = 1):
        super().__init__(model, cfg, channels_last)
        self.predictor = ProjectionHead(cfg.projection_dim, cfg.projection_hidden, cfg.projection_dim)
        self.total_steps = max(1, total_steps)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))  # resumes with the state

    def momentum(self) -> float:
        """BYOL's schedule: `1 − (1 − m₀)(cos(πk/K) + 1)/2`, from m₀ at step 0 to 1 at the last."""
        progress = min(1.0, int(self.steps_done) / self.total_steps)
        return 1.0 - (1.0 - self.base_momentum) * (math.cos(math.pi * progress) + 1.0) / 2.0

    def forward(self, views, labels, autocast, targets=None):
        both = torch.cat(views)
        predictions = self.predictor(self.project(both, autocast)).float()
        target = self.target_projection(both, autocast)
        first, second = predictions.chunk(2)
        target_first, target_second = target.chunk(2)
        loss = regression_loss(first, target_second) + regression_loss(second, target_first)
        return loss, view_stats(first.detach(), target_second)

    def after_step(self) -> None:
        super().after_step()
        self.steps_done += 1


def regression_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BYOL's loss: squared distance of the L2-normalised vectors, `2 − 2 cos`, batch mean."""
    return (2.0 - 2.0 * F.cosine_similarity(prediction, target, dim=1)).mean()


class SwAV(Pretraining):
    """Projections (normalised) are scored against `prototypes` unit vectors; each view's codes,
    balanced over the prototypes by Sinkhorn-Knopp, are the target of the other view's softmax."""

    def __init__(self, model: nn.Module, cfg: PretrainConfig, channels_last: bool = False):
        super().__init__(model, cfg, channels_last)
        self.temperature, self.epsilon = cfg.temperature, cfg.sinkhorn_epsilon
        self.iterations = cfg.sinkhorn_iterations
        self.prototypes = nn.Linear(cfg.projection_dim, cfg.prototypes, bias=False)
        # earlier projections of each view: with small batches, equipartition over the batch alone
        # is too strong a constraint (64 images cannot spread evenly over 512 prototypes)
        self.register_buffer("queue", torch.zeros(2, cfg.queue_size, cfg.projection_dim))
        self.register_buffer("queued", torch.zeros((), dtype=torch.long))

    def forward(self, views, labels, autocast, targets=None):
        with torch.no_grad():  # prototypes stay on the unit sphere
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        projections = F.normalize(self.project(torch.cat(views), autocast), dim=1)
        scores = self.prototypes(projections).chunk(2)
        codes = [self._codes(view, projection.detach())
                 for view, (score, projection) in enumerate(zip(scores, projections.chunk(2)))]
        log_p = [F.log_softmax(score / self.temperature, dim=1) for score in scores]
        loss = -0.5 * ((codes[0] * log_p[1]).sum(1).mean() + (codes[1] * log_p[0]).sum(1).mean())
        stats = view_stats(*(p.detach() for p in projections.chunk(2)))
        # share of prototypes that are some image's nearest code (a tensor: no GPU sync)
        stats["prototype_usage"] = F.one_hot(codes[0].argmax(1), codes[0].shape[1]).amax(0).float().mean()
        return loss, stats

    @torch.no_grad()
    def _codes(self, view: int, projections: torch.Tensor) -> torch.Tensor:
        """Sinkhorn codes of this batch's projections, solved together with the queued ones; then
        this batch joins the view's queue (newest first)."""
        batch = len(projections)
        queue = self.queue[view]
        filled = min(int(self.queued), len(queue))
        pool = torch.cat([projections, queue[:filled]]) if filled else projections
        codes = sinkhorn(pool @ self.prototypes.weight.T, self.epsilon, self.iterations)[:batch]
        if len(queue):  # shift the queue and put this batch in front
            keep = len(queue) - min(batch, len(queue))
            queue[batch:] = queue[:keep].clone()
            queue[:batch] = projections[:len(queue)]
            if view == 1:
                self.queued += batch
        return codes


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """Soft assignment of B samples to K prototypes (B, K), rows summing to 1, with every prototype
    given about the same total mass B/K (Sinkhorn-Knopp on exp(scores / ε); SwAV, Alg. 1).
    Under DDP the samples of all ranks are balanced together."""
    q = torch.exp((scores.float() - scores.max()) / epsilon).T  # K × B
    distributed = dist.is_available() and dist.is_initialized()
    samples = len(scores) * (dist.get_world_size() if distributed else 1)
    prototypes = q.shape[0]
    total = q.sum()
    _all_reduce_(total, distributed)
    q /= total
    for _ in range(iterations):
        rows = q.sum(dim=1, keepdim=True)
        _all_reduce_(rows, distributed)
        q /= rows * prototypes  # each prototype: total mass 1/K
        q /= q.sum(dim=0, keepdim=True) * samples  # each sample: mass 1/B
    return (q * samples).T


def _all_reduce_(tensor: torch.Tensor, distributed: bool) -> None:
    if distributed:
        dist.all_reduce(tensor)


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
