"""Self-supervised pretraining on real aligned crops: SimCLR, MoCo, BYOL and SwAV lower their
losses; the momentum encoders (MoCo's keys, BYOL's target) get no gradients and follow the trained
network by EMA (BYOL's on its cosine schedule); MoCo's queue rotates and resumes; SwAV's Sinkhorn
codes spread over the prototypes; a pretrained embedder initialises the supervised recipe
(projection head, predictor and prototypes left behind)."""
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from faceverify.models import Embedder, load_checkpoint
from faceverify.train import Trainer, load_config
from faceverify.train.face_array import load_face_array
from faceverify.train.pretraining import BYOL, MoCo, PretrainConfig, SwAV, sinkhorn

from .conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def unlabelled(prepared, tmp_path_factory):
    """A flat folder of aligned crops, no manifest and no identity folders: labels do not exist."""
    folder = tmp_path_factory.mktemp("unlabelled")
    for i, crop in enumerate(sorted(prepared.rglob("*.jpg"))[:400]):
        shutil.copy(crop, folder / f"{i:04d}.jpg")
    return folder


def pretrain_config(out_dir, datasets, mode, *overrides):
    return load_config(ROOT / "training" / "configs" / f"{mode}.yaml", [
        f"out_dir={out_dir}", f"data.datasets=[{datasets}]", "model.embedding_dim=64",
        "ssl.batch_size=32", "ssl.queue_size=128", "optim.warmup_steps=3", "log_every=1",
        "eval.pairs=null", *overrides])


@pytest.mark.parametrize("mode", ["simclr", "moco", "byol", "swav"])
def test_pretraining_lowers_its_loss(tmp_path, unlabelled, mode):
    """Trained on one fixed batch of real unlabelled faces (fresh augmentations every step), each
    mode learns to match the two views of an image: its loss falls (BYOL has no negatives, so
    telling images apart is not what 40 steps of it learn first)."""
    # a key encoder that follows faster than the recipe's 0.99, to see learning within 40 steps;
    # SwAV: more prototypes than projection dimensions (as the recipe's 512 > 128, so that no
    # projection can escape every prototype), few enough for the 32 + 128 queued projections
    swav = ["ssl.prototypes=32", "ssl.projection_dim=16"] if mode == "swav" else []
    trainer = Trainer(pretrain_config(tmp_path, unlabelled, mode, "optim.steps=40", "ssl.momentum=0.9",
                                      *swav), progress=False)
    assert len(trainer.data.labels) == 400  # every image counts, whatever its "identity"
    batch = next(trainer.batches.epoch(0))
    trainer.batches.epoch = lambda epoch, skip=0: iter([batch] * (40 - skip))
    trainer.fit()
    with open(tmp_path / "history.jsonl") as fh:
        records = [r for r in map(json.loads, fh) if "loss" in r]
    # the queues hold 4 batches: compare once they are full (MoCo's negatives stop growing)
    losses = [r["loss"] for r in records][4 if mode in ("moco", "swav") else 0:]
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    # SwAV's cross-entropy against balanced codes falls slowest (7 % here)
    assert last < (0.95 if mode == "swav" else 0.9) * first, (first, last)
    if mode in ("simclr", "moco"):  # contrastive: learns to tell the batch's images apart
        assert records[-1]["view_match"] > records[0]["view_match"]


@pytest.fixture(scope="module")
def crops(prepared):
    """16 real aligned crops, values 0..255, NCHW."""
    faces = load_face_array([prepared], progress=False).crops[:16]
    return torch.from_numpy(np.ascontiguousarray(faces)).permute(0, 3, 1, 2)


def real_views(batch, seed=0):
    """Two differently augmented views of a batch of crops."""
    from faceverify.train.augment import AugmentConfig, augment

    generator = torch.Generator().manual_seed(seed)
    strong = AugmentConfig(crop_area=0.3, grayscale=0.2, blur=0.5)
    return [augment(batch, strong, generator), augment(batch, strong, generator)]


