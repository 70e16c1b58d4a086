"""Test data in the real on-disk formats, and fault-injecting callbacks the tests add through the config."""

import contextlib
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


def write_idx(path: Path, array: np.ndarray):
    """Write an array as an IDX file (the MNIST format: magic, dimension sizes, big-endian, then uint8 data)."""
    magic = 0x0800 + array.ndim  # 0x08: unsigned byte
    with open(path, "wb") as f:
        f.write(magic.to_bytes(4, "big"))
        for size in array.shape:
            f.write(int(size).to_bytes(4, "big"))
        f.write(array.astype(np.uint8).tobytes())


def digit_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 28x28 'digits': class c is a bright bar at a class-dependent place, plus noise and jitter."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 40, (n, 28, 28))
    for i, c in enumerate(labels):
        r = 3 + 2 * c + rng.integers(-1, 2)
        if c % 2:
            images[i, r : r + 2, 4:24] = 255
        else:
            images[i, 4:24, r : r + 2] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


def make_mnist(root: Path, n_train: int = 600, n_test: int = 200) -> Path:
    """A tiny MNIST in torchvision's layout: root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = digit_images(n, seed)
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    return root


def user_env(extra: dict | None = None) -> dict:
    """The environment of a process a test starts as a user would: this checkout importable, W&B offline."""
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", **(extra or {})}


def train_command(*args: str) -> list[str]:
    """`python train.py args...` with the Python running the tests."""
    return [sys.executable, str(ROOT / "train.py"), *args]


def train(*overrides: str, timeout: int = 300, check: bool = True, env: dict | None = None):
    """Run `python train.py overrides...` as a user would; returns the CompletedProcess (check: it must succeed)."""
    proc = subprocess.run(
        train_command(*overrides), cwd=ROOT, env=user_env(env), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py {' '.join(overrides)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def start(*overrides: str, output: Path | None = None, env: dict | None = None) -> subprocess.Popen:
    """Start `python train.py overrides...` as a user would, in a session of its own (a signal a test sends reaches
    it alone, as Ctrl-C or a scheduler's would): its output, stdout and stderr together, goes to the file `output`,
    else to a text pipe (read it with communicate())."""
    with open(output, "w") if output is not None else contextlib.nullcontext(subprocess.PIPE) as out:
        return subprocess.Popen(train_command(*overrides), cwd=ROOT, env=user_env(env), stdout=out,
                                stderr=subprocess.STDOUT, text=output is None, start_new_session=True)  # fmt: skip


def run_module(module: str, *args, check: bool = True, env: dict | None = None, timeout: int = 120):
    """`python -m module args...` as a user would; returns the CompletedProcess (check: it must succeed)."""
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=user_env(env),
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert not check or proc.returncode == 0, proc.stderr[-3000:]
    return proc


def predict(*args, check: bool = True, env: dict | None = None):
    """`python -m nnlab.predict args...` as a user would; returns the CompletedProcess."""
    return run_module("nnlab.predict", *args, check=check, env=env)


class SlowSteps(L.Callback):
    """Sleeps after every training step, so a test can kill the run mid-epoch."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_train_batch_end(self, *args):
        time.sleep(self.seconds)


class PoisonWeights(L.Callback):
    """From the given epoch on, fills the network's weights with NaN: the loss becomes non-finite."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch >= self.epoch:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.fill_(float("nan"))


def paste(command: str, env: dict | None = None, timeout: int = 300):
    """Run a command nnlab printed as a user pastes it: in bash, in the shell that ran nnlab, whose `python` is the
    one running the tests (the virtual environment's, active or not)."""
    import os

    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    full_env = {**user_env(env), "PATH": path}
    return subprocess.run(["bash", "-c", command], cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def read_wandb_records(path: Path):
    """Yield the protobuf Records of a .wandb file (a LevelDB-style log: 7-byte file header, then 32 KiB
    blocks of chunks, each `crc32c:u32 length:u16 type:u8 data`; type 1 is a whole record, 2/3/4 its
    first/middle/last part)."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32 * 1024
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, parts = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room left in this block for a chunk header: padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            continue
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            yield record


def make_aclimdb(root: Path, per_class: int = 6) -> Path:
    """A tiny aclImdb tree in the official layout: root/aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt."""
    words = {"pos": "a wonderful moving film, great acting", "neg": "a dull boring mess, awful acting"}
    for split in ("train", "test"):
        for label, phrase in words.items():
            folder = root / "aclImdb" / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                rating = 8 + i % 3 if label == "pos" else 1 + i % 3
                (folder / f"{i}_{rating}.txt").write_text(f"Review {i}: {phrase}.<br /><br />Seen in {split}.")
    return root / "aclImdb"


SPEECH_WORDS = ("yes", "no", "up", "cat", "dog")  # three of the 12-class task's words, two "unknown" ones


def make_speech_commands(root: Path, speakers: int = 6, takes: int = 4, rate: int = 16000) -> Path:
    """A tiny Speech Commands v0.02 tree: each word a tone chord of its own (noisy, of varying length),
    `speakers` x `takes` clips per word; the takes of speaker 0 listed for testing, speaker 1 for
    validation; a background-noise file; one stereo 8 kHz clip (downmixed and resampled when read),
    and one corrupt file. Returns the folder that holds SpeechCommands/."""
    import soundfile as sf

    base = root / "SpeechCommands" / "speech_commands_v0.02"
    rng = np.random.default_rng(0)
    lists = {"testing": [], "validation": []}
    for w, word in enumerate(SPEECH_WORDS):
        (base / word).mkdir(parents=True, exist_ok=True)
        for s in range(speakers):
            for t in range(takes):
                n = int(rate * rng.uniform(0.5, 1.0))
                time_s = np.arange(n) / rate
                wave = sum(np.sin(2 * np.pi * f * time_s) for f in (300 + 250 * w, 700 + 400 * w)) * 0.2
                wave = (wave + rng.normal(0, 0.02, n)).astype(np.float32)
                name = f"spk{s}_nohash_{t}.wav"
                sf.write(base / word / name, wave, rate, subtype="PCM_16")
                if s < 2:
                    lists["testing" if s == 0 else "validation"].append(f"{word}/{name}")
    # Stereo at 8 kHz: read as mono 16 kHz.
    n = 8000
    tone = np.sin(2 * np.pi * 300 * np.arange(n) / 8000) * 0.2
    sf.write(base / "yes" / "spk9_nohash_0.wav", np.stack([tone, tone], 1).astype(np.float32), 8000, subtype="PCM_16")
    (base / "dog" / "spk9_nohash_1.wav").write_bytes(b"RIFF....WAVEnot really audio")  # corrupt
    (base / "_background_noise_").mkdir(exist_ok=True)
    sf.write(
        base / "_background_noise_" / "white_noise.wav",
        rng.normal(0, 0.1, 3 * rate).astype(np.float32),
        rate,
        subtype="PCM_16",
    )
    for name, entries in lists.items():
        (base / f"{name}_list.txt").write_text("\n".join(entries) + "\n")
    return root


class SignalAt(L.Callback):
    """Sends this process `signal` at the end of training step `step`, so a test stops a run at a known batch (a
    resumed run starts after that step and is not signalled again)."""

    def __init__(self, step: int, signal: str = "SIGTERM", rank: int | None = None):
        self.step, self.signal, self.rank = step, signal, rank

    def on_train_batch_end(self, trainer, *args):
        import os
        import signal

        if trainer.global_step == self.step and self.rank in (None, trainer.global_rank):
            os.kill(os.getpid(), getattr(signal, self.signal))


class SignalTwice(SignalAt):
    """Two Ctrl-Cs at the end of training step `step`, as an impatient user presses them."""

    def on_train_batch_end(self, trainer, *args):
        import os
        import signal

        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
            os.kill(os.getpid(), signal.SIGINT)


class SignalAtFitStart(L.Callback):
    """Ctrl-C while the run is still being set up (before the first training step)."""

    def on_fit_start(self, trainer, pl_module):
        import os
        import signal

        os.kill(os.getpid(), signal.SIGINT)


class CrashOnce(L.Callback):
    """Ends the process at once (as a lost node or a segfault would) at training step `step`, once: on the first
    attempt under torchrun (TORCHELASTIC_RESTART_COUNT 0), or while the file `once` does not exist (it is created)."""

    def __init__(self, step: int, once: str | None = None):
        self.step, self.once = step, once

    def on_train_batch_end(self, trainer, *args):
        import os

        if trainer.global_step != self.step or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
            return
        if self.once is not None:
            if os.path.exists(f"{self.once}.{trainer.global_rank}"):
                return
            open(f"{self.once}.{trainer.global_rank}", "w").close()
        os._exit(3)


class WeightsPerRank(L.Callback):
    """At the end of training each rank writes its parameters' sum to `<path>.<rank>`: ranks whose gradients were
    all reduced hold the same weights."""

    def __init__(self, path: str):
        self.path = path

    def on_train_end(self, trainer, pl_module):
        total = sum(p.detach().double().sum().item() for p in pl_module.parameters())
        Path(f"{self.path}.{trainer.global_rank}").write_text(repr(total))


def make_image_folder(root: Path, per_class: int = 30, classes: int = 3, splits: bool = False) -> Path:
    """A tiny image-folder set in torchvision's ImageFolder layout, <class>/<image> (or train/ and test/ holding
    them): learnable coloured bars, as PNG and JPEG, RGB and grey, of mixed sizes, with one file that is not an
    image but is named like one, and a stray text file. Returns the folder."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test") if splits else ("",):
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class if split != "test" else max(2, per_class // 3)):
                size = (32, 32) if i % 3 else (40, 36)  # some need resizing
                pixels = rng.integers(0, 60, (size[1], size[0], 3)).astype(np.uint8)
                r = 4 + 8 * c + int(rng.integers(-1, 2))
                pixels[r : r + 4, 4:28, c % 3] = 255
                img = Image.fromarray(pixels)
                if i % 4 == 1:
                    img = img.convert("L")  # a grey one among the colour ones
                img.save(folder / f"img{i}.{'jpg' if i % 2 else 'png'}", quality=95)
    first = root / ("train" if splits else "") / "class_0"
    (first / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really an image")
    (first / "notes.txt").write_text("not an image")
    return root


def make_numeric_table(path: Path, rows: int = 240, seed: int = 0) -> Path:
    """A CSV of three numeric features (x, y, noise) and a label column, three classes far apart in x and y."""
    import csv
    import random

    rng = random.Random(seed)
    names = ("setosa", "versicolor", "virginica")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["x", "y", "noise", "species"])
        for i in range(rows):
            k = i % 3
            out.writerow([f"{3 * k + rng.gauss(0, 0.4):.4f}", f"{-2 * k + rng.gauss(0, 0.4):.4f}",
                          f"{rng.gauss(0, 1):.4f}", names[k]])  # fmt: skip
    return path


def make_text_table(path: Path, rows: int = 60, fmt: str = "csv", labels=("good", "bad", "meh")) -> Path:
    """A table of short learnable texts, one label each, as CSV, TSV or JSON Lines (columns `text`, `label`)."""
    import csv
    import json

    phrases = {
        "good": "a wonderful moving film, great acting",
        "bad": "a dull boring mess, awful acting",
        "meh": "an ordinary film, some scenes fine",
    }
    records = [
        {
            "text": f"Text {i}: {phrases.get(str(labels[i % len(labels)]), 'word ' * (i % len(labels)))}.",
            "label": labels[i % len(labels)],
        }
        for i in range(rows)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        if fmt == "jsonl":
            f.writelines(json.dumps(r) + "\n" for r in records)
        else:
            writer = csv.DictWriter(f, ["text", "label"], delimiter="," if fmt == "csv" else "\t")
            writer.writeheader()
            writer.writerows(records)
    return path


# Small-data settings for the tests' generated sets (conftest.py's mnist_dir, imdb_dir, speech_dir).
TINY = ["data.val_size=100", "data.batch_size=64", "data.eval_batch_size=100"]


def run_args(run_dir, data_dir, *more):
    """A run in `run_dir` on the MNIST files in `data_dir`, with TINY and `more`."""
    return [f"hydra.run.dir={run_dir}", f"paths.data_dir={data_dir}", *TINY, *more]


TINY_TEXT = [
    "data.val_size=8",
    "data.batch_size=8",
    "data.eval_batch_size=16",
    "data.vocab_size=200",
    "data.min_frequency=1",
]


TINY_SPEECH = ["data.batch_size=16", "data.eval_batch_size=64", "data.max_bad_share=0.05", "data.workers=1"]


def stop_in_second_epoch(args, run_dir, sig) -> tuple[subprocess.Popen, str]:
    """Start train.py (with SlowSteps of 0.15 s), send `sig` half a second after the first epoch's checkpoint, that
    is into the second epoch (8 steps); returns the ended process and its output."""
    proc = start(*args)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(sig)
    return proc, proc.communicate(timeout=60)[0]


SWEEP_TINY = ["model=mlp", "data.val_size=100", "data.batch_size=64", "data.eval_batch_size=100"]


def sweep(log_dir: Path, data_dir: Path, *overrides: str, timeout=600, check=True, env=None):
    """`python train.py -m overrides...` with W&B offline; returns the CompletedProcess."""
    return train(
        "-m", *SWEEP_TINY, f"paths.data_dir={data_dir}", f"paths.log_dir={log_dir}", *overrides,
        timeout=timeout, check=check, env=env,
    )  # fmt: skip


def only_sweep(log_dir: Path) -> Path:
    """The one sweep folder under `log_dir`."""
    (sweep_dir,) = (log_dir / "sweeps").iterdir()
    return sweep_dir


OPTUNA = [
    "hydra/sweeper=optuna",
    "model.lr=choice(3e-3,1e-9)",
    "seed=1",
    "hydra.sweeper.sampler.n_startup_trials=4",
    "hydra.sweeper.pruner.n_startup_trials=1",
    "hydra.sweeper.pruner.n_warmup_steps=0",
    "trainer.max_epochs=2",
]


ODD = "ré sumé 'q' \"dq\" a=b,c [x]{y} $HOME"


def datamodule(data_dir, **overrides):
    """An MNIST data module over `data_dir` with small splits and augmentation off; `overrides` replace settings."""
    from nnlab.data.mnist import MNISTDataModule

    args = dict(
        channels=1,
        image_size=28,
        num_classes=10,
        data_dir=str(data_dir),
        download=False,
        val_size=100,
        split_seed=1,
        batch_size=64,
        eval_batch_size=500,
        augment={"rotate": 0.0, "scale": 0.0, "translate": 0.0},
    )
    return MNISTDataModule(**{**args, **overrides})


def write_inputs(kind: str, folder: Path, sample_rate: int = 16000) -> list[str]:
    """Inputs in the real on-disk formats for a kind of data, of every shape the export must take."""
    import soundfile as sf
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    if kind == "text":
        return [
            "great",  # the shortest: one token
            "A wonderful moving film, great acting.<br /><br />Seen twice.",
            "zzyzx qwerty",  # no word of the vocabulary
            " ".join(["a dull boring mess, awful acting."] * 40),  # the longest: cut to its head and tail (128)
        ]
    if kind == "image":
        images, _ = digit_images(3, seed=7)
        Image.fromarray(images[0]).save(folder / "digit.png")
        Image.fromarray(np.stack([images[1]] * 3, -1)).resize((57, 41)).save(folder / "wide.jpg", quality=90)
        rgba = np.zeros((30, 30, 4), np.uint8)
        rgba[5:25, 10:14] = (255, 0, 0, 255)  # a bar on a transparent background
        Image.fromarray(rgba, "RGBA").save(folder / "transparent.png")
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (900, 700, 3), dtype=np.uint8)).save(
            folder / "large.png"
        )
        return [str(folder / n) for n in ("digit.png", "wide.jpg", "transparent.png", "large.png")]
    rng = np.random.default_rng(1)
    t = np.arange(int(0.4 * sample_rate)) / sample_rate
    sf.write(folder / "short.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sample_rate)
    sf.write(folder / "long.wav", rng.uniform(-0.2, 0.2, int(2.7 * sample_rate)).astype(np.float32), sample_rate)
    t = np.arange(int(0.9 * 44100)) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 300 * t), np.sin(2 * np.pi * 500 * t)], -1) * 0.25
    sf.write(folder / "stereo-44k.wav", stereo.astype(np.float32), 44100, subtype="PCM_16")
    sf.write(folder / "clip.flac", rng.uniform(-0.3, 0.3, sample_rate).astype(np.float32), sample_rate)
    return [str(folder / n) for n in ("short.wav", "long.wav", "stereo-44k.wav", "clip.flac")]
