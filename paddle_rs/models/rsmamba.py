"""RSMamba scene classifier (KyanChen/RSMamba; rsmamba.md), PaddlePaddle.

Mirror of ``torch_ref/models/rsmamba.py``: ``backbone`` + ``head``; parameter
names equal the torch reference / upstream mmpretrain checkpoint keys
(``backbone.*``, ``head.fc.*``).

Forward contract (eval mode)::

    logits = model(x, perms=None)      x: [B, 3, img, img] float32 (normalised RGB)  ->  [B, num_classes]

``perms``: optional ``[num_layers, L]`` int64 tensor/array (L = ceil(img/8)^2 = 784 at 224), e.g. from
:func:`make_perms`, identical to the torch side's. Without it: fresh ``paddle.randperm`` per layer per forward
(upstream behaviour) unless built with ``perm_seed=int`` (fixed ``make_perms(num_layers, L, perm_seed)``).

Export: ``paddle.jit.to_static(model, input_spec=[InputSpec([None, 3, 224, 224], 'float32', 'image')],
full_graph=True)`` — build with ``perm_seed`` for a deterministic graph (random mode exports in-graph
``randperm``). The selective scan becomes a ``while_loop`` over chunks.

Registered variants: ``rsmamba_b``, ``rsmamba_l``, ``rsmamba_h`` (default 21 classes = UC Merced).
"""
import paddle.nn as nn

from ..registry import register_model
from .backbones.mamba import ARCH_ZOO, RSMambaBackbone, make_perms
from .heads.cls_head import LinearClsHead

__all__ = ["ARCH_ZOO", "RSMamba", "make_perms", "rsmamba_b", "rsmamba_l", "rsmamba_h"]


class RSMamba(nn.Layer):
    """``backbone`` (:class:`RSMambaBackbone`) + ``head`` (:class:`LinearClsHead`).

    Keyword arguments other than ``num_classes`` go to the backbone (``img_size``, ``perm_seed``, ``path_type``,
    ``pe_type``, ``chunk_size``, ...).
    """

    def __init__(self, arch="b", num_classes=21, **backbone_kwargs):
        super().__init__()
        self.backbone = RSMambaBackbone(arch=arch, **backbone_kwargs)
        self.head = LinearClsHead(num_classes, self.backbone.embed_dims)
        self.num_classes = num_classes

    @property
    def num_layers(self):
        return self.backbone.num_layers

    @property
    def num_tokens(self):
        return self.backbone.num_patches

    @property
    def default_input_size(self):
        """The input side the model takes (``pos_embed`` is not interpolated); used by ``convert/ --verify``."""
        return self.backbone.img_size[0]

    def make_perms(self, seed):
        """Permutation set for this model's ``[num_layers, L]``."""
        return make_perms(self.backbone.num_layers, self.backbone.num_patches, seed)

    def forward(self, x, perms=None):
        return self.head(self.backbone(x, perms))


@register_model("rsmamba_b", task="cls", family="rsmamba", num_classes=21, img_size=224, perm_seed=None)
def rsmamba_b(**kw):
    return RSMamba(arch="b", **kw)


@register_model("rsmamba_l", task="cls", family="rsmamba", num_classes=21, img_size=224, perm_seed=None)
def rsmamba_l(**kw):
    return RSMamba(arch="l", **kw)


@register_model("rsmamba_h", task="cls", family="rsmamba", num_classes=21, img_size=224, perm_seed=None)
def rsmamba_h(**kw):
    return RSMamba(arch="h", **kw)
