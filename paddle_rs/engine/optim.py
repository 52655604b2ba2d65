"""Optimizers, LR schedules and gradient clipping from a config dict.

Mirror of ``torch_ref/engine/optim.py``; the two build the same recipe so the
backward-parity runs (align/04_backward.py) and tools/train.py share it.

Config (``optimizer`` and ``lr_scheduler`` sections of configs/*.yaml)::

    optimizer:    {type: Momentum | AdamW, lr, momentum, weight_decay, betas, eps,
                   grad_clip: <max global L2 norm> | null,
                   paramwise: {norm_decay_mult, bias_decay_mult, custom_keys: {substr: {decay_mult, lr_mult}}}}
    lr_scheduler: {type: poly | cosine | constant, power, end_lr, warmup_iters, warmup_ratio,
                   by_epoch (+ iters_per_epoch): warm-up per iteration, then the schedule per epoch}

Notes (porting.md §4): coupled L2 for Momentum (torch SGD weight_decay),
:class:`ClipGradByGlobalNormTorch` (torch ``clip_grad_norm_``), ``PolynomialDecay`` with
``end_lr`` passed explicitly, mmcv-style linear warm-up that scales the decayed LR.
BatchNorm statistics (``stop_gradient`` parameters in Paddle) are excluded.
"""
import math

import paddle


def build_scheduler(cfg, base_lr, total_iters):
    kind = cfg.get("type", "poly")
    explicit = int(cfg.get("warmup_iters", 0)) > 0 or bool(cfg.get("by_epoch"))   # -> schedule_factor
    end_lr = float(cfg.get("end_lr", 0.0))
    if kind == "poly" and not explicit:
        return paddle.optimizer.lr.PolynomialDecay(base_lr, decay_steps=total_iters, power=cfg.get("power", 0.9),
                                                   end_lr=end_lr)
    if kind == "cosine" and not explicit:
        return paddle.optimizer.lr.CosineAnnealingDecay(base_lr, T_max=total_iters, eta_min=end_lr)
    if kind == "constant" and not explicit:
        return paddle.optimizer.lr.LambdaDecay(base_lr, lambda t: 1.0)
    return paddle.optimizer.lr.LambdaDecay(base_lr, lambda t: schedule_factor(cfg, base_lr, t, total_iters))


def schedule_factor(cfg, base_lr, t, total_iters):
    """Explicit formula (used with warm-up): mmcv warm-up scales the decayed LR (porting.md §4)."""
    kind = cfg.get("type", "poly")
    end_lr = float(cfg.get("end_lr", 0.0))
    if cfg.get("by_epoch"):
        return _epoch_chain_factor(cfg, base_lr, t, total_iters)
    tt = min(t, total_iters)
    if kind == "poly":
        lr = (base_lr - end_lr) * (1 - tt / total_iters) ** cfg.get("power", 0.9) + end_lr
    elif kind == "cosine":
        lr = end_lr + (base_lr - end_lr) * 0.5 * (1 + math.cos(math.pi * tt / total_iters))
    else:
        lr = base_lr
    warm = int(cfg.get("warmup_iters", 0))
    if warm and t < warm:
        ratio = float(cfg.get("warmup_ratio", 1e-6))
        lr = lr * (1 - (1 - t / warm) * (1 - ratio))
    return lr / base_lr


