"""Training: config, in-memory face data, batch augmentation, the loop and its methods (metric
learning on identity labels; SimCLR and MoCo pretraining without them)."""
from .config import TrainConfig, load_config
from .trainer import Trainer

__all__ = ["TrainConfig", "Trainer", "load_config"]
