"""The package as a user installs it: the wheel built from this checkout (through its sdist), installed in a fresh
virtual environment outside the repository, gives the `nnlab` command with nnlab's configs inside it; `nnlab train`
keeps data and runs in the working folder; a package of one's own (examples/lenet: a network, its config and a Hydra
search-path plugin) trains, sweeps and predicts through `nnlab train model=lenet` with no file of nnlab changed.

The environment is made as the docs say (`uv build`, then an install of the wheel), from uv's cache: no network (the
dependencies at the versions uv.lock pins, which `.ci/run`'s `uv sync` put in the cache)."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import ROOT, TINY, digit_images, make_mnist

pytestmark = pytest.mark.slow
UV = str(Path(sys.executable).parent / "uv")  # the dev group's uv, the version .ci/run uses
SMALL = [*TINY, "trainer.max_epochs=1", "trainer.limit_train_batches=4", "trainer.limit_val_batches=1",
         "trainer.limit_test_batches=1", "logger=csv"]  # fmt: skip


def run(args, cwd, env=None, timeout=300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh virtual environment holding the wheel and what it needs, outside the repository; its bin/."""
    root = tmp_path_factory.mktemp("installed")
    run([UV, "build", "--offline", "--out-dir", root / "dist", ROOT], cwd=root)
    (wheel,) = (root / "dist").glob("nnlab-*.whl")
    run([UV, "venv", "--python", sys.executable, root / "venv"], cwd=root)
    python = root / "venv" / "bin" / "python"
    lock = root / "pylock.toml"
    export = ["--format", "pylock.toml", "--no-emit-project", "--no-dev", "--extra", "train"]  # what training needs
    run([UV, "export", "--frozen", *export, "-o", lock], cwd=ROOT)
    run([UV, "pip", "install", "--offline", "--python", python, "-r", lock], cwd=root)
    run([UV, "pip", "install", "--offline", "--python", python, "--no-deps", wheel], cwd=root)
    run([UV, "pip", "check", "--python", python], cwd=root)  # the wheel's requirements are what the lock installed
    return root / "venv" / "bin"


