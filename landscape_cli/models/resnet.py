"""ResNet (the reference model) and the same network without skip connections.

torchvision's ResNet with BasicBlock stages [1, 1, 1, 1] (widths 64-512, 4.9 M parameters), its
first convolution taking the dataset's channels. Images smaller than 16 px (digits, 8x8) get the
CIFAR-style stem instead of ImageNet's (3x3 stride-1 convolution, no max-pooling): the 7x7/2
convolution and max-pool would shrink an 8x8 image to 2x2 before the first block, and BatchNorm's
running statistics then lag so far behind that a 5-epoch run stays near chance in eval mode.
`plain` swaps BasicBlock for a block that drops the residual addition, for Li et al.'s
skip-connection comparison.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, ResNet

from ._registry import register_model


class PlainBlock(BasicBlock):
    """BasicBlock without the skip connection (the downsample branch is unused)."""

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)))


SMALL_IMAGE = 16  # below this many pixels a side, the CIFAR-style stem


def _resnet(block: type[BasicBlock], in_channels: int, num_classes: int, image_size: int) -> ResNet:
    model = ResNet(block, [1, 1, 1, 1], num_classes=num_classes)
    if image_size < SMALL_IMAGE:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()  # type: ignore[assignment]
    else:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    if block is PlainBlock:  # the projection shortcuts are never used: do not carry their weights
        for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
            for b in layer:
                b.downsample = None
    return model


@register_model("resnet", "ResNet, BasicBlock stages [1,1,1,1] (the reference model)")
def resnet(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return _resnet(BasicBlock, in_channels, num_classes, image_size)


@register_model("plain", "the resnet without skip connections (Li et al.'s comparison)")
def plain(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return _resnet(PlainBlock, in_channels, num_classes, image_size)
