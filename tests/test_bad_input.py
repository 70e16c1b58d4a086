"""Bad input gets one clear line and loses nothing: docs/troubleshooting.md's table, tried as a user would."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import ODD, ROOT, TINY, TINY_TEXT, paste, predict, run_args, start, train

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


IMPORTS_SHOWN = {"PYTHONPROFILEIMPORTTIME": "1"}  # Python's -X importtime: every import on stderr


def imported(proc) -> set[str]:
    """The modules a process started with IMPORTS_SHOWN imported."""
    return {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time")}


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
    first = start(*args, output=Path(os.devnull))  # the run directory holds only what the run writes
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


@pytest.mark.parametrize("more", [[], ["model=cnn", "trainer.max_epochs=5"]])
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


def test_a_run_never_starts_in_a_folder_of_your_own_files(tmp_path, mnist_dir):
    mine = tmp_path / "mine"
    mine.mkdir()
    for name, data in {"config.yaml": b"lr: 1\n", "curves.png": b"\x89PNG my plot", "train.log": b"my notes\n"}.items():
        (mine / name).write_bytes(data)
    before = files(mine)
    for resume in ([], ["resume=true"]):  # resume=true too: a folder that holds no run is not one to continue
        proc = train("model=mlp", "logger=csv", *run_args(mine, mnist_dir), *resume, check=False, env=IMPORTS_SHOWN)
        one_line_error(proc, f"{mine} is not empty (config.yaml, curves.png, train.log)", "new or empty folder")
        assert files(mine) == before and sorted(p.name for p in mine.iterdir()) == sorted(before)
        assert not imported(proc) & {"torch", "lightning"}  # answered before the heavy imports


def planted(run_dir: Path, name: str, victim: Path):
    """A link under a name the run writes, to a file (or folder) of someone else's."""
    path = run_dir / name
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    path.symlink_to(victim)


def test_links_planted_in_a_run_directory_are_refused_and_nothing_is_written_through_them(
    killed_run, mnist_dir, tmp_path
):
    names = ["train.log", "metrics.json", "config.yaml", "run.json", "end.json", "checkpoints", ".hydra"]
    victims = {}
    for name in names:  # each to a file (or a folder) of someone else's
        victim = tmp_path / f"victim-{name.strip('.')}"
        if name in ("checkpoints", ".hydra"):
            victim.mkdir()
            (victim / "last.ckpt").write_bytes(b"mine")
        else:
            victim.write_bytes(b"mine")
        planted(killed_run, name, victim)
        victims[name] = victim
    proc = train("model=mlp", "trainer.max_epochs=2", "resume=true", "logger=csv", *run_args(killed_run, mnist_dir),
                 check=False)  # fmt: skip
    line = one_line_error(
        proc, f"run directory {killed_run} holds {len(names)} symbolic link(s) that nnlab did not make"
    )
    assert " -> " in line and "Remove them" in line
    for victim in victims.values():
        assert (victim / "last.ckpt" if victim.is_dir() else victim).read_bytes() == b"mine"
        assert not victim.is_dir() or [p.name for p in victim.iterdir()] == ["last.ckpt"]


def test_a_link_planted_as_a_new_runs_lock_is_refused(tmp_path, mnist_dir):
    victim = tmp_path / "victim"
    victim.write_bytes(b"mine")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").symlink_to(victim)
    proc = train("model=mlp", "logger=csv", *run_args(tmp_path / "run", mnist_dir), check=False)
    one_line_error(proc, f"{tmp_path / 'run' / '.lock'} is a symbolic link (to {victim})")
    assert victim.read_bytes() == b"mine"


def test_an_outputs_folder_others_can_write_to_is_warned_about(tmp_path, mnist_dir):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp
    proc = train("model=mlp", "trainer.fast_dev_run=true", "logger=csv", f"paths.log_dir={shared}",
                 f"paths.data_dir={mnist_dir}", *TINY)  # fmt: skip
    assert f"{shared} can be written by other users" in proc.stdout
    from nnlab.run.directory import shared_root  # the folders of every other test's runs are the user's own

    mine = tmp_path / "mine"
    (mine / "day" / "run").mkdir(parents=True)
    assert shared_root(mine / "day" / "run", mine) is None
    (mine / "day").chmod(0o775)  # the group's too
    assert shared_root(mine / "day" / "run", mine) == mine / "day"