NO_AUTOCAST = torch.autocast("cpu", enabled=False)


def pretraining(kind, queue_size=48, momentum=0.9, prototypes=16, **kwargs):
    torch.manual_seed(0)
    cfg = PretrainConfig(projection_hidden=64, projection_dim=32, queue_size=queue_size,
                         momentum=momentum, prototypes=prototypes)
    return kind(Embedder("resnet18-half-fast", 64), cfg, **kwargs)


def moco(queue_size=48, momentum=0.9):
    return pretraining(MoCo, queue_size, momentum)


@pytest.mark.parametrize("kind", [MoCo, BYOL])
def test_momentum_encoder_gets_no_gradients_and_follows_the_trained_one(crops, kind):
    method = pretraining(kind, momentum=0.9)
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    targets_before = [p.detach().clone() for p in method.target_encoder.parameters()]
    loss, _ = method(real_views(crops), torch.arange(16), NO_AUTOCAST)
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in method.target_encoder.parameters())
    assert all(p.grad is not None for p in method.projector.parameters())
    optimizer.step()
    method.after_step()
    online = [*method.model.parameters(), *method.projector.parameters()]
    for before, target, trained in zip(targets_before, method.target_encoder.parameters(), online,
                                       strict=True):
        torch.testing.assert_close(target, 0.9 * before + 0.1 * trained)
    assert any(not torch.equal(t, o) for t, o in zip(method.target_encoder.parameters(), online))


def test_byol_momentum_rises_to_one_on_a_cosine_and_resumes(crops):
    method = pretraining(BYOL, momentum=0.9, total_steps=4)
    seen = []
    for _ in range(4):
        seen.append(method.momentum())
        method.after_step()
    expected = [1 - 0.1 * (math.cos(math.pi * k / 4) + 1) / 2 for k in range(4)]
    assert seen == pytest.approx(expected) and method.momentum() == 1.0
    restored = pretraining(BYOL, momentum=0.9, total_steps=4)
    restored.load_state_dict(method.state_dict())  # the step count travels with the state
    assert restored.momentum() == 1.0
    assert not any(name.startswith(("predictor", "target_encoder")) for name in method.model.state_dict())


def brute_force_sinkhorn(scores, epsilon, iterations):
    """Sinkhorn-Knopp written out for a B × K matrix: alternately scale each prototype's column
    to mass 1/K and each sample's row to mass 1/B; codes = rows scaled to sum 1."""
    q = np.exp(scores.astype(np.float64) / epsilon)
    q /= q.sum()
    samples, prototypes = q.shape
    for _ in range(iterations):
        for k in range(prototypes):
            q[:, k] /= q[:, k].sum() * prototypes
        for b in range(samples):
            q[b, :] /= q[b, :].sum() * samples
    return q * samples


