"""Classify new inputs with a checkpoint alone: no dataset, no Hydra config.

    python -m nnlab.predict CHECKPOINT "A gripping film." "Two hours I will never get back."
    python -m nnlab.predict CHECKPOINT --file reviews.txt      (one review per line; - reads stdin)

Prints one line per input: the predicted class, its probability, and the start of the input.
The checkpoint is read with torch.load(weights_only=True); the preprocessing it needs (a text
model's tokenizer and maximum length) was stored in it at training time.
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
                           "classify raw inputs; predict supports text models (model=lstm).")
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


@torch.inference_mode()
def predict(model: Classifier, preprocessing: dict, inputs: list[str], batch_size: int = 256) -> torch.Tensor:
    """(N, classes) probabilities for raw inputs."""
    if preprocessing.get("kind") != "text":
        raise PredictError(f"predict does not handle {preprocessing.get('kind')!r} inputs yet")
    encode = TextEncoder(preprocessing)
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
    parser.add_argument("text", nargs="*", help="texts to classify, one per argument")
    parser.add_argument("--file", help="a UTF-8 file with one input per line (empty lines skipped); - for stdin")
    parser.add_argument("--top", type=int, default=1, help="print the TOP most probable classes (default 1)")
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
    for text, p in zip(inputs, probs):
        top = p.topk(min(args.top, len(p)))
        guesses = "  ".join(f"{names[i]} {v:.3f}" for v, i in zip(top.values.tolist(), top.indices.tolist()))
        snippet = " ".join(text.split())
        print(f"{guesses}\t{snippet[:70] + '...' if len(snippet) > 70 else snippet}")


if __name__ == "__main__":
    main()