def user_env(bin_dir: Path) -> dict:
    """A shell in which the virtual environment is activated: nothing of this checkout on any path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}", "VIRTUAL_ENV": str(bin_dir.parent),
            "WANDB_MODE": "offline"}  # fmt: skip


@pytest.fixture
def work(tmp_path) -> Path:
    """An empty working folder with MNIST where `nnlab train` looks by default: ./data/MNIST/raw."""
    folder = tmp_path / "work"
    make_mnist(folder / "data")
    return folder


def digit_png(path: Path) -> Path:
    images, _ = digit_images(1, seed=7)
    Image.fromarray(images[0]).save(path)
    return path


def the_run(work: Path) -> Path:
    (metrics,) = (work / "outputs").glob("*/*/metrics.json")
    return metrics.parent


def test_the_wheel_installs_the_nnlab_command_which_trains_in_the_working_folder_and_predicts(venv, work):
    env = user_env(venv)
    where = run([venv / "python", "-c", "import nnlab.train as t; print(t.conf_dir())"], cwd=work, env=env)
    conf = Path(where.stdout.strip())
    assert conf.is_relative_to(venv.parent) and (conf / "train.yaml").is_file()  # the configs came with the wheel
    assert not (conf / "local").exists()
    usage = run(["nnlab", "--help"], cwd=work, env=env).stdout
    assert all(f"  {name} " in usage for name in ("train", "predict", "runs", "report"))
    assert run(["python", "-m", "nnlab", "--help"], cwd=work, env=env).stdout == usage
    composed = run(["nnlab", "train", "--cfg", "job", "--resolve"], cwd=work, env=env).stdout
    assert "  data_dir: data\n" in composed and "  log_dir: outputs\n" in composed  # the working folder's
    trained = run(["nnlab", "train", "model=mlp", *SMALL], cwd=work, env=env)
    printed = trained.stdout + trained.stderr
    run_dir = the_run(work)
    said = f"[nnlab][INFO] - Data in {work / 'data'} (paths.data_dir); this run in {run_dir} (paths.log_dir=outputs)"
    assert said in trained.stdout.splitlines()[0], printed[-3000:]  # the run's first line
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert sorted(p.name for p in work.iterdir()) == ["data", "outputs"]  # nothing else left in the folder
    image = digit_png(work / "digit.png")
    said = run(["nnlab", "predict", run_dir / "checkpoints" / "best.ckpt", image], cwd=work, env=env).stdout
    assert said.strip().endswith("digit.png") and said.count("\t") == 1
    listed = run(["nnlab", "runs"], cwd=work, env=env).stdout
    assert run_dir.name in listed and "complete" in listed
    # a config folder of one's own, added to the search path by Hydra's --config-dir (-cd): a smaller MLP
    mine = work / "myconf" / "model"
    mine.mkdir(parents=True)
    (mine / "small_mlp.yaml").write_text("# @package _global_\ndefaults:\n  - mlp\nmodel:\n  arch:\n    hidden: [32]\n")
    run(
        ["nnlab", "train", "-cd", "myconf", "model=small_mlp", *SMALL, "hydra.run.dir=outputs/small"], cwd=work, env=env
    )
    assert "hidden:\n    - 32\n" in (work / "outputs" / "small" / "config.yaml").read_text()
    # swept, the command that reproduces its best trial keeps the folder (the sweep's joins the search path)
    swept = run(["nnlab", "train", "-m", "-cd", "myconf", "model=small_mlp", *SMALL, "model.lr=1e-3,1e-9",
                 "hydra.sweeper.study_name=small"], cwd=work, env=env).stdout  # fmt: skip
    again = next(line.split("reproduce: ", 1)[1] for line in swept.splitlines() if "reproduce: " in line)
    sweep = work / "outputs" / "sweeps" / "small"
    assert again == f"nnlab train -cd myconf 'hydra.searchpath=[file://{sweep}]' experiment=best"
    assert f"# {again}\n" in (sweep / "experiment" / "best.yaml").read_text()
    best = run([*shlex.split(again), "--cfg", "job"], cwd=work, env=env).stdout
    assert "hidden:\n    - 32\n" in best and "lr: 0.001\n" in best  # the folder's model, the best trial's value
    bad = subprocess.run(["nnlab", "trian"], cwd=work, env=env, capture_output=True, text=True)
    assert (
        bad.returncode == 2
        and bad.stderr
        == "Error: nnlab has no command 'trian': one of train, predict, export, demo, runs, report (nnlab --help)\n"
    )


def test_a_package_of_ones_own_trains_sweeps_and_predicts_through_nnlab_train(venv, work):
    """examples/lenet, installed beside nnlab: its search-path plugin puts its config folder on Hydra's search path,
    so `model=lenet` names its network; nothing of nnlab is edited or copied."""
    env = user_env(venv)
    run([UV, "pip", "install", "--offline", "--python", venv / "python", "--no-deps", ROOT / "examples" / "lenet"],
        cwd=work.parent)  # fmt: skip
    run(["nnlab", "train", "model=lenet", *SMALL], cwd=work, env=env)
    run_dir = the_run(work)
    config = (run_dir / "config.yaml").read_text()
    assert "net: lenet.nets.LeNet5" in config
    checkpoint = run_dir / "checkpoints" / "best.ckpt"
    said = run(["nnlab", "predict", checkpoint, digit_png(work / "digit.png")], cwd=work, env=env).stdout
    assert said.strip().endswith("digit.png")
    # a sweep of it: one study, two trials, their summary and report
    swept = run(["nnlab", "train", "-m", "model=lenet", *SMALL, "model.lr=1e-3,3e-3",
                 "hydra.sweeper.study_name=lenet_lr"], cwd=work, env=env, timeout=600)  # fmt: skip
    sweep = work / "outputs" / "sweeps" / "lenet_lr"
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0", "1"]
    assert all(json.loads((sweep / t / "metrics.json").read_text())["epochs"] == 1 for t in ("0", "1"))
    best = (sweep / "experiment" / "best.yaml").read_text()
    assert f"# nnlab train -cd {sweep} experiment=best" in best  # the command that reproduces it, as typed
    assert "Interrupted" not in swept.stdout and "Report: " in swept.stdout
    run(["nnlab", "report", sweep], cwd=work, env=env)
    assert np.isfinite(json.loads((run_dir / "metrics.json").read_text())["test/acc"])


def test_python_train_py_started_from_another_folder_keeps_data_and_runs_beside_it(tmp_path):
    """A clone's train.py, started from elsewhere: data/ and outputs/ beside it, not in the working folder (which it
    leaves as it was); started from the clone, the same folders, named as they always were."""
    env = {k: v for k, v in os.environ.items() if k != "NNLAB_DATA_DIR"}
    composed = run([sys.executable, ROOT / "train.py", "--cfg", "job", "--resolve"], cwd=tmp_path, env=env).stdout
    assert f"  data_dir: {ROOT / 'data'}\n" in composed and f"  log_dir: {ROOT / 'outputs'}\n" in composed
    assert list(tmp_path.iterdir()) == []
    composed = run([sys.executable, "train.py", "--cfg", "job", "--resolve"], cwd=ROOT, env=env).stdout
    assert "  data_dir: data\n" in composed and "  log_dir: outputs\n" in composed
