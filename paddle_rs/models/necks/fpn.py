"""maskrcnn-benchmark style FPN without top blocks (SimpleCV ``FPN``).

Mirror of ``torch_ref/models/necks/fpn.py``. Keys: ``fpn_inner{i}``, ``fpn_layer{i}`` (i = 1..4).
The nearest x2 upsampling is written with an explicit ``size`` (the lateral
feature's size) instead of ``scale_factor``: identical for exact halving, and
export-friendly (porting.md §6).
"""
import paddle.nn as nn
import paddle.nn.functional as F

from .. import init


class FPN(nn.Layer):
    def __init__(self, in_channels_list=(256, 512, 1024, 2048), out_channels=256):
        super().__init__()
        self.num_levels = len(in_channels_list)
        for i, c in enumerate(in_channels_list, start=1):
            inner = nn.Conv2D(c, out_channels, 1)
            layer = nn.Conv2D(out_channels, out_channels, 3, padding=1)
            for m in (inner, layer):
                init.kaiming_uniform_(m.weight, a=1)
                init.constant_(m.bias, 0.0)
            setattr(self, f"fpn_inner{i}", inner)
            setattr(self, f"fpn_layer{i}", layer)

    def forward(self, feats):
        n = self.num_levels
        last = getattr(self, f"fpn_inner{n}")(feats[-1])
        outs = [getattr(self, f"fpn_layer{n}")(last)]
        for i in range(n - 1, 0, -1):
            lateral = getattr(self, f"fpn_inner{i}")(feats[i - 1])
            top_down = F.interpolate(last, size=lateral.shape[2:], mode="nearest")
            last = lateral + top_down
            outs.insert(0, getattr(self, f"fpn_layer{i}")(last))
        return outs
