"""Batches that are a function of (seed, step): `StepBatchSampler`, which gives a
resumed run exactly the batches an uninterrupted one would and cuts every
global batch into per-rank slices, and the collation of a data set's items
into an image batch."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import Sampler


class StepBatchSampler(Sampler[list[int]]):
    """Index batches that are a function of (seed, step): exact resumption for free.

    Step ``t`` belongs to epoch ``t // steps_per_epoch``; each epoch is a fresh
    permutation drawn from ``seed + epoch``; the global batch of ``batch_size ×
    world`` indices is cut into per-rank slices, so ``world`` processes see
    together exactly what one process sees with a ``world`` times larger batch.
    """

    def __init__(self, n: int, batch_size: int, *, seed: int, start: int, stop: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.stop, self.rank, self.world = start, stop, rank, world
        self.global_batch = batch_size * world
        if self.global_batch > n:
            raise ValueError(f"a global batch of {self.global_batch} is larger than the data set ({n})")
        self.steps_per_epoch = n // self.global_batch

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        """The index batches of steps ``start`` to ``stop``. A sampler that starts later
        yields the rest of an earlier one's batches, as a resumed run needs:

        >>> whole = list(StepBatchSampler(10, 3, seed=0, start=0, stop=5))
        >>> list(StepBatchSampler(10, 3, seed=0, start=2, stop=5)) == whole[2:]
        True
        >>> len(set(whole[0] + whole[1] + whole[2]))  # an epoch (10 // 3 steps): disjoint batches
        9
        """
        perm, epoch = None, -1
        for t in range(self.start, self.stop):
            e, i = divmod(t, self.steps_per_epoch)
            if e != epoch:
                g = torch.Generator().manual_seed(self.seed * 100_003 + e)
                perm, epoch = torch.randperm(self.n, generator=g), e
            lo = i * self.global_batch + self.rank * self.batch_size
            yield perm[lo : lo + self.batch_size].tolist()


def _images(item) -> Tensor:
    return item[0] if isinstance(item, (tuple, list)) else item


def _collate(items) -> Tensor:
    return torch.stack([_images(it) for it in items])
