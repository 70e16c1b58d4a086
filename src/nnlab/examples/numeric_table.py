"""A kind of data nnlab does not ship, added in this file and one config (conf/data/numeric_table.yaml), no other
edit: rows of numeric features in a CSV file with a header, one column the label, for the MLP (which reads any data
whose samples are one tensor each):

    python train.py model=mlp data=numeric_table data.path=/my/measurements.csv

A kind of data is two classes. The data module reads the files, splits them and gives batches; it says what it
provides (`kind = "table"`), what turns an input into the network's input (`preprocessing()`, stored in every
checkpoint) and what it finds in the data (`settings_found()`: the number of features and of classes, which the
configs leave null). The Kind (nnlab.kinds) says how the test report shows a sample, how `nnlab.predict` reads
one (here a row of numbers, `python -m nnlab.predict best.ckpt "5.1,3.5,1.4,0.2"`: raw()) and what turns it into
the network's input (preparation(): the standardisation, which `nnlab export` puts in the graph; describe()).
"""

import csv
import math
from pathlib import Path

import lightning as L
import torch

from nnlab.data import split_record
from nnlab.data.batches import TensorBatches, placement
from nnlab.errors import DatasetError
from nnlab.kinds import Kind, PredictError


class TableKind(Kind):
    name = "table"
    takes_paths = False  # predict's inputs are rows: "5.1,3.5,1.4,0.2"

    def show(self, samples, names, preprocessing, out_dir):
        """test_rows.csv: each test row with its label, the predicted class and its probability, wrong ones first."""
        path = Path(out_dir) / "test_rows.csv"
        mean, std = torch.tensor(preprocessing["mean"]), torch.tensor(preprocessing["std"])
        with open(path, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow([*preprocessing["columns"], "label", "predicted", "probability"])
            for x, label, p, _ in samples:
                row = [f"{v:.6g}" for v in (x * std + mean).tolist()]  # as the file had it, not standardised
                out.writerow([*row, names[label], names[int(p.argmax())], f"{float(p.max()):.4f}"])
        return {}

    def raw(self, preprocessing, text):
        """A row as the file has it, in its own units: one float32 array of the feature columns' values."""
        import numpy as np

        columns = preprocessing["columns"]
        try:
            values = [float(v) for v in text.replace(";", ",").split(",")]
        except ValueError:
            raise PredictError(f"{text!r} is not a row of numbers: give {len(columns)}, comma-separated") from None
        if len(values) != len(columns) or not all(math.isfinite(v) for v in values):
            raise PredictError(f"{text!r}: give {len(columns)} finite numbers, for {', '.join(columns)}")
        return [np.array(values, dtype=np.float32)], None

    def preparation(self, preprocessing):
        """Each column standardised with the training rows' mean and standard deviation, as in training."""
        return Standardise(preprocessing["mean"], preprocessing["std"])

    def describe(self, preprocessing):
        columns = preprocessing["columns"]
        return {
            "name": "features",
            "dtype": "float32",
            "shape": ["batch", len(columns)],
            "prepare": f"the values of {', '.join(columns)}, in the file's units (the graph standardises them)",
            "columns": columns,
        }


class Standardise(torch.nn.Module):
    """Rows in the file's units -> (x - mean) / std per column."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x):
        return (x - self.mean) / self.std


def read_table(path: Path, label: str) -> tuple[list[str], torch.Tensor, list[str]]:
    """The feature columns, their values (rows x columns) and each row's label; a DatasetError naming the file, the
    line and the column of anything that is not a row of numbers with a label."""
    if not path.is_file():
        raise DatasetError(f"data.path={path}: no such file; give a CSV file with a header row (docs/extending.md)")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if label not in header:
            raise DatasetError(
                f"{path}: no column {label!r} in its header ({', '.join(header) or 'empty'}): name the label's "
                "column with data.label"
            )
        columns = [c for c in header if c != label]
        if not columns:
            raise DatasetError(f"{path}: no feature column beside {label!r}")
        values, labels = [], []
        for row in reader:
            if not any((v or "").strip() for v in row.values()):
                continue  # a blank line
            line = reader.line_num
            try:
                values.append([float(row[c]) for c in columns])
            except (TypeError, ValueError):
                bad = next(c for c in columns if not _number(row[c]))
                raise DatasetError(f"{path} line {line}, column {bad!r}: {row[bad]!r} is not a number") from None
            if not all(map(math.isfinite, values[-1])):
                raise DatasetError(f"{path} line {line}: a feature is not finite (nan or inf)")
            if not (row[label] or "").strip():
                raise DatasetError(f"{path} line {line}: no label in column {label!r}")
            labels.append(row[label].strip())
    if len(labels) < 3:
        raise DatasetError(f"{path}: {len(labels)} rows; training, validation and test need at least one each")
    return columns, torch.tensor(values, dtype=torch.float32), labels


def _number(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


class NumericTableDataModule(L.LightningDataModule):
    """A CSV file of numeric features and a label column, split at random into training, validation and test rows
    (`val_share`, `test_share`, drawn with `split_seed`), each feature standardised with the training rows' mean and
    standard deviation (stored in the checkpoint, so predict does the same)."""

    kind = "table"

    def __init__(self, path: str, label: str = "label", features: int | None = None, num_classes: int | None = None,
                 val_share: float = 0.15, test_share: float = 0.15, split_seed: int = 12345, batch_size: int = 64,
                 eval_batch_size: int | None = None):  # fmt: skip
        super().__init__()
        if not (0 < val_share < 1 and 0 < test_share < 1 and val_share + test_share < 1):
            raise DatasetError(
                f"data.val_share={val_share}, data.test_share={test_share}: each above 0, together below 1"
            )
        self.save_hyperparameters(logger=False)
        self.table = None

    def read(self):
        if self.table is None:  # once: settings_found, setup and preprocessing all need it
            columns, x, labels = read_table(Path(self.hparams.path).expanduser(), self.hparams.label)
            self.class_names = sorted(set(labels))
            y = torch.tensor([self.class_names.index(v) for v in labels])
            self.table = columns, x, y
        return self.table

    def settings_found(self) -> dict:
        columns, _, _ = self.read()
        return {"features": len(columns), "num_classes": len(self.class_names)}

    def class_names_found(self) -> list[str]:
        self.read()
        return self.class_names

    def setup(self, stage=None):
        _, x, y = self.read()
        hp = self.hparams
        if x.shape[1] != hp.features or len(self.class_names) != hp.num_classes:
            raise DatasetError(
                f"{hp.path} has {x.shape[1]} feature columns and {len(self.class_names)} classes, but the config "
                f"says data.features={hp.features} and data.num_classes={hp.num_classes}: leave both null (the file "
                "says)"
            )
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(hp.split_seed))
        n_test = max(1, round(hp.test_share * len(y)))
        n_val = max(1, round(hp.val_share * len(y)))
        index = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
        train = x[index["train"]]
        self.mean, self.std = train.mean(0), train.std(0, unbiased=False).clamp_min(1e-6)  # a constant column: 1e-6
        self.splits = {s: ((x[i] - self.mean) / self.std, y[i]) for s, i in index.items()}
        self.split = split_record(
            {s: [str(int(r) + 2) for r in i] for s, i in index.items()},  # the rows' line numbers in the file
            hp.split_seed,
            f"rows drawn with data.split_seed: val {hp.val_share}, test {hp.test_share}",
        )

    def preprocessing(self) -> dict:
        columns, _, _ = self.read()
        return {"kind": "table", "columns": columns, "class_names": list(self.class_names),
                "mean": self.mean.tolist(), "std": self.std.tolist()}  # fmt: skip

    def batches(self, split: str, size: int, shuffle: bool):
        return TensorBatches(*self.splits[split], size, shuffle, **placement(self.trainer))

    def train_dataloader(self):
        return self.batches("train", self.hparams.batch_size, True)

    def val_dataloader(self):
        return self.batches("val", self.hparams.eval_batch_size or self.hparams.batch_size, False)

    def test_dataloader(self):
        return self.batches("test", self.hparams.eval_batch_size or self.hparams.batch_size, False)
