"""Batch samplers with exact resume: P identities × K images for metric learning (PML's
MPerClassSampler driven by a seeded RNG), and uniform batches for self-supervised pretraining.

PML draws from a module-level RandomState; seeding it per (seed, epoch, rank) makes every epoch's
batch order reproducible, so a resumed run skips the batches it already trained on and continues
with exactly the batches it would have seen. Each DDP rank gets its own stream (its own batches).
"""
from __future__ import annotations

import numpy as np
from pytorch_metric_learning.samplers import MPerClassSampler
from pytorch_metric_learning.utils import common_functions


class PKBatches:
    """Yields index arrays of P·K samples: P identities with K images each."""

    def __init__(self, labels, p: int, k: int, batches_per_epoch: int | None = None,
                 seed: int = 0, rank: int = 0):
        labels = np.asarray(labels)
        self.batch_size = p * k
        self.batches_per_epoch = batches_per_epoch or max(1, len(labels) // self.batch_size)
        self.seed, self.rank = seed, rank
        self._sampler = MPerClassSampler(labels, m=k, batch_size=self.batch_size,
                                         length_before_new_iter=self.batches_per_epoch * self.batch_size)

    def epoch(self, epoch: int, skip: int = 0):
        """The batches of `epoch`, starting after the first `skip` of them."""
        common_functions.NUMPY_RANDOM = np.random.RandomState(
            (self.seed * 1_000_003 + epoch * 7919 + self.rank * 104_729) % 2**32)
        indices = np.fromiter(iter(self._sampler), dtype=np.int64)
        usable = len(indices) // self.batch_size * self.batch_size
        batches = indices[:usable].reshape(-1, self.batch_size)
        yield from batches[skip:]


class RandomBatches:
    """Yields index arrays of `batch_size` distinct samples, a fresh permutation each epoch
    (self-supervised pretraining: labels play no part); same resume contract as `PKBatches`."""

    def __init__(self, num_samples: int, batch_size: int, batches_per_epoch: int | None = None,
                 seed: int = 0, rank: int = 0):
        if num_samples < batch_size:
            raise ValueError(f"{num_samples} images cannot fill a batch of {batch_size}")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.batches_per_epoch = min(batches_per_epoch or num_samples // batch_size,
                                     num_samples // batch_size)
        self.seed, self.rank = seed, rank

    def epoch(self, epoch: int, skip: int = 0):
        rng = np.random.default_rng([self.seed, epoch, self.rank])
        order = rng.permutation(self.num_samples)[:self.batches_per_epoch * self.batch_size]
        yield from order.reshape(-1, self.batch_size)[skip:]
