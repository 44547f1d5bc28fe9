"""The training loop: batches → augmented views → a training method (supervised P×K metric
learning, or SimCLR / MoCo / BYOL / SwAV pretraining without labels) → optimiser step.

The `Trainer` assembles the parts and runs the loop; each part does one thing elsewhere: the data
(`face_array.load_face_array`, `sampling`), the method (`methods.build_method`), the learning rate and the
run's position (`schedule.WarmupCosineSchedule`: warm-up + cosine, by steps or a time budget),
logging and dev-pair evaluation with best-checkpoint keeping (`callbacks`). What stays here is
what ties them: autocast, gradient clipping, checkpoints every N steps and on SIGTERM, exact
resume, and DDP under torchrun (gloo on CPU, nccl on GPU; only rank 0 writes).
"""
from __future__ import annotations

import json
import os
import signal
import time
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ..data import read_pairs
from ..embed import TorchEmbedder
from ..errors import FaceVerifyError
from ..evaluation import AlignedPairs
from ..policies import LEGACY_DETECTOR
from ..metrics import calibrated_thresholds, verification_report
from ..models import Embedder, Ensemble, build_metadata, load_checkpoint, save_checkpoint
from ..models.members import PRETRAINED_STUDENTS, pretrained_student
from ..models.checkpoint import atomic_save
from .augment import augment
from .callbacks import Callback, DevEvaluation, RunLog, StepLogger
from .config import TrainConfig
from .distill import Distillation, centred
from .face_array import load_face_array
from .losses import NO_OBJECTIVE, build_objective
from .methods import build_method
from .sampling import PKBatches, RandomBatches
from .schedule import WarmupCosineSchedule
from .teachers import TEACHER_FACTORIES

