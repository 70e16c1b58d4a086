"""Batches sliced from tensors that already sit in memory (on the GPU when training there)."""

import math

import torch


def shard(index, shuffle: bool, generator, rank: int, world: int):
    """This rank's share of `index`. Every rank draws the same permutation and takes every `world`-th
    item; training drops the few that do not divide evenly, evaluation repeats a few (as
    DistributedSampler does) so that every rank runs the same number of steps."""
    n = len(index)
    if shuffle:
        index = index[torch.randperm(n, generator=generator)][: n - n % world]
    else:
        index = torch.cat([index, index[: -n % world]])
    return index[rank::world]


def placement(trainer) -> dict:
    """Where a batch iterator runs, as its keyword arguments: the run's seed (set by seed_everything),
    the trainer's epoch (read when an epoch starts), how many batches of that epoch the training loop
    has already finished (non-zero only when resuming from a checkpoint written mid-epoch), this
    process's rank and the world size; without a trainer, epoch 0 of a single process."""
    seed = torch.initial_seed() % 2**62
    if trainer is None:
        return {"seed": seed, "epoch": lambda: 0, "rank": 0, "world": 1}
    # trainer.overfit_batches: Lightning takes the first batches of every epoch; the same epoch's order each time
    # makes them the same batches (Lightning's own fix, a sequential sampler, is for DataLoaders)
    epoch = (lambda: 0) if trainer.overfit_batches else (lambda: trainer.current_epoch)
    return {"seed": seed, "epoch": epoch,
            "finished": lambda: trainer.fit_loop.epoch_loop.batch_progress.current.ready,
            "rank": trainer.global_rank, "world": trainer.world_size}


class Resumable:
    """A training loader that resumes in the middle of an epoch.

    A run resumed from a checkpoint written mid-epoch (a requeue, a SIGTERM) draws that epoch's
    order again (same seed and epoch) and starts after the batches the training loop had finished,
    so it sees exactly the batches an uninterrupted run would. The position comes from the loop's
    own counters, which the checkpoint restores: a position saved in the loader's state would not
    arrive, because Lightning builds the training loader (when a scheduler asks for the number of
    steps) before it loads the checkpoint. `state_dict`/`load_state_dict` tell Lightning the loader
    resumes.
    """

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict):
        pass

    def _skip(self) -> int:
        return self.finished() if self.shuffle else 0

    def smallest(self) -> int:
        """The fewest samples a batch of an epoch holds on this rank (0 for an empty split)."""
        n = self._per_rank()
        return min((end - start for start, end in starts(n, self.batch_size, self.shuffle)), default=0)

    def _per_rank(self) -> int:
        n = self._size()
        return n // self.world if self.shuffle else math.ceil(n / self.world)


def num_batches(n: int, batch_size: int, shuffle: bool, world: int) -> int:
    per_rank = n // world if shuffle else math.ceil(n / world)
    return math.ceil(per_rank / batch_size) - lone_last(per_rank, batch_size, shuffle)


def lone_last(n: int, batch_size: int, shuffle: bool) -> bool:
    """Whether a training epoch of n samples would end in a batch of one sample, which joins the batch before it:
    BatchNorm cannot normalise one sample by batch statistics (55,000 MNIST images in batches of 679 end in one)."""
    return shuffle and n > batch_size and n % batch_size == 1


