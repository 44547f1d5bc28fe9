"""Is the loader the bottleneck? Training images/s of the real loop (sampling, batch gathering,
augmentation, objective, optimizer) against the bare forward + backward of the same model on a
fixed batch, side by side. A ratio near 1 means the model, not the data, bounds the speed.
Then what a memory bank of negatives costs: the same bare step with the plain semi-hard triplet
objective and with `objective.memory_bank=M` (negatives mined from a queue of M embeddings).

    python bench/bench_training.py DATASET [DATASET...]   (folders written by `faceverify prepare`)
"""
from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace

import torch

from common import ROOT, table
from faceverify.train import Trainer, load_config
from faceverify.train.losses import build_objective


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("datasets", nargs="+")
    parser.add_argument("--arch", default="resnet18-half-fast")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory", type=int, default=8192, help="memory-bank size to compare")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(ROOT / "training" / "configs" / "cpu.yaml", [
            f"out_dir={out}", f"data.datasets=[{','.join(args.datasets)}]", f"model.arch={args.arch}",
            "eval.pairs=null", f"optim.steps={args.steps}", "optim.time_budget_min=0",
            "checkpoint_every=100000", "log_every=100000"])
        trainer = Trainer(cfg, progress=False)
        batch = cfg.data.p * cfg.data.k
        start = time.perf_counter()
        trainer.fit()
        loop = args.steps * batch / (time.perf_counter() - start)

        model, objective = trainer.model, trainer.step_module.objective
        images = torch.randint(0, 255, (batch, 3, 112, 112), dtype=torch.uint8).float()
        labels = torch.arange(cfg.data.p).repeat_interleave(cfg.data.k)
        bare = bare_images_per_s(model, objective, images, labels, args.steps)
        bank = build_objective(replace(cfg.objective, memory_bank=args.memory), cfg.model.embedding_dim,
                               len(trainer.data.identities))
        with torch.no_grad():  # fill the queue first: mining cost is measured at full size
            for start in range(0, args.memory, batch):
                bank(torch.randn(batch, cfg.model.embedding_dim), labels + 10_000 + start)
        with_bank = bare_images_per_s(model, bank, images, labels, args.steps)
    table(f"training throughput, {args.arch}, batch {batch} ({cfg.data.p}x{cfg.data.k}), {args.threads} threads",
          ["what", "images/s"], [["full training loop", loop], ["bare forward+backward", bare],
                                 ["ratio loop / bare", loop / bare],
                                 [f"bare, memory bank of {args.memory} negatives", with_bank],
                                 ["ratio memory bank / plain objective", with_bank / bare]])


def bare_images_per_s(model, objective, images, labels, steps: int) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        loss, _ = objective(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * len(images) / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
