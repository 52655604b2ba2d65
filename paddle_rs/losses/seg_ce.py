"""RSP UperNet loss: mmseg 0.21 ``CrossEntropyLoss`` on the decode head (weight 1.0) and the auxiliary FCN head
(weight 0.4), Paddle port (rsp_upernet.md §6).

Mirror of ``torch_ref/losses/seg_ce.py``. Per head, as mmseg ``BaseDecodeHead.losses``:

    logits    = bilinear(head_logits, label size, align_corners=False)          # stride 4 / 16 -> label size
    per_pixel = CE(logits, label, ignore_index, reduction='none')                # ignored pixels -> 0
    loss_ce   = loss_weight * per_pixel.sum() / (B*H*W)                          # mmseg 0.21: ALL pixels
    acc_seg   = 100 * #(argmax == label) / label.numel()                         # logged only, no gradient

``avg_non_ignore`` (mmseg >= 0.23 option, default False = 0.21 behaviour) divides by the non-ignored pixel
count instead (torch's ``reduction='mean'``); the RSP configs do not use it. ignore_index: Potsdam 5 (clutter
and padding), iSAID 255.

Called as ``loss(decode_logits, aux_logits, labels)`` (the registry unpacks the model's train-mode tuple).
Returns mmseg's dict ``{'decode.loss_ce', 'decode.acc_seg', 'aux.loss_ce', 'aux.acc_seg'}``; the trainer sums
the keys containing ``'loss'`` (paddle_rs.engine.trainer.reduce_loss), exactly as mmseg ``_parse_losses``.
:func:`total_loss` does the same sum for callers that need one tensor; ``return_dict=False`` returns it
directly.
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from . import register_loss

__all__ = ["mmseg_cross_entropy", "seg_accuracy", "total_loss", "UperNetLoss"]


def _resize_to(logits, label):
    size = list(label.shape[-2:])
    if list(logits.shape[-2:]) == size:
        return logits                       # bilinear (align_corners=False) at scale 1 is the identity
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def mmseg_cross_entropy(logits, label, ignore_index=255, loss_weight=1.0, avg_non_ignore=False):
    """mmseg 0.21 ``cross_entropy`` + ``weight_reduce_loss(reduction='mean')`` on logits already at label size."""
    label = label.astype("int64")
    per_pixel = F.cross_entropy(logits, label, ignore_index=ignore_index, reduction="none", axis=1)
    per_pixel = per_pixel.reshape(label.shape)
    if avg_non_ignore:
        n = (label != ignore_index).astype(per_pixel.dtype).sum()
        return loss_weight * (per_pixel.sum() / n)
    return loss_weight * per_pixel.mean()


def seg_accuracy(logits, label):
    """mmseg ``accuracy(topk=1)``: percent of all pixels (ignored ones included in the denominator)."""
    with paddle.no_grad():
        pred = paddle.argmax(logits, axis=1)
        correct = (pred == label.astype(pred.dtype)).astype("float32").sum()
        n = 1
        for d in label.shape:
            n *= int(d)
        return correct * (100.0 / n)


def total_loss(out):
    """Sum of the entries whose key contains ``'loss'`` (mmseg ``_parse_losses``); a tensor passes through."""
    if isinstance(out, dict):
        parts = [v for k, v in out.items() if "loss" in k]
        total = parts[0]
        for v in parts[1:]:
            total = total + v
        return total
    return out


@register_loss("UperNetLoss")
class UperNetLoss(nn.Layer):
    """decode CE (``decode_weight`` 1.0) + auxiliary CE (``aux_weight`` 0.4), mmseg 0.21 semantics."""

    def __init__(self, ignore_index=255, decode_weight=1.0, aux_weight=0.4, avg_non_ignore=False,
                 return_dict=True):
        super().__init__()
        self.ignore_index = int(ignore_index)
        self.decode_weight, self.aux_weight = float(decode_weight), float(aux_weight)
        self.avg_non_ignore, self.return_dict = bool(avg_non_ignore), bool(return_dict)

    def forward(self, decode_logits, aux_logits=None, labels=None):
        if labels is None:                  # loss(logits, labels): a single head (no auxiliary output)
            decode_logits, aux_logits, labels = decode_logits, None, aux_logits
        if labels.ndim == 4:                # [B,1,H,W] (mmseg gt_semantic_seg layout)
            labels = labels.squeeze(1)
        labels = labels.astype("int64")
        out = {}
        for name, logits, weight in (("decode", decode_logits, self.decode_weight),
                                     ("aux", aux_logits, self.aux_weight)):
            if logits is None:
                continue
            logits = _resize_to(logits, labels)
            out[f"{name}.loss_ce"] = mmseg_cross_entropy(logits, labels, self.ignore_index, weight,
                                                         self.avg_non_ignore)
            out[f"{name}.acc_seg"] = seg_accuracy(logits, labels)
        return out if self.return_dict else total_loss(out)
