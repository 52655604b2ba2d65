"""The training loop the backward-parity checks run in both frameworks (one place for every family).

``train_pair`` runs ``steps`` iterations of a recipe (``optimizer`` / ``lr_scheduler`` / ``loss`` config
sections, built by the mirrored ``engine/optim.py`` and ``losses`` builders) on one fixed batch, and records
per step the LR used, the loss and the global gradient norm before clipping. Order per step, both sides:
read LR -> (batch hook) -> forward -> loss -> backward -> clip -> optimizer step -> scheduler step.
The optional batch hooks ``(step, x, y) -> (x, y)`` (one per framework, on its tensors) change the batch per
step, e.g. Mixup/CutMix with injected parameters (align/cases/rsmamba.py).
"""
import numpy as np


def _torch_step_records(tm, recipe, steps, make_inputs, loss_fn=None, batch_fn=None):
    import torch

    from torch_ref.engine.optim import build_optimizer, clip_gradients
    from torch_ref.losses import build_loss
    opt, sched, max_norm = build_optimizer(tm, recipe["optimizer"], recipe["lr_scheduler"], steps)
    crit = loss_fn or build_loss(recipe["loss"])
    x, y = make_inputs()
    fp64 = next(tm.parameters()).dtype == torch.float64
    rec = {"loss": [], "lr": [], "grad_norm": []}
    for step in range(steps):
        rec["lr"].append(opt.param_groups[0]["lr"])
        xs, ys = batch_fn(step, x, y) if batch_fn is not None else (x, y)
        loss = crit(tm(xs), ys)
        opt.zero_grad()
        loss.backward()
        rec["grad_norm"].append(clip_gradients(tm, max_norm))
        opt.step()
        sched.step()
        if fp64:   # Paddle holds the LR as a float32 tensor (D10); give the float64 reference the same value
            for g in opt.param_groups:
                g["lr"] = float(np.float32(g["lr"]))
        rec["loss"].append(loss.item())
    return {k: np.array(v) for k, v in rec.items()}, max_norm


def _paddle_step_records(pm, recipe, steps, make_inputs, loss_fn=None, batch_fn=None):
    import paddle

    from paddle_rs.engine.optim import build_optimizer
    from paddle_rs.losses import build_loss
    opt, sched = build_optimizer(pm, recipe["optimizer"], recipe["lr_scheduler"], steps)
    crit = loss_fn or build_loss(recipe["loss"])
    x, y = make_inputs()
    rec = {"loss": [], "lr": [], "grad_norm": []}
    for step in range(steps):
        rec["lr"].append(opt.get_lr())
        xs, ys = batch_fn(step, x, y) if batch_fn is not None else (x, y)
        loss = crit(pm(xs), ys)
        loss.backward()
        grads = [p.grad for p in pm.parameters() if p.grad is not None]
        rec["grad_norm"].append(float(paddle.sqrt(sum((g.astype("float64") ** 2).sum() for g in grads))))
        opt.step()
        opt.clear_grad()
        sched.step()
        rec["loss"].append(float(loss))
    return {k: np.array(v) for k, v in rec.items()}


def train_pair(tm, pm, recipe, x, y, steps, torch_only=False, torch_loss=None, paddle_loss=None, torch_batch=None,
               paddle_batch=None):
    """Train ``tm`` (and ``pm`` unless ``torch_only``) in place; returns ``{'t': records, 'p': records, 'max_norm'}``.

    ``x`` (float array, cast to the torch model's dtype) and ``y`` (labels) are numpy arrays. Models are used in
    the mode the caller set (train mode, or train mode with BatchNorm in eval). ``torch_batch`` / ``paddle_batch``:
    optional per-step batch hooks ``(step, x, y) -> (x, y)`` on each framework's tensors.
    """
    import paddle
    import torch

    dtype = next(tm.parameters()).dtype

    def t_inputs():
        return torch.from_numpy(np.ascontiguousarray(x)).to(dtype), torch.from_numpy(np.ascontiguousarray(y))

    def p_inputs():
        px = paddle.to_tensor(np.ascontiguousarray(x)).astype(str(dtype).replace("torch.", ""))
        return px, paddle.to_tensor(np.ascontiguousarray(y))

    t, max_norm = _torch_step_records(tm, recipe, steps, t_inputs, torch_loss, torch_batch)
    out = {"t": t, "max_norm": max_norm}
    if not torch_only:
        out["p"] = _paddle_step_records(pm, recipe, steps, p_inputs, paddle_loss, paddle_batch)
    return out


def clipped_steps(records, max_norm):
    """How many steps had their gradient clipped (the reference's pre-clip norm above the limit)."""
    return 0 if max_norm is None else int((records["grad_norm"] > max_norm).sum())


def step_fns(tm, pm, recipe, x, y, total_iters, torch_loss=None, paddle_loss=None, torch_batch=None,
             paddle_batch=None):
    """``(t_step, p_step)``: one training step of the recipe per framework on a fixed batch, as closures for
    tools/benchmark.py -- the step of :func:`train_pair` (batch hook -> forward -> loss -> backward -> clip ->
    optimizer step -> scheduler step) without the records. ``total_iters`` sizes the schedule."""
    import paddle
    import torch

    from paddle_rs.engine.optim import build_optimizer as p_opt
    from paddle_rs.losses import build_loss as p_build
    from torch_ref.engine.optim import build_optimizer as t_opt
    from torch_ref.engine.optim import clip_gradients
    from torch_ref.losses import build_loss as t_build
    topt, tsched, max_norm = t_opt(tm, recipe["optimizer"], recipe["lr_scheduler"], total_iters)
    popt, psched = p_opt(pm, recipe["optimizer"], recipe["lr_scheduler"], total_iters)
    tl, pl = torch_loss or t_build(recipe["loss"]), paddle_loss or p_build(recipe["loss"])
    tx, ty = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))
    px, py = paddle.to_tensor(np.ascontiguousarray(x)), paddle.to_tensor(np.ascontiguousarray(y))

    def t_step():
        xs, ys = torch_batch(0, tx, ty) if torch_batch is not None else (tx, ty)
        loss = tl(tm(xs), ys)
        topt.zero_grad()
        loss.backward()
        if max_norm:
            clip_gradients(tm, max_norm)
        topt.step()
        tsched.step()
        loss.item()

    def p_step():
        xs, ys = paddle_batch(0, px, py) if paddle_batch is not None else (px, py)
        loss = pl(pm(xs), ys)
        loss.backward()
        popt.step()
        popt.clear_grad()
        psched.step()
        float(loss)
    return t_step, p_step
