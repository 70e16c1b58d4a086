"""MNIST data module: real IDX files, clear errors for missing and damaged files, batching, augmentation."""

import pytest
import torch

from nnlab.data.batches import TensorBatches
from nnlab.data.mnist import MEAN, STD, DatasetError, random_affine
from tests.helpers import datamodule, make_mnist


def test_reads_idx_files_with_torchvision_and_splits_with_a_seed(mnist_dir):
    dm = datamodule(mnist_dir)
    dm.prepare_data()
    dm.setup()
    assert dm.x_train.shape == (500, 1, 28, 28) and dm.x_val.shape == (100, 1, 28, 28)
    assert dm.x_test.shape == (200, 1, 28, 28) and dm.x_train.dtype == torch.float32
    assert abs(dm.x_train.mean().item()) < 1.0  # normalised
    again = datamodule(mnist_dir)
    again.setup()
    assert torch.equal(again.y_val, dm.y_val)
    other = datamodule(mnist_dir, split_seed=2)
    other.setup()
    assert not torch.equal(other.y_val, dm.y_val)


def test_missing_dataset_says_where_it_looked_and_how_to_fix(tmp_path):
    with pytest.raises(DatasetError, match=r"MNIST not found in .*MNIST/raw.*Copy train-images-idx3-ubyte"):
        datamodule(tmp_path).prepare_data()


def test_missing_dataset_with_no_network(tmp_path, monkeypatch):
    # A proxy on a closed local port: every download attempt fails at once, as with no network.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    with pytest.raises(DatasetError, match=r"the download failed .*point data.data_dir \(or NNLAB_DATA_DIR\)"):
        datamodule(tmp_path / "data", download=True).prepare_data()
    assert list(tmp_path.iterdir()) == []  # no empty data/MNIST/raw left behind


@pytest.mark.parametrize("damage", ["magic", "truncate"])
def test_damaged_idx_file_is_named(tmp_path, damage):
    make_mnist(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    if damage == "magic":
        data[3] = 0x01
    else:
        data = data[:-100]
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=str(path)):
        datamodule(tmp_path).setup()


def test_val_size_must_leave_training_images(mnist_dir):
    with pytest.raises(ValueError, match="data.val_size=600"):
        datamodule(mnist_dir, val_size=600).setup()


@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_shard_across_ranks(shuffle):
    x, y = torch.arange(103).float().unsqueeze(1), torch.arange(103)
    shards = [list(TensorBatches(x, y, 10, shuffle, seed=3, rank=r, world=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(TensorBatches(x, y, 10, shuffle, seed=3, rank=0, world=2))
    seen = [set(torch.cat([b[1] for b in s]).tolist()) for s in shards]
    if shuffle:
        assert not seen[0] & seen[1]  # training shards are disjoint
    union = seen[0] | seen[1]
    assert len(union) == (102 if shuffle else 103)  # training drops the remainder, evaluation pads
    for xb, yb in shards[0]:
        assert torch.equal(xb.squeeze(1).long(), yb)


def test_shuffle_depends_on_seed_and_epoch():
    x, y = torch.zeros(50, 1), torch.arange(50)
    order = lambda seed, epoch: torch.cat([b[1] for b in TensorBatches(x, y, 8, True, seed, lambda: epoch)])
    assert torch.equal(order(1, 0), order(1, 0))
    assert not torch.equal(order(1, 0), order(1, 1))
    assert sorted(order(1, 2).tolist()) == list(range(50))


def test_random_affine_keeps_shape_and_background():
    bg = -MEAN / STD
    x = torch.full((16, 1, 28, 28), bg)
    x[:, :, 10:18, 10:18] = 2.0
    out = random_affine(x, rotate=10.0, scale=0.1, translate=2.0, fill=bg)
    assert out.shape == x.shape
    assert torch.allclose(out[:, :, 0, :], torch.full_like(out[:, :, 0, :], bg), atol=1e-5)
    assert not torch.allclose(out, x)
    assert torch.allclose(random_affine(x, 0.0, 0.0, 0.0, bg), x, atol=1e-5)  # the identity transform


@pytest.mark.parametrize("n,batch,world", [(500, 499, 1), (55_000, 679, 1), (1_359, 679, 2), (10, 3, 1), (2, 1, 1)])
def test_a_training_epoch_never_ends_in_a_batch_of_one_sample(n, batch, world):
    """BatchNorm cannot normalise a batch of one: a lone last sample joins the batch before it, in every rank's
    shard; every sample of the shard is still seen, and len() counts the batches iterated (Lightning's progress)."""
    from nnlab.data.batches import BucketBatches

    x, y = torch.zeros(n, 1), torch.arange(n)
    for rank in range(world):
        loader = TensorBatches(x, y, batch, shuffle=True, rank=rank, world=world)
        sizes = [len(yb) for _, yb in loader]
        assert len(sizes) == len(loader) and sum(sizes) == n // world
        assert min(sizes) >= 2 or batch == 1
        if batch > 1:
            assert loader.smallest() == min(sizes)
        offsets = torch.arange(n + 1) * 3  # texts of three tokens each
        texts = BucketBatches(torch.ones(3 * n, dtype=torch.int32), offsets, y, torch.arange(n), batch, True, 0,
                              rank=rank, world=world)  # fmt: skip
        sizes = [len(yb) for _, yb in texts]
        assert len(sizes) == len(texts) and sum(sizes) == n // world and (min(sizes) >= 2 or batch == 1)
    evaluation = TensorBatches(x, y, batch, shuffle=False)
    assert sum(len(yb) for _, yb in evaluation) == n  # evaluation keeps every sample, in order
