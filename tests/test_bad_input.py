"""Bad input gets one clear line and loses nothing: the README's "Bad input" table, tried as a user would."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers import ROOT, train
from tests.test_train import TINY_TEXT, run_args

pytestmark = pytest.mark.slow


def one_line_error(proc, *fragments):
    """The run failed with one `Error: ...` line on stderr naming every fragment, and no traceback on the screen."""
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    return errors[0]


def files(run_dir):
    """Every file of a run directory with its bytes (W&B's own folder aside)."""
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and "wandb" not in p.parts
    }


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory, mnist_dir):
    run_dir = tmp_path_factory.mktemp("mlp")
    train("model=mlp", "trainer.max_epochs=2", "logger=csv", *run_args(run_dir, mnist_dir))
    return run_dir


@pytest.fixture
def killed_run(mlp_run, tmp_path):
    """mlp_run as a run killed after its last checkpoint, before it was tested: no metrics.json, so it resumes."""
    run_dir = tmp_path / "killed"
    shutil.copytree(mlp_run, run_dir)
    (run_dir / "metrics.json").unlink()
    return run_dir


# ------------------------------------------------------------------------------------------------ the directory
def test_a_second_run_in_a_running_runs_directory_is_refused_and_changes_nothing(tmp_path, mnist_dir):
    args = [
        "model=mlp",
        "trainer.max_epochs=30",  # still running when the second starts, however slowly that starts (it is stopped)
        "logger=csv",
        "+callbacks.slow._target_=tests.helpers.SlowSteps",
        "+callbacks.slow.seconds=0.2",
        *run_args(tmp_path, mnist_dir),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    first = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while not (tmp_path / "checkpoints" / "last.ckpt").exists():
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.1)
        before = files(tmp_path)
        second = train(*args, "model.lr=0.5", check=False)
        one_line_error(second, f"run directory {tmp_path} is in use by process {first.pid}", "model=mlp")
        after = files(tmp_path)
        assert "lr: 0.5" not in after["config.yaml"].decode() and "model.lr=0.5" not in after["train.log"].decode()
        assert {k: v for k, v in after.items() if k in ("config.yaml", "run.json")} == {
            k: v for k, v in before.items() if k in ("config.yaml", "run.json")
        }
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)


def test_a_new_run_into_a_finished_runs_directory_is_refused(mlp_run, mnist_dir):
    before = files(mlp_run)
    proc = train("model=mlp", "logger=csv", *run_args(mlp_run, mnist_dir), check=False)
    one_line_error(proc, f"{mlp_run} already holds a run", "resume=true")
    assert files(mlp_run) == before


def test_resuming_with_another_model_is_refused_before_anything_is_written(killed_run, mnist_dir):
    before = files(killed_run)
    proc = train("model=cnn", "resume=true", "logger=csv", *run_args(killed_run, mnist_dir), check=False)
    one_line_error(proc, "model.net: 'mlp' in the run, 'cnn' now", "model=mlp")
    assert files(killed_run) == before  # config.yaml, run.json, .hydra/ and train.log as they were


def test_resuming_a_scheduled_run_with_other_epochs_is_refused(killed_run, mnist_dir):
    proc = train(
        "model=mlp", "trainer.max_epochs=5", "resume=true", "logger=csv", *run_args(killed_run, mnist_dir), check=False
    )
    one_line_error(proc, "trainer.max_epochs: 2 in the run, 5 now")


@pytest.mark.parametrize("more", [[], ["model=cnn"], ["trainer.max_epochs=5"]])
def test_resuming_a_finished_run_says_so_and_leaves_every_file_as_it_is(more, mlp_run, mnist_dir):
    """The printed resume line run twice, or with other settings: the run is complete, nothing is tested again."""
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in mlp_run.rglob("*") if p.is_file()}
    proc = train("model=mlp", "resume=true", "logger=csv", *run_args(mlp_run, mnist_dir), *more, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{mlp_run} holds a complete run: nothing to resume. Its metrics: {mlp_run / 'metrics.json'}" in proc.stdout
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in mlp_run.rglob("*") if p.is_file()} == before
    assert "config" not in proc.stdout.split("complete run")[0]  # no config tree, no training


def test_resume_without_its_directory_says_which(tmp_path, mnist_dir):
    proc = train("model=mlp", "resume=true", f"paths.log_dir={tmp_path}", f"paths.data_dir={mnist_dir}", check=False)
    one_line_error(proc, "resume=true continues a run in its own directory: add hydra.run.dir=")
    assert not list(tmp_path.rglob("checkpoints"))


