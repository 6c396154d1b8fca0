"""Two small, fast models for CPU work and tests."""

from __future__ import annotations

from torch import Tensor, nn

from landscape_cli.models._registry import register_model


class SmallCNN(nn.Module):
    """Two conv-BN-activation-pool stages, global average pooling, one linear layer (~6 k parameters)."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model("cnn", "small CNN: two conv-BN stages, ~6 k parameters (fast on CPU)")
def cnn(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return SmallCNN(in_channels, num_classes)


@register_model("mlp", "multilayer perceptron, one hidden layer of 128 units")
def mlp(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size * image_size, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )
