"""FactSeg/FarSeg asymmetric decoder (upstream ``AssymetricDecoder``).

Mirror of ``torch_ref/models/heads/asymmetric_decoder.py``. Keys:
``blocks.{k}.{j}.0`` (3x3 conv, no bias), ``blocks.{k}.{j}.1`` (BN). Conv weights
use torch's default init (kaiming_uniform a=sqrt(5)); Paddle's default differs.
"""
import math

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .. import init


class UpsampleBilinear2x(nn.Layer):
    """torch ``UpsamplingBilinear2d(scale_factor=2)``: bilinear, align_corners=True, size-based for export."""

    def forward(self, x):
        return F.interpolate(x, size=paddle.shape(x)[2:] * 2, mode="bilinear", align_corners=True)


class AsymmetricDecoder(nn.Layer):
    def __init__(self, in_channels=256, out_channels=128, in_feat_output_strides=(4, 8, 16, 32),
                 out_feat_output_stride=4):
        super().__init__()
        self.blocks = nn.LayerList()
        for s in in_feat_output_strides:
            num_upsample = int(math.log2(int(s))) - int(math.log2(int(out_feat_output_stride)))
            num_layers = max(num_upsample, 1)
            layers = []
            for i in range(num_layers):
                conv = nn.Conv2D(in_channels if i == 0 else out_channels, out_channels, 3, padding=1,
                              bias_attr=False)
                init.torch_default_(conv)
                layers.append(nn.Sequential(
                    conv,
                    nn.BatchNorm2D(out_channels, momentum=0.9, epsilon=1e-5),
                    nn.ReLU(),
                    UpsampleBilinear2x() if num_upsample != 0 else nn.Identity()))
            self.blocks.append(nn.Sequential(*layers))

    def forward(self, feats):
        out = None
        for block, f in zip(self.blocks, feats):
            y = block(f)
            out = y if out is None else out + y
        return out / 4.0   # upstream divides by 4 whatever the number of levels
