"""SE-ResNeXt with timm's module names and shapes (timm's resnet.py Bottleneck + SEModule), so
timm checkpoints (seresnext50_32x4d, seresnext101_32x4d, seresnext101_32x8d) load strictly."""

from torch import nn

from .resnet import ResNet, conv1x1, conv3x3


def make_divisible(v, divisor=8):
    """timm's make_divisible with round_limit=0: the nearest multiple of divisor, at least divisor."""
    return max(divisor, int(v + divisor / 2) // divisor * divisor)


class SEModule(nn.Module):
    """timm's SEModule: mean -> fc1 (1x1 conv, bias) -> ReLU -> fc2 -> sigmoid -> scale."""

    def __init__(self, channels, rd_ratio=1.0 / 16, rd_divisor=8):
        super().__init__()
        rd_channels = make_divisible(channels * rd_ratio, rd_divisor)
        self.fc1 = nn.Conv2d(channels, rd_channels, kernel_size=1, bias=True)
        self.bn = nn.Identity()
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, kernel_size=1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        x_se = x.mean((2, 3), keepdim=True)
        x_se = self.fc2(self.act(self.bn(self.fc1(x_se))))
        return x * self.gate(x_se)


class SEBottleneck(nn.Module):
    """timm's Bottleneck with attn_layer='se': names act1/act2/act3, drop_block, aa, se."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        outplanes = planes * self.expansion
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.drop_block = nn.Identity()
        self.act2 = nn.ReLU(inplace=True)
        self.aa = nn.Identity()
        self.conv3 = conv1x1(width, outplanes)
        self.bn3 = nn.BatchNorm2d(outplanes)
        self.se = SEModule(outplanes)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = None

    def forward(self, x):
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(x)))))
        x = self.bn3(self.conv3(x))
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x += shortcut
        return self.act3(x)


class SEResNeXt(ResNet):
    """timm's ResNet layout: the stem activation is `act1`, the pool `global_pool` (no params)."""

    def __init__(self, layers, groups, width_per_group, num_classes=1000, zero_init_residual=False):
        super().__init__(SEBottleneck, layers, num_classes, zero_init_residual, groups,
                         width_per_group)
        self.act1 = self.relu
        del self.relu
        self.global_pool = self.avgpool
        del self.avgpool

    def forward_features(self, x):
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x):
        return self.fc(self.global_pool(self.forward_features(x)).flatten(1))
