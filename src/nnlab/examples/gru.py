"""A network nnlab does not ship, added in this file and one config (conf/model/gru.yaml), no other edit:
`python train.py model=gru` on IMDB, `model=gru data=text_table data.path=...` on a table of your own texts,
`objective=adversarial` for adversarial training on its word embeddings.

A network is a plain nn.Module whose constructor takes primitives (they are saved in every checkpoint, so
`Classifier.load_from_checkpoint` and `nnlab.predict` rebuild it anywhere), named in the config by its import path,
with two class attributes: `reads`, the kind of data it takes (nnlab.kinds: "text" batches are (tokens, lengths),
padded with 0 after each text's last token), and `perturbable = True` if its forward takes `perturbation` and
`return_embedding` as nnlab.objectives.Adversarial uses them.
"""

import torch
from torch import nn


class GRU(nn.Module):
    """Embedding, a GRU read left to right, the max and the mean of its outputs over each text's own tokens, a linear
    head. Pads come after a text's last token, so they never reach the outputs that are pooled."""

    reads = "text"
    perturbable = True

    def __init__(self, vocab_size: int, num_classes: int, embed_dim: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.gru = nn.GRU(embed_dim, hidden, num_layers=layers, dropout=dropout if layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden, num_classes)

    def forward(self, tokens, lengths, perturbation=None, return_embedding=False):  # (B, T) int64, (B,)
        embedded = self.embed(tokens)  # (B, T, E)
        x = embedded if perturbation is None else embedded + perturbation
        out, _ = self.gru(self.dropout(x).transpose(0, 1))  # (T, B, H): time-major, as the GRU kernels read
        valid = (torch.arange(tokens.shape[1], device=tokens.device)[:, None] < lengths.to(tokens.device))[..., None]
        mean = (out * valid).sum(0) / valid.sum(0).clamp_min(1)
        peak = out.masked_fill(~valid, float("-inf")).amax(0)
        logits = self.head(self.dropout(torch.cat([peak, mean], dim=-1)))
        return (logits, embedded) if return_embedding else logits
