"""FactSeg JointLoss: CP negative log-likelihood reduced by small-object mining (factseg.md §3).

Mirror of ``paddle_rs/losses/joint_loss.py``. Upstream config: sample='SOM', ratio=0.1,
ignore_index=255. The loss is the only term (no CE, BCE or OHEM).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.factseg import cp_fuse
from . import register_loss


def som(loss, ratio):
    """Mean of the non-zero values among the top ``int(ratio * N)`` pixel losses, over the whole batch."""
    flat = loss.flatten()
    k = int(ratio * flat.numel())
    top = flat.topk(k).values
    mask = top != 0
    return top[mask].sum() / (mask.sum() + 1e-6)


def cp_log_prob(fg_logits, bi_logits, stable=False):
    """log of the CP probabilities. ``stable=False`` is upstream's literal log(p) (can give inf)."""
    if not stable:
        return torch.log(cp_fuse(fg_logits, bi_logits))
    log_q = F.log_softmax(fg_logits, dim=1)
    log_f, log_1mf = F.logsigmoid(bi_logits), F.logsigmoid(-bi_logits)
    log_bg = log_q[:, :1] + log_1mf
    log_fg = log_q[:, 1:] + log_f
    log_1mq0 = torch.log1p(-torch.exp(log_q[:, :1]))
    log_z = torch.logaddexp(log_bg, log_1mq0 + log_f)
    return torch.cat([log_bg, log_fg], dim=1) - log_z


@register_loss("JointLoss")
class JointLoss(nn.Module):
    def __init__(self, ignore_index=255, sample="SOM", ratio=0.1, stable=False):
        super().__init__()
        if sample != "SOM":
            raise ValueError(f"only sample='SOM' is ported (upstream OHEM is broken), got {sample!r}")
        self.ignore_index, self.ratio, self.stable = ignore_index, ratio, stable

    def forward(self, fg_logits, bi_logits, labels):
        log_p = cp_log_prob(fg_logits, bi_logits, self.stable)
        losses = F.nll_loss(log_p, labels, ignore_index=self.ignore_index, reduction="none")
        return som(losses, self.ratio)