STATE_FILE = "state.pt"  # everything needed to resume
FINAL_FILE = "final.pt"


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False, progress: bool = True):
        self.cfg, self.progress = cfg, progress
        self.rank, self.world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        self.device = _device(cfg.device, int(os.environ.get("LOCAL_RANK", 0)))
        #: a process group this trainer started, and so ends after `fit` (left to interpreter exit,
        #: gloo's threads can abort a rank: "terminate called without an active exception")
        self.owns_group = self.world > 1 and not dist.is_initialized()
        if self.owns_group:
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.out = Path(cfg.out_dir)
        torch.manual_seed(cfg.seed)

        self.supervised = cfg.mode == "supervised"
        self.data = load_face_array(cfg.data.datasets, cfg.data.cache_dir,
                                    cfg.data.min_images if self.supervised else 1,
                                    progress=progress and self.is_main, teachers=cfg.distill.teachers)
        prepare_targets = (lambda a: a.astype(np.float32)) if cfg.distill.anchor else centred
        self.targets = {name: torch.from_numpy(prepare_targets(array)) for name, array in self.data.teachers.items()}
        self.batches, self.labels = self._batches()
        self.crops = (torch.from_numpy(np.ascontiguousarray(self.data.crops)).to(self.device)
                      if cfg.data.on_device else self.data.crops)

        self.model = build_model(cfg.model)
        self.initialised_from = _init_from(self.model, cfg.init_from) if cfg.init_from else None
        self.frozen = _freeze(self.model, cfg.model.frozen_stages)
        #: the alignment the model takes (its training crops and dev pairs must match it)
        self.templates = build_metadata(self.model, hashed=False).templates
        size = self.data.crops.shape[1]
        if len(self.templates) != 1 or size != self.templates[0].size:
            raise FaceVerifyError(f"the model takes {[t.name for t in self.templates]} crops, the training "
                                  f"sets hold {size}×{size} ones: prepare them with --template (or "
                                  "training/realign.py)")
        self.model = self.model.to(self.device)
        if cfg.optim.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.step_module = self._method().to(self.device)
        resuming = resume and (self.out / STATE_FILE).is_file()
        if self.targets and not resuming and not cfg.distill.anchor:  # before DDP wraps it: every rank fits the same sample
            self._fit_projectors()
        if cfg.optim.compile:
            self.step_module.model = torch.compile(self.model)
        # momentum encoders (MoCo, BYOL) are frozen (they follow by EMA): the optimiser never sees them
        self.optimizer = _optimizer(cfg.optim, [p for p in self.step_module.parameters() if p.requires_grad])
        self.schedule = WarmupCosineSchedule(cfg.optim)
        self.precision = _precision(cfg.optim.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == torch.float16)
        self.ddp = (nn.parallel.DistributedDataParallel(
            self.step_module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.world > 1 else self.step_module)

        self.eval_pairs = self._eval_pairs() if self.is_main else None
        self.log: RunLog | None = None
        self.evaluation = (DevEvaluation(self.eval_pairs, cfg.eval.every, self._eval_source())
                           if self.eval_pairs is not None else None)
        self._stop_requested = False
        if resuming:
            self._load_state()

    def _batches(self):
        """The epoch's batch order and each image's label: P×K identities, or (pretraining) plain
        batches where every image is its own class, its two views the positive pair."""
        cfg, images = self.cfg, len(self.data.labels)
        if self.supervised:
            per_rank = max(1, images // (cfg.data.p * cfg.data.k * self.world))
            return (PKBatches(self.data.labels, cfg.data.p, cfg.data.k, per_rank, cfg.seed, self.rank),
                    torch.from_numpy(self.data.labels))
        per_rank = max(1, images // (cfg.ssl.batch_size * self.world))
        return RandomBatches(images, cfg.ssl.batch_size, per_rank, cfg.seed, self.rank), torch.arange(images)

    def _method(self):
        cfg = self.cfg
        if cfg.objective.name == NO_OBJECTIVE and not self.targets:
            raise ValueError("objective.name=none trains by distillation alone: set distill.teachers")
        objective = (build_objective(cfg.objective, self.model.embedding_dim, len(self.data.identities))
                     if self.supervised else None)
        distillation = (Distillation(self.model.embedding_dim,
                                     {name: t.shape[1] for name, t in self.targets.items()}, cfg.distill)
                        if self.targets else None)
        return build_method(cfg.mode, self.model, objective, cfg.ssl, cfg.optim.channels_last,
                            distillation, total_steps=cfg.optim.steps)

    def _fit_projectors(self, faces: int = 2048) -> None:
        """Least-squares start for the distillation projectors: the initial student's embeddings
        of a random sample of (unaugmented) training faces against their teachers'."""
        images = len(self.data.labels)
        sample = np.sort(np.random.default_rng(self.cfg.seed).choice(images, min(faces, images),
                                                                    replace=False))
        with self._inference() as embed:
            student = torch.from_numpy(embed(np.ascontiguousarray(self.data.crops[sample])))
        fitted = self.step_module.distillation.fit_projectors(
            student.to(self.device), {name: t[sample].to(self.device) for name, t in self.targets.items()})
        if self.is_main:
            print("distillation projectors fitted by least squares, mean cosine to each teacher: "
                  + ", ".join(f"{name} {cosine:.3f}" for name, cosine in fitted.items()), flush=True)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def step(self) -> int:
        return self.schedule.step

    @property
    def best(self) -> dict:
        return self.evaluation.best if self.evaluation else {"accuracy": -1.0}

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict:
        cfg = self.cfg
        callbacks: list[Callback] = []
        bar = tqdm(total=cfg.optim.steps, initial=self.step, desc="train", unit="step",
                   disable=not (self.progress and self.is_main))
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
            self.log = RunLog(self.out)
            callbacks.append(StepLogger(self.log, cfg.log_every, bar))
            if self.evaluation:
                callbacks.append(self.evaluation)
        previous = signal.signal(signal.SIGTERM, self._request_stop) if _main_thread() else None
        generator = torch.Generator()
        autocast = (torch.autocast(self.device.type, dtype=self.precision)
                    if self.precision != torch.float32 else nullcontext())
        started, seen, elapsed_before = time.time(), 0, self.schedule.position.elapsed
        self._train_mode()
        try:
            while not self._done() and not self._stop_requested:
                position = self.schedule.position
                for indices in self.batches.epoch(position.epoch, skip=position.batch_in_epoch):
                    generator.manual_seed(cfg.seed * 1_000_003 + self.step * 31 + self.rank)
                    record = self._train_step(indices, generator, autocast)
                    self.schedule.advance(elapsed_before + time.time() - started)
                    seen += len(indices)
                    record = {"step": self.step, **record,
                              "images_per_s": seen * self.world / (time.time() - started)}
                    for callback in callbacks:
                        callback.on_step(self, record)
                    if self.step % cfg.checkpoint_every == 0:
                        self._save_state()
                    if self._done() or self._stop_requested:
                        break
                else:
                    self.schedule.next_epoch()
            self._save_state()
            if self._stop_requested:
                return {"stopped_at_step": self.step}
            for callback in callbacks:
                callback.on_end(self)
            summary = self._finish()
        finally:
            bar.close()
            if self.log:
                self.log.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if self.owns_group:
                dist.destroy_process_group()
        return summary

    def _train_step(self, indices: np.ndarray, generator: torch.Generator, autocast) -> dict:
        """One optimiser step on a batch; returns its figures (tensors, not yet synchronised)."""
        images = self._batch(indices)
        labels = self.labels[indices].to(self.device)
        views = [augment(images, self.cfg.augment, generator) for _ in range(self.step_module.views)]
        lr = self.schedule.apply(self.optimizer)
        targets = {name: t[indices].to(self.device) for name, t in self.targets.items()}
        loss, stats = self.ddp(views, labels, autocast, targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = nn.utils.clip_grad_norm_(self.step_module.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step_module.after_step()
        return {"loss": loss.detach(), "lr": lr, "grad_norm": grad_norm, **stats}

    def _train_mode(self) -> None:
        """Training mode, except frozen stages: their batch-norm statistics stay as loaded."""
        self.model.train()
        for module in self.frozen:
            module.eval()

    def _batch(self, indices: np.ndarray) -> torch.Tensor:
        """(B, 3, size, size) uint8 crops (the model's template) on the training device."""
        if isinstance(self.crops, torch.Tensor):
            batch = self.crops[torch.from_numpy(indices).to(self.device)]
        else:
            batch = torch.from_numpy(np.ascontiguousarray(self.crops[indices])).to(self.device)
        return batch.permute(0, 3, 1, 2)

    def _request_stop(self, *_):
        self._stop_requested = True

    def _done(self) -> bool:
        done = self.schedule.finished()
        if self.world > 1:  # ranks must agree, or one would wait forever in all-reduce
            flag = torch.tensor([float(done)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            done = bool(flag.item())
        return done

    # ------------------------------------------------------------ evaluation
    def _eval_pairs(self) -> AlignedPairs | None:
        cfg = self.cfg.eval
        if cfg.cache and Path(cfg.cache).is_file():
            aligned = AlignedPairs.load(cfg.cache)
            aligned.check_detector(LEGACY_DETECTOR)  # built below with MTCNN, as training sets are prepared
            return aligned
        if not cfg.pairs:
            return None
        from ..detect import TorchMTCNN

        aligned = AlignedPairs.build(read_pairs(cfg.pairs, cfg.root), TorchMTCNN(device=str(self.device)),
                                     templates=self.templates, progress=self.progress)
        if cfg.cache:
            Path(cfg.cache).parent.mkdir(parents=True, exist_ok=True)
            aligned.save(cfg.cache)
        return aligned

    def _eval_source(self) -> str:
        return Path(self.cfg.eval.pairs or self.cfg.eval.cache).name

    def evaluate(self):
        """Dev-pair report of the current weights."""
        return verification_report(*self.dev_scores(self.eval_pairs))

    def dev_scores(self, pairs: AlignedPairs):
        """(scores, same, folds, valid) of `pairs` with the current weights."""
        with self._inference() as embed:
            scores, valid = pairs.scores(embed, self.templates)
        return scores, pairs.same, pairs.folds, valid

    @contextmanager
    def _inference(self):
        """The current weights as an inference embedder (eval mode); training mode comes back after."""
        self.model.eval()
        try:
            yield TorchEmbedder(self.model, device=str(self.device), batch_size=256)
        finally:
            self._train_mode()

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

    def save_model(self, name: str, report=None, dev=None, source: str = "") -> None:
        """An inference checkpoint of the current weights; thresholds calibrated on `dev` scores."""
        thresholds = calibrated_thresholds(*dev, source) if dev is not None else None
        training = self._training_summary()
        if report is not None:
            training["dev"] = {"accuracy": report.accuracy_mean, "auc": report.auc, "eer": report.eer}
        save_checkpoint(self.out / name, self.model, thresholds, training)

    def _finish(self) -> dict:
        summary = {"steps": self.step, "best": self.best}
        if self.is_main:
            self.save_model(FINAL_FILE)
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def _save_state(self) -> None:
        if not self.is_main:
            return
        state = {"method": self.step_module.state_dict(),  # embedder, objective, heads, queue
                 "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                 **self.schedule.state_dict(),
                 **(self.evaluation.state_dict() if self.evaluation else {})}
        atomic_save(state, self.out / STATE_FILE)

    def _load_state(self) -> None:
        state = torch.load(self.out / STATE_FILE, map_location=self.device, weights_only=True)
        self.step_module.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.schedule.load_state_dict(state)
        if self.evaluation and "best" in state:
            self.evaluation.load_state_dict(state)


def build_model(cfg) -> Embedder | Ensemble:
    """The network a config names: this project's ResNet (`models.ARCHS`, random init) or a
    pretrained network's converted weights (`models.members.PRETRAINED_STUDENTS`)."""
    if cfg.arch in PRETRAINED_STUDENTS:
        return pretrained_student(cfg.arch)
    return Embedder(cfg.arch, cfg.embedding_dim, cfg.dropout)


def _kind(model) -> str:
    """What must match for one model's weights to initialise another, e.g. "resnet18 / 512-d"."""
    metadata = build_metadata(model, hashed=False)
    members = "+".join(m["arch"] for m in metadata.members)
    return f"{metadata.arch}{f' ({members})' if members else ''} / {metadata.embedding_dim}-d"


def _init_from(model: Embedder | Ensemble, path: str) -> dict:
    """Copy a checkpoint's embedder weights into `model` and describe where they came from (a
    pretraining run's projection head is never in its checkpoints: it is dropped by construction)."""
    pretrained, metadata = load_checkpoint(path)
    if _kind(pretrained) != _kind(model):
        raise ValueError(f"{path}: a {_kind(pretrained)} checkpoint cannot initialise a {_kind(model)} model")
    model.load_state_dict(pretrained.state_dict())
    return {"file": Path(path).name, "weights_sha256": metadata.weights_sha256,
            "mode": metadata.training.get("mode", "supervised")}


def _freeze(model: Embedder | Ensemble, stages: int) -> list[nn.Module]:
    """Fix the stem and the first `stages` residual stages (fine-tuning: a step then back-propagates
    through the later stages only); returns the frozen modules."""
    parts = model.trunk_parts()
    if not 0 <= stages < len(parts):
        raise ValueError(f"model.frozen_stages must be 0..{len(parts) - 1}, got {stages}")
    frozen = parts[:stages + 1] if stages else []
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


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
