"""The networks: plain nn.Modules with primitive constructor arguments, no Lightning or Hydra."""

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class MLP(nn.Module):
    """Fully connected classifier over flattened images."""

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        num_classes: int,
        hidden: list[int],
        batch_norm: bool,
        dropout: float,
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_channels * image_size * image_size
        for h in hidden:
            layers.append(nn.Linear(width, h, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(nn.ReLU(inplace=True))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):  # (B, C, H, W) -> (B, num_classes)
        return self.layers(x)


class CNN(nn.Module):
    """VGG-style convolutional classifier.

    `conv` lists the convolution widths in order, with "M" for a 2x2 max-pool, so the
    Keras tutorial network is `conv=[32, M, 64, M, 64]` with `padding=0`, `hidden=[64]`.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        num_classes: int,
        conv: list,
        kernel_size: int,
        padding: int,
        batch_norm: bool,
        hidden: list[int],
        dropout: float,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for spec in conv:
            if spec == "M":
                layers.append(nn.MaxPool2d(2))
                size //= 2
                continue
            layers.append(nn.Conv2d(channels, int(spec), kernel_size, padding=padding, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(int(spec)))
            layers.append(nn.ReLU(inplace=True))
            channels, size = int(spec), size + 2 * padding - kernel_size + 1
        if size < 1:
            raise ValueError(f"CNN conv={conv} shrinks a {image_size}px image to nothing; use padding or fewer pools")
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.Flatten()]
        width = channels * size * size
        for h in hidden:
            head += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            if dropout > 0:
                head.append(nn.Dropout(dropout))
            width = h
        head.append(nn.Linear(width, num_classes))
        self.head = nn.Sequential(*head)

    def forward(self, x):  # (B, C, H, W)
        return self.head(self.features(x))  # (B, num_classes)


class LSTM(nn.Module):
    """Text classifier: embedding, (bidirectional) LSTM over packed sequences, pooling, linear head.

    pooling: "last" (the final hidden state of each direction) or "max_mean" (max and mean over
    the valid time steps, concatenated). Padding never enters the LSTM: sequences are packed.
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        embed_dim: int,
        hidden: int,
        layers: int,
        bidirectional: bool,
        dropout: float,
        pooling: str,
    ):
        super().__init__()
        if pooling not in ("last", "max_mean"):
            raise ValueError(f"model.arch.pooling={pooling!r} is not one of last, max_mean")
        self.pooling = pooling
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.lstm = nn.LSTM(embed_dim, hidden, layers, batch_first=True, bidirectional=bidirectional,
                            dropout=dropout if layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        width = hidden * (2 if bidirectional else 1) * (2 if pooling == "max_mean" else 1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, tokens, lengths):  # (B, T) int64, (B,)
        x = self.dropout(self.embed(tokens))  # (B, T, E)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, (h, _) = self.lstm(packed)  # h: (layers * directions, B, H)
        if self.pooling == "last":
            directions = 2 if self.lstm.bidirectional else 1
            features = torch.cat(list(h[-directions:]), dim=-1)  # (B, H * directions)
        else:
            out, _ = pad_packed_sequence(out, batch_first=True)  # (B, T', H * directions)
            valid = torch.arange(out.shape[1], device=out.device)[None, :] < lengths.to(out.device)[:, None]
            valid = valid.unsqueeze(-1)  # (B, T', 1)
            mean = (out * valid).sum(1) / valid.sum(1)
            peak = out.masked_fill(~valid, float("-inf")).amax(1)
            features = torch.cat([peak, mean], dim=-1)  # (B, 2 * H * directions)
        return self.head(self.dropout(features))  # (B, num_classes)


NETS = {"mlp": MLP, "cnn": CNN, "lstm": LSTM}
