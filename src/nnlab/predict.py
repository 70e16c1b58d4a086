"""Classify new inputs with a checkpoint alone, or with its export: no dataset, no Hydra config.

    python -m nnlab.predict CHECKPOINT "A gripping film." "Two hours I will never get back."
    python -m nnlab.predict EXPORT photo.jpg       (a folder of nnlab export, or its model.onnx: ONNX Runtime, no torch)
    python -m nnlab.predict CHECKPOINT --file reviews.txt      (one review per line; - reads stdin)
    python -m nnlab.predict CHECKPOINT clip.wav other.wav      (a speech model: WAV files, any rate)
    python -m nnlab.predict CHECKPOINT photo.jpg scan.png      (an image model: PNG, JPEG, BMP, any size)

Prints one line per input: the most probable classes with their probabilities, and the input. An audio file
longer than the model's clip is classified in windows of that length, half a window apart, one line each.
Inputs that cannot be read are reported on stderr and the others are still classified; the exit code is then 1.
The checkpoint is read with torch.load(weights_only=True); the preprocessing it needs (a text
model's tokenizer and maximum length, a speech model's sample rate and clip length, an image model's size,
channels and normalisation) was stored in it at training time, and its kind of data (nnlab.kinds) reads the inputs.
An export is read with its nnlab.json, by the same kind of data, so both give the same classes.
"""

import argparse
import sys
import unicodedata
from pathlib import Path

from nnlab.errors import UserError
from nnlab.exported import Export, is_export
from nnlab.kinds import PredictError, classify, import_kind, kind

# torch, Lightning and NumPy are imported where an input is read: --help and a mistyped option answer at once.


def load(path) -> tuple:
    """The model (a Classifier, eval mode, CPU) and the preprocessing record of a checkpoint."""
    model, preprocessing, _ = read(path)
    return model, preprocessing


def read(path) -> tuple:
    """The model of a checkpoint (a Classifier, eval mode, CPU), its preprocessing record and the checkpoint; a
    CheckpointError or PredictError naming the file where it cannot classify raw inputs."""
    from nnlab.checkpoint import model_from_checkpoint, read_checkpoint

    path = Path(path)
    checkpoint = read_checkpoint(path)
    model = model_from_checkpoint(checkpoint, path)  # first: a checkpoint of another project is named as such
    preprocessing = checkpoint.get("preprocessing")
    if preprocessing is None:
        raise PredictError(
            f"{path} records no preprocessing (it was written before its data module stored one), "
            "so it cannot classify raw inputs; train it again with this version."
        )
    data_module = ((checkpoint.get("nnlab") or {}).get("data") or {}).get("_target_")
    if data_module:  # a kind of one's own (nnlab.examples.numeric_table) registers on import of its module
        import_kind(preprocessing.get("kind"), data_module)
    return model, preprocessing, checkpoint


def opened(path) -> tuple:
    """A checkpoint or an export, ready to classify: (its preprocessing record, score, model). score(batch) gives a
    batch's probabilities from its array (the kind's stack() of raw() rows): the checkpoint in PyTorch or the exported
    graph in ONNX Runtime. score is None for a kind of one's own that reads its inputs itself (Kind.read); model is
    the checkpoint's Classifier (None for an export)."""
    if is_export(path):
        export = Export(path)
        return export.preprocessing, export.probabilities, None
    try:
        model, preprocessing = load(path)
    except ModuleNotFoundError as e:
        raise PredictError(
            f"reading a checkpoint needs PyTorch ({e.name} is not installed): pip install 'nnlab[train]', or use "
            "its export (nnlab export, where PyTorch is installed)"
        ) from None
    reader = kind(preprocessing.get("kind"))
    if not reader.exportable:
        return preprocessing, None, model
    from nnlab.served import scorer

    return preprocessing, scorer(model, preprocessing), model


def predict(model, preprocessing: dict, inputs: list[str], batch_size: int = 256) -> list:
    """For each input (a text, or a file's path): (probabilities (windows, classes), each window's (start, end) in
    seconds or None), or the PredictError that says why it cannot be classified. The checkpoint's kind of data reads
    them."""
    import torch

    try:
        reader = kind(preprocessing.get("kind"))
    except UserError as e:
        raise PredictError(f"this checkpoint reads {preprocessing.get('kind')!r} inputs: {e}") from None
    with torch.inference_mode():
        return reader.predict(model, preprocessing, inputs, batch_size)


def printable(text: str) -> str:
    """The text with control characters (terminal escapes, NUL, bell, ...) shown as U+FFFD, never sent raw."""
    return "".join("\ufffd" if unicodedata.category(c) == "Cc" else c for c in text)


