"""Classify new inputs with a checkpoint alone: no dataset, no Hydra config.

    python -m nnlab.predict CHECKPOINT "A gripping film." "Two hours I will never get back."
    python -m nnlab.predict CHECKPOINT --file reviews.txt      (one review per line; - reads stdin)
    python -m nnlab.predict CHECKPOINT clip.wav other.wav      (a speech model: WAV files, any rate)

Prints one line per input: the most probable classes with their probabilities, and the input. An audio file
longer than the model's clip is classified in windows of that length, half a window apart, one line each.
Inputs that cannot be read are reported on stderr and the others are still classified; the exit code is then 1.
The checkpoint is read with torch.load(weights_only=True); the preprocessing it needs (a text
model's tokenizer and maximum length, a speech model's sample rate and clip length) was stored in
it at training time.
"""

import argparse
import sys
import unicodedata
from pathlib import Path

import torch

from nnlab.checkpoint import model_from_checkpoint, read_checkpoint
from nnlab.data.imdb import PAD, clean, encode
from nnlab.errors import UserError
from nnlab.module import Classifier


class PredictError(UserError, ValueError):
    pass


def load(path) -> tuple[Classifier, dict]:
    """The model (eval mode, CPU) and the preprocessing record of a checkpoint."""
    path = Path(path)
    checkpoint = read_checkpoint(path)
    preprocessing = checkpoint.get("preprocessing")
    if preprocessing is None:
        raise PredictError(f"{path} records no preprocessing (its data module stores none), so it cannot "
                           "classify raw inputs; predict supports text (model=lstm) and speech (model=speech_rnn) models.")
    return model_from_checkpoint(checkpoint, path), preprocessing


class TextEncoder:
    """Raw reviews to (tokens, lengths), exactly as the training data was prepared."""

    def __init__(self, preprocessing: dict):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_str(preprocessing["tokenizer"])
        self.max_length = preprocessing["max_length"]

    def __call__(self, texts: list[str]):
        ids, offsets = encode(self.tokenizer, [clean(t) for t in texts], self.max_length)
        lengths = offsets[1:] - offsets[:-1]
        tokens = torch.full((len(texts), int(lengths.max())), PAD, dtype=torch.long)
        for row in range(len(texts)):
            tokens[row, : lengths[row]] = ids[offsets[row] : offsets[row + 1]]
        return tokens, lengths


