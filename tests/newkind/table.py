"""A kind of data the project does not ship, added the way a user would: this file and two configs, no other edit.

Rows of numeric features in a CSV (`x0,x1,...,label`); the kind says how its test rows are shown and how predict
reads a CSV row. tests/test_kinds.py trains it with train.py and predicts with nnlab.predict.
"""

import csv
from pathlib import Path

import lightning as L
import torch
from torch import nn

from nnlab.data.batches import TensorBatches, placement
from nnlab.kinds import Kind, PredictError


class TableKind(Kind):
    name = "table"
    takes_paths = False  # predict reads each input as one row: "0.1,2.0,..."

    def show(self, samples, names, preprocessing, out_dir):
        path = Path(out_dir) / "test_rows.csv"
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows([[*x.tolist(), names[label], names[int(p.argmax())]] for x, label, p, _ in samples])
        return {}

    def predict(self, model, preprocessing, inputs, batch_size=256):
        out = []
        for row in inputs:
            try:
                x = torch.tensor([[float(v) for v in row.split(",")]])
            except ValueError:
                out.append(PredictError(f"{row!r} is not a row of numbers"))
                continue
            out.append((model.probabilities(model(x)), None))
        return out


class TableNet(nn.Module):
    reads = "table"

    def __init__(self, features: int, num_classes: int, hidden: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.layers(x)


class TableDataModule(L.LightningDataModule):
    kind = "table"

    def __init__(self, path: str, batch_size: int):
        super().__init__()
        self.save_hyperparameters(logger=False)

    def setup(self, stage=None):
        with open(self.hparams.path) as f:
            rows = list(csv.reader(f))[1:]
        x = torch.tensor([[float(v) for v in r[:-1]] for r in rows])
        y = torch.tensor([int(r[-1]) for r in rows])
        self.class_names = ("low", "high")
        n = len(y)
        self.splits = {
            "train": (x[: n // 2], y[: n // 2]),
            "val": (x[n // 2 :], y[n // 2 :]),
            "test": (x[n // 2 :], y[n // 2 :]),
        }

    def preprocessing(self):
        return {"kind": "table", "class_names": list(self.class_names)}

    def _batches(self, split, shuffle):
        return TensorBatches(*self.splits[split], self.hparams.batch_size, shuffle, **placement(self.trainer))

    def train_dataloader(self):
        return self._batches("train", True)

    def val_dataloader(self):
        return self._batches("val", False)

    def test_dataloader(self):
        return self._batches("test", False)
