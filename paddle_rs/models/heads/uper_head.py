"""mmseg 0.21 ``UPerHead`` (with the PSP ``PPM``) and the shared ``ConvModule`` / ``DecodeHead``, Paddle port.

Mirror of ``torch_ref/models/heads/uper_head.py`` (same classes and parameter names; BN statistics are
``_mean``/``_variance``). Spec: rsp_upernet.md §4.1. Not PaddleSeg's ``UPerNetHead`` (not equivalent, §11).
BN momentum 0.9 / epsilon 1e-5; bilinear resizes with align_corners=False (default align_mode 0 = torch).
Forward: ``forward([x0..x3]) -> logits [B, num_classes, H0, W0]`` (level-0 resolution).
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .. import init

__all__ = ["resize", "ConvModule", "DecodeHead", "PPM", "UPerHead"]


def resize(x, size, align_corners=False):
    """Bilinear resize to ``size`` (static ints or a shape slice; never ``scale_factor``, see porting.md §6)."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


class ConvModule(nn.Layer):
    """mmcv ConvModule(conv without bias -> BN -> ReLU); init: kaiming_normal(fan_out, relu), BN 1/0."""

    def __init__(self, in_channels, out_channels, kernel_size, padding=0, dilation=1):
        super().__init__()
        self.conv = nn.Conv2D(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation,
                           bias_attr=False)
        self.bn = nn.BatchNorm2D(out_channels, momentum=0.9, epsilon=1e-5)
        self.activate = nn.ReLU()
        init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.activate(self.bn(self.conv(x)))


class DecodeHead(nn.Layer):
    """mmseg BaseDecodeHead's classifier part: ``cls_seg = conv_seg(Dropout2D(x))``; conv_seg ~ N(0, 0.01)."""

    def __init__(self, channels, num_classes, dropout_ratio=0.1, align_corners=False):
        super().__init__()
        self.channels, self.num_classes, self.align_corners = channels, num_classes, align_corners
        self.conv_seg = nn.Conv2D(channels, num_classes, kernel_size=1)
        self.dropout = nn.Dropout2D(dropout_ratio) if dropout_ratio > 0 else None
        init.normal_(self.conv_seg.weight, 0.0, 0.01)
        init.constant_(self.conv_seg.bias, 0.0)

    def cls_seg(self, feat):
        if self.dropout is not None:
            feat = self.dropout(feat)
        return self.conv_seg(feat)


class PPM(nn.LayerList):
    """Pooling pyramid: per scale AdaptiveAvgPool2D(s) -> ConvModule 1x1, resized back to the input size."""

    def __init__(self, pool_scales, in_channels, channels, align_corners=False):
        super().__init__()
        self.align_corners = align_corners
        for s in pool_scales:
            self.append(nn.Sequential(nn.AdaptiveAvgPool2D(s), ConvModule(in_channels, channels, 1)))

    def forward(self, x):
        size = x.shape[2:]
        return [resize(ppm(x), size, self.align_corners) for ppm in self]


class UPerHead(DecodeHead):
    """UPerNet head: PPM on the last level + FPN over all levels, fused at level-0 resolution."""

    def __init__(self, in_channels=(96, 192, 384, 768), channels=512, num_classes=5, pool_scales=(1, 2, 3, 6),
                 dropout_ratio=0.1, align_corners=False):
        super().__init__(channels, num_classes, dropout_ratio, align_corners)
        self.in_channels = list(in_channels)
        self.psp_modules = PPM(pool_scales, self.in_channels[-1], channels, align_corners)
        self.bottleneck = ConvModule(self.in_channels[-1] + len(pool_scales) * channels, channels, 3, padding=1)
        self.lateral_convs = nn.LayerList([ConvModule(c, channels, 1) for c in self.in_channels[:-1]])
        self.fpn_convs = nn.LayerList([ConvModule(channels, channels, 3, padding=1)
                                       for _ in self.in_channels[:-1]])
        self.fpn_bottleneck = ConvModule(len(self.in_channels) * channels, channels, 3, padding=1)

    def psp_forward(self, x):
        return self.bottleneck(paddle.concat([x] + self.psp_modules(x), axis=1))

    def forward(self, inputs):
        laterals = [conv(inputs[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.psp_forward(inputs[-1]))
        n = len(laterals)
        for i in range(n - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[2:], self.align_corners)
        outs = [self.fpn_convs[i](laterals[i]) for i in range(n - 1)] + [laterals[-1]]
        size = outs[0].shape[2:]
        outs = [outs[0]] + [resize(o, size, self.align_corners) for o in outs[1:]]
        return self.cls_seg(self.fpn_bottleneck(paddle.concat(outs, axis=1)))
