"""Self-supervised pretraining on real aligned crops: SimCLR and MoCo lower their losses, MoCo's
key encoder gets no gradients and follows the query encoder by EMA, its queue rotates and resumes,
and a pretrained embedder initialises the supervised recipe (projection head left behind)."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from faceverify.models import Embedder, load_checkpoint
from faceverify.train import Trainer, load_config
from faceverify.train.data import load_face_array
from faceverify.train.methods import MoCo, PretrainConfig

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


@pytest.mark.parametrize("mode", ["simclr", "moco"])
def test_pretraining_lowers_its_loss(tmp_path, unlabelled, mode):
    """Trained on one fixed batch of real unlabelled faces (fresh augmentations every step), each
    mode learns to match the two views of an image: its loss falls."""
    # a key encoder that follows faster than the recipe's 0.99, to see learning within 40 steps
    trainer = Trainer(pretrain_config(tmp_path, unlabelled, mode, "optim.steps=40", "ssl.momentum=0.9"),
                      progress=False)
    assert len(trainer.data.labels) == 400  # every image counts, whatever its "identity"
    batch = next(trainer.batches.epoch(0))
    trainer.batches.epoch = lambda epoch, skip=0: iter([batch] * (40 - skip))
    trainer.fit()
    with open(tmp_path / "history.jsonl") as fh:
        records = [r for r in map(json.loads, fh) if "loss" in r]
    # the queue holds 4 batches of keys: compare once it is full (its negatives stop growing)
    losses = [r["loss"] for r in records][4 if mode == "moco" else 0:]
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.9 * first, (first, last)
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


def moco(queue_size=48, momentum=0.9):
    torch.manual_seed(0)
    cfg = PretrainConfig(projection_hidden=64, projection_dim=32, queue_size=queue_size,
                         momentum=momentum)
    return MoCo(Embedder("resnet18-half-fast", 64), cfg)


def test_momentum_encoder_gets_no_gradients_and_follows_the_query_encoder(crops):
    method = moco(momentum=0.9)
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    keys_before = [p.detach().clone() for p in method.key_encoder.parameters()]
    loss, _ = method(real_views(crops), torch.arange(16), torch.autocast("cpu", enabled=False))
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in method.key_encoder.parameters())
    assert all(p.grad is not None for p in method.projector.parameters())
    optimizer.step()
    method.after_step()
    queries = [*method.model.parameters(), *method.projector.parameters()]
    for before, key, query in zip(keys_before, method.key_encoder.parameters(), queries, strict=True):
        torch.testing.assert_close(key, 0.9 * before + 0.1 * query)
    assert any(not torch.equal(k, q) for k, q in zip(method.key_encoder.parameters(), queries))


def test_queue_rotates_and_survives_a_state_dict_round_trip(crops):
    method = moco(queue_size=48)
    autocast = torch.autocast("cpu", enabled=False)
    memory = method.queue
    for step in range(3):
        method(real_views(crops, seed=step), torch.arange(16) + 16 * step, autocast)
        assert memory.queue_idx == (16 * (step + 1)) % 48
    assert memory.has_been_filled
    oldest = memory.embedding_memory.clone()
    method(real_views(crops, seed=3), torch.arange(16) + 1000, autocast)
    assert memory.queue_idx == 16
    assert not torch.equal(memory.embedding_memory[:16], oldest[:16])  # the oldest keys went out
    assert torch.equal(memory.embedding_memory[16:], oldest[16:])  # the rest stayed
    assert memory.label_memory[:16].tolist() == list(range(1000, 1016))

    restored = moco(queue_size=48)
    restored.load_state_dict(method.state_dict())
    assert restored.queue.queue_idx == 16 and restored.queue.has_been_filled
    assert torch.equal(restored.queue.embedding_memory, memory.embedding_memory)


def test_init_from_starts_the_triplet_recipe_from_pretrained_weights(tmp_path, prepared, unlabelled):
    pretrained = tmp_path / "simclr"
    Trainer(pretrain_config(pretrained, unlabelled, "simclr", "optim.steps=2"), progress=False).fit()
    model, metadata = load_checkpoint(pretrained / "final.pt")
    assert metadata["training"]["mode"] == "simclr"
    assert set(model.state_dict()) == set(Embedder("resnet18-half-fast", 64).state_dict())

    args = [sys.executable, str(ROOT / "training" / "train.py"), "--config",
            str(ROOT / "training" / "configs" / "cpu.yaml"), "--no-progress",
            "--init-from", str(pretrained / "final.pt"), f"out_dir={tmp_path / 'triplet'}",
            f"data.datasets=[{prepared}]", "model.embedding_dim=64", "data.p=8", "data.k=4",
            "optim.time_budget_min=0", "optim.steps=2", "eval.pairs=null"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    tuned, tuned_meta = load_checkpoint(tmp_path / "triplet" / "final.pt")
    assert tuned_meta["training"]["init_from"] == {
        "file": "final.pt", "weights_sha256": metadata["weights_sha256"], "mode": "simclr"}

    wrong = load_config(ROOT / "training" / "configs" / "cpu.yaml", [
        f"data.datasets=[{prepared}]", "model.embedding_dim=128", f"init_from={pretrained / 'final.pt'}"])
    with pytest.raises(ValueError, match="64-d checkpoint cannot initialise"):
        Trainer(wrong, progress=False)
