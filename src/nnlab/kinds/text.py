"""Texts: batches of (tokens (B, T) int64 padded, lengths (B,)); shown as the text the model read, in a table."""

from pathlib import Path

from nnlab.kinds import Kind

COLUMNS = ["text", "label", "prediction", "confidence", "correct"]


class TextKind(Kind):
    name = "text"
    takes_paths = False
    one_tensor = False  # (tokens, lengths)

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

    def encode(self, preprocessing: dict, texts: list[str]):
        """Raw texts to (tokens, lengths), exactly as the training data was prepared."""
        import torch
        from tokenizers import Tokenizer

        from nnlab.data.text import PAD, clean, encode

        tokenizer = Tokenizer.from_str(preprocessing["tokenizer"])
        ids, offsets = encode(tokenizer, [clean(t) for t in texts], preprocessing["max_length"])
        lengths = offsets[1:] - offsets[:-1]
        tokens = torch.full((len(texts), int(lengths.max())), PAD, dtype=torch.long)
        for row in range(len(texts)):
            tokens[row, : lengths[row]] = ids[offsets[row] : offsets[row + 1]]
        return tokens, lengths

    def predict(self, model, preprocessing, inputs, batch_size=256):
        import torch

        probs = torch.cat(
            [
                model.probabilities(model(self.encode(preprocessing, inputs[i : i + batch_size])))
                for i in range(0, len(inputs), batch_size)
            ]
        )
        return [(p[None], None) for p in probs]

    def shown(self, text):
        text = " ".join(text.split())
        return text[:70] + "..." if len(text) > 70 else text
