"""Knowledge distillation from teacher embeddings, added to any supervised objective.

Two terms per teacher, each with its weight in the config:
- **cosine**: the student's unit embedding, through an affine projector used only in training (one
  per teacher, so teachers of any dimension fit), should point where the teacher's embedding points:
  `1 − cos(P·s + b, t)`.
- **relational**: the batch's pairwise student similarities should order and space pairs as the
  teacher's do: `1 − Pearson correlation` of the two sets of off-diagonal cosines. Correlation, not
  squared error, because a teacher's cosines spread on another scale than the student's and only
  the relative geometry should transfer.

Faces a teacher has no embedding for carry NaN targets and are left out of that teacher's terms.
Targets are centred first (`centred`): dlib's embeddings all lie in a narrow cone (two random faces
score 0.83), and uncentred, the cosine term would mostly teach that cone's axis. A student whose
own embeddings lie in such a cone meets centred targets through an affine projector fitted on its
centred embeddings: a ridge scaled by the uncentred Gram matrix, which the cone's axis dominates,
damped every direction that tells faces apart (dlib's ResNet then reproduced its own half of the
ensemble's centred targets at cosine 0.54 instead of 0.98), and the cosine term pushed the trunk
to make up for the projector, at the cost of accuracy.

`anchor`: the "teacher" is the student's own starting point (fine-tuning that must not forget):
the targets live in the student's space, so they are neither centred nor projected, and the
cosine term holds each face's embedding where the base model put it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class DistillConfig:
    teachers: list = field(default_factory=list)  # e.g. [dlib]: DATASET/teachers/<name>/ targets
    weight: float = 1.0  # cosine term, per teacher
    relation_weight: float = 0.0  # relational term, per teacher
    anchor: bool = False  # targets are the base model's own embeddings: no centring, no projector


class Distillation(nn.Module):
    """`forward(student, targets) -> (loss, stats)`; `targets` maps teacher name → (B, dim) with
    NaN rows for faces that teacher did not embed."""

    def __init__(self, student_dim: int, teacher_dims: dict[str, int], cfg: DistillConfig):
        super().__init__()
        self.weight, self.relation_weight = cfg.weight, cfg.relation_weight
        if cfg.anchor and any(dim != student_dim for dim in teacher_dims.values()):
            raise ValueError(f"an anchor must live in the student's {student_dim}-d space, not {teacher_dims}")
        self.projectors = nn.ModuleDict({name: nn.Identity() if cfg.anchor else nn.Linear(student_dim, dim)
                                         for name, dim in teacher_dims.items()})

    def forward(self, student: torch.Tensor, targets: dict[str, torch.Tensor]):
        student = F.normalize(student.float(), dim=1)  # as `fit_projectors` saw it
        loss, stats = student.new_zeros(()), {}
        for name, projector in self.projectors.items():
            target = targets[name].float()
            present = ~torch.isnan(target).any(dim=1)
            if present.sum() < 2:
                continue
            s, t = student[present], target[present]
            cosine = cosine_term(projector(s), t)
            loss = loss + self.weight * cosine
            stats[f"distill_{name}_cosine_loss"] = cosine.detach()
            if self.relation_weight:
                relation = relation_term(s, t)
                loss = loss + self.relation_weight * relation
                stats[f"distill_{name}_relation_loss"] = relation.detach()
        return loss, stats

    @torch.no_grad()
    def fit_projectors(self, student: torch.Tensor, targets: dict[str, torch.Tensor],
                       ridge: float = 0.1) -> dict[str, float]:
        """Start each projector at the ridge least-squares affine map from the unit `student`
        embeddings to the teacher's, so that from the first step the cosine term pulls the student
        toward the teacher, not toward a random projection of it. `ridge` is relative to the mean
        eigenvalue of the centred students' covariance: fitted on 2,048 faces, dlib's ResNet reaches
        a cosine of 0.64 to the ensemble on 2,048 others with 0.1 or 0.01, 0.52 with 5. Returns each
        teacher's mean cosine after the fit."""
        student = F.normalize(student.float(), dim=1)
        fitted = {}
        for name, projector in self.projectors.items():
            if isinstance(projector, nn.Identity):  # an anchor: nothing to fit
                continue
            target = targets[name].float()
            present = ~torch.isnan(target).any(dim=1)
            s, t = student[present], F.normalize(target[present], dim=1)
            if len(s) < 2:
                continue
            s_mean, t_mean = s.mean(dim=0), t.mean(dim=0)
            x = s - s_mean
            gram = x.T @ x
            gram += ridge * gram.trace() / len(gram) * torch.eye(len(gram), device=s.device)
            weight = torch.linalg.solve(gram, x.T @ (t - t_mean)).T  # (teacher dim, student dim)
            projector.weight.copy_(weight)
            projector.bias.copy_(t_mean - weight @ s_mean)
            fitted[name] = float(F.cosine_similarity(projector(s), t, dim=1).mean())
        return fitted


def centred(targets: np.ndarray) -> np.ndarray:
    """A teacher's (N, dim) embeddings minus their mean over the faces it embedded (NaN rows stay)."""
    targets = targets.astype(np.float32)
    return targets - np.nanmean(targets, axis=0)


def cosine_term(projected: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean `1 − cos` between projected student and teacher embeddings."""
    return (1.0 - F.cosine_similarity(projected, target, dim=1)).mean()


def relation_term(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`1 − Pearson correlation` between the off-diagonal pairwise cosines of student and teacher."""
    off_diagonal = ~torch.eye(len(student), dtype=torch.bool, device=student.device)
    s = _cosine_matrix(student)[off_diagonal]
    t = _cosine_matrix(target)[off_diagonal]
    s, t = s - s.mean(), t - t.mean()
    return 1.0 - (s * t).sum() / (s.norm() * t.norm()).clamp_min(1e-8)


def _cosine_matrix(x: torch.Tensor) -> torch.Tensor:
    x = F.normalize(x, dim=1)
    return x @ x.T
