"""The worked examples of extending nnlab (examples/, README Extending) keep working, with no file of nnlab edited:
each trains through train.py and predicts through nnlab.predict."""

import json
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT, TINY_TEXT, make_text_table, train, user_env

pytestmark = pytest.mark.slow
SMALL_GRU = ["model=gru", "model.arch.embed_dim=16", "model.arch.hidden=8", "trainer.max_epochs=3", "logger=csv"]


def test_a_gru_of_ones_own_trains_on_imdb_with_adversarial_training_and_predicts(tmp_path, imdb_dir):
    """examples/gru.py and conf/model/gru.yaml: `model=gru`, and the adversarial objective on its embeddings."""
    run_dir = tmp_path / "imdb"
    train(*SMALL_GRU, "objective=adversarial", *TINY_TEXT, f"hydra.run.dir={run_dir}", f"paths.data_dir={imdb_dir}",
          f"paths.cache_dir={tmp_path / 'cache'}")  # fmt: skip
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and 0 <= metrics["test/acc"] <= 1
    ckpt = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["net"] == "examples.gru.GRU"
    assert ckpt["hyper_parameters"]["objective"]["name"] == "adversarial"
    proc = subprocess.run(
        [sys.executable, "-m", "nnlab.predict", str(run_dir / "checkpoints" / "best.ckpt"), "a dull boring mess"],
        capture_output=True, text=True, env=user_env(), timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
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