# A folder name with what shells and Hydra's override grammar treat specially


def test_the_commands_a_run_prints_run_when_pasted_for_any_folder_name(tmp_path, mnist_dir):
    from nnlab.commands import override

    run_dir = tmp_path / ODD / "run"
    args = ["model=mlp", "trainer.max_epochs=2", *TINY, f"paths.data_dir={mnist_dir}",
            "+callbacks.signal._target_=tests.helpers.SignalAt", "+callbacks.signal.step=3",
            override("hydra.run.dir", run_dir)]  # fmt: skip
    proc = train(*args, check=False)  # W&B offline: its upload line too
    assert proc.returncode == 143, proc.stderr[-3000:]
    (line,) = [ln for ln in proc.stdout.splitlines() if "continue with: " in ln]
    pasted = line.split("continue with: ", 1)[1]
    again = paste(pasted)
    assert again.returncode == 0, again.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["resumed_from"] == str(run_dir / "checkpoints" / "last.ckpt")
    for printed in (proc.stdout, again.stdout):  # the upload line: its path is one word, the run's own
        (sync,) = [ln for ln in printed.splitlines() if "upload this run with: wandb sync " in ln]
        words = subprocess.run(["bash", "-c", "printf '%s\\n' " + sync.split("wandb sync ", 1)[1]],
                               capture_output=True, text=True, check=True).stdout.splitlines()  # fmt: skip
        assert len(words) == 1 and Path(words[0]).parent == run_dir / "wandb" and Path(words[0]).is_dir()


def test_resume_without_a_directory_names_the_latest_as_an_override_to_paste(tmp_path, mnist_dir):
    from nnlab.commands import override

    log_dir = tmp_path / ODD
    train("model=mlp", "trainer.fast_dev_run=true", "logger=csv", override("paths.log_dir", log_dir),
          f"paths.data_dir={mnist_dir}", *TINY)  # fmt: skip
    proc = train("model=mlp", "resume=true", override("paths.log_dir", log_dir), f"paths.data_dir={mnist_dir}",
                 check=False)  # fmt: skip
    line = one_line_error(proc, "resume=true continues a run in its own directory")
    (latest,) = log_dir.glob("*/*")  # the refused command left no folder of its own
    word = line.split("(the latest run here: ", 1)[1][:-1]
    (parsed,) = shlex.split(word)
    assert parsed == override("hydra.run.dir", latest)


# ---------------------------------------------------------------------------------------------- odd settings
@pytest.mark.parametrize(
    "overrides,fragment",
    [
        (["data.batch_size=0"], "data.batch_size=0: a batch size, a whole number of samples, at least 1"),
        (["data.batch_size=-5"], "data.batch_size=-5: a batch size"),
        (["data.eval_batch_size=0"], "data.eval_batch_size=0"),
        (["trainer.max_epochs=0"], "trainer.max_epochs=0: a whole number of epochs, at least 1 (-1: no limit; to test"),
        (["trainer.max_epochs=abc"], "trainer.max_epochs=abc: a whole number of epochs"),
        (["trainer.max_epochs=1.5"], "trainer.max_epochs=1.5: a whole number of epochs"),
        (["seed=abc"], "seed=abc: a whole number from 0 to 4294967295"),
        (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0: a whole number of batches per"),
        (["trainer.limit_train_batches=0"], "trainer.limit_train_batches=0: a number of batches, at least 1, or a"),
        (["trainer.limit_train_batches=abc"], "trainer.limit_train_batches=abc: a number of batches"),
        (["trainer=gpu"], "no CUDA GPU"),
        (["model.lr=0"], "model.lr=0: the learning rate, a number above 0"),
        (["model.optimizer=sgd"], "model.optimizer is now optim=sgd: the optimizer and the schedule are config"),
        (["model.optim.weight_decay=-1"], "model.optim.weight_decay=-1: weight decay, a number, 0 or more"),
        (["model.arch.dropout=1.5"], "model.arch.dropout=1.5: a dropout rate, at least 0 and below 1"),
        (["train=false"], "train=false tests a checkpoint: add ckpt_path="),
    ],
)
def test_a_setting_that_cannot_work_is_named_before_anything_is_built(overrides, fragment, tmp_path, mnist_dir):
    proc = train("model=mlp", *run_args(tmp_path, mnist_dir), *overrides, check=False, env=IMPORTS_SHOWN)
    one_line_error(proc, fragment)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "wandb").exists()
    assert "wandb sync" not in proc.stdout
    # answered before the heavy imports: torch only where the answer needs it (is there a GPU?)
    assert not imported(proc) & ({"lightning", "wandb"} | ({"torch"} if overrides != ["trainer=gpu"] else set()))


