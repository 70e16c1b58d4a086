"""The core dispatches on the kind of data: a new kind needs its data module (with its Kind) and its configs only."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nnlab.errors import ConfigError
from nnlab.kinds import KINDS, kind
from tests.helpers import ROOT, run_module, train


def test_the_three_kinds_are_registered_and_an_unknown_one_is_named():
    assert {"image", "text", "audio"} <= set(KINDS) and kind("image").name == "image"
    with pytest.raises(ConfigError, match="no kind of data is called 'video'; the kinds are audio, image"):
        kind("video")


@pytest.mark.slow
def test_a_new_kind_trains_tests_and_predicts_with_no_change_to_the_core(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    table = tmp_path / "rows.csv"
    table.write_text("x0,x1,x2,x3,label\n" + "".join(f"{','.join(map(str, r))},{c}\n" for r, c in zip(x, y)))
    conf = tmp_path / "conf"
    (conf / "data").mkdir(parents=True)
    (conf / "model").mkdir()
    (conf / "data" / "table.yaml").write_text(
        f"_target_: tests.newkind.table.TableDataModule\npath: {table}\nbatch_size: 16\n"
    )
    (conf / "model" / "table_net.yaml").write_text(
        "# @package _global_\ndefaults:\n  - /data: table\nmodel:\n  _target_: nnlab.module.Classifier\n"
        "  net: tests.newkind.table.TableNet\n  arch: {features: 4, num_classes: 2, hidden: 16}\n"
        "  optimizer: adam\n  lr: 0.01\n"
        "  weight_decay: 0.0\n  momentum: 0.0\n  scheduler: none\n  warmup_pct: 0.0\n"
    )
    run = tmp_path / "run"
    train(
        "model=table_net",
        f"hydra.searchpath=[file://{conf}]",
        f"hydra.run.dir={run}",
        "trainer.max_epochs=3",
        "logger=csv",
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/acc"] > 0.7 and metrics["train/samples_per_s"] > 0  # Throughput counted the rows
    assert (run / "test_rows.csv").is_file() and (run / "confusion_matrix.png").is_file()  # TestReport asked the kind
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # predict knows nothing of the kind until the checkpoint names it: the module that defines it is imported first
    code = (
        "import sys, tests.newkind.table; from nnlab.predict import main; "
        f"main([{str(run / 'checkpoints' / 'best.ckpt')!r}, '2.0,2.0,0,0', 'one,two'])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.stdout.startswith("high ") and "'one,two' is not a row of numbers" in proc.stderr
    # a kind that reads its inputs itself (read()) has no exported form: one line naming what it lacks
    refused = run_module("nnlab", "export", run / "checkpoints" / "best.ckpt", "--out", tmp_path / "x", check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert refused.stderr.strip().splitlines() == [
        f"error: {run / 'checkpoints' / 'best.ckpt'} reads 'table' data, whose kind does not define raw(), "
        "preparation(), describe(), which nnlab export needs (docs/export.md, Kinds of data of your own)"
    ]
