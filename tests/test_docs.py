"""Every shell command block of the manual (README.md and docs/, ```bash) is run here, or says why it is not run: an
HTML comment `<!-- not run: <reason> -->` on the line before it (the reason names what it needs that a test machine
lacks, and which test runs the same thing another way). The training commands written inline in the text
(`python train.py model=cnn ...`) are composed, as Hydra composes them, so that a key or an option they name exists.

The commands run as a user types them, in a working folder of their own that holds small data in the real on-disk
formats (MNIST, IMDB, Speech Commands under ./data), the files the commands name (photo.jpg, reviews.csv, ...) and
the files the docs show by their path (```yaml title="myconf/model/small_mlp.yaml"), as shown:
`python train.py` (and `uv run train.py`) is this checkout's, keeping its data and runs in that folder
(NNLAB_DATA_DIR, paths.log_dir); `nnlab` is the command this environment installed. A training command gets a few
steps of its own recipe (trainer.limit_*_batches, and the small data's sizes) and CSV logs; a path the docs write as
a placeholder (`outputs/.../checkpoints/best.ckpt`, `outputs/<run>`, `outputs/sweeps/<study>`) is the run, the
sweep or a checkpoint of the kind of data the command's inputs are, made in that folder. Each command must exit 0."""

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.helpers import (
    ROOT,
    TINY,
    TINY_SPEECH,
    TINY_TEXT,
    digit_images,
    make_aclimdb,
    make_mnist,
    make_numeric_table,
    make_speech_commands,
    make_text_table,
)

NNLAB = Path(sys.executable).parent / "nnlab"
SPAN = re.compile(r"`((?:uv run )?(?:python train\.py|nnlab train)(?: [^`]*)?)`")  # an inline training command
BLOCK = re.compile(r"(?:<!-- not run: (?P<why>[^\n]*?) -->\n)?```bash\n(?P<body>.*?)```", re.S)
FILE = re.compile(r'```\w+ title="(?P<path>[^"]+)"\n(?P<body>.*?)```', re.S)  # a file the docs show, by its path
PLACEHOLDER = re.compile(r"<[^<>\s][^<>]*>")
FEW_STEPS = {"trainer.limit_train_batches": "2", "trainer.limit_val_batches": "1", "trainer.limit_test_batches": "1",
             "trainer.max_epochs": "1", "logger": "csv"}  # fmt: skip

PATHS = {  # a placeholder in a documented path: what the tests put there
    "outputs/.../checkpoints/best.ckpt": "checkpoint", "<checkpoint>": "checkpoint",
    "outputs/<run>/checkpoints/best.ckpt": "last run", "outputs/<date>/<time>_<id>/checkpoints/best.ckpt":
    "last run", "outputs/sweeps/<study>": "sweep", "outputs/<mnist-run>/checkpoints/best.ckpt": "image",
    "outputs/<imdb-run>/checkpoints/best.ckpt": "text",
    "outputs/<speech-run>/checkpoints/best.ckpt": "audio"}  # fmt: skip


