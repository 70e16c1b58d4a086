"""The networks: plain nn.Modules with primitive constructor arguments, no Lightning or Hydra."""

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nnlab.errors import ConfigError


class MLP(nn.Module):
    """Fully connected classifier over its flattened input: an image's pixels, or a row of numeric features.

    The input's size is `in_features`, or for images `in_channels * image_size**2` (what checkpoints written before
    in_features record)."""

    reads = "tensor"  # any kind whose samples are one tensor each (nnlab.kinds): images, rows of a table, ...

    def __init__(
        self,
        num_classes: int,
        hidden: list[int],
        batch_norm: bool,
        dropout: float,
        in_channels: int | None = None,
        image_size: int | None = None,
        in_features: int | None = None,
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        if in_features is None and (in_channels is None or image_size is None):
            raise ConfigError("the MLP needs model.arch.in_features, or model.arch.in_channels and image_size")
        width = in_features if in_features is not None else in_channels * image_size * image_size
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

    def forward(self, x):  # (B, C, H, W) or (B, features) -> (B, num_classes)
        return self.layers(x)


class CNN(nn.Module):
    """VGG-style convolutional classifier.

    `conv` lists the convolution widths in order, with "M" for a 2x2 max-pool, so the
    Keras tutorial network is `conv=[32, M, 64, M, 64]` with `padding=0`, `hidden=[64]`.

    channels_last: the convolutions' weights and inputs in channels-last memory order (NHWC), which oneDNN on a CPU
    and cuDNN on a GPU compute without reordering: a training step of the default CNN measured 1.5x faster on a CPU.
    The state dict is the same either way.

    pool_first: a convolution followed by "M" is max-pooled before its BatchNorm and ReLU, which then work on a
    quarter of the pixels (ReLU commutes with max-pooling; BatchNorm then normalises the pooled values). A step of
    the speed run's CNN measured faster on a CPU (docs/performance.md). Changes the state dict's layer numbers.
    """

    reads = "image"  # the kind of data (nnlab.kinds)

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
        channels_last: bool = False,
        pool_first: bool = False,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for i, spec in enumerate(conv):
            if spec == "M":
                if not (pool_first and i > 0 and conv[i - 1] != "M"):  # pool_first: the convolution pooled already
                    layers.append(nn.MaxPool2d(2))
                size //= 2
                continue
            layers.append(nn.Conv2d(channels, int(spec), kernel_size, padding=padding, bias=not batch_norm))
            if pool_first and conv[i + 1 : i + 2] == ["M"]:
                layers.append(nn.MaxPool2d(2))
            if batch_norm:
                layers.append(nn.BatchNorm2d(int(spec)))
            layers.append(nn.ReLU(inplace=True))
            channels, size = int(spec), size + 2 * padding - kernel_size + 1
        if size < 1:
            raise ConfigError(f"CNN conv={conv} shrinks a {image_size}px image to nothing; use padding or fewer pools")
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
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.features.to(memory_format=self.memory_format)

    def forward(self, x):  # (B, C, H, W)
        return self.head(self.features(x.contiguous(memory_format=self.memory_format)))  # (B, num_classes)


class _Reorder(torch.autograd.Function):
    """The rows of a (T, B, F) tensor permuted by `order`, a permutation of its T * B rows that is its own inverse (each
    review reversed within its length), so the backward pass is the same permutation. Whole rows through
    index_select: gather reads an index per element and its backward scatter-adds into zeros (33 against 9 ms for
    64 x 504 x 256 on a CPU, forward and backward)."""

    @staticmethod
    def forward(ctx, x, order):
        ctx.save_for_backward(order)
        return x.reshape(-1, x.shape[-1]).index_select(0, order).view(x.shape)

    @staticmethod
    def backward(ctx, grad):
        (order,) = ctx.saved_tensors
        return _Reorder.apply(grad, order), None


def _keep(shape, p: float, device) -> tuple[torch.Tensor, float]:
    """A boolean mask that keeps each entry with probability 1 - p (p rounded to 1/65536), and that probability. Three
    16-bit numbers from each 64-bit draw (the fourth has 15 random bits): a CPU's generator costs per call, and
    rand_like draws one per entry (31 against 17 ms for 64 x 504 x 256)."""
    count = torch.Size(shape).numel()
    bits = torch.empty((count + 2) // 3, dtype=torch.int64, device=device).random_()  # 63 random bits each
    threshold = round(p * 65536) - 32768  # an int16 is uniform on [-32768, 32767]
    keep = bits.view(torch.int16).view(-1, 4)[:, :3] >= threshold  # little-endian: the top int16 is the fourth
    return keep.reshape(-1)[:count].view(shape), 1 - (threshold + 32768) / 65536


class LSTM(nn.Module):
    """Text classifier: embedding, (bidirectional, stacked) LSTM, pooling, linear head.

    Padding never reaches a valid step: the forward direction reads each review from its first
    token, and the backward direction reads it reversed within its own length, so pads only ever
    follow a review's last token, where the outputs are masked away. The result equals
    `pack_padded_sequence` through a bidirectional nn.LSTM; packed: true uses that instead, same
    parameters, same outputs. It is off by default because PyTorch's CPU LSTM on packed sequences
    falls back to a step-by-step kernel whose backward grows with the square of the length: one
    forward and backward over 64 x 512 tokens (64 units) measured 2.5 s packed, 0.06 s unpacked.
    With length-bucketed batches the padding computed is a few percent.

    pooling: "last" (each direction's state after its last valid token) or "max_mean" (max and
    mean over the valid steps, concatenated). word_dropout: in training, the share of tokens whose
    whole embedding is zeroed (the rest scaled up), on top of `dropout` on single features.
    """

    reads = "text"  # the kind of data (nnlab.kinds)
    perturbable = True  # forward takes perturbation= and return_embedding= (nnlab.objectives.Adversarial)

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
        packed: bool = False,
        word_dropout: float = 0.0,
    ):
        super().__init__()
        if pooling not in ("last", "max_mean"):
            raise ConfigError(f"model.arch.pooling={pooling!r} is not one of last, max_mean")
        self.pooling, self.packed, self.word_dropout = pooling, packed, word_dropout
        directions = 2 if bidirectional else 1
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        # rnns[layer][direction]: one-directional LSTMs, so each direction can read its own order.
        self.rnns = nn.ModuleList(
            nn.ModuleList(nn.LSTM(embed_dim if i == 0 else hidden * directions, hidden) for _ in range(directions))
            for i in range(layers)
        )
        self.dropout = nn.Dropout(dropout)
        width = hidden * directions * (2 if pooling == "max_mean" else 1)
        self.head = nn.Linear(width, num_classes)

    def _drop_words_and_features(self, x):
        """Word dropout and feature dropout in one mask over (T, B, E) embeddings: nn.Dropout draws its mask through
        bernoulli_, 3 times slower on a CPU than comparing uniform numbers, and an LSTM step draws it twice
        (adversarial training)."""
        p, words = self.dropout.p, self.word_dropout
        if p >= 1 or words >= 1:
            return torch.zeros_like(x)  # as nn.Dropout(1.0)
        mask, kept = None, 1.0
        for share, shape in ((p, x.shape), (words, (*x.shape[:2], 1))):  # single features; whole words
            if share:
                keep, rate = _keep(shape, share, x.device)
                mask = keep.to(x.dtype) if mask is None else mask * keep
                kept *= rate
        return x if mask is None else x * mask.mul_(1 / kept)

    def _run(self, rnn, x, lengths):
        if not self.packed:
            return rnn(x)[0]
        out, _ = rnn(pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False))
        return pad_packed_sequence(out, total_length=x.shape[0])[0]

    def forward(self, tokens, lengths, perturbation=None, return_embedding=False):  # (B, T) int64, (B,)
        """perturbation (B, T, E) is added to the word embeddings (adversarial training); with
        return_embedding=True the result is (logits, the embeddings as looked up: (B, T, E)).

        Inside, every tensor is time-major, (T, B, ...), the layout the CPU's and cuDNN's LSTM kernels read: a
        batch-first nn.LSTM copies its input and output (and their gradients) to and from it, 2 ms a copy at
        64 x 504 x 256."""
        lengths = lengths.to(tokens.device)
        steps = torch.arange(tokens.shape[1], device=tokens.device)[:, None]  # (T, 1)
        valid = steps < lengths[None, :]  # (T, B)
        # Step t of a review read backwards is its token length-1-t; pads stay where they are.
        reverse = torch.where(valid, lengths[None, :] - 1 - steps, steps)  # (T, B)
        batch = torch.arange(tokens.shape[0], device=tokens.device)[None, :]
        order = (reverse * tokens.shape[0] + batch).reshape(-1)  # the same as rows of (T * B, F); its own inverse
        embedded = self.embed(tokens.t()).transpose(0, 1)  # (B, T, E), a view of time-major embeddings
        x = embedded if perturbation is None else embedded + perturbation
        x = x.transpose(0, 1).contiguous()  # (T, B, E); no copy without a perturbation
        if self.training:
            x = self._drop_words_and_features(x)
        for i, layer in enumerate(self.rnns):
            if i:
                x = self.dropout(x)
            outs = [self._run(layer[0], x, lengths)]  # (T, B, H)
            if len(layer) == 2:
                back = self._run(layer[1], _Reorder.apply(x, order), lengths)
                outs.append(_Reorder.apply(back, order))
            x = torch.cat(outs, dim=-1)  # (T, B, H * directions)
        if self.pooling == "last":
            hidden = x.shape[-1] // len(self.rnns[-1])
            last = x[lengths - 1, batch[0]]  # (B, H * directions): each review's last valid step
            # forward: the step at length-1; backward: step 0, where it has read the whole review
            features = torch.cat([last[:, :hidden], x[0, :, hidden:]], dim=-1)
        else:
            mask = valid[..., None]  # (T, B, 1)
            mean = (x * mask).sum(0) / lengths[:, None].to(x.dtype)
            peak = x.masked_fill(~mask, float("-inf")).amax(0)
            features = torch.cat([peak, mean], dim=-1)  # (B, 2 * H * directions)
        logits = self.head(self.dropout(features))  # (B, num_classes)
        return (logits, embedded) if return_embedding else logits


