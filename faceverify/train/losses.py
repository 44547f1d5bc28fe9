"""Training objectives, all from pytorch-metric-learning, chosen by name with explicit margins.

PML's defaults disagree (TripletMarginLoss margin 0.05, TripletMarginMiner margin 0.2), so every
margin and temperature is set here from the config, never left to a library default.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from pytorch_metric_learning import losses, miners
from torch import nn

from .memory_bank import MINING, MemoryBankTriplet

OBJECTIVES = ("triplet", "contrastive", "ntxent", "supcon", "arcface")
TRIPLET_MINING = ("batch-hard", "semihard", "hard", "all")
NO_OBJECTIVE = "none"  # distillation alone: the identity labels only drive the P×K sampling


@dataclass
class ObjectiveConfig:
    name: str = "triplet"
    margin: float = 0.2  # triplet margin / contrastive negative margin, in L2 distance units
    mining: str = "batch-hard"  # triplet only: see TRIPLET_MINING
    temperature: float = 0.1  # ntxent / supcon
    arcface_margin_deg: float = 28.6  # arcface additive angular margin (0.5 rad)
    arcface_scale: float = 64.0
    xbm_memory: int = 0  # > 0 wraps the loss in a cross-batch memory of this many embeddings
    memory_bank: int = 0  # > 0, triplet only: negatives mined from a queue of this many (O(B·M))


class Objective(nn.Module):
    """A PML loss with its optional miner; returns (loss, statistics for logging)."""

    def __init__(self, loss: nn.Module, miner: nn.Module | None = None):
        super().__init__()
        self.loss, self.miner = loss, miner

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor):
        embeddings = embeddings.float()
        stats = batch_distance_stats(embeddings.detach(), labels)
        if isinstance(self.loss, losses.CrossBatchMemory):
            loss = self.loss(embeddings, labels)  # the memory runs its own miner over the queue
        elif self.miner is not None:
            tuples = self.miner(embeddings, labels)
            stats["mined"] = float(len(tuples[0]))
            loss = self.loss(embeddings, labels, tuples)
        else:
            loss = self.loss(embeddings, labels)
        return loss, stats


def batch_distance_stats(embeddings: torch.Tensor, labels: torch.Tensor) -> dict:
    """Mean hardest-positive and hardest-negative L2 distance per anchor (how hard the batch is);
    NaN where the batch has no such pair."""
    dist = torch.cdist(embeddings, embeddings)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos = dist.masked_fill(~same | eye, float("-inf")).amax(1)
    neg = dist.masked_fill(same, float("inf")).amin(1)
    has_pos, has_neg = torch.isfinite(pos), torch.isfinite(neg)
    both = has_pos & has_neg
    # tensors, not floats: converting here would synchronise the GPU on every step
    return {"hardest_pos_dist": pos[has_pos].mean(), "hardest_neg_dist": neg[has_neg].mean(),
            # anchors whose hardest positive is no closer than their hardest negative
            "violating_frac": (pos >= neg)[both].float().mean()}


class NoLoss(nn.Module):
    """The zero loss of a distillation-only run, still connected to the graph."""

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return embeddings.sum() * 0.0


def build_objective(cfg: ObjectiveConfig, embedding_dim: int, num_classes: int) -> Objective:
    if cfg.name == NO_OBJECTIVE:
        return Objective(NoLoss())
    if cfg.name not in OBJECTIVES:
        raise ValueError(f"unknown objective {cfg.name!r}; choose one of {(*OBJECTIVES, NO_OBJECTIVE)}")
    if cfg.memory_bank > 0:
        if cfg.name != "triplet" or cfg.mining not in MINING:
            raise ValueError(f"the memory bank is a triplet objective with mining in {MINING}")
        return Objective(MemoryBankTriplet(embedding_dim, cfg.memory_bank, cfg.margin, cfg.mining))
    loss, miner = _base_loss(cfg, embedding_dim, num_classes)
    if cfg.xbm_memory > 0:
        if cfg.name == "arcface":
            raise ValueError("a cross-batch memory needs a pair-based loss, not arcface")
        loss = losses.CrossBatchMemory(loss, embedding_dim, memory_size=cfg.xbm_memory, miner=miner)
        miner = None
    return Objective(loss, miner)


def _base_loss(cfg: ObjectiveConfig, embedding_dim: int, num_classes: int):
    if cfg.name == "triplet":
        if cfg.mining not in TRIPLET_MINING:
            raise ValueError(f"unknown triplet mining {cfg.mining!r}; choose one of {TRIPLET_MINING}")
        miner = (miners.BatchHardMiner() if cfg.mining == "batch-hard"
                 else miners.TripletMarginMiner(margin=cfg.margin, type_of_triplets=cfg.mining))
        return losses.TripletMarginLoss(margin=cfg.margin), miner
    if cfg.name == "contrastive":
        return (losses.ContrastiveLoss(pos_margin=0.0, neg_margin=cfg.margin),
                miners.PairMarginMiner(pos_margin=0.0, neg_margin=cfg.margin))
    if cfg.name == "ntxent":
        return losses.NTXentLoss(temperature=cfg.temperature), None
    if cfg.name == "supcon":
        return losses.SupConLoss(temperature=cfg.temperature), None
    return losses.ArcFaceLoss(num_classes, embedding_dim, margin=cfg.arcface_margin_deg,
                              scale=cfg.arcface_scale), None
