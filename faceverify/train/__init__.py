"""Metric-learning training: config, in-memory face data, batch augmentation and the loop."""
from .config import TrainConfig, load_config
from .trainer import Trainer

__all__ = ["TrainConfig", "Trainer", "load_config"]