# ---------------------------------------------------------------------------------------------- odd settings
@pytest.mark.parametrize(
    "overrides,fragment",
    [
        (["data.batch_size=0"], "data.batch_size=0: a batch size"),
        (["data.batch_size=-5"], "data.batch_size=-5: a batch size"),
        (["data.eval_batch_size=0"], "data.eval_batch_size=0"),
        (["trainer.max_epochs=0"], "trainer.max_epochs=0 trains nothing"),
        (["trainer.limit_train_batches=0"], "trainer.limit_train_batches=0 trains nothing"),
        (["trainer=gpu"], "no CUDA GPU"),
        (["model.lr=0"], "model.lr=0: the learning rate must be a positive number"),
        (["model.optimizer=rmsprop"], "model.optimizer='rmsprop' is not one of"),
        (["model.arch.dropout=1.5"], "model.arch.dropout=1.5"),
        (["train=false"], "train=false tests a checkpoint: add ckpt_path="),
    ],
)
def test_a_setting_that_cannot_work_is_named_before_anything_is_built(overrides, fragment, tmp_path, mnist_dir):
    proc = train("model=mlp", *run_args(tmp_path, mnist_dir), *overrides, check=False)  # the default W&B logger
    one_line_error(proc, fragment)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "wandb").exists()
    assert "wandb sync" not in proc.stdout


def test_one_cycle_shorter_than_its_warm_up_still_trains(tmp_path, mnist_dir):
    proc = train(
        "model=mlp",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=5",
        "logger=csv",
        *run_args(tmp_path, mnist_dir),
    )
    assert "model.warmup_pct=0.2 of this run's 5 training steps is under one step" in proc.stderr
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs"] == 1


def test_missing_data_is_one_line_with_the_traceback_in_train_log_and_no_wandb_run(tmp_path):
    empty = tmp_path / "nothing"
    proc = train(
        "model=mlp", "data.download=false", f"paths.data_dir={empty}", f"hydra.run.dir={tmp_path / 'run'}", check=False
    )
    one_line_error(proc, "MNIST not found in", "data.download=false", "train.log")
    log = (tmp_path / "run" / "train.log").read_text()
    assert "Traceback" in log and "DatasetError: MNIST not found" in log
    assert not (tmp_path / "run" / "wandb").exists() and "wandb sync" not in proc.stdout
    full = train(
        "model=mlp",
        "data.download=false",
        f"paths.data_dir={empty}",
        f"hydra.run.dir={tmp_path / 'again'}",
        "logger=csv",
        check=False,
        env={"HYDRA_FULL_ERROR": "1"},
    )
    assert full.returncode == 1 and "Traceback" in full.stderr  # everything, for those who ask


