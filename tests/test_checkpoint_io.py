"""Checkpoints are replaced atomically: a write that dies part-way leaves the previous one loadable."""

import torch

from nnlab.callbacks import AtomicCheckpointIO


class Explodes:
    def __reduce__(self):
        raise RuntimeError("killed mid-write")


def test_failed_write_keeps_previous_checkpoint(tmp_path):
    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.ones(1000)}, path)
    try:
        io.save_checkpoint({"epoch": 2, "w": torch.zeros(1000), "bad": Explodes()}, path)
    except RuntimeError:
        pass
    loaded = torch.load(path, weights_only=True)
    assert loaded["epoch"] == 1 and torch.equal(loaded["w"], torch.ones(1000))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left behind
