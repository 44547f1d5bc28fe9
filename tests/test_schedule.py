"""The learning-rate schedule and run position, tested as a component (no training run)."""
import math

import pytest
import torch

from faceverify.train.config import OptimConfig
from faceverify.train.schedule import WarmupCosineSchedule

pytestmark = pytest.mark.data_free


def run(schedule, steps, seconds_per_step=0.0):
    rates = []
    for _ in range(steps):
        rates.append(schedule.learning_rate())
        schedule.advance(schedule.position.elapsed + seconds_per_step)
    return rates


def test_linear_warmup_then_cosine_to_zero_at_the_last_step():
    schedule = WarmupCosineSchedule(OptimConfig(lr=0.1, steps=10, warmup_steps=4))
    rates = run(schedule, 10)
    assert rates[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * (s / 10 - 0.4) / 0.6)) for s in range(4, 10)]
    assert rates[4:] == pytest.approx(expected)
    assert schedule.finished() and schedule.learning_rate() == pytest.approx(0.0)


def test_a_time_budget_ends_the_run_and_the_curve_early():
    schedule = WarmupCosineSchedule(OptimConfig(lr=1.0, steps=1000, warmup_steps=0, time_budget_min=1))
    run(schedule, 30, seconds_per_step=1.0)  # half the budget, 3 % of the steps
    assert schedule.progress() == pytest.approx(0.5)
    assert schedule.learning_rate() == pytest.approx(0.5)
    run(schedule, 30, seconds_per_step=1.0)
    assert schedule.finished() and schedule.step == 60


def test_position_survives_a_state_round_trip_and_sets_the_optimiser():
    cfg = OptimConfig(lr=0.1, steps=10, warmup_steps=2)
    schedule = WarmupCosineSchedule(cfg)
    run(schedule, 5, seconds_per_step=2.0)
    schedule.next_epoch()
    restored = WarmupCosineSchedule(cfg)
    restored.load_state_dict(schedule.state_dict())
    assert restored.position == schedule.position and restored.position.batch_in_epoch == 0
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert restored.apply(optimizer) == optimizer.param_groups[0]["lr"] == schedule.learning_rate()