def pages() -> list[Path]:
    """README.md, then the manual's pages in the order of mkdocs.yml's nav."""

    def files(nav):
        for entry in nav:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            yield from files(value) if isinstance(value, list) else [ROOT / "docs" / value]

    return [ROOT / "README.md", *files(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"])]


@dataclass
class Block:
    page: Path
    line: int
    why: str | None  # the reason it is not run; None: it runs
    commands: list[list[str]]

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for page in pages():
        text = page.read_text()
        for m in BLOCK.finditer(text):
            body = m.group("body").replace("\\\n", " ")
            commands = [w for w in (shlex.split(line, comments=True) for line in body.splitlines()) if w]
            found.append(Block(page, text[: m.start("body")].count("\n") + 1, m.group("why"), commands))
    return found


def program(words: list[str]) -> tuple[str, list[str]] | None:
    """(what runs, its arguments) for a command the tests know how to run; None for any other."""
    if words[:2] == ["uv", "run"]:  # uv run train.py, uv run nnlab ...
        words = ["python", *words[2:]] if words[2:3] == ["train.py"] else words[2:]
    if words[:2] == ["python", "train.py"]:
        return "train.py", words[2:]
    if words[:2] == ["nnlab", "train"]:
        return "nnlab train", words[2:]
    if words[:1] == ["nnlab"]:
        return "nnlab", words[1:]
    if words[:3] == ["python", "-m", "nnlab.predict"]:
        return "nnlab predict", words[3:]
    if words[:1] == ["python"] and words[1:2] and words[1].endswith(".py") and words[1] != "train.py":
        return "python", words[1:]  # a program the docs show (```python title="classify.py")
    return None


def test_every_command_block_is_run_by_the_tests_or_says_why_not():
    every = blocks()
    assert len(every) >= 15 and len({b.page for b in every}) >= 8  # the pattern finds the blocks
    for block in every:
        if block.why is not None:
            assert len(block.why.split()) >= 4, f"{block.name}: say why it is not run, and what runs it instead"
            continue
        for words in block.commands:
            assert program(words), f"{block.name}: `{shlex.join(words)}` is not a command the tests run: mark it"
            for placeholder in PLACEHOLDER.findall(shlex.join(words)):
                assert Sandbox.knows(placeholder), f"{block.name}: the tests cannot fill in {placeholder}"


class Sandbox:
    """A user's working folder: small data in ./data, the files the docs' commands name, and the runs made."""

    def __init__(self, folder: Path):
        self.folder = folder
        data = folder / "data"
        make_mnist(data)
        make_aclimdb(data, per_class=20)
        make_speech_commands(data)
        make_text_table(folder / "reviews.csv")
        make_numeric_table(folder / "flowers.csv")
        (folder / "reviews.txt").write_text("A gripping, beautifully acted film.\nTwo hours I will never get back.\n")
        from PIL import Image

        images, _ = digit_images(2, seed=3)
        Image.fromarray(images[0]).save(folder / "digit.png")
        Image.fromarray(images[1]).resize((64, 64)).save(folder / "scan.png")
        Image.fromarray(np.stack([images[0]] * 3, axis=-1)).resize((300, 200)).save(folder / "photo.jpg")
        import soundfile as sf

        t = np.arange(16000) / 16000
        sf.write(folder / "recording.wav", 0.3 * np.sin(2 * np.pi * 440 * t), 16000)
        self.checkpoints: dict[str, Path] = {}
        for page in pages():  # the files the docs show (```yaml title="myconf/model/small_mlp.yaml"), as shown
            for m in FILE.finditer(page.read_text()):
                (folder / m.group("path")).parent.mkdir(parents=True, exist_ok=True)
                (folder / m.group("path")).write_text(m.group("body"))

    @classmethod
    def knows(cls, placeholder: str) -> bool:
        return any(placeholder in path for path in PATHS)

    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        return {**env, "NNLAB_DATA_DIR": str(self.folder / "data"), "WANDB_MODE": "offline"}

    def run(self, words: list[str]):
        what, args = program(words)
        args = [self.fill(a, args) for a in args]
        if what in ("train.py", "nnlab train"):
            args = args + self.few_steps(args)
        argv = {"train.py": [sys.executable, str(ROOT / "train.py")], "nnlab train": [str(NNLAB), "train"],
                "nnlab": [str(NNLAB)], "nnlab predict": [str(NNLAB), "predict"],
                "python": [sys.executable]}[what] + args  # fmt: skip
        proc = subprocess.run(argv, cwd=self.folder, env=self.env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"`{shlex.join(words)}` ({shlex.join(argv)}) failed:\n{proc.stderr[-4000:]}"
        return proc

    def few_steps(self, args: list[str]) -> list[str]:
        """A few steps of the command's own recipe, on the small data, its runs in this folder."""
        given = {a.split("=", 1)[0] for a in args}
        text = " ".join(args)
        if "data=numeric_table" in text:
            data = []
        elif "data=text_table" in text:
            data = ["data.vocab_size=200", "data.min_frequency=1", "data.batch_size=8"]
        elif "model=lstm" in text or "model=gru" in text:
            data = TINY_TEXT
        elif "model=speech_rnn" in text:
            data = TINY_SPEECH
        else:
            data = TINY
        steps = [f"{k}={v}" for k, v in FEW_STEPS.items() if k not in given]
        return [*data, *steps, f"paths.log_dir={self.folder / 'outputs'}"]

    def fill(self, arg: str, args: list[str]) -> str:
        for path, what in PATHS.items():
            if path in arg:
                return arg.replace(path, str(self.made(what, args)))
        return arg

    def made(self, what: str, args: list[str]) -> Path:
        outputs = self.folder / "outputs"
        if what == "last run":
            runs = sorted((outputs.glob("*/*/checkpoints/best.ckpt")), key=lambda p: p.stat().st_mtime)
            return runs[-1] if runs else self.checkpoint("image")
        if what in ("image", "text", "audio"):
            return self.checkpoint(what)
        if what == "sweep":
            if not list(outputs.glob("sweeps/*/study.db")):
                self.run(["python", "train.py", "-m", "model=mlp", "model.lr=1e-3,3e-3"])
            return sorted(outputs.glob("sweeps/*/study.db"), key=lambda p: p.stat().st_mtime)[-1].parent
        kind = ("audio" if any(a.endswith(".wav") for a in args)
                else "image" if any(a.endswith((".png", ".jpg")) for a in args) else "text")  # fmt: skip
        return self.checkpoint(kind)

    def checkpoint(self, kind: str) -> Path:
        if kind not in self.checkpoints:
            model = {"image": "mlp", "text": "lstm", "audio": "speech_rnn"}[kind]
            out = self.folder / "outputs" / f"for_{kind}"
            self.run(["python", "train.py", f"model={model}", f"hydra.run.dir={out}"])
            self.checkpoints[kind] = out / "checkpoints" / "best.ckpt"
        return self.checkpoints[kind]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Sandbox:
    return Sandbox(tmp_path_factory.mktemp("user"))


@pytest.mark.slow
@pytest.mark.xdist_group("docs")  # one worker, one working folder: a block may use what an earlier one made
@pytest.mark.parametrize("block", [b for b in blocks() if b.why is None], ids=lambda b: b.name)
def test_a_documented_command_block_runs_as_a_user_types_it(block, sandbox):
    for words in block.commands:
        sandbox.run(words)


def inline_training_commands():
    """(page, command) for each training command written inline, but those that only give its shape (a placeholder,
    `...`, alternatives `cnn|mlp`) and the troubleshooting page's, which are the bad input it lists."""
    for page in pages():
        if page.name == "troubleshooting.md":
            continue
        for m in SPAN.finditer(page.read_text()):
            text = " ".join(m.group(1).split())
            if not any(shape in text for shape in ("<", "...", "|")):
                yield page, text


def first_of_each_sweep(args: list[str]) -> list[str]:
    """The overrides of a sweep's first trial (a sweep over values, a range or an interval: its first value)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    out = []
    for o in OverridesParser.create().parse_overrides(args):
        value = o.value()
        if isinstance(value, ChoiceSweep):
            out.append(f"{o.get_key_element()}={value.list[0]}")
        elif isinstance(value, (RangeSweep, IntervalSweep)):
            out.append(f"{o.get_key_element()}={value.start}")
        else:
            out.append(o.input_line)
    return out


def test_every_inline_training_command_composes():
    from hydra import compose, initialize_config_dir

    import nnlab.config  # noqa: F401  (the resolvers conf/ uses)

    found = list(inline_training_commands())
    assert len(found) >= 40
    for page, text in found:
        words = shlex.split(text)
        args = [a for a in words[2 + (words[0] == "uv") :] if a not in ("-m", "--multirun", "--cfg", "job")]
        if "--help" in args or "-cd" in args:  # Hydra's own flags; -cd names a sweep's folder (made in the tests)
            continue
        if "model=lenet" in args:  # the package of one's own, installed: its config folder on the search path
            args.append(f"hydra.searchpath=[file://{ROOT / 'examples' / 'lenet' / 'lenet' / 'conf'}]")
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            try:
                compose("train", overrides=first_of_each_sweep(args), return_hydra_config=True)
            except Exception as e:  # noqa: BLE001  (named with the page and the command)
                raise AssertionError(f"{page.name}: `{text}` does not compose: {e}") from None