def _epoch_chain_factor(cfg, base_lr, t, total_iters):
    """``by_epoch: true`` -- mmengine's chain of two schedulers (RSMamba, rsmamba.md §7):

    * iterations ``t < warmup_iters``: ``LinearLR(start_factor=warmup_ratio)`` converted to iterations, i.e.
      ``ratio + (1 - ratio) * t / (warmup_iters - 1)`` (mmengine's ``total_iters = end - begin - 1``: the factor
      reaches 1 on the warm-up's last iteration); the main schedule is not active yet;
    * afterwards the main schedule (``cosine`` / ``poly`` / ``constant``) begins at the end of the warm-up and is
      stepped per epoch: constant within an epoch, ``e = (t - warmup_iters) // iters_per_epoch`` of
      ``(total_iters - warmup_iters) / iters_per_epoch`` epochs (CosineAnnealingLR's ``T_max = end - begin``).
    """
    kind = cfg.get("type", "poly")
    end_lr = float(cfg.get("end_lr", 0.0))
    ipe = int(cfg.get("iters_per_epoch") or 0)
    if ipe <= 0:
        raise ValueError("lr_scheduler.by_epoch needs iters_per_epoch (set by the task from the dataset size)")
    warm = int(cfg.get("warmup_iters", 0))
    if t < warm:
        ratio = float(cfg.get("warmup_ratio", 1e-6))
        return ratio + (1 - ratio) * t / (warm - 1) if warm > 1 else ratio   # step 0: start_factor
    epochs = max((total_iters - warm) / ipe, 1e-12)
    e = min((t - warm) // ipe, epochs)
    if kind == "cosine":
        lr = end_lr + (base_lr - end_lr) * 0.5 * (1 + math.cos(math.pi * e / epochs))
    elif kind == "poly":
        lr = (base_lr - end_lr) * (1 - e / epochs) ** cfg.get("power", 0.9) + end_lr
    else:
        lr = base_lr
    return lr / base_lr


def param_groups(model, cfg):
    """Parameter groups with mmcv-style paramwise multipliers; returns (groups, names_per_group)."""
    pw = cfg.get("paramwise") or {}
    wd = float(cfg.get("weight_decay", 0.0))
    groups = {}
    for name, p in model.named_parameters():
        if p.stop_gradient:          # BN running statistics and frozen weights
            continue
        decay_mult, lr_mult = 1.0, 1.0
        for key, mults in (pw.get("custom_keys") or {}).items():
            if key in name:
                decay_mult = mults.get("decay_mult", decay_mult)
                lr_mult = mults.get("lr_mult", lr_mult)
                break
        else:
            if name.endswith(".bias") and "bias_decay_mult" in pw:
                decay_mult = pw["bias_decay_mult"]
            if _is_norm_param(model, name) and "norm_decay_mult" in pw:
                decay_mult = pw["norm_decay_mult"]
        groups.setdefault((decay_mult, lr_mult), []).append((name, p))
    out = []
    for (decay_mult, lr_mult), items in groups.items():
        out.append({"params": [p for _, p in items], "weight_decay": wd * decay_mult,
                    "learning_rate": lr_mult, "names": [n for n, _ in items]})
    return out


def _is_norm_param(model, name):
    import paddle.nn as nn
    owner = name.rsplit(".", 1)[0]
    layer = dict(model.named_sublayers()).get(owner)
    return isinstance(layer, (nn.BatchNorm, nn.BatchNorm1D, nn.BatchNorm2D, nn.BatchNorm3D, nn.SyncBatchNorm,
                              nn.LayerNorm, nn.GroupNorm))


class ClipGradByGlobalNormTorch(paddle.nn.ClipGradByGlobalNorm):
    """Global-norm gradient clipping with torch ``clip_grad_norm_``'s arithmetic: every gradient is scaled by
    ``min(1, max_norm / (norm + 1e-6))``. Paddle's own ``ClipGradByGlobalNorm`` scales by
    ``max_norm / max(norm, max_norm)``, which differs by ``1e-6 / norm`` relative (1e-6 at a norm of 1)."""

    def _dygraph_clip(self, params_grads):
        grads = [g for p, g in params_grads if g is not None and getattr(p, "need_clip", True)]
        if not grads:
            return params_grads
        sq = [paddle.sum(paddle.square(g.astype("float32") if g.dtype in (paddle.float16, paddle.bfloat16) else g))
              for g in grads]
        dtype = "float64" if any(s.dtype == paddle.float64 for s in sq) else "float32"
        norm = paddle.sqrt(paddle.add_n([s.astype(dtype) for s in sq]))
        coef = paddle.clip(self.clip_norm / (norm + 1e-6), max=1.0)
        out = []
        for p, g in params_grads:
            if g is None or not getattr(p, "need_clip", True):
                out.append((p, g))
            else:
                out.append((p, g * coef.astype(g.dtype)))
        return out


def build_optimizer(model, opt_cfg, sched_cfg, total_iters):
    """Returns ``(optimizer, scheduler)``; call ``scheduler.step()`` after each ``optimizer.step()``."""
    base_lr = float(opt_cfg["lr"])
    sched = build_scheduler(sched_cfg or {}, base_lr, total_iters)
    clip = opt_cfg.get("grad_clip")
    grad_clip = ClipGradByGlobalNormTorch(float(clip)) if clip else None
    groups = param_groups(model, opt_cfg)
    params = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    kind = opt_cfg.get("type", "Momentum")
    if kind in ("Momentum", "SGD"):
        opt = paddle.optimizer.Momentum(learning_rate=sched, momentum=float(opt_cfg.get("momentum", 0.9)),
                                        parameters=params, weight_decay=float(opt_cfg.get("weight_decay", 0.0)),
                                        use_nesterov=bool(opt_cfg.get("nesterov", False)), grad_clip=grad_clip)
    elif kind == "AdamW":
        betas = opt_cfg.get("betas", (0.9, 0.999))
        opt = paddle.optimizer.AdamW(learning_rate=sched, beta1=float(betas[0]), beta2=float(betas[1]),
                                     epsilon=float(opt_cfg.get("eps", 1e-8)), parameters=params,
                                     weight_decay=float(opt_cfg.get("weight_decay", 0.01)), grad_clip=grad_clip)
    else:
        raise ValueError(f"unknown optimizer type {kind!r} (Momentum | AdamW)")
    return opt, sched


def current_lr(opt):
    return float(opt.get_lr())
