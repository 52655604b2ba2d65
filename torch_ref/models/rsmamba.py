"""RSMamba scene classifier (KyanChen/RSMamba; rsmamba.md), PyTorch reference.

Mirror of ``paddle_rs/models/rsmamba.py``. Upstream is an mmpretrain
``ImageClassifier(backbone=RSMamba, neck=None, head=LinearClsHead)``; the
state_dict keys are therefore ``backbone.*`` and ``head.fc.*`` and official
checkpoints load with ``strict=True`` after unwrapping (no buffers are saved:
the fixed permutations of ``perm_seed`` mode are non-persistent).

Forward contract (eval mode)::

    logits = model(x, perms=None)      x: [B, 3, img, img] float32 (normalised RGB)  ->  [B, num_classes]

``perms``: optional ``[num_layers, L]`` int64 tensor/array (L = tokens = ceil(img/8)^2, 784 at 224) giving each
layer's shuffle permutation — use :func:`make_perms` to generate one set for both frameworks. Without it the model
draws fresh permutations per layer per forward (upstream behaviour, also in eval) unless it was built with
``perm_seed=int``, which fixes ``make_perms(num_layers, L, perm_seed)``.

Registered variants: ``rsmamba_b``, ``rsmamba_l``, ``rsmamba_h`` (default 21 classes = UC Merced; AID 30,
NWPU-RESISC45 45).
"""
import torch.nn as nn

from ..registry import register_model
from .backbones.mamba import ARCH_ZOO, RSMambaBackbone, make_perms
from .heads.cls_head import LinearClsHead

__all__ = ["ARCH_ZOO", "RSMamba", "make_perms", "rsmamba_b", "rsmamba_l", "rsmamba_h"]


class RSMamba(nn.Module):
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
