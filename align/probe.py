"""A small, well-conditioned two-framework network for checking a training recipe on its own.

A randomly initialised deep model trained with a large learning rate is chaotic: its
own fp32 and fp64 trajectories part within a few steps, and where the recipe's clip only
fires from a random init (FactSeg: gradient norms 100-350 against a clip of 35) the full
model's stable runs leave it idle. The probe runs the same recipe on a conv -> BN -> ReLU
-> heads network of a few thousand parameters, whose trajectory is stable, in both
frameworks with identical weights, with a clip small enough to fire at every step: a free
run and the per-step comparison of align/training.py.
"""


def _torch_probe(in_ch, hidden, heads):
    import torch.nn as nn

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(in_ch, hidden, 3, padding=1)
            self.bn = nn.BatchNorm2d(hidden)
            self.heads = nn.ModuleList([nn.Conv2d(hidden, c, 1) for c in heads])

        def forward(self, x):
            h = self.bn(self.conv(x)).relu()
            outs = tuple(head(h) for head in self.heads)
            return outs if len(outs) > 1 else outs[0]
    return Probe()


def _paddle_probe(in_ch, hidden, heads):
    import paddle.nn as nn
    import paddle.nn.functional as F

    class Probe(nn.Layer):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2D(in_ch, hidden, 3, padding=1)
            self.bn = nn.BatchNorm2D(hidden, momentum=0.9, epsilon=1e-5)
            self.heads = nn.LayerList([nn.Conv2D(hidden, c, 1) for c in heads])

        def forward(self, x):
            h = F.relu(self.bn(self.conv(x)))
            outs = tuple(head(h) for head in self.heads)
            return outs if len(outs) > 1 else outs[0]
    return Probe()


def _probe_pair(x, heads, seed, hidden):
    import torch

    from convert.api import copy_torch_to_paddle
    torch.manual_seed(seed)
    tm, pm = _torch_probe(x.shape[1], hidden, heads), _paddle_probe(x.shape[1], hidden, heads)
    copy_torch_to_paddle(tm, pm)
    tm.train(), pm.train()
    return tm, pm


def run_probe_steps(recipe, x, y, heads, steps, seed=0, hidden=8):
    """The per-step comparison of align/training.py (:func:`~align.training.step_pair`) on the probe; its conv bias,
    followed by train-mode BatchNorm, has an exactly-zero gradient (known divergence D13)."""
    from align.training import step_pair
    tm, pm = _probe_pair(x, heads, seed, hidden)
    return step_pair(tm, pm, recipe, x, y, steps, noise_params=("conv.bias",))


def run_probe(recipe, x, y, heads, steps, seed=0, hidden=8):
    """Train the probe ``steps`` times in both frameworks with identical weights.

    Returns ``{'t': records, 'p': records, 'max_norm', 't_params', 'p_params'}`` (see align/training.py).
    """
    from align.cases.base import ParityCase
    from align.training import train_pair
    tm, pm = _probe_pair(x, heads, seed, hidden)
    out = train_pair(tm, pm, recipe, x, y, steps)
    out["t_params"], out["p_params"] = ParityCase.trainable_params(tm, pm)
    return out
