"""mmseg 0.21 ``FCNHead`` (RSP auxiliary head), PyTorch reference.

Mirror of ``paddle_rs/models/heads/fcn_head.py``. Spec: rsp_upernet.md §4.2.
Keys: ``convs.{k}.{conv,bn}``, ``conv_seg`` (and ``conv_cat`` if ``concat_input``).
Forward: ``forward([x0..x3]) -> logits`` at the resolution of ``inputs[in_index]``.
"""
import torch
import torch.nn as nn

from .uper_head import ConvModule, DecodeHead

__all__ = ["FCNHead"]


class FCNHead(DecodeHead):
    """``num_convs`` x ConvModule(k) [-> ConvModule(cat[x, out])] -> Dropout2d -> conv_seg."""

    def __init__(self, in_channels=384, channels=256, num_classes=5, in_index=2, num_convs=1, kernel_size=3,
                 concat_input=False, dilation=1, dropout_ratio=0.1, align_corners=False):
        super().__init__(channels, num_classes, dropout_ratio, align_corners)
        assert num_convs >= 1, "num_convs = 0 is not used by RSP and not ported"
        self.in_index, self.concat_input = in_index, concat_input
        pad = (kernel_size // 2) * dilation
        self.convs = nn.Sequential(*[
            ConvModule(in_channels if i == 0 else channels, channels, kernel_size, padding=pad, dilation=dilation)
            for i in range(num_convs)])
        if concat_input:
            self.conv_cat = ConvModule(in_channels + channels, channels, kernel_size, padding=kernel_size // 2)

    def forward(self, inputs):
        x = inputs[self.in_index]
        out = self.convs(x)
        if self.concat_input:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.cls_seg(out)
