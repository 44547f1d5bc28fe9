"""Embedding networks and their self-describing checkpoints."""
from .backbones import ARCHS, ResNetTrunk
from .checkpoint import (build_metadata, load_checkpoint, save_checkpoint, set_thresholds,
                         update_metadata,
                         weights_sha256)
from .embedder import INPUT_FORMAT, Embedder
from .ensemble import Ensemble, MemberSpec

__all__ = ["ARCHS", "ResNetTrunk", "Embedder", "Ensemble", "MemberSpec", "INPUT_FORMAT", "build_metadata",
           "load_checkpoint", "save_checkpoint", "set_thresholds", "update_metadata", "weights_sha256"]
