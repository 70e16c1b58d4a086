"""Classify new inputs with a checkpoint alone: no dataset, no Hydra config.

    python -m nnlab.predict CHECKPOINT "A gripping film." "Two hours I will never get back."
    python -m nnlab.predict CHECKPOINT --file reviews.txt      (one review per line; - reads stdin)
    python -m nnlab.predict CHECKPOINT clip.wav other.wav      (a speech model: WAV files, any rate)

Prints one line per input: the most probable classes with their probabilities, and the input.
The checkpoint is read with torch.load(weights_only=True); the preprocessing it needs (a text
model's tokenizer and maximum length, a speech model's sample rate and clip length) was stored in
it at training time.
"""

import argparse
import sys
from pathlib import Path

import torch

from nnlab.data.imdb import PAD, clean, encode
from nnlab.module import Classifier


class PredictError(ValueError):
    pass


def load(path) -> tuple[Classifier, dict]:
    """The model (eval mode, CPU) and the preprocessing record of a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise PredictError(f"checkpoint {path} does not exist; runs keep theirs in <run dir>/checkpoints/")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    missing = {"hyper_parameters", "state_dict"} - checkpoint.keys()
    if missing:
        raise PredictError(f"{path} is not an nnlab checkpoint: it has no {sorted(missing)}")
    preprocessing = checkpoint.get("preprocessing")
    if preprocessing is None:
        raise PredictError(f"{path} records no preprocessing (its data module stores none), so it cannot "
                           "classify raw inputs; predict supports text (model=lstm) and speech (model=speech_rnn) models.")
    model = Classifier(**checkpoint["hyper_parameters"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), preprocessing


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
    """Audio files to (B, samples) waveforms as training read them: mono, resampled, padded or trimmed."""

    def __init__(self, preprocessing: dict):
        self.sample_rate, self.samples = preprocessing["sample_rate"], preprocessing["samples"]

    def __call__(self, paths: list[str]):
        from nnlab.data.speech import decode

        clips = []
        for path in paths:
            if not Path(path).is_file():
                raise PredictError(f"{path} is not a file; give the paths of audio files (WAV, FLAC, ...)")
            clip, problem, _, _ = decode(path, self.sample_rate, self.samples)
            if problem:
                raise PredictError(f"{path} is {problem}: it cannot be classified")
            clips.append(clip)
        return torch.stack(clips).float() / 32768


@torch.inference_mode()
def predict(model: Classifier, preprocessing: dict, inputs: list[str], batch_size: int = 256) -> torch.Tensor:
    """(N, classes) probabilities for raw inputs (texts, or audio file paths)."""
    encoders = {"text": TextEncoder, "audio": AudioEncoder}
    if preprocessing.get("kind") not in encoders:
        raise PredictError(f"predict does not handle {preprocessing.get('kind')!r} inputs")
    encode = encoders[preprocessing["kind"]](preprocessing)
    probs = [model.probabilities(model(encode(inputs[i : i + batch_size])))
             for i in range(0, len(inputs), batch_size)]
    return torch.cat(probs)


def read_inputs(args) -> list[str]:
    if args.file is None:
        empty = [i + 1 for i, text in enumerate(args.text) if not text.strip()]
        if empty:
            raise PredictError(f"text argument(s) {empty} are empty; give each text something to classify")
        return args.text
    if args.file == "-":
        lines = sys.stdin.read().splitlines()
    else:
        path = Path(args.file)
        if not path.exists() or path.is_dir():
            raise PredictError(f"--file {path} is not a file of texts, one per line")
        lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    return [line for line in lines if line.strip()]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m nnlab.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint written by train.py (for example <run dir>/checkpoints/best.ckpt)")
    parser.add_argument("text", nargs="*", metavar="input",
                        help="texts to classify (a text model) or audio files (a speech model), one per argument")
    parser.add_argument("--file", help="a UTF-8 file with one input per line (empty lines skipped); - for stdin")
    parser.add_argument("--top", type=int, default=None,
                        help="print the TOP most probable classes (default 1 for text, 3 for audio)")
    args = parser.parse_args(argv)
    if bool(args.text) == (args.file is not None):
        parser.error("give texts as arguments or --file, one of the two")
    try:
        model, preprocessing = load(args.checkpoint)
        inputs = read_inputs(args)
        if not inputs:
            raise PredictError(f"--file {args.file} holds no non-empty lines")
        probs = predict(model, preprocessing, inputs)
    except PredictError as e:
        sys.exit(f"error: {e}")
    names = preprocessing.get("class_names") or [str(i) for i in range(probs.shape[1])]
    k = args.top or (3 if preprocessing["kind"] == "audio" else 1)
    for text, p in zip(inputs, probs):
        top = p.topk(min(k, len(p)))
        guesses = "  ".join(f"{names[i]} {v:.3f}" for v, i in zip(top.values.tolist(), top.indices.tolist()))
        if preprocessing["kind"] == "text":
            text = " ".join(text.split())
            text = text[:70] + "..." if len(text) > 70 else text
        print(f"{guesses}\t{text}")  # an audio file's path is shown whole


if __name__ == "__main__":
    main()
