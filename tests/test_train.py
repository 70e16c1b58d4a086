"""train.py end to end, as a user runs it: fast_dev_run, checkpoints, evaluation, W&B, resume, DDP, NaN."""

import json
import os
import signal
import subprocess
import sys

import matplotlib.image as plt_image
import numpy as np
import pytest
import torch

from nnlab.module import Classifier
from tests.helpers import (
    ROOT,
    TINY_SPEECH,
    TINY_TEXT,
    predict,
    read_wandb_records,
    run_args,
    stop_in_second_epoch,
    train,
)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_fast_dev_run(model, tmp_path, mnist_dir):
    train(f"model={model}", "trainer.fast_dev_run=true", "logger=csv", *run_args(tmp_path, mnist_dir))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0.0 <= metrics["test/acc"] <= 1.0 and metrics["test/loss"] > 0


@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory, imdb_dir):
    """Two epochs of model=lstm on the tiny reviews, with the default (W&B offline) logger."""
    run_dir = tmp_path_factory.mktemp("lstm")
    train("model=lstm", "trainer.max_epochs=2", f"hydra.run.dir={run_dir}", f"paths.data_dir={imdb_dir}", *TINY_TEXT)
    return run_dir


def test_adversarial_lstm_under_ddp_keeps_the_ranks_equal(tmp_path, imdb_dir):
    """The adversarial step hands the clean loss's gradients to the backward pass Lightning runs, so DDP reduces
    them with the rest: two gloo ranks end with the same weights (and DDP finds every parameter's gradient)."""
    train(
        "model=lstm",
        "trainer=ddp_cpu",
        "trainer.max_epochs=2",
        "logger=csv",
        f"hydra.run.dir={tmp_path / 'run'}",
        f"paths.data_dir={imdb_dir}",
        *TINY_TEXT,
        "+callbacks.ranks._target_=tests.helpers.WeightsPerRank",
        f"+callbacks.ranks.path={tmp_path / 'weights'}",
        timeout=400,
    )
    sums = [float((tmp_path / f"weights.{rank}").read_text()) for rank in (0, 1)]
    assert sums[0] == sums[1], sums


