"""RSP UperNet segmentors (mmseg ``EncoderDecoder``): backbone + UPerHead + FCNHead, Paddle port.

Mirror of ``torch_ref/models/upernet.py``. Spec: shared/specs/rsp_upernet.md (§2 shared configuration,
§3 backbones, §4 heads). State_dict keys equal the upstream mmseg checkpoints' (``backbone.*``,
``decode_head.*``, ``auxiliary_head.*``); weights come from a torch checkpoint
through ``convert.rules.torch_to_paddle``. Export: fixed input shape (porting.md §5.3).

Registered models (defaults: Potsdam, N = 5; training rates drop_path 0.3 / head dropout 0.1):
``upernet_r50`` (ResNet-50 v1.5), ``upernet_swin_t`` (Swin-T), ``upernet_vitaev2_s`` (ViTAEv2-S, img_size 512).

Contract:
* eval mode:  ``model(x[B,3,H,W]) -> logits [B, num_classes, H, W]``: decode-head logits (stride 4) resized
  bilinearly (align_corners=False) to the input size, as mmseg ``encode_decode``. No softmax.
* train mode: ``model(x) -> (decode_logits [B,N,H/4,W/4], aux_logits [B,N,H/16,W/16])`` at head resolution
  (the loss resizes them to the label size).
``upernet_vitaev2_s`` needs square inputs (upstream quirk Q3). Parity runs pass ``drop_path_rate=0`` and
``dropout_ratio=0`` (or use eval mode).
"""
import paddle.nn as nn

from ..registry import register_model
from .backbones.resnet import ResNet
from .backbones.swin import swin_t
from .backbones.vitaev2 import vitaev2_s
from .heads.fcn_head import FCNHead
from .heads.uper_head import UPerHead, resize

__all__ = ["UperNet", "build_backbone", "upernet_r50", "upernet_swin_t", "upernet_vitaev2_s"]


def build_backbone(name, drop_path_rate=None, img_size=None):
    """``r50`` | ``swin_t`` | ``vitaev2_s``; returns a module with ``out_channels`` (4 levels)."""
    if name == "r50":
        if drop_path_rate:
            raise ValueError("ResNet-50 has no drop path; drop_path_rate must be 0/None")
        if img_size is not None:
            raise ValueError("img_size is a ViTAEv2 option")
        return ResNet(depth=50)
    if name == "swin_t":
        if img_size is not None:
            raise ValueError("img_size is a ViTAEv2 option")
        return swin_t(drop_path_rate=0.3 if drop_path_rate is None else drop_path_rate)
    if name == "vitaev2_s":
        return vitaev2_s(img_size=512 if img_size is None else img_size,
                         drop_path_rate=0.3 if drop_path_rate is None else drop_path_rate)
    raise KeyError(f"unknown UperNet backbone {name!r} (r50, swin_t, vitaev2_s)")


class UperNet(nn.Layer):
    """EncoderDecoder: ``backbone`` -> ``decode_head`` (UPerHead, 4 levels) + ``auxiliary_head`` (FCNHead, level 2)."""

    outputs_probabilities = False

    size_divisor = 32

    def __init__(self, backbone="swin_t", num_classes=5, drop_path_rate=None, dropout_ratio=0.1, img_size=None,
                 channels=512, aux_channels=256, pool_scales=(1, 2, 3, 6), align_corners=False):
        super().__init__()
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.backbone = build_backbone(backbone, drop_path_rate, img_size)
        chans = list(self.backbone.out_channels)
        self.decode_head = UPerHead(chans, channels, num_classes, tuple(pool_scales), dropout_ratio, align_corners)
        self.auxiliary_head = FCNHead(chans[2], aux_channels, num_classes, in_index=2, num_convs=1, kernel_size=3,
                                      concat_input=False, dropout_ratio=dropout_ratio, align_corners=align_corners)

    def forward(self, x):
        feats = self.backbone(x)
        out = self.decode_head(feats)
        if self.training:
            return out, self.auxiliary_head(feats)
        return resize(out, x.shape[2:], self.align_corners)


@register_model("upernet_r50", task="seg", family="upernet", num_classes=5, dropout_ratio=0.1)
def upernet_r50(**kw):
    return UperNet(backbone="r50", **kw)


@register_model("upernet_swin_t", task="seg", family="upernet", num_classes=5, drop_path_rate=0.3,
                dropout_ratio=0.1)
def upernet_swin_t(**kw):
    return UperNet(backbone="swin_t", **kw)


@register_model("upernet_vitaev2_s", task="seg", family="upernet", num_classes=5, drop_path_rate=0.3,
                dropout_ratio=0.1, img_size=512)
def upernet_vitaev2_s(**kw):
    return UperNet(backbone="vitaev2_s", **kw)
