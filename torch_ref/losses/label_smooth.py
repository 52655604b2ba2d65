"""Label-smoothing cross-entropy of mmpretrain (``LabelSmoothLoss``, mode ``original``), torch reference.

Mirror of ``paddle_rs/losses/label_smooth.py`` (see there for the formula). Upstream: mmpretrain 1.2.0
``LabelSmoothLoss(label_smooth_val=0.1, mode='original')`` -> ``CrossEntropyLoss(use_soft=True)`` ->
``soft_cross_entropy``, reduced as ``loss.sum() / avg_factor`` with ``avg_factor = N`` (``ClsHead._get_loss``).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import register_loss

__all__ = ["LabelSmoothLoss", "smooth_targets"]


def smooth_targets(label, num_classes, eps):
    """``[N]`` / ``[N,1]`` int labels or ``[N,C]`` soft scores -> smoothed float32 ``[N,C]`` targets."""
    if label.dim() == 1 or (label.dim() == 2 and label.shape[1] == 1):
        label = F.one_hot(label.reshape(-1).long(), num_classes)
    target = label.float()
    return target * (1.0 - eps) + eps / num_classes


@register_loss("LabelSmoothLoss")
class LabelSmoothLoss(nn.Module):
    """``loss(logits [N,C], label)``; ``label``: int ``[N]`` (or ``[N,1]``) or float ``[N,C]`` soft scores."""

    def __init__(self, label_smooth_val=0.1, num_classes=None, mode="original", reduction="mean",
                 loss_weight=1.0):
        super().__init__()
        if not (isinstance(label_smooth_val, float) and 0.0 <= label_smooth_val < 1.0):
            raise ValueError(f"label_smooth_val must be a float in [0, 1), got {label_smooth_val!r}")
        if mode not in ("original", "classy_vision"):
            raise ValueError(f"mode must be 'original' or 'classy_vision' (multi_label is not ported), got {mode!r}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be mean, sum or none, got {reduction!r}")
        self.label_smooth_val, self.mode, self.reduction = label_smooth_val, mode, reduction
        self.num_classes, self.loss_weight = num_classes, float(loss_weight)
        self.eps = label_smooth_val / (1 + label_smooth_val) if mode == "classy_vision" else label_smooth_val

    def forward(self, logits, label):
        c = int(logits.shape[1])
        if self.num_classes is not None and int(self.num_classes) != c:
            raise ValueError(f"num_classes={self.num_classes} but the logits have {c} classes")
        target = smooth_targets(label, c, self.eps)
        if target.shape != logits.shape:
            raise ValueError(f"targets {list(target.shape)} do not match logits {list(logits.shape)}")
        loss = (-target * F.log_softmax(logits, dim=-1)).sum(dim=-1)               # [N]
        if self.reduction == "mean":
            loss = loss.sum() / int(logits.shape[0])
        elif self.reduction == "sum":
            loss = loss.sum()
        return self.loss_weight * loss if self.loss_weight != 1.0 else loss
