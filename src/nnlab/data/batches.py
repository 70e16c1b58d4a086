"""Batches sliced from tensors that already sit in memory (on the GPU when training there)."""

import math

import torch


class TensorBatches:
    """Iterates over (x[i:j], y[i:j]) batches: no workers, no collation, no per-sample work.

    Shuffling draws one permutation per epoch from `seed + epoch()`, so a resumed run sees the
    same order as an uninterrupted one. Under DDP every rank draws the same permutation and
    takes every `world`-th sample; training drops the few samples that do not divide evenly,
    evaluation repeats a few (as DistributedSampler does) so every rank runs the same steps.
    """

    def __init__(self, x, y, batch_size: int, shuffle: bool, seed: int = 0, epoch=lambda: 0, rank=0, world=1):
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.seed, self.epoch = batch_size, shuffle, seed, epoch
        self.rank, self.world = rank, world

    def _indices(self):
        n = len(self.y)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch())
            idx = torch.randperm(n, generator=g)
            idx = idx[: n - n % self.world]
        else:
            idx = torch.arange(n)
            pad = -n % self.world
            idx = torch.cat([idx, idx[:pad]])
        return idx[self.rank :: self.world]

    def __len__(self):
        n = len(self.y)
        per_rank = n // self.world if self.shuffle else math.ceil(n / self.world)
        return math.ceil(per_rank / self.batch_size)

    def __iter__(self):
        bs = self.batch_size
        if self.world == 1 and not self.shuffle:
            # Plain views: evaluation copies nothing.
            for i in range(0, len(self.y), bs):
                yield self.x[i : i + bs], self.y[i : i + bs]
            return
        idx = self._indices().to(self.y.device)
        for i in range(0, len(idx), bs):
            j = idx[i : i + bs]
            yield self.x[j], self.y[j]
