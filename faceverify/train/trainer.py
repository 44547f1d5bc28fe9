"""The training loop: batches → augmented views → a training method (supervised P×K metric
learning, or SimCLR / MoCo pretraining without labels), with the things long runs need: warm-up +
cosine schedule, autocast, gradient clipping, periodic dev-pair evaluation with the shared metric
code, best-checkpoint keeping, TensorBoard + tqdm, checkpoints every N steps and on SIGTERM, exact
resume, and DDP under torchrun (gloo on CPU, nccl on GPU; only rank 0 writes).
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ..data import read_pairs
from ..embed import TorchEmbedder
from ..evaluation import AlignedPairs
from ..metrics import calibrated_thresholds, verification_report
from ..models import Embedder, load_checkpoint, save_checkpoint
from ..models.checkpoint import atomic_save
from .augment import augment
from .config import TrainConfig
from .data import load_face_array
from .distill import Distillation
from .losses import build_objective
from .methods import build_method
from .sampling import PKBatches, RandomBatches
from .teachers import TEACHER_FACTORIES

STATE_FILE = "state.pt"  # everything needed to resume
BEST_FILE = "best.pt"  # best dev accuracy so far, inference checkpoint with metadata
FINAL_FILE = "final.pt"


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False, progress: bool = True):
        self.cfg, self.progress = cfg, progress
        self.rank, self.world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        self.device = _device(cfg.device, int(os.environ.get("LOCAL_RANK", 0)))
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.out = Path(cfg.out_dir)
        torch.manual_seed(cfg.seed)

        self.supervised = cfg.mode == "supervised"
        self.data = load_face_array(cfg.data.datasets, cfg.data.cache_dir,
                                    cfg.data.min_images if self.supervised else 1,
                                    progress=progress and self.is_main, teachers=cfg.distill.teachers)
        self.targets = {name: torch.from_numpy(array) for name, array in self.data.teachers.items()}
        images = len(self.data.labels)
        if self.supervised:
            per_rank = max(1, images // (cfg.data.p * cfg.data.k * self.world))
            self.batches = PKBatches(self.data.labels, cfg.data.p, cfg.data.k, per_rank, cfg.seed, self.rank)
            self.labels = torch.from_numpy(self.data.labels)
        else:  # every image is its own class: its two views are the positive pair
            per_rank = max(1, images // (cfg.ssl.batch_size * self.world))
            self.batches = RandomBatches(images, cfg.ssl.batch_size, per_rank, cfg.seed, self.rank)
            self.labels = torch.arange(images)
        self.crops = (torch.from_numpy(np.ascontiguousarray(self.data.crops)).to(self.device)
                      if cfg.data.on_device else self.data.crops)

        self.model = Embedder(cfg.model.arch, cfg.model.embedding_dim, cfg.model.dropout)
        self.initialised_from = _init_from(self.model, cfg.init_from) if cfg.init_from else None
        self.frozen = _freeze(self.model, cfg.model.frozen_stages)
        self.model = self.model.to(self.device)
        if cfg.optim.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        objective = (build_objective(cfg.objective, cfg.model.embedding_dim, len(self.data.identities))
                     if self.supervised else None)
        distillation = (Distillation(cfg.model.embedding_dim,
                                     {name: t.shape[1] for name, t in self.targets.items()}, cfg.distill)
                        if self.targets else None)
        self.step_module = build_method(cfg.mode, self.model, objective, cfg.ssl,
                                        cfg.optim.channels_last, distillation).to(self.device)
        if cfg.optim.compile:
            self.step_module.model = torch.compile(self.model)
        # MoCo's key encoder is frozen (it follows by EMA): the optimiser never sees it
        self.optimizer = _optimizer(cfg.optim, [p for p in self.step_module.parameters() if p.requires_grad])
        self.precision = _precision(cfg.optim.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == torch.float16)
        self.ddp = (nn.parallel.DistributedDataParallel(
            self.step_module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.world > 1 else self.step_module)

        self.step = self.epoch = self.batch_in_epoch = 0
        self.elapsed = 0.0  # training seconds, carried across resumes (time budgets)
        self.best = {"accuracy": -1.0}
        self._stop_requested = False
        if resume and (self.out / STATE_FILE).is_file():
            self._load_state()
        self.eval_pairs = self._eval_pairs() if self.is_main else None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict:
        cfg = self.cfg
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        writer = _summary_writer(self.out / "tb") if self.is_main else None
        previous = signal.signal(signal.SIGTERM, self._request_stop) if _main_thread() else None
        generator = torch.Generator()
        autocast = (torch.autocast(self.device.type, dtype=self.precision)
                    if self.precision != torch.float32 else nullcontext())
        bar = tqdm(total=cfg.optim.steps, initial=self.step, desc="train", unit="step",
                   disable=not (self.progress and self.is_main))
        started, seen, elapsed_before = time.time(), 0, self.elapsed
        self._train_mode()
        try:
            while not self._done() and not self._stop_requested:
                for indices in self.batches.epoch(self.epoch, skip=self.batch_in_epoch):
                    images = self._batch(indices)
                    labels = self.labels[indices].to(self.device)
                    generator.manual_seed(cfg.seed * 1_000_003 + self.step * 31 + self.rank)
                    views = [augment(images, cfg.augment, generator)
                             for _ in range(self.step_module.views)]
                    lr = self._set_learning_rate()
                    targets = {name: t[indices].to(self.device) for name, t in self.targets.items()}
                    loss, stats = self.ddp(views, labels, autocast, targets)
                    self.optimizer.zero_grad(set_to_none=True)
                    self.scaler.scale(loss).backward()
                    self.scaler.unscale_(self.optimizer)
                    grad_norm = nn.utils.clip_grad_norm_(self.step_module.parameters(), cfg.optim.grad_clip)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.step_module.after_step()
                    self.step += 1
                    self.batch_in_epoch += 1
                    seen += len(indices)
                    self.elapsed = elapsed_before + time.time() - started
                    if self.is_main:
                        self._log(writer, bar, loss.detach(), lr, grad_norm, stats,
                                  seen * self.world / (time.time() - started))
                    if self.step % cfg.checkpoint_every == 0:
                        self._save_state()
                    if self.eval_pairs is not None and self.step % cfg.eval.every == 0:
                        self._evaluate(writer)
                    if self._done() or self._stop_requested:
                        break
                else:
                    self.epoch += 1
                    self.batch_in_epoch = 0
            self._save_state()
            if self._stop_requested:
                return {"stopped_at_step": self.step}
            if self.eval_pairs is not None and self.step % cfg.eval.every != 0:
                self._evaluate(writer)
            summary = self._finish()
        finally:
            bar.close()
            if writer:
                writer.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return summary

    def _train_mode(self) -> None:
        """Training mode, except frozen stages: their batch-norm statistics stay as loaded."""
        self.model.train()
        for module in self.frozen:
            module.eval()

    def _batch(self, indices: np.ndarray) -> torch.Tensor:
        """(B, 3, 112, 112) uint8 crops on the training device."""
        if isinstance(self.crops, torch.Tensor):
            batch = self.crops[torch.from_numpy(indices).to(self.device)]
        else:
            batch = torch.from_numpy(np.ascontiguousarray(self.crops[indices])).to(self.device)
        return batch.permute(0, 3, 1, 2)

    def _request_stop(self, *_):
        self._stop_requested = True

    def _progress(self) -> float:
        """Fraction of the run done: by steps, or by time when a time budget is set."""
        optim = self.cfg.optim
        done = self.step / optim.steps
        if optim.time_budget_min:
            done = max(done, self.elapsed / (60.0 * optim.time_budget_min))
        return min(1.0, done)

    def _done(self) -> bool:
        done = self._progress() >= 1.0
        if self.world > 1:  # ranks must agree, or one would wait forever in all-reduce
            flag = torch.tensor([float(done)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            done = bool(flag.item())
        return done

    def _set_learning_rate(self) -> float:
        """Linear warm-up over `warmup_steps`, then cosine decay to zero at the end of the run."""
        optim = self.cfg.optim
        if self.step < optim.warmup_steps:
            factor = (self.step + 1) / optim.warmup_steps
        else:
            warm = optim.warmup_steps / optim.steps if not optim.time_budget_min else 0.0
            factor = 0.5 * (1 + math.cos(math.pi * min(1.0, (self._progress() - warm) / (1 - warm))))
        lr = optim.lr * factor
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _log(self, writer, bar, loss, lr, grad_norm, stats, images_per_s):
        bar.update(1)
        if self.step % self.cfg.log_every and self.step != 1:
            return
        loss, grad_norm = float(loss), float(grad_norm)
        stats = {key: float(value) for key, value in stats.items()}
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_s:.0f}")
        record = {"step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                  "images_per_s": images_per_s, **stats}
        for key, value in record.items():
            if key != "step" and value == value:  # skip NaN
                writer.add_scalar(f"train/{key}", value, self.step)
        self._append_history(record)

    def _append_history(self, record: dict) -> None:
        with open(self.out / "history.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------ evaluation
    def _eval_pairs(self) -> AlignedPairs | None:
        cfg = self.cfg.eval
        if cfg.cache and Path(cfg.cache).is_file():
            return AlignedPairs.load(cfg.cache)
        if not cfg.pairs:
            return None
        from ..detect import TorchMTCNN

        aligned = AlignedPairs.build(read_pairs(cfg.pairs, cfg.root), TorchMTCNN(device=str(self.device)),
                                     progress=self.progress)
        if cfg.cache:
            Path(cfg.cache).parent.mkdir(parents=True, exist_ok=True)
            aligned.save(cfg.cache)
        return aligned

    def evaluate(self):
        """Dev-pair report of the current weights."""
        return verification_report(*self._dev_scores())

    def _dev_scores(self):
        """(scores, same, folds, valid) of the dev pairs with the current weights."""
        self.model.eval()
        try:
            embedder = TorchEmbedder(self.model, device=str(self.device), batch_size=256)
            scores, valid = self.eval_pairs.scores(embedder)
            return scores, self.eval_pairs.same, self.eval_pairs.folds, valid
        finally:
            self._train_mode()

    def _evaluate(self, writer) -> None:
        dev = self._dev_scores()
        report = verification_report(*dev)
        for key in ("accuracy_mean", "auc", "eer"):
            writer.add_scalar(f"dev/{key}", getattr(report, key), self.step)
        self._append_history({"step": self.step, "eval": report.to_dict()})
        tqdm.write(f"step {self.step}: dev {report.summary()}")
        if report.accuracy_mean > self.best["accuracy"]:
            self.best = {"accuracy": report.accuracy_mean, "auc": report.auc, "step": self.step}
            self._save_model(BEST_FILE, report, dev)

    # ----------------------------------------------------------- checkpoints
    def _training_summary(self) -> dict:
        cfg = self.cfg
        method = ({"objective": cfg.objective.__dict__,
                   "batch": {"p": cfg.data.p, "k": cfg.data.k, "world_size": self.world}}
                  if self.supervised else
                  {"pretraining": cfg.ssl.__dict__, "batch": {"images": cfg.ssl.batch_size,
                                                              "world_size": self.world}})
        if self.targets:
            method["distillation"] = {**cfg.distill.__dict__, "licences": {
                name: TEACHER_FACTORIES[name].licence for name in self.targets}}
        return {"data": {"datasets": [Path(d).name for d in cfg.data.datasets], **self.data.summary()},
                "mode": cfg.mode, "init_from": self.initialised_from, **method,
                "optim": cfg.optim.__dict__,
                "steps": self.step, "device": str(self.device),
                "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}

    def _save_model(self, name: str, report=None, dev=None) -> None:
        thresholds = calibrated_thresholds(*dev, Path(self.cfg.eval.pairs or self.cfg.eval.cache).name) \
            if dev is not None else None
        training = self._training_summary()
        if report is not None:
            training["dev"] = {"accuracy": report.accuracy_mean, "auc": report.auc, "eer": report.eer}
        save_checkpoint(self.out / name, self.model, thresholds, training)

    def _finish(self) -> dict:
        summary = {"steps": self.step, "best": self.best}
        if self.is_main:
            self._save_model(FINAL_FILE)
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def _save_state(self) -> None:
        if not self.is_main:
            return
        state = {"method": self.step_module.state_dict(),  # embedder, objective, heads, queue
                 "optimizer": self.optimizer.state_dict(), "elapsed": self.elapsed,
                 "scaler": self.scaler.state_dict(), "step": self.step, "epoch": self.epoch,
                 "batch_in_epoch": self.batch_in_epoch, "best": json.dumps(self.best)}
        atomic_save(state, self.out / STATE_FILE)

    def _load_state(self) -> None:
        state = torch.load(self.out / STATE_FILE, map_location=self.device, weights_only=True)
        self.step_module.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.elapsed = float(state["elapsed"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.batch_in_epoch = state["batch_in_epoch"]
        self.best = json.loads(state["best"])


def _init_from(model: Embedder, path: str) -> dict:
    """Copy a checkpoint's embedder weights into `model` and describe where they came from (a
    pretraining run's projection head is never in its checkpoints: it is dropped by construction)."""
    pretrained, metadata = load_checkpoint(path)
    if (pretrained.arch, pretrained.embedding_dim) != (model.arch, model.embedding_dim):
        raise ValueError(f"{path}: a {pretrained.arch} / {pretrained.embedding_dim}-d checkpoint "
                         f"cannot initialise a {model.arch} / {model.embedding_dim}-d model")
    model.load_state_dict(pretrained.state_dict())
    return {"file": Path(path).name, "weights_sha256": metadata["weights_sha256"],
            "mode": metadata["training"].get("mode", "supervised")}


def _freeze(model: Embedder, stages: int) -> list[nn.Module]:
    """Fix the stem and the first `stages` residual stages (fine-tuning: a step then back-propagates
    through the later stages only); returns the frozen modules."""
    if not 0 <= stages <= len(model.trunk.stages):
        raise ValueError(f"model.frozen_stages must be 0..{len(model.trunk.stages)}, got {stages}")
    frozen = [model.trunk.stem, *model.trunk.stages[:stages]] if stages else []
    for module in frozen:
        module.requires_grad_(False)
    return frozen


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def _precision(name: str, device: torch.device) -> torch.dtype:
    choices = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
               # bf16 autocast makes CPU training ~7x slower here (no native bf16 backward)
               "auto": torch.bfloat16 if device.type == "cuda" else torch.float32}
    if name not in choices:
        raise ValueError(f"unknown precision {name!r}; choose one of {sorted(choices)}")
    if name == "fp16" and device.type != "cuda":
        raise ValueError("fp16 autocast needs CUDA; use bf16 on CPU")
    return choices[name]


def _optimizer(cfg, params):
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, nesterov=True)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose adamw or sgd")


def _summary_writer(path: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(path))


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