def test_sinkhorn_matches_brute_force_and_balances_prototypes():
    generator = torch.Generator().manual_seed(0)
    # peaked scores: most samples prefer the first prototypes, as an untrained network's do
    scores = torch.randn(64, 8, generator=generator) * 0.1 + torch.linspace(0.3, 0, 8)
    codes = sinkhorn(scores, epsilon=0.05, iterations=3)
    np.testing.assert_allclose(codes.numpy(), brute_force_sinkhorn(scores.numpy(), 0.05, 3),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(codes.sum(1).numpy(), 1.0, rtol=1e-5)  # each sample: a distribution
    greedy_mass = torch.softmax(scores / 0.05, dim=1).sum(0) / 64
    balanced_mass = codes.sum(0) / 64
    # without equipartition two prototypes take two thirds of the samples, the last almost none;
    # with it every prototype gets about 1/8
    assert greedy_mass.max() > 0.3 and greedy_mass.min() < 0.01
    assert (balanced_mass - 1 / 8).abs().max() < 0.03
    converged = sinkhorn(scores, epsilon=0.05, iterations=200).sum(0) / 64
    np.testing.assert_allclose(converged.numpy(), 1 / 8, rtol=1e-3)


def test_swav_spreads_real_faces_over_its_prototypes(crops):
    """On real crops (fresh augmentations each step, queue filling), the codes that train SwAV
    spread the faces evenly over the prototypes, and the queue survives a state_dict round trip."""
    method = pretraining(SwAV, queue_size=48, prototypes=8)
    for step in range(4):
        loss, stats = method(real_views(crops, seed=step), torch.arange(16), NO_AUTOCAST)
    assert torch.isfinite(loss) and int(method.queued) == 64
    with torch.no_grad():  # the codes are solved over the batch and the queue together
        pool = torch.cat([F.normalize(method.project(crops, NO_AUTOCAST), dim=1), method.queue[0]])
        scores = pool @ method.prototypes.weight.T
        balanced = sinkhorn(scores, 0.05, 3).sum(0) / len(pool)
        greedy = torch.softmax(scores / 0.05, dim=1).sum(0) / len(pool)
    spread = (balanced - 1 / 8).abs().max()
    assert spread < 0.05 and spread < (greedy - 1 / 8).abs().max(), (balanced, greedy)
    restored = pretraining(SwAV, queue_size=48, prototypes=8)
    restored.load_state_dict(method.state_dict())
    assert torch.equal(restored.queue, method.queue) and int(restored.queued) == int(method.queued)


def test_queue_rotates_and_survives_a_state_dict_round_trip(crops):
    method = moco(queue_size=48)
    memory = method.queue
    for step in range(3):
        method(real_views(crops, seed=step), torch.arange(16) + 16 * step, NO_AUTOCAST)
        assert memory.queue_idx == (16 * (step + 1)) % 48
    assert memory.has_been_filled
    oldest = memory.embedding_memory.clone()
    method(real_views(crops, seed=3), torch.arange(16) + 1000, NO_AUTOCAST)
    assert memory.queue_idx == 16
    assert not torch.equal(memory.embedding_memory[:16], oldest[:16])  # the oldest keys went out
    assert torch.equal(memory.embedding_memory[16:], oldest[16:])  # the rest stayed
    assert memory.label_memory[:16].tolist() == list(range(1000, 1016))

    restored = moco(queue_size=48)
    restored.load_state_dict(method.state_dict())
    assert restored.queue.queue_idx == 16 and restored.queue.has_been_filled
    assert torch.equal(restored.queue.embedding_memory, memory.embedding_memory)


@pytest.mark.parametrize("mode", ["simclr", "swav"])
def test_init_from_starts_the_triplet_recipe_from_pretrained_weights(tmp_path, prepared, unlabelled, mode):
    pretrained = tmp_path / mode
    Trainer(pretrain_config(pretrained, unlabelled, mode, "optim.steps=2"), progress=False).fit()
    model, metadata = load_checkpoint(pretrained / "final.pt")
    assert metadata.training["mode"] == mode
    assert set(model.state_dict()) == set(Embedder("resnet18-half-fast", 64).state_dict())

    args = [sys.executable, str(ROOT / "training" / "train.py"), "--config",
            str(ROOT / "training" / "configs" / "cpu.yaml"), "--no-progress",
            "--init-from", str(pretrained / "final.pt"), f"out_dir={tmp_path / 'triplet'}",
            f"data.datasets=[{prepared}]", "model.embedding_dim=64", "data.p=8", "data.k=4",
            "optim.time_budget_min=0", "optim.steps=2", "eval.pairs=null"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    tuned, tuned_meta = load_checkpoint(tmp_path / "triplet" / "final.pt")
    assert tuned_meta.training["init_from"] == {
        "file": "final.pt", "weights_sha256": metadata.weights_sha256, "mode": mode}

    wrong = load_config(ROOT / "training" / "configs" / "cpu.yaml", [
        f"data.datasets=[{prepared}]", "model.embedding_dim=128", f"init_from={pretrained / 'final.pt'}"])
    with pytest.raises(ValueError, match="64-d checkpoint cannot initialise"):
        Trainer(wrong, progress=False)
