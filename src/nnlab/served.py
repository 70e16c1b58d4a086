"""A checkpoint's model as it is used: from an input read by its kind of data (nnlab.kinds: uint8 pixels, token ids
padded with 0, 16-bit samples as floats) to class probabilities and logits, with every step that is tensor math
inside (normalisation, each text's length from its padding, log-mel features). Predict on a checkpoint runs it in
PyTorch; nnlab export writes it as an ONNX graph and as a torch.export program, so both compute the same thing."""

import math

import torch
from torch import nn

from nnlab import kinds
from nnlab.inputs import PAD


class Served(nn.Module):
    """model (a Classifier) and the preparation its kind of data gives: raw batch -> (probabilities, logits)."""

    def __init__(self, model, preprocessing: dict):
        super().__init__()
        self.kind = kinds.kind(preprocessing["kind"])
        self.prepare = self.kind.preparation(preprocessing)
        self.net = model.net
        self.feed = model.reads.feed  # the network's kind: a tensor, or (tokens, lengths)
        self.binary = model.binary

    def forward(self, x):
        logits = self.feed(self.net, self.prepare(x)).float()
        if self.binary:  # one logit: [1 - p, p]
            p = logits.sigmoid()
            return torch.cat([1 - p, p], dim=-1), logits
        return logits.softmax(-1), logits


def scorer(model, preprocessing: dict):
    """score(batch) -> probabilities, NumPy in and out, for nnlab.kinds.classify: the checkpoint's model in PyTorch
    as its export computes them."""
    return scoring(Served(model, preprocessing))


def scoring(served, device="cpu"):
    """score(batch) -> probabilities of a Served module (or its torch.compile) on `device`, NumPy in and out: the
    batch copied there and the probabilities back."""

    def score(batch):
        with torch.inference_mode():
            return served(torch.from_numpy(batch).to(device))[0].cpu().numpy()

    return score


class Normalise(nn.Module):
    """uint8 pixels -> (x / 255 - mean) / std per channel, as the training images were."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, pixels):
        return (pixels.float() / 255 - self.mean) / self.std


class Lengths(nn.Module):
    """Token ids padded with 0 at the end -> (ids, each text's length); an all-padding row reads as length 1."""

    def forward(self, tokens):
        return tokens, (tokens != PAD).sum(1).clamp_min(1)


class FramedMel(nn.Module):
    """torchaudio's MelSpectrogram (power 2, centred frames, reflected edges, a periodic Hann window) as framing and
    matrix products: the same numbers without a complex FFT, which ONNX Runtime computes slowly (its STFT) or the
    exporters cannot write (TorchScript's). The DFT's basis is computed in float64 and stored in float32."""

    def __init__(self, mel):
        super().__init__()
        spec = mel.spectrogram
        if not (spec.center and spec.pad_mode == "reflect" and spec.power == 2.0 and spec.onesided) or spec.normalized:
            raise ValueError(f"{type(mel).__name__} with settings this export does not reproduce")
        n_fft, hop, win = spec.n_fft, spec.hop_length, spec.win_length
        window = torch.zeros(n_fft, dtype=torch.float64)
        left = (n_fft - win) // 2
        window[left : left + win] = spec.window.double()
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
        n = torch.arange(n_fft, dtype=torch.float64)[None, :]
        angle = 2 * math.pi * ((k * n) % n_fft) / n_fft
        basis = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window])  # (2 * bins, n_fft)
        self.register_buffer("basis", basis.float()[:, None, :])  # conv1d weights: (2 * bins, 1, n_fft)
        self.register_buffer("fb", mel.mel_scale.fb.float())  # (bins, n_mels)
        self.n_fft, self.hop, self.bins = n_fft, hop, n_fft // 2 + 1

    def forward(self, waves):  # (B, samples) -> (B, n_mels, frames)
        x = nn.functional.pad(waves[:, None], (self.n_fft // 2, self.n_fft // 2), mode="reflect")
        spectrum = nn.functional.conv1d(x, self.basis, stride=self.hop)  # (B, 2 * bins, frames)
        real, imag = spectrum[:, : self.bins], spectrum[:, self.bins :]
        power = real * real + imag * imag
        return torch.matmul(power.transpose(1, 2), self.fb).transpose(1, 2)


def for_export(served: Served) -> Served:
    """A copy of `served` with what an exporter cannot write replaced by the same computation in other operations:
    torchaudio's MelSpectrogram by FramedMel. A copy: `served` shares the checkpoint's network, which the check
    against the checkpoint and torch.export still read as trained."""
    import copy

    import torchaudio.transforms as T

    served = copy.deepcopy(served)
    for module in list(served.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, T.MelSpectrogram):
                setattr(module, name, FramedMel(child))
    return served