def test_one_cycle_shorter_than_its_warm_up_still_trains(tmp_path, mnist_dir):
    proc = train(
        "model=mlp",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=5",
        "logger=csv",
        *run_args(tmp_path, mnist_dir),
    )
    assert "model.sched.warmup_pct=0.2 of this run's 5 training steps is under one step" in proc.stderr
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
    assert "├──" not in proc.stdout and len(proc.stdout.splitlines()) < 15  # no config tree before the error


def test_a_data_folder_that_is_a_file_is_one_line(tmp_path):
    afile = tmp_path / "data.tar"
    afile.write_bytes(b"not a folder")
    proc = train("model=mlp", f"hydra.run.dir={tmp_path / 'run'}", check=False, env={"NNLAB_DATA_DIR": str(afile)})
    one_line_error(proc, f"NNLAB_DATA_DIR={afile} (paths.data_dir) is a file, not a folder")


def test_mnist_as_its_four_gz_downloads_is_read(tmp_path, mnist_dir):
    import gzip

    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for path in (mnist_dir / "MNIST" / "raw").iterdir():
        (raw / f"{path.name}.gz").write_bytes(gzip.compress(path.read_bytes()))
    train("model=mlp", "trainer.fast_dev_run=true", "logger=csv", *TINY, f"paths.data_dir={tmp_path / 'data'}",
          f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert (raw / "train-images-idx3-ubyte").read_bytes() == (
        mnist_dir / "MNIST/raw/train-images-idx3-ubyte"
    ).read_bytes()
    (raw / "t10k-labels-idx1-ubyte").unlink()
    packed = raw / "t10k-labels-idx1-ubyte.gz"
    packed.write_bytes(packed.read_bytes()[:30])  # cut short
    proc = train("model=mlp", *TINY, f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'again'}",
                 check=False)  # fmt: skip
    one_line_error(proc, f"{packed} cannot be decompressed", "cut short or not a gzip file")
    assert not (raw / "t10k-labels-idx1-ubyte").exists()


def test_speech_commands_twelve_class_task_on_a_set_without_its_words_is_one_line(tmp_path):
    from tests.helpers import make_speech_commands

    root = make_speech_commands(tmp_path / "speech")
    words = root / "SpeechCommands" / "speech_commands_v0.02"
    for word in ("yes", "no", "up"):
        shutil.rmtree(words / word)
    proc = train("model=speech_rnn", "data.labels=v12", f"paths.data_dir={root}", f"hydra.run.dir={tmp_path / 'run'}",
                 check=False)  # fmt: skip
    said = ("data.labels=v12 is Speech Commands' 12-class task", "holds none of them (its words: cat, dog)")
    one_line_error(proc, *said, "data.labels=folder")


def test_more_cpu_processes_than_cores_are_warned_about(tmp_path):
    cores = len(os.sched_getaffinity(0))
    proc = train("model=mlp", "trainer=ddp_cpu", f"trainer.devices={cores + 2}", f"paths.data_dir={tmp_path / 'none'}",
                 "data.download=false", f"hydra.run.dir={tmp_path / 'run'}", check=False)  # fmt: skip
    said = f"trainer.devices={cores + 2} starts {cores + 2} training processes on the CPU, which has {cores} core(s)"
    assert said in proc.stdout  # said before anything starts (here the data is missing too)


