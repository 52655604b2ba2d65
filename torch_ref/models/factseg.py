"""FactSeg (Ma et al., TGRS 2022): foreground-activation-driven small-object segmentation.

Mirror of ``paddle_rs/models/factseg.py``; spec: shared/specs/factseg.md.
State_dict keys equal upstream Junjue-Wang/FactSeg's (``resencoder.resnet.*``,
``{fg,bi}fpn.fpn_{inner,layer}{i}``, ``{fg,bi}_decoder.blocks.*``, ``{fg,bi}_cls``),
so a released checkpoint loads with ``strict=True``.

Contract:
* train mode: ``model(x) -> (fg_logits [B,C,H,W], bi_logits [B,1,H,W])``;
* eval mode:  ``model(x) -> cp_fuse(fg, bi)``, CP probabilities [B,C,H,W] summing to 1 over C.
H and W must be multiples of 32.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import register_model
from .backbones.resnet import ResNet
from .heads.asymmetric_decoder import AsymmetricDecoder
from .necks.fpn import FPN


def cp_fuse(fg_logits, bi_logits):
    """Collaborative-probability fusion (factseg.md §2.7), keepdim normalisation at every batch size."""
    q = torch.softmax(fg_logits, dim=1)
    f = torch.sigmoid(bi_logits)
    p = torch.cat([q[:, :1] * (1 - f), q[:, 1:] * f], dim=1)
    return p / p.sum(dim=1, keepdim=True)


class ResEncoder(nn.Module):
    """Holds the trunk under ``resnet`` so keys read ``resencoder.resnet.*`` as upstream."""

    def __init__(self, depth=50, in_channels=3):
        super().__init__()
        self.resnet = ResNet(depth, in_channels)

    def forward(self, x):
        return self.resnet(x)


class FactSeg(nn.Module):
    outputs_probabilities = True      # eval output is already a probability map (no softmax on export)
    size_divisor = 32

    def __init__(self, num_classes=16, in_channels=3, depth=50, fpn_channels=256, decoder_channels=128):
        super().__init__()
        self.num_classes = num_classes
        self.resencoder = ResEncoder(depth, in_channels)
        enc = self.resencoder.resnet.out_channels
        self.fgfpn = FPN(enc, fpn_channels)
        self.bifpn = FPN(enc, fpn_channels)
        self.fg_decoder = AsymmetricDecoder(fpn_channels, decoder_channels)
        self.bi_decoder = AsymmetricDecoder(fpn_channels, decoder_channels)
        self.fg_cls = nn.Conv2d(decoder_channels, num_classes, 1)
        self.bi_cls = nn.Conv2d(decoder_channels, 1, 1)

    def forward_logits(self, x):
        h, w = x.shape[2:]
        if h % self.size_divisor or w % self.size_divisor:
            raise ValueError(f"FactSeg needs H and W to be multiples of 32, got {h}x{w}; pad the input")
        feats = self.resencoder(x)
        fg = self.fg_cls(self.fg_decoder(self.fgfpn(feats)))
        bi = self.bi_cls(self.bi_decoder(self.bifpn(feats)))
        fg = F.interpolate(fg, scale_factor=4, mode="bilinear", align_corners=True)
        bi = F.interpolate(bi, scale_factor=4, mode="bilinear", align_corners=True)
        return fg, bi

    def forward(self, x):
        fg, bi = self.forward_logits(x)
        if self.training:
            return fg, bi
        return cp_fuse(fg, bi)


@register_model("factseg", task="seg", family="factseg", num_classes=16, in_channels=3)
def factseg(**kwargs):
    return FactSeg(**kwargs)
