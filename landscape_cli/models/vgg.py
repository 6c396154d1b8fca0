"""VGG11 with BatchNorm, adapted to 8x8-32x32 inputs.

Configuration "A" of Simonyan & Zisserman (8 convolutions) with the first convolution taking the
dataset's channels. Max-pooling rounds up (``ceil_mode``) so that five halvings of a 28x28 or 8x8
image never reach zero size, and the classifier is global average pooling + one linear layer, as in
the CIFAR versions of VGG.
"""

from __future__ import annotations

from torch import Tensor, nn

from landscape_cli.models._registry import register_model

VGG11: list[int | str] = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


class VGG(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, config: list[int | str] = VGG11) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            else:
                assert isinstance(v, int)
                layers += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
                channels = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model("vgg", "VGG11 with BatchNorm, ceil-mode pooling for 8-32 px inputs")
def vgg(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return VGG(in_channels, num_classes)