# ----------------------------------------------------------------------------------------------- batch statistics
def test_a_last_training_batch_of_one_sample_joins_the_one_before(tmp_path, mnist_dir):
    """500 training images in batches of 499 (MNIST's 55,000 in batches of 679 alike): BatchNorm would see 1."""
    train(
        "model=mlp", "trainer.max_epochs=1", "data.val_size=100", "data.batch_size=499", *run_args(tmp_path, mnist_dir)
    )
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs"] == 1


def test_batches_of_one_sample_with_batch_norm_are_refused_before_training(tmp_path, mnist_dir):
    proc = train("model=mlp", *run_args(tmp_path, mnist_dir), "data.batch_size=1", check=False)
    one_line_error(proc, "model.net=mlp normalises by batch statistics (BatchNorm)", "data.batch_size=1",
                   "data.batch_size=2 or more, or model.arch.batch_norm=false")  # fmt: skip
    assert not (tmp_path / "checkpoints").exists()
    train("model=mlp", *run_args(tmp_path / "off", mnist_dir), "data.batch_size=1", "model.arch.batch_norm=false",
          "trainer.limit_train_batches=3", "trainer.max_epochs=1")  # fmt: skip


# ---------------------------------------------------------------------------------------------------- schedules
def test_a_time_limit_sizes_the_schedule_and_the_early_stop_is_said(tmp_path, mnist_dir):
    """trainer.max_epochs=1000000000 with a 6-second limit: the one-cycle schedule runs over the 6 seconds (its peak,
    model.lr, and down), where sized by the epochs it stayed at its warm-up floor, lr/25."""
    proc = train("model=mlp", "trainer.max_epochs=1000000000", "+trainer.max_time=00:00:00:06", "budget.min_steps=0",
                 *[a for a in run_args(tmp_path, mnist_dir) if not a.startswith("trainer.max_epochs")])  # fmt: skip
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    lr = 2e-3  # conf/model/mlp.yaml
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]
    (curves,) = [v for k, v in state.items() if k.startswith("LearningCurves")]
    rates = [rate for _, rate in curves["rates"]]  # every 10 optimizer steps
    assert max(rates) > 0.9 * lr and rates[-1] < 0.5 * lr, rates  # up to the peak and down: not stuck at lr / 25
    assert metrics["stopped_early"]["by"] == "max_time"
    assert "training stopped early: the time limit, trainer.max_time" in proc.stdout


def test_a_schedule_without_a_length_is_refused(tmp_path, mnist_dir):
    proc = train("model=mlp", *run_args(tmp_path, mnist_dir), "trainer.max_epochs=-1", check=False)
    one_line_error(proc, "sched=onecycle runs over the whole training", "trainer.max_epochs=-1",
                   "trainer.max_time")  # fmt: skip


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
        predict(last, "some text", check=False),
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


def digits_folder(root: Path, names=tuple("0123456789"), per_class=12) -> Path:
    """An image folder of MNIST-like grey 28x28 digits (tests.helpers.digit_images), one folder per class name."""
    from PIL import Image

    from tests.helpers import digit_images

    images, labels = digit_images(per_class * 20, seed=3)
    for i, name in enumerate(names):
        (root / name).mkdir(parents=True, exist_ok=True)
        for j, image in enumerate(images[labels == i][:per_class]):
            Image.fromarray(image).save(root / name / f"{j}.png")
    return root


@pytest.mark.parametrize(
    "data,said",
    [
        (["data=image_folder", "data.path={folder3}"],
         "classifies 10 classes (0, 1, 2, 3, 4, 5, ...); data=image_folder holds 3 classes (a, b, c)"),
        (["data=image_folder", "data.path={folder10}", "data.channels=3"],
         "reads 1-channel 28x28 images; data=image_folder gives 3-channel 28x28 images: test it with data.channels=1"),
        (["data=image_folder", "data.path={named}"],
         "classifies 10 classes (0, 1, 2, 3, 4, 5, ...); data=image_folder holds 10 classes (d0, d1, d2, d3, d4, d5"),
    ],
)  # fmt: skip
def test_a_checkpoint_tested_on_data_it_does_not_fit_is_one_line_naming_both(data, said, mlp_run, tmp_path):
    folders = {
        "folder3": digits_folder(tmp_path / "three", names=("a", "b", "c")),
        "folder10": digits_folder(tmp_path / "ten"),
        "named": digits_folder(tmp_path / "named", names=tuple(f"d{i}" for i in range(10))),
    }
    proc = train("train=false", f"ckpt_path={mlp_run / 'checkpoints' / 'best.ckpt'}", "logger=csv",
                 f"hydra.run.dir={tmp_path / 'eval'}", f"paths.data_dir={tmp_path}",
                 *[d.format(**folders) for d in data], check=False)  # fmt: skip
    one_line_error(proc, f"checkpoint {mlp_run / 'checkpoints' / 'best.ckpt'} ", said)
    assert "├──" not in proc.stdout  # said before the config tree, before any test step


