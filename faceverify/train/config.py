"""Training configuration: nested dataclasses ⇄ YAML, with dotted `key=value` overrides."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .augment import AugmentConfig
from .distill import DistillConfig
from .losses import ObjectiveConfig
from .pretraining import PretrainConfig


@dataclass
class DataConfig:
    datasets: list = field(default_factory=list)  # folders of aligned crops (`faceverify prepare`)
    cache_dir: str | None = None  # decoded-crop cache (.npy); None = decode every run
    min_images: int = 2  # identities with fewer images cannot form positive pairs (supervised)
    on_device: bool = False  # keep all crops in accelerator memory (GPU: no host→device copies)
    p: int = 32  # identities per batch
    k: int = 4  # images per identity


@dataclass
class ModelConfig:
    arch: str = "resnet18-half"
    embedding_dim: int = 512
    dropout: float = 0.0
    frozen_stages: int = 0  # > 0: stem + this many residual stages stay fixed (cheap fine-tuning)


@dataclass
class OptimConfig:
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 5e-4
    momentum: float = 0.9
    steps: int = 1000
    time_budget_min: float = 0.0  # > 0: also stop (and finish the cosine) after this many minutes
    warmup_steps: int = 100
    grad_clip: float = 5.0
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16 (CUDA)
    channels_last: bool = False
    compile: bool = False


@dataclass
class EvalConfig:
    pairs: str | None = None  # pairs file checked during training (dev pairs only)
    root: str | None = None
    cache: str | None = None  # AlignedPairs .npz; built from pairs+root on first use
    every: int = 500


@dataclass
class TrainConfig:
    out_dir: str = "runs/default"
    mode: str = "supervised"  # supervised | simclr | moco | byol | swav (self-supervised: labels ignored)
    init_from: str | None = None  # start from this checkpoint's embedder (e.g. a pretraining run)
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 200
    log_every: int = 20
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    ssl: PretrainConfig = field(default_factory=PretrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """Config from YAML (optional) with `section.key=value` overrides (values parsed as YAML)."""
    raw = yaml.safe_load(Path(path).read_text()) if path else {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return _build(TrainConfig, raw or {})


def _build(cls, raw: dict):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(raw) - set(fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} option(s): {sorted(unknown)}")
    kwargs = {}
    for name, value in raw.items():
        default = fields[name].default_factory() if fields[name].default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            value = _build(type(default), value)
        elif isinstance(fields[name].default, float) and isinstance(value, (int, str)):
            value = _number(name, value)  # YAML 1.1 reads 2e-5 (no dot) as a string
        kwargs[name] = value
    return cls(**kwargs)


def _number(name: str, value) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number, not {value!r}") from None
