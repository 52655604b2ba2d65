"""RSP UperNet loss: mmseg 0.21 ``CrossEntropyLoss`` on the decode head (weight 1.0) and the auxiliary FCN head
(weight 0.4), PyTorch reference (rsp_upernet.md §6).

Mirror of ``paddle_rs/losses/seg_ce.py`` (see there). Per head, as mmseg ``BaseDecodeHead.losses``:

    logits    = bilinear(head_logits, label size, align_corners=False)
    per_pixel = F.cross_entropy(logits, label, ignore_index, reduction='none')  # ignored pixels -> 0
    loss_ce   = loss_weight * per_pixel.mean()                                  # mmseg 0.21: ALL B*H*W pixels
    acc_seg   = 100 * #(argmax == label) / label.numel()

Returns ``{'decode.loss_ce', 'decode.acc_seg', 'aux.loss_ce', 'aux.acc_seg'}`` (or the summed loss with
``return_dict=False``).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import register_loss

__all__ = ["mmseg_cross_entropy", "seg_accuracy", "total_loss", "UperNetLoss"]


def _resize_to(logits, label):
    size = tuple(label.shape[-2:])
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def mmseg_cross_entropy(logits, label, ignore_index=255, loss_weight=1.0, avg_non_ignore=False):
    label = label.long()
    per_pixel = F.cross_entropy(logits, label, ignore_index=ignore_index, reduction="none")
    if avg_non_ignore:
        n = (label != ignore_index).sum().to(per_pixel.dtype)
        return loss_weight * (per_pixel.sum() / n)
    return loss_weight * per_pixel.mean()


def seg_accuracy(logits, label):
    with torch.no_grad():
        pred = logits.argmax(1)
        return (pred == label).float().sum() * (100.0 / label.numel())


def total_loss(out):
    if isinstance(out, dict):
        parts = [v for k, v in out.items() if "loss" in k]
        total = parts[0]
        for v in parts[1:]:
            total = total + v
        return total
    return out


@register_loss("UperNetLoss")
class UperNetLoss(nn.Module):
    def __init__(self, ignore_index=255, decode_weight=1.0, aux_weight=0.4, avg_non_ignore=False,
                 return_dict=True):
        super().__init__()
        self.ignore_index = int(ignore_index)
        self.decode_weight, self.aux_weight = float(decode_weight), float(aux_weight)
        self.avg_non_ignore, self.return_dict = bool(avg_non_ignore), bool(return_dict)

    def forward(self, decode_logits, aux_logits=None, labels=None):
        if labels is None:
            decode_logits, aux_logits, labels = decode_logits, None, aux_logits
        if labels.dim() == 4:
            labels = labels.squeeze(1)
        labels = labels.long()
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
