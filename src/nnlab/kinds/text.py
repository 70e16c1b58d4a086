"""Texts: batches of (tokens (B, T) int64 padded, lengths (B,)); shown as the text the model read, in a table."""

from pathlib import Path

from nnlab.kinds import Kind

COLUMNS = ["text", "label", "prediction", "confidence", "correct"]
TOKENS = 1024  # the tokens a text model's torch.export program reads when its checkpoint sets no maximum length


def tokenizer_of(preprocessing: dict):
    """The checkpoint's tokenizer (its JSON is in the preprocessing record), built once per record."""
    from tokenizers import Tokenizer

    text = preprocessing["tokenizer"]
    if _TOKENIZERS.get("text") != text:
        _TOKENIZERS.update(text=text, tokenizer=Tokenizer.from_str(text))
    return _TOKENIZERS["tokenizer"]


_TOKENIZERS: dict = {}


class TextKind(Kind):
    name = "text"
    takes_paths = False
    one_tensor = False  # (tokens, lengths)
    # torch 2.11's dynamo exporter writes a recurrent network's loop for the example's length only
    # (pytorch/pytorch#191855) and the graph then fails on every other length: the TorchScript exporter
    onnx_exporter = "torchscript"

    def feed(self, net, x):
        return net(*x)

    def count(self, x):
        _, lengths = x
        return len(lengths), int(lengths.sum())  # the lengths stay on the CPU

    def keep(self, x, rows):
        tokens, lengths = x
        return [tokens[i, : lengths[i]].cpu() for i in rows]  # without their padding

    def show(self, samples, names, preprocessing, out_dir):
        """test_samples.csv: every kept test text as the model read it, its label, prediction and confidence."""
        if not samples:
            return {}
        import csv
        import io

        from tokenizers import Tokenizer

        from nnlab.atomic import atomic_open

        tokenizer = Tokenizer.from_str(preprocessing["tokenizer"])
        rows = [
            [
                tokenizer.decode([int(i) for i in x], skip_special_tokens=False),
                names[label],
                names[int(p.argmax())],
                round(float(p.max()), 4),
                not wrong,
            ]
            for x, label, p, wrong in samples
        ]
        table = io.StringIO()
        csv.writer(table).writerows([COLUMNS] + rows)
        with atomic_open(Path(out_dir) / "test_samples.csv") as f:
            f.write(table.getvalue().encode())
        return {"test/samples": lambda wandb: wandb.Table(columns=COLUMNS, data=rows)}

    def raw(self, preprocessing, text):
        """The text's token ids: cleaned, tokenised with the training vocabulary and cut as the test data was."""
        import numpy as np

        from nnlab.inputs import token_ids

        (ids,) = token_ids(tokenizer_of(preprocessing), [text], preprocessing["max_length"])
        return [np.asarray(ids, dtype=np.int64)], None

    def stack(self, rows):
        from nnlab.inputs import padded

        return padded(rows)

    def preparation(self, preprocessing):
        from nnlab.served import Lengths

        return Lengths()

    def describe(self, preprocessing):
        m = preprocessing["max_length"]
        return {
            "name": "tokens",
            "dtype": "int64",
            "shape": ["batch", "tokens"],
            "prepare": (
                "replace <br /> tags and runs of white space by single spaces, encode with tokenizer.json (an empty "
                "text is one unknown token, id 1)"
                + (f", keep a longer text's first {m // 2} and last {m - m // 2} tokens" if m else "")
                + "; pad the texts of a batch to the longest with id 0 at the end (the graph reads each text's "
                "length from its padding)"
            ),
            "max_length": m,
            "pad_id": 0,
        }

    def example(self, preprocessing):
        """Two texts of different lengths (7 and 4 tokens) from the tokenizer's vocabulary."""
        import json

        import numpy as np

        rng = np.random.default_rng(0)
        high = max(3, len(json.loads(preprocessing["tokenizer"])["model"]["vocab"]))
        return self.stack([rng.integers(2, high, 7), rng.integers(2, high, 4)])

    def torch_program_input(self, x, preprocessing):
        """Texts padded to the longest the model reads (max_length, else TOKENS): torch.export of torch 2.11 fixes a
        recurrent network's length to the example's, and padding changes no logit (each length is read from it)."""
        import torch

        tokens = preprocessing["max_length"] or TOKENS
        x = torch.nn.functional.pad(x, (0, tokens - x.shape[1]))
        prepare = f"as for the ONNX graph, then pad each text to {tokens} tokens"
        return x, {"shape": ["batch", tokens], "prepare": prepare}

    def shown(self, text):
        text = " ".join(text.split())
        return text[:70] + "..." if len(text) > 70 else text
