"""FactSeg (Ma et al., TGRS 2022): foreground-activation-driven small-object segmentation.

Mirror of ``torch_ref/models/factseg.py``; spec: shared/specs/factseg.md.
Parameter names equal the upstream checkpoint's (BN statistics as ``_mean``/``_variance``).

Contract:
* train mode: ``model(x) -> (fg_logits [B,C,H,W], bi_logits [B,1,H,W])``;
* eval mode:  ``model(x) -> cp_fuse(fg, bi)``, CP probabilities [B,C,H,W] summing to 1 over C.
H and W must be multiples of 32.
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..registry import register_model
from . import init
from .backbones.resnet import ResNet
from .heads.asymmetric_decoder import AsymmetricDecoder
from .necks.fpn import FPN


def cp_fuse(fg_logits, bi_logits):
    """Collaborative-probability fusion (factseg.md §2.7), keepdim normalisation at every batch size."""
    q = F.softmax(fg_logits, axis=1)
    f = F.sigmoid(bi_logits)
    p = paddle.concat([q[:, :1] * (1 - f), q[:, 1:] * f], axis=1)
    return p / p.sum(axis=1, keepdim=True)


class ResEncoder(nn.Layer):
    """Holds the trunk under ``resnet`` so keys read ``resencoder.resnet.*`` as upstream."""

    def __init__(self, depth=50, in_channels=3):
        super().__init__()
        self.resnet = ResNet(depth, in_channels)

    def forward(self, x):
        return self.resnet(x)


class FactSeg(nn.Layer):
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
        self.fg_cls = nn.Conv2D(decoder_channels, num_classes, 1)
        self.bi_cls = nn.Conv2D(decoder_channels, 1, 1)
        init.torch_default_(self.fg_cls)
        init.torch_default_(self.bi_cls)

    def forward_logits(self, x):
        if not paddle.in_dynamic_mode():
            pass  # shape checks are Python-side only; the exported graph assumes a padded input
        elif x.shape[2] % self.size_divisor or x.shape[3] % self.size_divisor:
            raise ValueError(f"FactSeg needs H and W to be multiples of 32, got {x.shape[2]}x{x.shape[3]}; "
                             f"pad the input")
        feats = self.resencoder(x)
        fg = self.fg_cls(self.fg_decoder(self.fgfpn(feats)))
        bi = self.bi_cls(self.bi_decoder(self.bifpn(feats)))
        size = paddle.shape(x)[2:]
        fg = F.interpolate(fg, size=size, mode="bilinear", align_corners=True)
        bi = F.interpolate(bi, size=size, mode="bilinear", align_corners=True)
        return fg, bi

    def forward(self, x):
        fg, bi = self.forward_logits(x)
        if self.training:
            return fg, bi
        return cp_fuse(fg, bi)


@register_model("factseg", task="seg", family="factseg", num_classes=16, in_channels=3)
def factseg(**kwargs):
    return FactSeg(**kwargs)