def test_lstm_trains_on_reviews_end_to_end(lstm_run, imdb_dir):
    metrics = json.loads((lstm_run / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and 0.0 <= metrics["test/acc"] <= 1.0 and metrics["train/tokens_per_s"] > 0
    assert list((imdb_dir / "cache").glob("imdb-*.pt"))  # tokenised once, cached beside the data
    model = Classifier.load_from_checkpoint(lstm_run / "checkpoints" / "best.ckpt")
    assert model.hparams.arch["bidirectional"] is True


def test_lstm_test_report_lists_reviews_misclassified_first(lstm_run):
    import csv

    with open(lstm_run / "test_samples.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40  # every test review of the tiny set
    assert {r["label"] for r in rows} == {"negative", "positive"} and all("review" in r["text"] for r in rows)
    correct = [r["correct"] == "True" for r in rows]
    assert correct == sorted(correct)  # misclassified first
    assert all((r["prediction"] == r["label"]) == c for r, c in zip(rows, correct))
    assert (lstm_run / "confusion_matrix.png").stat().st_size > 0 and not (lstm_run / "misclassified.png").exists()

    history = {}
    for path in (lstm_run / "wandb").glob("offline-run-*/run-*.wandb"):
        for record in read_wandb_records(path):
            if record.WhichOneof("record_type") == "history":
                history.update({item.key or "/".join(item.nested_key): item.value_json for item in record.history.item})
    # Media fields come flattened.
    assert json.loads(history["test/samples/_type"]) == "table-file" and json.loads(history["test/samples/nrows"]) == 40
    assert json.loads(history["test/confusion_matrix_table/_type"]) == "table-file"


def test_predict_classifies_text_and_files_from_the_checkpoint_alone(lstm_run, tmp_path):
    ckpt = lstm_run / "checkpoints" / "best.ckpt"
    assert torch.load(ckpt, weights_only=True)["preprocessing"]["kind"] == "text"
    out = predict(ckpt, "A wonderful moving film.", "A dull boring mess.<br />Awful.").stdout.splitlines()
    assert len(out) == 2 and out[1].endswith("A dull boring mess.<br />Awful.")
    for line in out:
        label, confidence = line.split("\t")[0].split()
        assert label in ("negative", "positive") and 0.5 <= float(confidence) <= 1.0
    reviews = tmp_path / "reviews.txt"
    reviews.write_bytes("great acting\n\nawful \xff acting\n".encode("latin-1"))  # a blank line; not UTF-8
    out = predict(ckpt, "--file", reviews, "--top", "2").stdout.splitlines()
    assert len(out) == 2 and all(len(line.split("\t")[0].split()) == 4 for line in out)


def test_predict_errors_name_the_problem(lstm_run, trained_run, tmp_path):
    assert "does not exist" in predict(tmp_path / "nope.ckpt", "text", check=False).stderr
    mnist_ckpt = trained_run[0] / "checkpoints" / "best.ckpt"
    assert "text is not a file; give the paths of image files" in predict(mnist_ckpt, "text", check=False).stderr
    assert (
        "text argument(s) [2] are empty"
        in predict(lstm_run / "checkpoints" / "last.ckpt", "fine", " ", check=False).stderr
    )
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert (
        "holds no non-empty lines"
        in predict(lstm_run / "checkpoints" / "last.ckpt", "--file", empty, check=False).stderr
    )


def test_predict_refuses_binary_files_counts_bad_lines_and_never_prints_control_characters(lstm_run, tmp_path):
    ckpt = lstm_run / "checkpoints" / "best.ckpt"
    binary = tmp_path / "weights.bin"
    binary.write_bytes(b"\x00\x01\x02junk\n" * 10)
    proc = predict(ckpt, "--file", binary, check=False)
    assert proc.returncode == 1 and f"--file {binary} is a binary file (it holds NUL bytes)" in proc.stderr
    mixed = tmp_path / "mixed.txt"
    mixed.write_bytes(b"great acting\n\x1b[31mawful\x07 acting\n\xff\xfe bad bytes\n")
    proc = predict(ckpt, "--file", mixed)
    assert f"1 line(s) of {mixed} are not valid UTF-8" in proc.stderr and "(lines 3)" in proc.stderr
    out = proc.stdout.splitlines()
    assert len(out) == 3 and "\x1b" not in proc.stdout and "\x07" not in proc.stdout and "\ufffd" in out[1]


def test_predict_reads_a_file_with_a_byte_order_mark_and_options_anywhere(lstm_run, tmp_path, capsys):
    from nnlab.predict import main  # in this process: the command line itself is run by the tests around it

    ckpt = str(lstm_run / "checkpoints" / "best.ckpt")

    def printed(*argv):
        main([str(a) for a in argv])
        out, err = capsys.readouterr()
        assert not err.strip(), err
        return out

    plain = printed(ckpt, "--file", write(tmp_path / "plain.txt", b"great acting\nawful acting\n"))
    for name, data in (
        ("utf8-bom.txt", b"\xef\xbb\xbfgreat acting\nawful acting\n"),  # Notepad's UTF-8
        ("utf16.txt", "\ufeffgreat acting\r\nawful acting\r\n".encode("utf-16-le")),  # Notepad's "Unicode"
    ):
        out = printed(ckpt, "--file", write(tmp_path / name, data))
        assert out == plain and "\ufeff" not in out, name
    # options before, between and after the inputs
    one = printed("--top", "2", ckpt, "great acting", "awful acting")
    assert printed(ckpt, "great acting", "--top", "2", "awful acting") == one
    assert printed(ckpt, "great acting", "awful acting", "--top", "2") == one


def test_predict_help_answers_without_loading_torch():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONPROFILEIMPORTTIME": "1"}
    proc = subprocess.run([sys.executable, "-m", "nnlab.predict", "--help"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and "--top" in proc.stdout
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & {"torch", "lightning", "numpy"}  # what took 12 s


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_predict_says_a_path_is_a_path_and_checks_top(lstm_run, tmp_path):
    ckpt = lstm_run / "checkpoints" / "best.ckpt"
    reviews = tmp_path / "reviews.txt"
    reviews.write_text("great acting\n")
    proc = predict(ckpt, reviews, check=False)
    assert proc.returncode == 1 and "is a file path, not a review" in proc.stderr and f"--file {reviews}" in proc.stderr
    for top in ("0", "-1"):
        proc = predict(ckpt, "--top", top, "fine", check=False)
        assert proc.returncode == 2 and "1 or more" in proc.stderr


def test_confusion_matrix_numbers_are_readable():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nnlab.callbacks import confusion_figure

    fig = confusion_figure(plt, torch.tensor([[12000, 500], [600, 11900]]), ["negative", "positive"])
    colours = {t.get_text(): t.get_color() for t in fig.axes[0].texts}
    assert colours == {"12000": "white", "500": "black", "600": "black", "11900": "white"}
    assert min(fig.get_size_inches()) >= 3.5 and fig.axes[0].texts[0].get_fontsize() >= 12
    many = confusion_figure(plt, torch.eye(35, dtype=torch.long) * 100, [str(i) for i in range(35)])
    assert max(many.get_size_inches()) >= 10  # 35 classes get room
    plt.close("all")


def test_seed_lstm_is_a_binary_classifier(tmp_path, imdb_dir):
    train(
        "experiment=seed_lstm",
        "trainer.max_epochs=1",
        "logger=csv",
        f"hydra.run.dir={tmp_path}",
        f"paths.data_dir={imdb_dir}",
        *TINY_TEXT,
    )
    ckpt = tmp_path / "checkpoints" / "best.ckpt"
    model = Classifier.load_from_checkpoint(ckpt)
    assert model.net.head.out_features == 1 and model.hparams.optim["_target_"] == "torch.optim.Adam"
    label, confidence = predict(ckpt, "great acting").stdout.split("\t")[0].split()
    assert label in ("negative", "positive") and float(confidence) >= 0.5


@pytest.fixture(scope="module")
def speech_run(tmp_path_factory, speech_dir):
    """Two epochs of model=speech_rnn on the tiny clips, with the default (W&B offline) logger."""
    run_dir = tmp_path_factory.mktemp("speech")
    train(
        "model=speech_rnn",
        "trainer.max_epochs=2",
        f"hydra.run.dir={run_dir}",
        f"paths.data_dir={speech_dir}",
        *TINY_SPEECH,
    )
    return run_dir


def test_speech_rnn_trains_on_clips_end_to_end(speech_run, speech_dir):
    metrics = json.loads((speech_run / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and 0.0 <= metrics["test/acc"] <= 1.0
    assert len(list((speech_dir / "cache").glob("speech-*.pt"))) == 4  # decoded once, cached beside the data
    checkpoint = torch.load(speech_run / "checkpoints" / "best.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["arch"]["num_classes"] == 5  # the word folders found
    assert checkpoint["preprocessing"]["class_names"] == ["cat", "dog", "no", "up", "yes"]
    clips = sorted(p.name for p in (speech_run / "test_clips").glob("*.wav"))
    assert clips and all(("_wrong_" in c) or ("_right_" in c) for c in clips)
    history = {}
    for path in (speech_run / "wandb").glob("offline-run-*/run-*.wandb"):
        for record in read_wandb_records(path):
            if record.WhichOneof("record_type") == "history":
                history.update({item.key or "/".join(item.nested_key): item.value_json for item in record.history.item})
    assert json.loads(history["test/clips/_type"]) == "table-file" and json.loads(history["test/clips/nrows"]) == len(
        clips
    )


def test_predict_classifies_a_wav_file(speech_run, speech_dir, tmp_path):
    ckpt = speech_run / "checkpoints" / "best.ckpt"
    stereo = speech_dir / "SpeechCommands" / "speech_commands_v0.02" / "yes" / "spk9_nohash_0.wav"  # 8 kHz stereo
    line = predict(ckpt, stereo).stdout.strip()
    guesses, name = line.split("\t")
    words, probs = guesses.split()[0::2], [float(p) for p in guesses.split()[1::2]]
    assert name == str(stereo) and len(words) == 3 and set(words) <= {"cat", "dog", "no", "up", "yes"}
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    broken = stereo.parent.parent / "dog" / "spk9_nohash_1.wav"
    assert (
        "unreadable" in predict(ckpt, broken, check=False).stderr
        and str(broken) in predict(ckpt, broken, check=False).stderr
    )
    assert "is not a file" in predict(ckpt, tmp_path / "none.wav", check=False).stderr


def test_predict_classifies_the_good_audio_files_and_long_ones_in_windows(speech_run, speech_dir, tmp_path):
    import numpy as np
    import soundfile as sf

    ckpt = speech_run / "checkpoints" / "best.ckpt"
    words = speech_dir / "SpeechCommands" / "speech_commands_v0.02"
    good, broken = words / "yes" / "spk0_nohash_0.wav", words / "dog" / "spk9_nohash_1.wav"
    long = tmp_path / "ten_seconds.wav"
    sf.write(long, (0.2 * np.sin(2 * np.pi * 300 * np.arange(160000) / 16000)).astype(np.float32), 16000)
    proc = predict(ckpt, good, broken, long, check=False)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines[0].endswith(f"\t{good}")  # a clip of one second or less: one line, as training read it
    windows = [line.split("\t")[1] for line in lines if str(long) in line]
    assert len(windows) == 19 and windows[0].endswith("[0.0-1.0 s]") and windows[-1].endswith("[9.0-10.0 s]")
    assert f"error: {broken} is unreadable" in proc.stderr and "1 of 3 input(s) could not be classified" in proc.stderr


def test_twelve_class_task_trains_in_ddp_with_a_fresh_cache(tmp_path, speech_dir):
    """data.labels=v12 over 2 CPU processes: one prepares the clips, the other waits and reads them."""
    before = set((speech_dir / "cache").glob("speech-*.pt"))
    train(
        "model=speech_rnn",
        "data.labels=v12",
        "trainer=ddp_cpu",
        "trainer.max_epochs=1",
        "logger=csv",
        f"hydra.run.dir={tmp_path}",
        f"paths.data_dir={speech_dir}",
        *TINY_SPEECH,
        timeout=400,
    )
    assert len(set((speech_dir / "cache").glob("speech-*.pt")) - before) == 4  # one new set for the new labels
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["preprocessing"]["class_names"][-2:] == ["_unknown_", "_silence_"]
    assert checkpoint["hyper_parameters"]["arch"]["num_classes"] == 12


def test_seed_speech_rnn_trains(tmp_path, speech_dir):
    train(
        "experiment=seed_speech_rnn",
        "trainer.max_epochs=1",
        "logger=csv",
        f"hydra.run.dir={tmp_path}",
        f"paths.data_dir={speech_dir}",
        *TINY_SPEECH,
    )
    model = Classifier.load_from_checkpoint(tmp_path / "checkpoints" / "best.ckpt")
    assert isinstance(model.net.rnn, torch.nn.LSTM) and model.net.rnn.hidden_size == 128 and not model.net.front


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, mnist_dir):
    """Two epochs of the seed MLP with the default (W&B offline) logger."""
    run_dir = tmp_path_factory.mktemp("run")
    proc = train("experiment=seed_mlp", "trainer.max_epochs=2", "model.lr=0.1", *run_args(run_dir, mnist_dir))
    return run_dir, proc


def test_run_directory_describes_the_run(trained_run):
    run_dir, proc = trained_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("test/acc", "test/loss", "val/acc_best", "epochs", "train/samples_per_s"):
        assert metrics[key] is not None, key
    assert metrics["epochs"] == 2 and metrics["test/acc"] > 0.5
    info = json.loads((run_dir / "run.json").read_text())
    assert len(info["git"]["commit"] or "0" * 40) == 40 and info["packages"]["torch"].startswith("2.11.0")
    assert "lr: 0.1" in (run_dir / "config.yaml").read_text()  # resolved, with the override applied
    assert "${" not in (run_dir / "config.yaml").read_text()
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    assert (run_dir / "confusion_matrix.png").stat().st_size > 0
    assert (run_dir / "misclassified.png").is_file() == (metrics["test/acc"] < 1.0)
    # The learning curves: every epoch's losses, accuracies and learning rate, drawn in three non-blank panels.
    assert [row["epoch"] for row in metrics["history"]] == [1, 2]
    assert all({"train/loss", "val/loss", "train/acc", "val/acc", "lr"} <= set(row) for row in metrics["history"])
    assert metrics["history"][-1]["val/acc"] == pytest.approx(metrics["val/acc"])
    image = plt_image.imread(run_dir / "curves.png")[..., :3]  # (height, width, RGB)
    for panel in np.array_split(image, 3, axis=1):
        assert len(np.unique(panel.reshape(-1, 3), axis=0)) > 20  # axes, ticks and lines, not an empty frame
    assert "wandb sync" in proc.stdout


def test_checkpoint_loads_with_weights_only_and_without_hydra(trained_run):
    run_dir, _ = trained_run
    ckpt = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["arch"]["hidden"] == [100, 100]
    # A fresh interpreter with no Hydra config loaded anywhere.
    best = str(run_dir / "checkpoints" / "best.ckpt")
    code = (
        f"from nnlab.module import Classifier; m = Classifier.load_from_checkpoint({best!r}); "
        "print(type(m.net).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "MLP"


def test_eval_mode_matches_training_test_accuracy(trained_run, mnist_dir, tmp_path):
    run_dir, _ = trained_run
    trained = json.loads((run_dir / "metrics.json").read_text())
    train(
        "train=false",
        f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}",
        "logger=csv",
        *run_args(tmp_path, mnist_dir),
    )
    evaluated = json.loads((tmp_path / "metrics.json").read_text())
    assert evaluated["test/acc"] == pytest.approx(trained["test/acc"], abs=1e-6)


def test_wandb_offline_files_hold_the_metrics(trained_run, mnist_dir):
    run_dir, _ = trained_run
    (run_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    history, config, summary, exit_code = [], {}, {}, None
    for record in read_wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
        elif kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "summary":
            summary.update({item.key: json.loads(item.value_json) for item in record.summary.update})
        elif kind == "exit":
            exit_code = record.exit.exit_code
    test_acc = [h["test/acc"] for h in history if "test/acc" in h]
    assert test_acc and test_acc[-1] == pytest.approx(json.loads((run_dir / "metrics.json").read_text())["test/acc"])
    assert any("val/acc" in h for h in history) and any("train/loss" in h for h in history)
    media = next(h for h in history if "test/confusion_matrix_png/_type" in h)  # media fields come flattened
    assert media["test/confusion_matrix_png/_type"] == "image-file"
    assert media["test/confusion_matrix_table/_type"] == "table-file"
    # The resolved config as a plain nested dict.
    assert config["model"]["lr"] == 0.1 and config["model"]["arch"]["hidden"] == [100, 100]
    assert config["data"]["data_dir"] == str(mnist_dir) and config["trainer"]["max_epochs"] == 2
    assert exit_code == 0
    # The model summary's parameter counts, in the W&B summary and metrics.json
    params = sum(p.numel() for p in Classifier.load_from_checkpoint(run_dir / "checkpoints" / "best.ckpt").parameters())
    assert summary["model/params"] == params == json.loads((run_dir / "metrics.json").read_text())["model/params"]


def test_kill_and_resume_ends_after_the_same_epochs(tmp_path, mnist_dir):
    args = [
        "model=mlp",
        "trainer.max_epochs=3",
        "+callbacks.slow._target_=tests.helpers.SlowSteps",
        "+callbacks.slow.seconds=0.15",
        *run_args(tmp_path, mnist_dir),
    ]
    stop_in_second_epoch(args, tmp_path, signal.SIGKILL)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 0  # one epoch done when killed
    assert not (tmp_path / "metrics.json").exists()

    train(*args, "resume=true")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["resumed_from"] == str(last)
    assert torch.load(last, weights_only=True)["epoch"] == 2
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({r.name.rsplit("-", 1)[1] for r in runs}) == 1  # one W&B run id, resumed


def test_sigterm_mid_epoch_saves_that_step_and_the_resumed_run_matches_an_uninterrupted_one(tmp_path, mnist_dir):
    exact = [
        "model=mlp",
        "trainer.max_epochs=2",
        "model.arch.dropout=0",
        "data.augment.rotate=0",
        "data.augment.scale=0",
        "data.augment.translate=0",
    ]  # no randomness but the data order
    train(*exact, "logger=csv", *run_args(tmp_path / "straight", mnist_dir))
    run_dir = tmp_path / "stopped"
    args = [
        *exact,
        "+callbacks.slow._target_=tests.helpers.SlowSteps",
        "+callbacks.slow.seconds=0.15",
        *run_args(run_dir, mnist_dir),
    ]
    proc, out = stop_in_second_epoch(args, run_dir, signal.SIGTERM)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "SIGTERM received: training stopped at epoch 1" in out
    step = torch.load(last, weights_only=True)["global_step"]
    assert 8 < step < 16  # saved at the step it stopped, not at the end of epoch 0

    train(*args, "resume=true")
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert resumed["test/loss"] == straight["test/loss"] and resumed["epochs"] == 2  # the same batches, bit for bit
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({r.name.rsplit("-", 1)[1] for r in runs}) == 1  # one W&B run id, resumed


def test_resume_without_checkpoint_starts_fresh(tmp_path, mnist_dir):
    proc = train("model=mlp", "trainer.max_epochs=1", "logger=csv", "resume=true", *run_args(tmp_path, mnist_dir))
    assert "does not exist: starting from scratch" in proc.stderr + proc.stdout
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs"] == 1


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path, mnist_dir):
    proc = train(
        "model=mlp",
        "trainer.max_epochs=3",
        "+callbacks.poison._target_=tests.helpers.PoisonWeights",
        "+callbacks.poison.epoch=1",
        *run_args(tmp_path, mnist_dir),
        check=False,
    )
    assert proc.returncode != 0
    assert "training loss became non-finite at step 8 (epoch 1)" in proc.stderr  # 500 images / 64 = 8 steps an epoch
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 0 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    exits = [r.exit.exit_code for r in read_wandb_records(run_file) if r.WhichOneof("record_type") == "exit"]
    assert exits == [1]  # the W&B run is marked failed


def test_ddp_cpu_end_to_end(tmp_path, mnist_dir):
    proc = train("model=mlp", "trainer=ddp_cpu", "trainer.max_epochs=2", *run_args(tmp_path, mnist_dir), timeout=400)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["test/acc"] > 0.3
    assert "distributed_backend=gloo" in proc.stdout + proc.stderr
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 1  # only rank zero logs
    assert proc.stdout.count("├── model") == 1  # and prints the config tree
    assert not list(tmp_path.glob("**/.hydra/config.yaml"))[1:]  # one .hydra, the launcher's
    Classifier.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
