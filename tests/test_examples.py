"""The worked examples of extending nnlab (nnlab.examples, the docs' Extending page) keep working: each trains
through train.py and predicts through nnlab.predict. A network: nnlab/examples/gru.py and conf/model/gru.yaml. A kind
of data: nnlab/examples/numeric_table.py and conf/data/numeric_table.yaml. A package of one's own outside nnlab
(examples/lenet) is tests/test_package.py's."""

import json

import pytest
import torch

from tests.helpers import TINY_TEXT, make_numeric_table, make_text_table, predict, run_module, train

pytestmark = pytest.mark.slow
SMALL_GRU = ["model=gru", "model.arch.embed_dim=16", "model.arch.hidden=8", "trainer.max_epochs=3", "logger=csv"]


def test_a_gru_of_ones_own_trains_on_imdb_with_adversarial_training_and_predicts(tmp_path, imdb_dir):
    """nnlab/examples/gru.py and conf/model/gru.yaml: `model=gru`, and the adversarial objective on its embeddings."""
    run_dir = tmp_path / "imdb"
    train(*SMALL_GRU, "objective=adversarial", *TINY_TEXT, f"hydra.run.dir={run_dir}", f"paths.data_dir={imdb_dir}",
          f"paths.cache_dir={tmp_path / 'cache'}")  # fmt: skip
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and 0 <= metrics["test/acc"] <= 1
    ckpt = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["net"] == "nnlab.examples.gru.GRU"
    assert ckpt["hyper_parameters"]["objective"]["name"] == "adversarial"
    proc = predict(run_dir / "checkpoints" / "best.ckpt", "a dull boring mess")
    assert proc.stdout.split()[0] in ("positive", "negative"), proc.stdout


def test_a_gru_of_ones_own_trains_on_a_table_of_ones_own_texts(tmp_path):
    table = make_text_table(tmp_path / "reviews.csv", rows=60)
    run_dir = tmp_path / "table"
    train(*SMALL_GRU, "data=text_table", f"data.path={table}", "data.vocab_size=200", "data.min_frequency=1",
          "data.batch_size=8", f"hydra.run.dir={run_dir}", f"paths.data_dir={tmp_path}",
          f"paths.cache_dir={tmp_path / 'cache'}")  # fmt: skip
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and 0 <= metrics["test/acc"] <= 1
    assert json.loads((run_dir / "run.json").read_text())["split"]["counts"]["test"] > 0


SMALL_MLP = ["model=mlp", "data=numeric_table", "model.arch.hidden=[32]", "data.batch_size=16", "logger=csv"]


def test_numeric_features_from_a_csv_table_train_the_mlp_and_predict_from_a_row(tmp_path):
    """nnlab/examples/numeric_table.py and conf/data/numeric_table.yaml: the MLP on rows of numbers, the number of
    features and of classes found in the file, standardised as the training rows were (in training and in predict)."""
    table = make_numeric_table(tmp_path / "flowers.csv")
    run_dir = tmp_path / "run"
    train(*SMALL_MLP, f"data.path={table}", "data.label=species", "trainer.max_epochs=40", f"hydra.run.dir={run_dir}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 40 and metrics["test/acc"] >= 0.95, metrics
    config = (run_dir / "config.yaml").read_text()
    assert "features: 3" in config and "num_classes: 3" in config and "in_features: 3" in config  # found in the file
    ckpt = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    assert ckpt["preprocessing"]["kind"] == "table" and ckpt["preprocessing"]["columns"] == ["x", "y", "noise"]
    rows = (run_dir / "test_rows.csv").read_text().splitlines()
    assert rows[0] == "x,y,noise,label,predicted,probability" and len(rows) == 1 + 36  # in the file's units
    proc = predict(run_dir / "checkpoints" / "best.ckpt", "0.1,0.2,0.5", "6.1,-3.9,0", "6.1;-3.9;0", "1,2", "a,b,c",
                   check=False)  # fmt: skip
    lines = proc.stdout.splitlines() + proc.stderr.splitlines()
    assert proc.returncode == 1, proc.stderr  # two rows could not be read: said, the others classified
    assert lines[0].startswith("setosa ") and lines[1].startswith("virginica ") and lines[2].startswith("virginica ")
    assert "error: '1,2': give 3 finite numbers, for x, y, noise" in proc.stderr
    assert "error: 'a,b,c' is not a row of numbers: give 3, comma-separated" in proc.stderr
    # exported with no edit but the kind's raw(), preparation() and describe(): the graph standardises the rows
    out = tmp_path / "export"
    run_module("nnlab.export", run_dir / "checkpoints" / "best.ckpt", "--out", out, timeout=300)
    manifest = json.loads((out / "nnlab.json").read_text())
    assert manifest["kind"] == "table" and manifest["input"]["shape"] == ["batch", 3], manifest["input"]
    assert manifest["onnx"]["max_logit_difference"] <= 1e-4
    exported = predict(out, "0.1,0.2,0.5", "6.1,-3.9,0", "1,2", check=False)
    assert exported.stdout.splitlines() == [proc.stdout.splitlines()[i] for i in (0, 1)], exported.stderr
    assert "error: '1,2': give 3 finite numbers, for x, y, noise" in exported.stderr


@pytest.mark.parametrize(
    "content,said",
    [
        ("x,y,label\n1,2,a\n3,abc,b\n5,6,a\n", "line 3, column 'y': 'abc' is not a number"),
        ("x,y,kind\n1,2,a\n3,4,b\n5,6,a\n", "no column 'label' in its header (x, y, kind): name the label's column"),
        ("x,y,label\n1,2,a\n3,4,\n5,6,a\n", "line 3: no label in column 'label'"),
        ("x,y,label\n1,2,a\n", "1 rows; training, validation and test need at least one each"),
    ],
)
def test_a_table_that_is_not_rows_of_numbers_is_one_line_naming_the_line_and_column(tmp_path, content, said):
    table = tmp_path / "t.csv"
    table.write_text(content)
    proc = train(*SMALL_MLP, f"data.path={table}", f"hydra.run.dir={tmp_path / 'run'}", check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert proc.returncode == 1 and len(errors) == 1 and said in errors[0] and str(table) in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
