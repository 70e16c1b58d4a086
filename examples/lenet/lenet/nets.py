"""The network: a plain nn.Module whose constructor takes primitives (saved in every checkpoint, so predict and
load_from_checkpoint rebuild it), with `reads`, the kind of data it takes ("image": (B, C, H, W) batches,
normalised with the training split's statistics)."""

from torch import nn


class LeNet5(nn.Module):
    """Two 5x5 convolutions, each followed by 2x2 average pooling, then three fully connected layers (120, 84,
    classes); tanh, as in the original. The first convolution pads by 2, so a 28x28 digit is seen as the 32x32
    input the network was drawn for."""

    reads = "image"

    def __init__(self, in_channels: int, image_size: int, num_classes: int, activation: str = "tanh"):
        super().__init__()
        act = {"tanh": nn.Tanh, "relu": nn.ReLU}[activation]
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), act(), nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5), act(), nn.AvgPool2d(2),
        )  # fmt: skip
        side = (image_size // 2 - 4) // 2  # 28: 28 -> 14 -> 10 -> 5
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * side * side, 120), act(), nn.Linear(120, 84), act(),
            nn.Linear(84, num_classes),
        )  # fmt: skip

    def forward(self, x):
        return self.classifier(self.features(x))