def read_inputs(args, takes_paths: bool) -> list[str]:
    from nnlab.inputs import is_file

    if args.file is None:
        empty = [i + 1 for i, text in enumerate(args.text) if not text.strip()]
        if empty:
            raise PredictError(f"text argument(s) {empty} are empty; give each text something to classify")
        if not takes_paths:
            paths = [t for t in args.text if len(t) < 4096 and "\n" not in t and is_file(t)]
            if paths:
                raise PredictError(
                    f"{paths[0]!r} is a file path, not a review: a text model classifies the text "
                    f"given; to classify the lines of a file use --file {paths[0]}"
                )
        return args.text
    if args.file == "-":
        raw = sys.stdin.buffer.read()
        name = "standard input"
    else:
        path = Path(args.file)
        if not path.exists() or path.is_dir():
            raise PredictError(f"--file {path} is not a file of texts, one per line")
        raw, name = path.read_bytes(), str(path)
    raw = as_utf8(raw, name)
    if b"\0" in raw[:8192]:
        raise PredictError(
            f"--file {name} is a binary file (it holds NUL bytes), not text: give a UTF-8 text file "
            "with one input per line"
        )
    lines, undecodable = [], []
    for number, line in enumerate(raw.splitlines(), 1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            text = line.decode("utf-8", errors="replace")
            undecodable.append(number)
        if text.strip():
            lines.append(text)
    if undecodable:
        print(
            f"warning: {len(undecodable)} line(s) of {name} are not valid UTF-8 and were decoded with replacement "
            f"characters (lines {', '.join(map(str, undecodable[:5]))}{', ...' if len(undecodable) > 5 else ''})",
            file=sys.stderr,
        )
    return lines


# Byte-order marks: a text editor's UTF-8 file may start with one; UTF-16 and UTF-32 files (Windows' "Unicode")
# always do. The mark is not part of the first line.
BOMS = (
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)


def as_utf8(raw: bytes, name: str) -> bytes:
    """A file's bytes as UTF-8 without a byte-order mark (a UTF-16 or UTF-32 file with one is decoded)."""
    for mark, encoding in BOMS:
        if raw.startswith(mark):
            try:
                return raw[len(mark) :].decode(encoding).encode("utf-8")
            except UnicodeDecodeError:
                raise PredictError(
                    f"--file {name} starts like a {encoding} file but is not one: save it as UTF-8"
                ) from None
    return raw


def at_least_one(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: give how many classes to print, 1 or more")
    return number


def main(argv=None, prog: str = "python -m nnlab.predict"):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "checkpoint",
        help="a checkpoint written by train.py (for example <run dir>/checkpoints/best.ckpt), or an export of one "
        "(the folder nnlab export wrote, or its model.onnx)",
    )
    parser.add_argument(
        "text",
        nargs="*",
        metavar="input",
        help="texts to classify (a text model), or audio or image files, one per argument",
    )
    parser.add_argument(
        "--file",
        help="a text file with one input per line (UTF-8, or UTF-16 with its mark; empty lines skipped); - for stdin",
    )
    parser.add_argument(
        "--top",
        type=at_least_one,
        default=None,
        help="print the TOP most probable classes (default 1 for two classes, else 3)",
    )
    args = parser.parse_intermixed_args(argv)  # options before, between or after the inputs
    if bool(args.text) == (args.file is not None):
        parser.error("give texts as arguments or --file, one of the two")
    try:
        preprocessing, score, model = opened(args.checkpoint)
        reader = kind(preprocessing.get("kind"))
        inputs = read_inputs(args, reader.takes_paths)
        if not inputs:
            raise PredictError(f"--file {args.file} holds no non-empty lines")
        if score is None:  # a kind of one's own that reads its inputs itself (Kind.read)
            results = predict(model, preprocessing, inputs)
        else:
            results = classify(reader, preprocessing, inputs, score)
    except UserError as e:
        sys.exit(f"error: {e}")
    import numpy as np

    names = preprocessing.get("class_names")
    k = args.top or (1 if len(names or ()) <= 2 else 3)
    failed = 0
    for text, result in zip(inputs, results):
        if isinstance(result, PredictError):
            print(f"error: {result}", file=sys.stderr)
            failed += 1
            continue
        probs, spans = result
        text = reader.shown(text)
        for i, p in enumerate(np.asarray(probs, dtype=np.float64)):
            top = np.argsort(-p, kind="stable")[:k]
            guesses = "  ".join(f"{names[c] if names else c} {p[c]:.3f}" for c in top.tolist())
            where = "" if spans is None or len(spans) == 1 else f" [{spans[i][0]:.1f}-{spans[i][1]:.1f} s]"
            print(f"{guesses}\t{printable(text)}{where}")  # a file's path is shown whole
    if failed:
        print(f"error: {failed} of {len(inputs)} input(s) could not be classified (above)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
