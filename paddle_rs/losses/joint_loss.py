"""FactSeg JointLoss: CP negative log-likelihood reduced by small-object mining (factseg.md §3).

Mirror of ``torch_ref/losses/joint_loss.py``. Upstream config: sample='SOM', ratio=0.1,
ignore_index=255. The loss is the only term (no CE, BCE or OHEM).
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..models.factseg import cp_fuse
from . import register_loss


def som(loss, ratio):
    """Mean of the non-zero values among the top ``int(ratio * N)`` pixel losses, over the whole batch."""
    flat = loss.flatten()
    n = 1
    for d in loss.shape:          # static ints (Tensor.numel() is a Tensor in Paddle)
        n *= int(d)
    k = int(ratio * n)
    top = paddle.topk(flat, k)[0]
    mask = top != 0
    # torch adds 1e-6 to an integer count, which gives a float32 tensor (the default dtype): count + 1e-6 is
    # float32 there even when the losses are float64, so it is here too
    count = mask.astype("float32").sum() + 1e-6
    return paddle.masked_select(top, mask).sum() / count.astype(top.dtype)


def cp_log_prob(fg_logits, bi_logits, stable=False):
    """log of the CP probabilities. ``stable=False`` is upstream's literal log(p) (can give inf)."""
    if not stable:
        return paddle.log(cp_fuse(fg_logits, bi_logits))
    log_q = F.log_softmax(fg_logits, axis=1)
    log_f, log_1mf = F.log_sigmoid(bi_logits), F.log_sigmoid(-bi_logits)
    log_bg = log_q[:, :1] + log_1mf
    log_fg = log_q[:, 1:] + log_f
    log_1mq0 = paddle.log1p(-paddle.exp(log_q[:, :1]))
    log_z = paddle.logaddexp(log_bg, log_1mq0 + log_f)
    return paddle.concat([log_bg, log_fg], axis=1) - log_z


@register_loss("JointLoss")
class JointLoss(nn.Layer):
    def __init__(self, ignore_index=255, sample="SOM", ratio=0.1, stable=False):
        super().__init__()
        if sample != "SOM":
            raise ValueError(f"only sample='SOM' is ported (upstream OHEM is broken), got {sample!r}")
        self.ignore_index, self.ratio, self.stable = ignore_index, ratio, stable

    def forward(self, fg_logits, bi_logits, labels):
        log_p = cp_log_prob(fg_logits, bi_logits, self.stable)
        losses = F.nll_loss(log_p, labels, ignore_index=self.ignore_index, reduction="none")
        return som(losses, self.ratio)
