"""ResNet-50, torchvision "v1.5" layout (stride on the 3x3 conv), without fc/pool.

Mirror of ``torch_ref/models/backbones/resnet.py``; parameter names are equal up
to BatchNorm statistics (``_mean``/``_variance``). BatchNorm uses Paddle momentum
0.9 (= torch 0.1) and epsilon 1e-5. Used by FactSeg and RSP UperNet-R50.
"""
import paddle.nn as nn

from .. import init


def BatchNorm2D(c):
    return nn.BatchNorm2D(c, momentum=0.9, epsilon=1e-5)


class Bottleneck(nn.Layer):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2D(inplanes, planes, 1, bias_attr=False)
        self.bn1 = BatchNorm2D(planes)
        self.conv2 = nn.Conv2D(planes, planes, 3, stride=stride, padding=1, bias_attr=False)
        self.bn2 = BatchNorm2D(planes)
        self.conv3 = nn.Conv2D(planes, planes * 4, 1, bias_attr=False)
        self.bn3 = BatchNorm2D(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Layer):
    """Returns the stage outputs ``[c2, c3, c4, c5]`` (strides 4, 8, 16, 32)."""

    def __init__(self, depth=50, in_channels=3):
        super().__init__()
        layers = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
        self.inplanes = 64
        self.conv1 = nn.Conv2D(in_channels, 64, 7, stride=2, padding=3, bias_attr=False)
        self.bn1 = BatchNorm2D(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2D(3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.out_channels = [256, 512, 1024, 2048]
        for m in self.sublayers():
            if isinstance(m, nn.Conv2D):
                init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2D):
                init.constant_(m.weight, 1.0)
                init.constant_(m.bias, 0.0)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2D(self.inplanes, planes * 4, 1, stride=stride, bias_attr=False),
                BatchNorm2D(planes * 4))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]