def test_a_checkpoint_tested_on_other_data_that_fits_reads_it_as_it_was_trained(mlp_run, tmp_path):
    """An MNIST MLP on a folder of digit images: read as 1-channel 28x28 images (the checkpoint's), tested."""
    folder = digits_folder(tmp_path / "digits")
    train("train=false", f"ckpt_path={mlp_run / 'checkpoints' / 'best.ckpt'}", "logger=csv", "data=image_folder",
          f"data.path={folder}", f"hydra.run.dir={tmp_path / 'eval'}", f"paths.data_dir={tmp_path}")  # fmt: skip
    config = (tmp_path / "eval" / "config.yaml").read_text()
    assert "channels: 1" in config and "image_size: 28" in config
    assert 0 <= json.loads((tmp_path / "eval" / "metrics.json").read_text())["test/acc"] <= 1


def test_testing_a_checkpoint_on_data_it_trained_on_says_how_much(tmp_path):
    """Split by hash: a grown folder keeps its test images out of training, so testing an older checkpoint on it
    overlaps nothing; another data.split_seed draws another split, and the overlap is said and recorded."""
    folder = digits_folder(tmp_path / "digits", per_class=15)
    args = ["model=mlp", "data=image_folder", f"data.path={folder}", "logger=csv", f"paths.data_dir={tmp_path}",
            "trainer.max_epochs=1", "data.batch_size=16"]  # fmt: skip
    train(*args, f"hydra.run.dir={tmp_path / 'train'}")
    trained = torch.load(tmp_path / "train" / "checkpoints" / "best.ckpt", weights_only=True)["nnlab"]
    assert trained["split"] == json.loads((tmp_path / "train" / "run.json").read_text())["split"]
    assert trained["split"]["counts"]["train"] == len(trained["trained_on"])
    from PIL import Image

    for i in range(10):  # the folder grows
        Image.fromarray(np.full((28, 28), 20 * i, dtype=np.uint8)).save(folder / str(i) / "new.png")
    ckpt = tmp_path / "train" / "checkpoints" / "best.ckpt"
    grown = train("train=false", f"ckpt_path={ckpt}", "logger=csv", f"hydra.run.dir={tmp_path / 'grown'}",
                  f"paths.data_dir={tmp_path}")  # fmt: skip
    assert json.loads((tmp_path / "grown" / "metrics.json").read_text())["test_overlap"]["samples"] == 0
    assert "samples the checkpoint trained on" not in grown.stdout
    reshuffled = train("train=false", f"ckpt_path={ckpt}", "logger=csv", "data.split_seed=7",
                       f"hydra.run.dir={tmp_path / 'other'}", f"paths.data_dir={tmp_path}")  # fmt: skip
    overlap = json.loads((tmp_path / "other" / "metrics.json").read_text())["test_overlap"]
    assert overlap["samples"] > 0
    said = f"{overlap['samples']} of {overlap['of']} test samples of data=image_folder are samples the checkpoint "
    assert said + "trained on" in reshuffled.stdout


def test_a_report_that_cannot_be_drawn_loses_no_metric(tmp_path, mnist_dir):
    proc = train("model=mlp", "trainer.max_epochs=1", "callbacks.test_report.class_names=[only_one]",
                 *run_args(tmp_path, mnist_dir))  # fmt: skip
    assert "the test report (confusion_matrix.png, the test samples) could not be written" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr and "Traceback" in (tmp_path / "train.log").read_text()
    assert 0 <= json.loads((tmp_path / "metrics.json").read_text())["test/acc"] <= 1


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
        assert not imported(proc) & {"torch", "lightning", "wandb"}, flag


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
