"""A small, well-conditioned two-framework network for checking a training recipe on its own.

A randomly initialised deep model trained with a large learning rate is chaotic: its
own fp32 and fp64 trajectories part within a few steps (known divergence D9), so a
multi-step comparison of the full model cannot show whether the *recipe* (optimizer,
weight decay, clipping, schedule, loss) is ported exactly. The probe runs the same
recipe on a conv -> BN -> ReLU -> heads network of a few thousand parameters, whose
trajectory is stable, in both frameworks with identical weights.
"""
import numpy as np


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


def run_probe(recipe, x, y, heads, steps, seed=0, hidden=8):
    """Train the probe ``steps`` times in both frameworks; returns per-step loss/lr/grad-norm and final params."""
    import paddle
    import torch

    from convert.api import copy_torch_to_paddle
    from paddle_rs.engine.optim import build_optimizer as p_opt
    from paddle_rs.losses import build_loss as p_loss
    from torch_ref.engine.optim import build_optimizer as t_opt
    from torch_ref.engine.optim import clip_gradients
    from torch_ref.losses import build_loss as t_loss

    torch.manual_seed(seed)
    tm, pm = _torch_probe(x.shape[1], hidden, heads), _paddle_probe(x.shape[1], hidden, heads)
    copy_torch_to_paddle(tm, pm)
    tm.train(), pm.train()
    topt, tsched, max_norm = t_opt(tm, recipe["optimizer"], recipe["lr_scheduler"], steps)
    popt, psched = p_opt(pm, recipe["optimizer"], recipe["lr_scheduler"], steps)
    tl, pl = t_loss(recipe["loss"]), p_loss(recipe["loss"])
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    px, py = paddle.to_tensor(x), paddle.to_tensor(y)
    rec = {k: [] for k in ("t_loss", "p_loss", "t_lr", "p_lr", "t_gn", "p_gn")}
    for _ in range(steps):
        rec["t_lr"].append(topt.param_groups[0]["lr"])
        rec["p_lr"].append(popt.get_lr())
        loss = tl(tm(tx), ty)
        topt.zero_grad()
        loss.backward()
        rec["t_gn"].append(clip_gradients(tm, max_norm))
        topt.step()
        tsched.step()
        rec["t_loss"].append(loss.item())
        loss = pl(pm(px), py)
        loss.backward()
        grads = [p.grad for p in pm.parameters() if p.grad is not None]
        rec["p_gn"].append(float(paddle.sqrt(sum((g.astype("float64") ** 2).sum() for g in grads))))
        popt.step()
        popt.clear_grad()
        psched.step()
        rec["p_loss"].append(float(loss))
    out = {k: np.array(v) for k, v in rec.items()}
    out["max_norm"] = max_norm
    from align.cases.base import ParityCase
    out["t_params"], out["p_params"] = ParityCase.trainable_params(tm, pm)
    return out
