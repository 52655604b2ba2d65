"""Optimizers, LR schedules and gradient clipping from a config dict (torch reference).

Mirror of ``paddle_rs/engine/optim.py`` (same config keys, same recipe); see there.
Gradient clipping in torch is a call, not an optimizer option: :func:`clip_gradients`
must run between ``backward()`` and ``step()``.
"""
import math

import torch


def build_scheduler(opt, cfg, base_lr, total_iters):
    kind = cfg.get("type", "poly")
    explicit = int(cfg.get("warmup_iters", 0)) > 0 or bool(cfg.get("by_epoch"))   # -> schedule_factor
    end_lr = float(cfg.get("end_lr", 0.0))
    if kind == "poly" and not explicit and end_lr == 0.0:
        return torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=total_iters, power=cfg.get("power", 0.9))
    if kind == "cosine" and not explicit:
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_iters, eta_min=end_lr)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda t: schedule_factor(cfg, base_lr, t, total_iters))


def schedule_factor(cfg, base_lr, t, total_iters):
    """Explicit formula (used with warm-up): mmcv warm-up scales the decayed LR."""
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
    """Parameter groups with mmcv-style paramwise multipliers."""
    pw = cfg.get("paramwise") or {}
    wd = float(cfg.get("weight_decay", 0.0))
    base_lr = float(cfg["lr"])
    modules = dict(model.named_modules())
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
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
            owner = modules.get(name.rsplit(".", 1)[0])
            if isinstance(owner, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm, torch.nn.GroupNorm)) \
                    and "norm_decay_mult" in pw:
                decay_mult = pw["norm_decay_mult"]
        groups.setdefault((decay_mult, lr_mult), []).append((name, p))
    return [{"params": [p for _, p in items], "weight_decay": wd * decay_mult, "lr": base_lr * lr_mult,
             "names": [n for n, _ in items]} for (decay_mult, lr_mult), items in groups.items()]


def build_optimizer(model, opt_cfg, sched_cfg, total_iters):
    """Returns ``(optimizer, scheduler, max_grad_norm or None)``."""
    base_lr = float(opt_cfg["lr"])
    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(model, opt_cfg)]
    kind = opt_cfg.get("type", "Momentum")
    if kind in ("Momentum", "SGD"):
        opt = torch.optim.SGD(groups, lr=base_lr, momentum=float(opt_cfg.get("momentum", 0.9)),
                              nesterov=bool(opt_cfg.get("nesterov", False)))
    elif kind == "AdamW":
        betas = tuple(float(b) for b in opt_cfg.get("betas", (0.9, 0.999)))
        opt = torch.optim.AdamW(groups, lr=base_lr, betas=betas, eps=float(opt_cfg.get("eps", 1e-8)))
    else:
        raise ValueError(f"unknown optimizer type {kind!r} (Momentum | AdamW)")
    sched = build_scheduler(opt, sched_cfg or {}, base_lr, total_iters)
    clip = opt_cfg.get("grad_clip")
    return opt, sched, (float(clip) if clip else None)


def clip_gradients(model, max_norm):
    """torch ``clip_grad_norm_`` over all parameters (global L2 norm); returns the norm before clipping."""
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm is None:
        return float(torch.norm(torch.stack([p.grad.detach().norm(2) for p in params]), 2))
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=2))


def current_lr(opt):
    return float(opt.param_groups[0]["lr"])
