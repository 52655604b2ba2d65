"""Label-smoothing cross-entropy of mmpretrain (``LabelSmoothLoss``, mode ``original``), PaddlePaddle.

Mirror of ``torch_ref/losses/label_smooth.py`` (rsmamba.md §7). Upstream (mmpretrain 1.2.0
``models/losses/label_smooth_loss.py`` + ``cross_entropy_loss.soft_cross_entropy``, called by
``ClsHead._get_loss`` with ``avg_factor = batch size``)::

    target   = one_hot(label) if label is [N] / [N,1] class indices, else label (soft scores, e.g. Mixup/CutMix)
    smoothed = target * (1 - eps) + eps / C                           # mode 'original'
    loss     = loss_weight * sum_n( sum_c -smoothed[n,c] * log_softmax(logits)[n,c] ) / N

Soft targets are smoothed as well (upstream does the same: a Mixup score vector goes through
``original_smooth_label``). Mode ``classy_vision`` uses ``eps / (1 + eps)``.

Hand-written on purpose (porting.md §2.4): Paddle's ``label_smoothing`` raises with ``ignore_index`` / NCHW
and uses a different formula with class weights; the explicit formula is the same on both sides, op for op.
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from . import register_loss

__all__ = ["LabelSmoothLoss", "smooth_targets"]


def smooth_targets(label, num_classes, eps):
    """``[N]`` / ``[N,1]`` int labels or ``[N,C]`` soft scores -> smoothed float32 ``[N,C]`` targets."""
    if label.ndim == 1 or (label.ndim == 2 and label.shape[1] == 1):
        label = F.one_hot(label.reshape([-1]).astype("int64"), num_classes)
    target = label.astype("float32")
    return target * (1.0 - eps) + eps / num_classes


@register_loss("LabelSmoothLoss")
class LabelSmoothLoss(nn.Layer):
    """``loss(logits [N,C], label)``; ``label``: int ``[N]`` (or ``[N,1]``) or float ``[N,C]`` soft scores.

    ``label_smooth_val`` 0.1 and ``mode='original'`` in every RSMamba config. ``num_classes`` None: taken from
    the logits (checked against them when given). ``reduction``: 'mean' (sum / N, upstream avg_factor),
    'sum' or 'none'.
    """

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
        if list(target.shape) != list(logits.shape):
            raise ValueError(f"targets {list(target.shape)} do not match logits {list(logits.shape)}")
        loss = (-target * F.log_softmax(logits, axis=-1)).sum(axis=-1)            # [N]
        if self.reduction == "mean":
            loss = loss.sum() / int(logits.shape[0])
        elif self.reduction == "sum":
            loss = loss.sum()
        return self.loss_weight * loss if self.loss_weight != 1.0 else loss
