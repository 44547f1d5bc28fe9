"""Training on real aligned faces (CPU, small model, few steps): every objective learns, triplet
training beats the untrained model on dev pairs, a killed run resumes, DDP runs under torchrun."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from faceverify.data import read_pairs
from faceverify.evaluation import AlignedPairs
from faceverify.train import Trainer, load_config

from .conftest import DEV_PAIRS, LFW, ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dev_subset(tmp_path_factory, onnx_detector):
    """200 dev pairs (100 same, 100 different, both folds), detected and aligned once."""
    pairs = read_pairs(DEV_PAIRS, LFW)
    subset = [p for fold in (0, 1) for same in (True, False)
              for p in [q for q in pairs if q.fold == fold and q.same == same][:50]]
    path = tmp_path_factory.mktemp("dev") / "dev.npz"
    AlignedPairs.build(subset, onnx_detector, progress=False).save(path)
    return path


def config(tmp_path, prepared, *overrides):
    return load_config(ROOT / "training" / "configs" / "cpu.yaml", [
        f"out_dir={tmp_path}", f"data.datasets=[{prepared}]", "model.arch=resnet18-half-fast",
        "model.embedding_dim=64", "data.p=8", "data.k=4", "optim.time_budget_min=0",
        "optim.warmup_steps=3", "log_every=1", "eval.pairs=null", "eval.every=1000", *overrides])


@pytest.mark.parametrize("objective", [
    ["objective.name=triplet", "objective.mining=batch-hard"],
    ["objective.name=triplet", "objective.mining=semihard"],
    ["objective.name=triplet", "objective.mining=hard"],
    ["objective.name=ntxent", "objective.temperature=0.1"],
    ["objective.name=supcon", "objective.temperature=0.1"],
    ["objective.name=contrastive", "objective.xbm_memory=96"],
    ["objective.name=arcface", "optim.optimizer=sgd", "optim.lr=0.05"],
], ids=lambda o: "-".join(x.split("=")[1] for x in o[:2]))
def test_objective_lowers_its_loss(tmp_path, prepared, objective):
    """Each objective, trained on one fixed P×K batch of real faces, must fit it: its loss falls."""
    trainer = Trainer(config(tmp_path, prepared, "optim.steps=32", *objective), progress=False)
    batch = next(trainer.batches.epoch(0))
    trainer.batches.epoch = lambda epoch, skip=0: iter([batch] * (32 - skip))
    trainer.fit()
    with open(tmp_path / "history.jsonl") as fh:
        records = [r for r in map(json.loads, fh) if "loss" in r]
    assert len(records) == 32
    # mined losses average only the tuples still violating the margin, which shrink in number as
    # the batch is fitted: compare the batch's total (mean × tuples mined)
    history = [r["loss"] * r.get("mined", 1.0) for r in records]
    # a cross-batch memory adds negatives until it is full (4 batches): compare from then on
    start = 4 if any("xbm" in o for o in objective) else 0
    first, last = sum(history[start:start + 6]) / 6, sum(history[-6:]) / 6
    assert last < first, (first, last)


def test_triplet_training_beats_untrained_model(tmp_path, prepared, dev_subset):
    trainer = Trainer(config(tmp_path, prepared, "optim.steps=150", "optim.lr=0.002",
                             f"eval.cache={dev_subset}", "eval.every=150"), progress=False)
    before = trainer.evaluate()
    trainer.fit()
    after = trainer.evaluate()
    assert after.auc > before.auc + 0.03, (before.summary(), after.summary())
    assert (tmp_path / "best.pt").is_file() and (tmp_path / "tb").is_dir()


def run_training(out_dir, prepared, *extra, launcher=(sys.executable,)):
    return [*launcher, str(ROOT / "training" / "train.py"), "--config",
            str(ROOT / "training" / "configs" / "cpu.yaml"), "--no-progress", f"out_dir={out_dir}",
            f"data.datasets=[{prepared}]", "model.arch=resnet18-half-fast", "model.embedding_dim=64",
            "data.p=8", "data.k=4", "optim.time_budget_min=0", "eval.pairs=null", "log_every=1", *extra]


def kill_and_resume(out_dir, args, total: int, every: int = 10) -> None:
    """SIGKILL a training run once it has checkpointed, resume it, and check it finishes exactly
    the steps it had left."""
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out_dir / "state.pt"
    deadline = time.time() + 240
    while not state.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    import torch

    saved = torch.load(state, weights_only=True)["step"]
    assert every <= saved < total and saved % every == 0
    done = subprocess.run([*args[:2], "--resume", *args[2:]], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["steps"] == total
    with open(out_dir / "history.jsonl") as fh:
        steps = [r["step"] for r in map(json.loads, fh) if "loss" in r]
    resumed = steps[steps.index(saved + 1, 1):] if steps.count(saved + 1) > 1 else steps[steps.index(saved) + 1:]
    assert resumed[0] == saved + 1 and resumed[-1] == total


def test_killed_run_resumes_where_it_stopped(tmp_path, prepared):
    kill_and_resume(tmp_path, run_training(tmp_path, prepared, "optim.steps=60", "checkpoint_every=10"), total=60)


def test_sigterm_checkpoints_and_stops(tmp_path, prepared):
    args = run_training(tmp_path, prepared, "optim.steps=100000", "checkpoint_every=100000")
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    history = tmp_path / "history.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (history.is_file() and history.stat().st_size > 600):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    import torch

    stopped = json.loads(out.strip().splitlines()[-1])["stopped_at_step"]
    assert torch.load(tmp_path / "state.pt", weights_only=True)["step"] == stopped > 0


@pytest.mark.parametrize("mode", ["supervised", "moco"])
def test_ddp_two_processes_with_gloo(tmp_path, prepared, mode):
    """Two ranks train together; MoCo's ranks share one queue of both ranks' keys."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_port", "29517")
    steps = 8 if mode == "supervised" else 4
    done = subprocess.run(run_training(tmp_path, prepared, f"optim.steps={steps}", "checkpoint_every=4",
                                       f"mode={mode}", "ssl.batch_size=16", "ssl.queue_size=256",
                                       launcher=launcher), cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == steps
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["data"]["p"] == 8 and config["mode"] == mode
    if mode == "moco":
        import torch

        state = torch.load(tmp_path / "state.pt", weights_only=True)["method"]
        assert state["_extra_state"]["queue_idx"] == 4 * 2 * 16  # 4 steps × 2 ranks × 16 keys


def test_frozen_stages_stay_fixed_while_later_ones_learn(tmp_path, prepared):
    import torch

    trainer = Trainer(config(tmp_path, prepared, "optim.steps=3", "model.frozen_stages=2"), progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    after = trainer.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    frozen = ("trunk.stem.", "trunk.stages.0.", "trunk.stages.1.")
    assert not any(k.startswith(frozen) for k in changed)  # weights and batch-norm statistics
    assert any(k.startswith("trunk.stages.3.") for k in changed) and any(k.startswith("head.") for k in changed)