class SpeechRNN(nn.Module):
    """Keyword spotter on raw waveforms: log-mel features, SpecAugment, a small convolutional front
    end, a (bidirectional) GRU or LSTM, attention pooling, a linear head (the attention-RNN family).

    The features are computed here with torchaudio.transforms, so they run on the model's device:
    log-mel energies of `n_mels` bands over `win_ms` windows every `hop_ms` (101 frames a second),
    normalised per band (BatchNorm). In training SpecAugment zeroes `spec_masks` random bands of
    up to `freq_mask` and as many stretches of up to `time_mask` frames. conv: channels of 3x3
    convolutions (BatchNorm, ReLU), each halving the frequency axis. pooling: "attention" (`heads`
    learned attention distributions over the frames, their weighted sums concatenated) or "last"
    (the last frame's output; for two directions, the forward direction's last and the backward's first).
    """

    reads = "audio"  # the kind of data (nnlab.kinds)
    augmentation_off = ("spec_masks=0",)  # the augmentation it does itself (trainer.overfit_batches turns it off)

    def __init__(
        self,
        num_classes: int,
        sample_rate: int,
        n_mels: int,
        win_ms: float,
        hop_ms: float,
        conv: list[int],
        cell: str,
        hidden: int,
        layers: int,
        bidirectional: bool,
        dropout: float,
        pooling: str,
        heads: int,
        spec_masks: int,
        freq_mask: int,
        time_mask: int,
    ):
        super().__init__()
        import torchaudio.transforms as T

        if pooling not in ("attention", "last"):
            raise ConfigError(f"model.arch.pooling={pooling!r} is not one of attention, last")
        if cell not in ("gru", "lstm"):
            raise ConfigError(f"model.arch.cell={cell!r} is not one of gru, lstm")
        win, hop = round(sample_rate * win_ms / 1000), round(sample_rate * hop_ms / 1000)
        self.mel = T.MelSpectrogram(
            sample_rate, n_fft=1 << (win - 1).bit_length(), win_length=win, hop_length=hop, f_min=20.0, n_mels=n_mels
        )
        self.norm = nn.BatchNorm1d(n_mels)
        self.spec_masks = spec_masks
        self.freq_masking = T.FrequencyMasking(freq_mask, iid_masks=True)
        self.time_masking = T.TimeMasking(time_mask, iid_masks=True)
        blocks, channels, bands = [], 1, n_mels
        for width in conv:
            blocks += [
                nn.Conv2d(channels, width, 3, stride=(2, 1), padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels, bands = width, (bands + 1) // 2
        self.front = nn.Sequential(*blocks)
        rnn = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn(
            channels * bands,
            hidden,
            layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.pooling, self.directions = pooling, 2 if bidirectional else 1
        width = hidden * self.directions
        self.attention = nn.Linear(width, heads) if pooling == "attention" else None
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width * (heads if pooling == "attention" else 1), num_classes)

    def features(self, waves):  # (B, samples) float in [-1, 1) -> (B, n_mels, frames)
        with torch.autocast(waves.device.type, enabled=False):
            return self.norm((self.mel(waves.float()) + 1e-6).log())

    def forward(self, waves):
        x = self.features(waves)
        if self.training:
            for _ in range(self.spec_masks):
                x = self.time_masking(self.freq_masking(x))
        x = self.front(x[:, None])  # (B, C, bands, frames)
        x = x.flatten(1, 2).transpose(1, 2)  # (B, frames, C * bands)
        out, _ = self.rnn(x)  # (B, frames, hidden * directions)
        if self.pooling == "attention":
            weights = self.attention(out).softmax(dim=1)  # (B, frames, heads)
            features = torch.einsum("bth,btd->bhd", weights, out).flatten(1)
        else:
            hidden = out.shape[-1] // self.directions
            features = torch.cat([out[:, -1, :hidden], out[:, 0, hidden:]], dim=-1)
        return self.head(self.dropout(features))


NETS = {"mlp": MLP, "cnn": CNN, "lstm": LSTM, "speech_rnn": SpeechRNN}


def network(name: str) -> type[nn.Module]:
    """The network class a config names: one of NETS, or a class of your own by its import path
    (`model.net=mypackage.nets.MyNet`), which says what it reads (`reads = "image"`)."""
    if name in NETS:
        return NETS[name]
    module, _, attribute = name.rpartition(".")
    found = None
    if module:
        import importlib

        try:
            found = getattr(importlib.import_module(module), attribute, None)
        except ImportError:
            found = None
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        raise ConfigError(
            f"model.net={name!r} is not a network; choose one of {sorted(NETS)}, or give the import "
            "path of an nn.Module of your own (mypackage.nets.MyNet)"
        )
    if not isinstance(getattr(found, "reads", None), str):
        raise ConfigError(
            f"model.net={name!r} does not say what it reads: give the class a `reads` attribute, the "
            "kind of data it takes (image, text, audio)"
        )
    return found
