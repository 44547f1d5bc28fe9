"""Training components tested by their contracts, without a training run (pytorch-metric-learning
style): the batch samplers' composition and exact resume, the objective factory, augmentation, and
the shipped recipes (configs) parse."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from faceverify.models.backbones import ARCHS
from faceverify.models.members import PRETRAINED_STUDENTS
from faceverify.train import load_config
from faceverify.train.augment import AugmentConfig, augment
from faceverify.train.losses import OBJECTIVES, ObjectiveConfig, build_objective
from faceverify.train.methods import MODES
from faceverify.train.sampling import PKBatches, RandomBatches
from faceverify.train.teachers import TEACHER_FACTORIES

from .conftest import ROOT

pytestmark = pytest.mark.data_free


def test_pk_batches_hold_p_identities_of_k_images_and_resume_exactly():
    labels = np.repeat(np.arange(40), np.random.default_rng(0).integers(4, 9, 40))
    sampler = PKBatches(labels, p=8, k=4, batches_per_epoch=10, seed=3)
    epoch = list(sampler.epoch(2))
    assert len(epoch) == 10
    for batch in epoch:
        identities, counts = np.unique(labels[batch], return_counts=True)
        assert len(identities) == 8 and (counts == 4).all()
    again = list(PKBatches(labels, 8, 4, 10, seed=3).epoch(2, skip=6))
    assert all(np.array_equal(a, b) for a, b in zip(again, epoch[6:])) and len(again) == 4
    assert not np.array_equal(next(sampler.epoch(3)), epoch[0])  # a new epoch, a new order
    other_rank = next(PKBatches(labels, 8, 4, 10, seed=3, rank=1).epoch(2))
    assert not np.array_equal(other_rank, epoch[0])


def test_random_batches_are_distinct_images_and_resume_exactly():
    sampler = RandomBatches(100, 16, seed=1)
    epoch = list(sampler.epoch(0))
    assert len(epoch) == 6 and len(np.unique(np.concatenate(epoch))) == 96
    assert all(np.array_equal(a, b) for a, b in zip(sampler.epoch(0, skip=2), epoch[2:]))
    with pytest.raises(ValueError, match="cannot fill a batch"):
        RandomBatches(10, 16)


@pytest.mark.parametrize("name", OBJECTIVES)
def test_every_objective_scores_a_separated_batch_below_a_shuffled_one(name):
    """Each objective's contract: a differentiable loss that prefers embeddings grouped by label."""
    torch.manual_seed(0)
    labels = torch.arange(8).repeat_interleave(4)
    centres = F.normalize(torch.randn(8, 32), dim=1)
    grouped = F.normalize(centres[labels] + 0.05 * torch.randn(32, 32), dim=1).requires_grad_()
    shuffled = grouped.detach()[torch.randperm(32)]
    objective = build_objective(ObjectiveConfig(name=name), 32, num_classes=8)
    if name == "arcface":  # its class centres are weights: align them with the groups
        objective.loss.W.data = centres.T.clone()
    good, stats = objective(grouped, labels)
    bad, _ = objective(shuffled, labels)
    assert float(good.detach()) < float(bad), (name, float(good.detach()), float(bad))
    good.backward()
    assert grouped.grad is not None and "hardest_neg_dist" in stats


def test_no_objective_is_zero_but_keeps_the_graph():
    """Distillation-only runs: the identity term adds nothing and still back-propagates."""
    embeddings = F.normalize(torch.randn(16, 32), dim=1).requires_grad_()
    loss, stats = build_objective(ObjectiveConfig(name="none"), 32, 4)(embeddings, torch.arange(4).repeat(4))
    loss.backward()
    assert float(loss) == 0.0 and torch.count_nonzero(embeddings.grad) == 0 and "violating_frac" in stats


def test_build_objective_refuses_unknown_names():
    with pytest.raises(ValueError):
        build_objective(ObjectiveConfig(name="nope"), 32, 8)


def test_augment_keeps_shape_range_and_is_reproducible():
    batch = torch.randint(0, 256, (6, 3, 112, 112), dtype=torch.uint8)
    cfg = AugmentConfig(crop_area=0.3, grayscale=0.5, blur=0.5)
    first = augment(batch, cfg, torch.Generator().manual_seed(7))
    again = augment(batch, cfg, torch.Generator().manual_seed(7))
    assert first.shape == (6, 3, 112, 112) and first.dtype == torch.float32
    assert 0 <= float(first.min()) and float(first.max()) <= 255 and torch.equal(first, again)
    assert not torch.equal(first, augment(batch, cfg, torch.Generator().manual_seed(8)))
    identity = AugmentConfig(flip=0, scale=0, shift=0, brightness=0, contrast=0, saturation=0,
                             grayscale=0, blur=0)
    assert torch.equal(augment(batch, identity, torch.Generator()), batch.float())
    mirrored = augment(batch, AugmentConfig(flip=1.0, scale=0, shift=0, brightness=0, contrast=0,
                                            saturation=0, grayscale=0, blur=0), torch.Generator())
    torch.testing.assert_close(mirrored, batch.float().flip(3), atol=0.01, rtol=0)  # bilinear resampling


@pytest.mark.parametrize("recipe", sorted((ROOT / "training" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_parses(recipe):
    cfg = load_config(recipe)  # unknown keys (a typo in a recipe) raise
    assert cfg.model.arch in {*ARCHS, *PRETRAINED_STUDENTS} and cfg.objective.name in OBJECTIVES
    assert cfg.mode in MODES and set(cfg.distill.teachers) <= set(TEACHER_FACTORIES)


@pytest.mark.data_free
def test_overrides_read_numbers_as_numbers():
    """YAML 1.1 reads `2e-5` (no dot) as a string: a float option takes it as the number meant,
    and a word is refused with the option's name."""
    cfg = load_config(None, ["optim.lr=2e-5", "distill.weight=4"])
    assert cfg.optim.lr == 2e-5 and cfg.distill.weight == 4.0 and isinstance(cfg.distill.weight, float)
    with pytest.raises(ValueError, match="lr must be a number, not 'fast'"):
        load_config(None, ["optim.lr=fast"])
