"""Well-conditioned random weights for the parity checks (shared by the segmentation families).

A plain random init is ill-conditioned in ways a trained network is not: a random ResNet-50 re-amplifies fp32
rounding in every block (its residual branches end in a BatchNorm of gain 1), a BatchNorm after a 1x1 pooled map
can see two values per channel, and the running statistics of a fresh BatchNorm (0 / 1) do not describe its input.
torch fp32 itself then strays from torch fp64 by ~1e-4 on UperNet-R50's eval logits (tests/test_upernet.py) and by
~6e-5 on FactSeg's train-mode logits, so a 1e-5 check would measure the random network's amplification of
rounding, not the port. :func:`condition_weights` gives the torch reference "trained-like" weights while every
code path stays in use; the parity cases build the Paddle port from them through ``convert/`` as usual.
"""
import numpy as np


def condition_weights(tm, seed, size, classifiers=()):
    """Condition the torch reference ``tm`` in place (returns it, in eval mode):

    * random affine LayerNorm / BatchNorm parameters (weight ``1 + 0.3 N``, bias ``0.1 N``) and relative-position
      bias tables (``0.5 N``), so a converter that forgot them would show;
    * each module in ``classifiers`` (final 1x1 convolutions) with a unit-gain init and a small random bias;
    * ResNet bottlenecks' last BatchNorm (``*.bn3``) scaled by 0.2, as in trained ResNets (the residual branch
      starts small);
    * BatchNorm running statistics calibrated on one seeded ``2 x 3 x size x size`` batch, ``running_var`` floored
      at half the layer's median.
    """
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in tm.named_parameters():
            if "relative_position_bias_table" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for m in tm.modules():
            if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        for c in classifiers:
            c.weight.copy_(torch.randn(c.weight.shape, generator=g) / c.weight.shape[1] ** 0.5)
            c.bias.copy_(0.1 * torch.randn(c.bias.shape, generator=g))
        for n, m in tm.named_modules():
            if n.endswith(".bn3"):                 # ResNet Bottleneck: last BN of the residual branch
                m.weight.mul_(0.2)
        bns = [m for m in tm.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for m in bns:
            m.momentum = None                      # cumulative average: one batch -> its statistics
            m.reset_running_stats()
        tm.train()
        dtype = next(tm.parameters()).dtype
        x = np.random.RandomState(seed + 100).randn(2, 3, size, size)
        tm(torch.from_numpy(x).to(dtype))
        for m in bns:
            m.momentum = 0.1
            m.running_var.clamp_(min=0.5 * float(m.running_var.median()))
    tm.eval()
    return tm
