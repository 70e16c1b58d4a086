"""The networks: plain nn.Modules with primitive constructor arguments, no Lightning or Hydra."""

from torch import nn


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


NETS = {"mlp": MLP, "cnn": CNN}
