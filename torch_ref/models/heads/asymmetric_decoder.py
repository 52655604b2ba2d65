"""FactSeg/FarSeg asymmetric decoder (upstream ``AssymetricDecoder``).

Mirror of ``paddle_rs/models/heads/asymmetric_decoder.py``. Keys:
``blocks.{k}.{j}.0`` (3x3 conv, no bias), ``blocks.{k}.{j}.1`` (BN).
"""
import math

import torch.nn as nn


class AsymmetricDecoder(nn.Module):
    def __init__(self, in_channels=256, out_channels=128, in_feat_output_strides=(4, 8, 16, 32),
                 out_feat_output_stride=4):
        super().__init__()
        self.blocks = nn.ModuleList()
        for s in in_feat_output_strides:
            num_upsample = int(math.log2(int(s))) - int(math.log2(int(out_feat_output_stride)))
            num_layers = max(num_upsample, 1)
            self.blocks.append(nn.Sequential(*[
                nn.Sequential(
                    nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1, bias=False),
                    nn.BatchNorm2d(out_channels),
                    nn.ReLU(),
                    nn.UpsamplingBilinear2d(scale_factor=2) if num_upsample != 0 else nn.Identity())
                for i in range(num_layers)]))

    def forward(self, feats):
        out = None
        for block, f in zip(self.blocks, feats):
            y = block(f)
            out = y if out is None else out + y
        return out / 4.0   # upstream divides by 4 whatever the number of levels