# -------------------------------------------------------------------------------------------------- checkpoints
def damage(path, how):
    data = path.read_bytes()
    garbage = {"random": os.urandom(4096), "pickle_header": b"\x80\xd0" + os.urandom(4094)}  # protocol 208: torch warns
    path.write_bytes({"truncate": data[: len(data) // 2], "empty": b"", **garbage}.get(how, b""))


class Gadget:  # pickled into a "checkpoint" that weights_only refuses
    pass


@pytest.mark.parametrize("how", ["truncate", "empty", "random", "pickle_header", "pickle"])
def test_a_damaged_checkpoint_is_named_in_evaluation_predict_and_resume(how, killed_run, mnist_dir, tmp_path):
    run_dir = killed_run
    last = run_dir / "checkpoints" / "last.ckpt"
    if how == "pickle":
        torch.save({"state_dict": {}, "hyper_parameters": {}, "gadget": Gadget()}, last)
    else:
        damage(last, how)
    said = (
        "holds Python objects other than tensors"
        if how == "pickle"
        else ("is empty (0 bytes)" if how == "empty" else "is damaged or not a torch file")
    )
    for proc in (
        train(
            "train=false",
            f"ckpt_path={last}",
            "logger=csv",
            f"paths.data_dir={mnist_dir}",
            f"hydra.run.dir={tmp_path / 'eval'}",
            check=False,
        ),
        subprocess.run(
            [sys.executable, "-m", "nnlab.predict", str(last), "some text"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        ),
    ):
        assert proc.returncode == 1 and str(last) in proc.stderr and said in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr and "weights_only" not in proc.stderr
    before = files(run_dir)
    proc = train(
        "model=mlp", "trainer.max_epochs=2", "resume=true", "logger=csv", *run_args(run_dir, mnist_dir), check=False
    )
    line = one_line_error(proc, str(last), said, "best.ckpt (after epoch")
    after = files(run_dir)
    assert after.pop("train.log").startswith(before.pop("train.log"))  # the failed attempt appended to its log
    assert after == before
    command = line.split("continue from it with ", 1)[1].split(" (details:")[0]
    args = shlex.split(command)
    assert args[:2] == ["python", str(ROOT / "train.py")]
    assert f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}" in args
    if how == "truncate":  # the command it gives works (the same command whatever the damage)
        train(*args[2:])
        assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 2


# ------------------------------------------------------------------------------------------------- evaluation
def test_evaluating_a_checkpoint_records_the_model_it_holds(mlp_run, mnist_dir, tmp_path):
    trained = json.loads((mlp_run / "metrics.json").read_text())
    proc = train(
        "train=false",
        f"ckpt_path={mlp_run / 'checkpoints' / 'best.ckpt'}",
        f"paths.data_dir={mnist_dir}",
        f"hydra.run.dir={tmp_path}",
    )
    config = (tmp_path / "config.yaml").read_text()
    assert (
        "net: mlp" in config
        and "run_name: mlp-" in config
        and "model=mlp" in (tmp_path / ".hydra" / "overrides.yaml").read_text()
    )
    assert "val_size: 100" in config  # the data settings it was trained with
    assert json.loads((tmp_path / "metrics.json").read_text())["test/acc"] == trained["test/acc"]
    assert "wandb sync" in proc.stdout  # evaluated with the default logger: one W&B run, named mlp-<id>


def test_evaluating_a_text_checkpoint_takes_its_data_too(tmp_path, imdb_dir):
    train(
        "experiment=seed_lstm",
        "trainer.max_epochs=1",
        "logger=csv",
        f"hydra.run.dir={tmp_path / 'train'}",
        f"paths.data_dir={imdb_dir}",
        *TINY_TEXT,
    )
    trained = json.loads((tmp_path / "train" / "metrics.json").read_text())
    train(
        "train=false",
        f"ckpt_path={tmp_path / 'train' / 'checkpoints' / 'best.ckpt'}",
        "logger=csv",
        f"paths.data_dir={imdb_dir}",
        f"hydra.run.dir={tmp_path / 'eval'}",
    )
    config = (tmp_path / "eval" / "config.yaml").read_text()
    assert "net: lstm" in config and "vocab_size: 200" in config
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["test/acc"] == trained["test/acc"]


# ------------------------------------------------------------------------------------------------------- noise
def test_a_run_prints_no_noise_and_logs_one_line_per_epoch(tmp_path, mnist_dir):
    proc = train(
        "model=mlp",
        "trainer.max_epochs=2",
        *run_args(tmp_path, mnist_dir),
        env={"WANDB_API_KEY": "0" * 40, "WANDB_MODE": "offline"},
    )
    printed = proc.stdout + proc.stderr
    lightning = (
        "smaller than the logging interval",
        "Tip:",
        "TPU available",
    )  # (the config tree names log_every_n_steps)
    for noise in ("srun", "litlogger", "anonymous setting", "LeafSpec", *lightning):
        assert noise not in printed, noise
    assert "W&B is offline (WANDB_MODE=offline)" in printed
    epochs = [line for line in (tmp_path / "train.log").read_text().splitlines() if "] - epoch " in line]
    assert len(epochs) == 2 and all("train/loss" in e and "val/loss" in e and "val/acc" in e for e in epochs)
    assert "loss=" in printed  # the progress bar shows the running training loss


def test_help_and_cfg_answer_without_loading_torch():
    for flag in ("--help", "--cfg=job"):
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", str(ROOT / "train.py"), flag],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time")}
        assert not imported & {"torch", "lightning", "wandb"}, flag


def test_another_projects_checkpoint_and_a_missing_one_are_named(mlp_run, mnist_dir, tmp_path):
    foreign = tmp_path / "foreign.ckpt"
    torch.save(
        {
            "state_dict": {"layer.weight": torch.zeros(2, 2)},
            "hyper_parameters": {"hidden_dim": 64},
            "epoch": 0,
            "global_step": 0,
            "loops": {},
            "optimizer_states": [],
        },
        foreign,
    )
    proc = train(
        "model=mlp",
        "train=false",
        f"ckpt_path={foreign}",
        "logger=csv",
        f"paths.data_dir={mnist_dir}",
        f"hydra.run.dir={tmp_path / 'eval'}",
        check=False,
    )
    one_line_error(proc, f"{foreign} is not a checkpoint of this project's models")
    proc = train(
        "model=mlp", f"ckpt_path={foreign}", "logger=csv", *run_args(tmp_path / "tune", mnist_dir), check=False
    )  # fine-tuning from it: refused before training, not inside Lightning
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    proc = train(
        "model=mlp",
        "resume=true",
        f"ckpt_path={tmp_path / 'nope.ckpt'}",
        "logger=csv",
        *run_args(tmp_path / "run", mnist_dir),
        check=False,
    )
    one_line_error(proc, "nope.ckpt: that checkpoint does not exist")
