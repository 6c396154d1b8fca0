"""ResNet (the reference model) and the same network without skip connections.

torchvision's ResNet with BasicBlock stages [1, 1, 1, 1] (widths 64-512, 4.9 M parameters): the
same modules, parameter names and initialization (its state_dict loads into torchvision's class),
written out here because importing torchvision costs two seconds on every command. The first
convolution takes the dataset's channels. Images smaller than 16 px (digits, 8x8) get the
CIFAR-style stem instead of ImageNet's (3x3 stride-1 convolution, no max-pooling): the 7x7/2
convolution and max-pool would shrink an 8x8 image to 2x2 before the first block, and BatchNorm's
running statistics then lag so far behind that a 5-epoch run stays near chance in eval mode.
`plain` drops the residual addition, for Li et al.'s skip-connection comparison.
"""

from __future__ import annotations

from torch import Tensor, nn

from landscape_cli.models._registry import register_model

SMALL_IMAGE = 16  # below this many pixels a side, the CIFAR-style stem


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm, plus the identity (or a 1x1 projection) when `skip`."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, skip: bool = True) -> None:
        super().__init__()
        # created in torchvision's order (the projection first), so a seed gives torchvision's weights
        downsample = None
        if skip and (stride != 1 or inplanes != planes):
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        self.skip = skip
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.skip:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, image_size: int, skip: bool = True) -> None:
        super().__init__()
        if image_size < SMALL_IMAGE:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = (
            nn.Identity() if image_size < SMALL_IMAGE else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        )
        self.layer1 = nn.Sequential(BasicBlock(64, 64, 1, skip))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2, skip))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2, skip))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2, skip))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():  # torchvision's initialization
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


@register_model("resnet", "ResNet, BasicBlock stages [1,1,1,1] (the reference model)")
def resnet(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return ResNet(in_channels, num_classes, image_size)


@register_model("plain", "the resnet without skip connections (Li et al.'s comparison)")
def plain(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return ResNet(in_channels, num_classes, image_size, skip=False)
