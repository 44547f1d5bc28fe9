"""Where a run is and what learning rate that gives: a scheduler with state.

A run ends after `optim.steps` steps or, with a time budget, after that many minutes of training,
whichever comes first; the learning rate warms up linearly over `warmup_steps`, then follows a
cosine to zero at the run's end (by steps or by time). The position (step, epoch, batch within the
epoch, training seconds) is the state that `--resume` restores, so a resumed run continues the same
curve and the same batch order.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .config import OptimConfig


@dataclass
class RunPosition:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    elapsed: float = 0.0  # training seconds, carried across resumes (time budgets)


class WarmupCosineSchedule:
    def __init__(self, cfg: OptimConfig):
        self.cfg = cfg
        self.position = RunPosition()

    # ---------------------------------------------------------------- where
    @property
    def step(self) -> int:
        return self.position.step

    def progress(self) -> float:
        """Fraction of the run done: by steps, or by time when a time budget is set."""
        done = self.position.step / self.cfg.steps
        if self.cfg.time_budget_min:
            done = max(done, self.position.elapsed / (60.0 * self.cfg.time_budget_min))
        return min(1.0, done)

    def finished(self) -> bool:
        return self.progress() >= 1.0

    def advance(self, elapsed: float) -> None:
        """One optimiser step done; `elapsed` = training seconds so far."""
        self.position.step += 1
        self.position.batch_in_epoch += 1
        self.position.elapsed = elapsed

    def next_epoch(self) -> None:
        self.position.epoch += 1
        self.position.batch_in_epoch = 0

    # ------------------------------------------------------------------ rate
    def learning_rate(self) -> float:
        """Linear warm-up over `warmup_steps`, then cosine decay to zero at the end of the run."""
        cfg, step = self.cfg, self.position.step
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        warm = cfg.warmup_steps / cfg.steps if not cfg.time_budget_min else 0.0
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (self.progress() - warm) / (1 - warm))))

    def apply(self, optimizer) -> float:
        """Set this step's learning rate on every parameter group; returns it."""
        lr = self.learning_rate()
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return asdict(self.position)

    def load_state_dict(self, state: dict) -> None:
        self.position = RunPosition(int(state["step"]), int(state["epoch"]),
                                    int(state["batch_in_epoch"]), float(state["elapsed"]))
