"""MNIST as two in-memory tensors, batched by slicing and augmented on whole batches on the device."""

from pathlib import Path

import lightning as L
import torch
from torchvision.datasets import MNIST

from nnlab.atomic import folders_kept_if_used
from nnlab.data import fingerprints, split_record
from nnlab.data.batches import TensorBatches, placement
from nnlab.data.images import random_affine
from nnlab.errors import ConfigError, DatasetError

MEAN, STD = 0.1307, 0.3081
# (file, IDX magic number, bytes per item after the header, header bytes)
FILES = {
    "train-images-idx3-ubyte": (2051, 28 * 28, 16),
    "train-labels-idx1-ubyte": (2049, 1, 8),
    "t10k-images-idx3-ubyte": (2051, 28 * 28, 16),
    "t10k-labels-idx1-ubyte": (2049, 1, 8),
}


def check_idx(path: Path, magic: int, item_bytes: int, header: int) -> int:
    """Validate an IDX file's magic number and size before torchvision parses it; returns its item count."""
    with open(path, "rb") as f:
        head = f.read(header)
    if len(head) < header or int.from_bytes(head[:4], "big") != magic:
        found = int.from_bytes(head[:4], "big") if len(head) >= 4 else None
        raise DatasetError(
            f"{path} is not an MNIST IDX file (magic number {found}, expected {magic}). "
            "Delete it and run again to download a fresh copy, or copy the original file there."
        )
    count = int.from_bytes(head[4:8], "big")
    expected = header + count * item_bytes
    if (size := path.stat().st_size) != expected:
        raise DatasetError(
            f"{path} is {size} bytes but its header promises {count} items ({expected} bytes): the file is truncated "
            "or damaged. Delete it and run again to download a fresh copy, or copy the original file there."
        )
    return count


def unpack(packed: Path, target: Path):
    """Decompress one of MNIST's .gz downloads beside the others, atomically (a kill leaves no half file)."""
    import gzip
    import shutil
    import zlib

    from nnlab.atomic import atomic_open

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with gzip.open(packed, "rb") as source, atomic_open(target) as f:
            shutil.copyfileobj(source, f, 1 << 20)
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(
            f"{packed} cannot be decompressed ({type(e).__name__}: {e}): it is cut short or not a gzip file. Download "
            f"it again, or put the uncompressed {target.name} in {target.parent}"
        ) from None