class AudioEncoder:
    """An audio file as (windows, samples) waveforms, prepared as the training clips were (mono, resampled): one
    clip-length window (padded with silence when shorter), or for a longer file windows half a clip apart, the
    last one ending at the file's end."""

    def __init__(self, preprocessing: dict):
        self.sample_rate, self.samples = preprocessing["sample_rate"], preprocessing["samples"]

    def windows(self, path: str) -> tuple[torch.Tensor, list[float]]:
        """The file's windows (N, samples) in [-1, 1) and each window's start in seconds."""
        from nnlab.data.speech import decode, fit_length

        if not Path(path).is_file():
            raise PredictError(f"{path} is not a file; give the paths of audio files (WAV, FLAC, ...)")
        whole, problem, _, _ = decode(path, self.sample_rate, None)
        if problem:
            raise PredictError(f"{path} is {problem}: it cannot be classified")
        n = self.samples
        if len(whole) <= n * 1.25:  # up to a little longer than a clip: one clip, as training read it
            return fit_length(whole, n)[None].float() / 32768, [max(0.0, (len(whole) - n) / 2 / self.sample_rate)]
        starts = list(range(0, len(whole) - n + 1, n // 2))
        if starts[-1] + n < len(whole):
            starts.append(len(whole) - n)
        return torch.stack([whole[s : s + n] for s in starts]).float() / 32768, [s / self.sample_rate for s in starts]


@torch.inference_mode()
def predict(model: Classifier, preprocessing: dict, inputs: list[str], batch_size: int = 256) -> torch.Tensor:
    """(N, classes) probabilities for texts."""
    if preprocessing.get("kind") != "text":
        raise PredictError(f"predict() takes texts; this checkpoint reads {preprocessing.get('kind')!r} inputs")
    encode = TextEncoder(preprocessing)
    probs = [model.probabilities(model(encode(inputs[i : i + batch_size])))
             for i in range(0, len(inputs), batch_size)]
    return torch.cat(probs)


@torch.inference_mode()
def predict_audio(model: Classifier, preprocessing: dict, paths: list[str], batch_size: int = 256):
    """For each file: (its windows' probabilities (W, classes), their start times), or the PredictError that says
    why it cannot be classified."""
    encode = AudioEncoder(preprocessing)
    results = []
    for path in paths:
        try:
            waves, starts = encode.windows(path)
        except PredictError as e:
            results.append(e)
            continue
        probs = torch.cat([model.probabilities(model(waves[i : i + batch_size]))
                           for i in range(0, len(waves), batch_size)])
        results.append((probs, starts))
    return results


def printable(text: str) -> str:
    """The text with control characters (terminal escapes, NUL, bell, ...) shown as U+FFFD, never sent raw."""
    return "".join("\ufffd" if unicodedata.category(c) == "Cc" else c for c in text)


def read_inputs(args, kind: str) -> list[str]:
    if args.file is None:
        empty = [i + 1 for i, text in enumerate(args.text) if not text.strip()]
        if empty:
            raise PredictError(f"text argument(s) {empty} are empty; give each text something to classify")
        if kind == "text":
            paths = [t for t in args.text if len(t) < 4096 and "\n" not in t and Path(t).is_file()]
            if paths:
                raise PredictError(f"{paths[0]!r} is a file path, not a review: a text model classifies the text "
                                   f"given; to classify the lines of a file use --file {paths[0]}")
        return args.text
    if args.file == "-":
        raw = sys.stdin.buffer.read()
        name = "standard input"
    else:
        path = Path(args.file)
        if not path.exists() or path.is_dir():
            raise PredictError(f"--file {path} is not a file of texts, one per line")
        raw, name = path.read_bytes(), str(path)
    if b"\0" in raw[:8192]:
        raise PredictError(f"--file {name} is a binary file (it holds NUL bytes), not text: give a UTF-8 text file "
                           "with one input per line")
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
        print(f"warning: {len(undecodable)} line(s) of {name} are not valid UTF-8 and were decoded with replacement "
              f"characters (lines {', '.join(map(str, undecodable[:5]))}{', ...' if len(undecodable) > 5 else ''})",
              file=sys.stderr)
    return lines


def at_least_one(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: give how many classes to print, 1 or more")
    return number


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m nnlab.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint written by train.py (for example <run dir>/checkpoints/best.ckpt)")
    parser.add_argument("text", nargs="*", metavar="input",
                        help="texts to classify (a text model) or audio files (a speech model), one per argument")
    parser.add_argument("--file", help="a UTF-8 file with one input per line (empty lines skipped); - for stdin")
    parser.add_argument("--top", type=at_least_one, default=None,
                        help="print the TOP most probable classes (default 1 for text, 3 for audio)")
    args = parser.parse_args(argv)
    if bool(args.text) == (args.file is not None):
        parser.error("give texts as arguments or --file, one of the two")
    try:
        model, preprocessing = load(args.checkpoint)
        kind = preprocessing.get("kind")
        if kind not in ("text", "audio"):
            raise PredictError(f"predict does not handle {kind!r} inputs")
        inputs = read_inputs(args, kind)
        if not inputs:
            raise PredictError(f"--file {args.file} holds no non-empty lines")
        if kind == "text":
            results = [(p[None], None) for p in predict(model, preprocessing, inputs)]
        else:
            results = predict_audio(model, preprocessing, inputs)
    except UserError as e:
        sys.exit(f"error: {e}")
    names = preprocessing.get("class_names")
    k = args.top or (3 if kind == "audio" else 1)
    failed = 0
    for text, result in zip(inputs, results):
        if isinstance(result, PredictError):
            print(f"error: {result}", file=sys.stderr)
            failed += 1
            continue
        probs, starts = result
        if kind == "text":
            text = " ".join(text.split())
            text = printable(text[:70] + "..." if len(text) > 70 else text)
        for i, p in enumerate(probs):
            top = p.topk(min(k, len(p)))
            guesses = "  ".join(f"{names[c] if names else c} {v:.3f}"
                                for v, c in zip(top.values.tolist(), top.indices.tolist()))
            where = "" if starts is None or len(starts) == 1 else \
                f" [{starts[i]:.1f}-{starts[i] + preprocessing['samples'] / preprocessing['sample_rate']:.1f} s]"
            print(f"{guesses}\t{printable(text)}{where}")  # an audio file's path is shown whole
    if failed:
        print(f"error: {failed} of {len(inputs)} input(s) could not be classified (above)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