def starts(n: int, batch_size: int, shuffle: bool) -> list[tuple[int, int]]:
    """(start, end) of each batch of n samples; a lone last training sample joins the batch before (lone_last)."""
    bounds = [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    if lone_last(n, batch_size, shuffle):
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


class TensorBatches(Resumable):
    """Iterates over (x[i:j], y[i:j]) batches: no workers, no collation, no per-sample work.

    Shuffling draws one permutation per epoch from `seed + epoch()`, so a resumed run sees the
    same order as an uninterrupted one; under DDP each rank takes its `shard`.
    """

    def __init__(self, x, y, batch_size: int, shuffle: bool, seed: int = 0, epoch=lambda: 0, finished=lambda: 0,
                 rank=0, world=1):
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.seed, self.epoch, self.finished = batch_size, shuffle, seed, epoch, finished
        self.rank, self.world = rank, world

    def _size(self) -> int:
        return len(self.y)

    def __len__(self):
        return num_batches(len(self.y), self.batch_size, self.shuffle, self.world)

    def __iter__(self):
        bs = self.batch_size
        if self.world == 1 and not self.shuffle:
            # Plain views: evaluation copies nothing.
            for i in range(0, len(self.y), bs):
                yield self.x[i : i + bs], self.y[i : i + bs]
            return
        g = torch.Generator().manual_seed(self.seed + self.epoch())
        idx = shard(torch.arange(len(self.y)), self.shuffle, g, self.rank, self.world).to(self.y.device)
        for i, end in starts(len(idx), bs, self.shuffle)[self._skip() :]:
            j = idx[i:end]
            yield self.x[j], self.y[j]


class BucketBatches(Resumable):
    """Batches of token sequences of similar length, each padded only to its own longest review.

    The reviews are stored flat (`ids`, review i is `ids[offsets[i]:offsets[i+1]]`). Each epoch
    the split is shuffled, cut into buckets of `bucket_batches` batches, sorted by length inside a
    bucket, batched, and the batches shuffled: little padding, random order. Evaluation sorts the
    whole split by length (least padding; every batch mixes the classes, so `limit_*_batches`
    evaluates a fair sample rather than the first label's files). Yields
    ((tokens (B, T) int64, lengths (B,) int64), labels (B,)). Sharding under DDP as TensorBatches.
    """

    def __init__(self, ids, offsets, labels, index, batch_size: int, shuffle: bool, pad: int, seed: int = 0,
                 epoch=lambda: 0, finished=lambda: 0, rank=0, world=1, bucket_batches: int = 50):
        self.ids, self.offsets, self.labels, self.index = ids, offsets, labels, index
        self.batch_size, self.shuffle, self.pad, self.seed, self.epoch = batch_size, shuffle, pad, seed, epoch
        self.finished = finished
        self.rank, self.world = rank, world
        self.bucket = batch_size * bucket_batches if shuffle else max(len(index), 1)

    def _size(self) -> int:
        return len(self.index)

    def __len__(self):
        return num_batches(len(self.index), self.batch_size, self.shuffle, self.world)

    def _batches(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch())
        idx = shard(self.index, self.shuffle, g, self.rank, self.world)
        lengths = self.offsets[idx + 1] - self.offsets[idx]
        batches = []
        for start in range(0, len(idx), self.bucket):
            chunk = idx[start : start + self.bucket]
            chunk = chunk[lengths[start : start + self.bucket].argsort(descending=True, stable=True)]
            batches += list(chunk.split(self.batch_size))
        if lone_last(len(idx), self.batch_size, self.shuffle):  # a lone last text joins the batch before
            batches[-2:] = [torch.cat(batches[-2:])]
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g)]
        return batches

    def __iter__(self):
        device = self.labels.device
        for b in self._batches()[self._skip():]:
            starts, lengths = self.offsets[b], self.offsets[b + 1] - self.offsets[b]
            positions = torch.arange(int(lengths.max()))
            flat = (starts[:, None] + positions).clamp_max(len(self.ids) - 1)  # (B, T)
            tokens = self.ids[flat].long()
            tokens[positions >= lengths[:, None]] = self.pad
            yield (tokens.to(device), lengths), self.labels[b].to(device)


class SplitLoaders:
    """The three loaders of a data module whose `_batches(split, batch_size, shuffle)` makes a split's iterator:
    training shuffled with data.batch_size, validation and test in order with data.eval_batch_size."""

    def train_dataloader(self):
        return self._batches("train", self.hparams.batch_size, shuffle=True)

    def val_dataloader(self):
        return self._batches("val", self.hparams.eval_batch_size, shuffle=False)

    def test_dataloader(self):
        return self._batches("test", self.hparams.eval_batch_size, shuffle=False)