class MNISTDataModule(L.LightningDataModule):
    """torchvision's MNIST: 60,000 training images split into train/val with a fixed seed, 10,000 test."""

    kind = "image"
    class_names = tuple(str(d) for d in range(10))
    augmentation_off = ("augment.rotate=0", "augment.scale=0", "augment.translate=0")  # scripts/benchmark.py

    def __init__(
        self,
        channels: int,
        image_size: int,
        num_classes: int,
        data_dir: str,
        download: bool,
        val_size: int,
        split_seed: int,
        batch_size: int,
        eval_batch_size: int,
        augment: dict,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.root = Path(data_dir)
        self.raw = self.root / "MNIST" / "raw"

    def prepare_data(self):
        # Runs on one process per node; the others wait at a barrier until it returns.
        missing = [name for name in FILES if not (self.raw / name).is_file()]
        for name in list(missing):  # the four .gz files as downloaded: read them
            if (packed := self.gz(name)) is not None:
                unpack(packed, self.raw / name)
                missing.remove(name)
        if not missing:
            self.check_files()
            return
        where = f"{self.raw.resolve()} (missing: {', '.join(missing)})"
        how = (
            "Copy train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
            f"t10k-labels-idx1-ubyte (or the four .gz files as downloaded) into {self.raw.resolve()}, or point "
            "data.data_dir (or NNLAB_DATA_DIR) at the folder that holds MNIST/raw/."
        )
        if not self.hparams.download:
            raise DatasetError(f"MNIST not found in {where} and data.download=false. {how}")
        try:
            with folders_kept_if_used(self.raw):
                MNIST(self.root, train=True, download=True)
        except Exception as e:  # torchvision tries several mirrors and raises once all have failed
            reason = " ".join(str(e).split())  # torchvision lists every mirror on its own lines
            raise DatasetError(f"MNIST not found in {where} and the download failed ({reason}). {how}") from e

    def check_files(self):
        """The four IDX files are whole, and images and labels agree in number (read from their headers)."""
        counts = {name: check_idx(self.raw / name, *spec) for name, spec in FILES.items()}
        for split in ("train", "t10k"):
            if counts[f"{split}-images-idx3-ubyte"] != counts[f"{split}-labels-idx1-ubyte"]:
                raise DatasetError(f"{self.raw}: {split} images and labels hold different numbers of items {counts}")
        n, val_size = counts["train-labels-idx1-ubyte"], self.hparams.val_size
        if not 0 < val_size < n:
            raise ConfigError(f"data.val_size={val_size} must be between 1 and {n - 1} (the training images)")

    def gz(self, name: str) -> Path | None:
        """`name`.gz in MNIST/raw/, MNIST/ or the data folder, if it is there."""
        for folder in (self.raw, self.raw.parent, self.root):
            if (folder / f"{name}.gz").is_file():
                return folder / f"{name}.gz"
        return None

    def setup(self, stage=None):
        if hasattr(self, "x_test"):
            return
        self.check_files()
        train, test = MNIST(self.root, train=True), MNIST(self.root, train=False)
        n, val_size = len(train.targets), self.hparams.val_size
        if not 0 < val_size < n:
            raise ConfigError(f"data.val_size={val_size} must be between 1 and {n - 1} (the training images)")
        for ds in (train, test):
            if int(ds.targets.max()) >= self.hparams.num_classes:
                raise DatasetError(f"{self.raw} holds label {int(ds.targets.max())} >= data.num_classes")
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        as_input = lambda images: ((images.float() / 255 - MEAN) / STD).unsqueeze(1).to(device)  # noqa: E731 (N, 1, 28, 28)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.hparams.split_seed))
        train_idx, val_idx = perm[val_size:], perm[:val_size]
        self.x_train, self.y_train = as_input(train.data[train_idx]), train.targets[train_idx].to(device)
        self.x_val, self.y_val = as_input(train.data[val_idx]), train.targets[val_idx].to(device)
        self.x_test, self.y_test = as_input(test.data), test.targets.to(device)
        self._pixels = {"train": (train.data, train_idx), "val": (train.data, val_idx), "test": (test.data, None)}
        self.split = split_record(
            {"train": [str(i) for i in train_idx.tolist()], "val": [str(i) for i in val_idx.tolist()],
             "test": [str(i) for i in range(len(test.targets))]},
            self.hparams.split_seed, f"the test file as given; val {val_size} training images drawn with data.split_seed",
        )

    def fingerprints(self, split: str):
        """Each image of a split as a 64-bit number (nnlab.data.fingerprints of its 28x28 pixels), computed on first
        use."""
        pixels, index = self._pixels[split]
        return fingerprints(pixels if index is None else pixels[index])

    def preprocessing(self) -> dict:
        """What turns an image file into the model's input, stored in every checkpoint (nnlab.predict reads it)."""
        return {"kind": "image", "channels": 1, "image_size": 28, "fit": "stretch", "mean": [MEAN], "std": [STD],
                "class_names": list(self.class_names)}

    def train_dataloader(self):
        # The order follows the run's seed (seed_everything) and the epoch, so a resumed run repeats it.
        return TensorBatches(self.x_train, self.y_train, self.hparams.batch_size, shuffle=True,
                             **placement(self.trainer))

    def val_dataloader(self):
        return TensorBatches(self.x_val, self.y_val, self.hparams.eval_batch_size, False, **placement(self.trainer))

    def test_dataloader(self):
        return TensorBatches(self.x_test, self.y_test, self.hparams.eval_batch_size, False, **placement(self.trainer))

    def on_after_batch_transfer(self, batch, dataloader_idx):
        aug = self.hparams.augment
        if self.trainer is not None and self.trainer.training and any(aug.values()):
            x, y = batch
            return random_affine(x, **aug, fill=-MEAN / STD), y
        return batch
