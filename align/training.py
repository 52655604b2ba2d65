"""The training loop the backward-parity checks run in both frameworks (one place for every family).

``train_pair`` runs ``steps`` iterations of a recipe (``optimizer`` / ``lr_scheduler`` / ``loss`` config
sections, built by the mirrored ``engine/optim.py`` and ``losses`` builders) on one fixed batch, and records
per step the LR used, the loss and the global gradient norm before clipping. Order per step, both sides:
read LR -> (batch hook) -> forward -> loss -> backward -> clip -> optimizer step -> scheduler step.
The optional batch hooks ``(step, x, y) -> (x, y)`` (one per framework, on its tensors) change the batch per
step, e.g. Mixup/CutMix with injected parameters (align/cases/rsmamba.py).
"""
import numpy as np


def _f32(v):
    return float(np.float32(v))


def float32_scalars(tm, opt):
    """Give a float64 torch reference the float32 scalars a float64 Paddle model computes with (known divergence
    D10): Paddle holds BatchNorm's momentum, SGD's momentum and the optimizers' weight-decay coefficient as float32
    attributes, so its running statistics move with ``1 - float32(0.9)`` instead of 0.1 (2.4e-7 of a
    running-statistic update apart), its velocity with ``float32(0.9)`` and its decay with ``float32(1e-4)``
    (2.5e-8 of the decay term). The LR and AdamW's betas and epsilon are used in float64."""
    import torch
    for g in opt.param_groups:
        for k in ("weight_decay", "momentum"):
            if k in g:
                g[k] = _f32(g[k])
    for m in tm.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.momentum is not None:
            m.momentum = 1.0 - _f32(1.0 - m.momentum)


def _torch_step_records(tm, recipe, steps, make_inputs, loss_fn=None, batch_fn=None, optimizer_state=None):
    import torch

    from torch_ref.engine.optim import build_optimizer, clip_gradients
    from torch_ref.losses import build_loss
    opt, sched, max_norm = build_optimizer(tm, recipe["optimizer"], recipe["lr_scheduler"], steps)
    crit = loss_fn or build_loss(recipe["loss"])
    x, y = make_inputs()
    fp64 = next(tm.parameters()).dtype == torch.float64
    if fp64:
        float32_scalars(tm, opt)
    if optimizer_state:
        set_torch_optimizer_state(opt, tm, optimizer_state)
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
        rec["loss"].append(loss.item())
    return {k: np.array(v) for k, v in rec.items()}, max_norm, opt


def _paddle_step_records(pm, recipe, steps, make_inputs, loss_fn=None, batch_fn=None, optimizer_state=None,
                         linear=()):
    import paddle

    from paddle_rs.engine.optim import build_optimizer
    from paddle_rs.losses import build_loss
    opt, sched = build_optimizer(pm, recipe["optimizer"], recipe["lr_scheduler"], steps)
    if optimizer_state:
        set_paddle_optimizer_state(opt, pm, optimizer_state, recipe["optimizer"].get("type", "Momentum"), linear,
                                   tuple(float(b) for b in recipe["optimizer"].get("betas", (0.9, 0.999))))
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
               paddle_batch=None, optimizer_state=None):
    """Train ``tm`` (and ``pm`` unless ``torch_only``) in place; returns ``{'t': records, 'p': records, 'max_norm',
    't_optimizer_state'}``.

    ``x`` (float array, cast to the torch model's dtype) and ``y`` (labels) are numpy arrays. Models are used in
    the mode the caller set (train mode, or train mode with BatchNorm in eval). ``torch_batch`` / ``paddle_batch``:
    optional per-step batch hooks ``(step, x, y) -> (x, y)`` on each framework's tensors. ``optimizer_state``:
    the torch optimizer state both start from (:func:`torch_optimizer_state`), else fresh optimizers.
    """
    from convert.rules import linear_weight_keys
    import paddle
    import torch

    dtype = next(tm.parameters()).dtype

    def t_inputs():
        return torch.from_numpy(np.ascontiguousarray(x)).to(dtype), torch.from_numpy(np.ascontiguousarray(y))

    def p_inputs():
        px = paddle.to_tensor(np.ascontiguousarray(x)).astype(str(dtype).replace("torch.", ""))
        return px, paddle.to_tensor(np.ascontiguousarray(y))

    t, max_norm, topt = _torch_step_records(tm, recipe, steps, t_inputs, torch_loss, torch_batch, optimizer_state)
    out = {"t": t, "max_norm": max_norm, "t_optimizer_state": torch_optimizer_state(topt, tm)}
    if not torch_only:
        out["p"] = _paddle_step_records(pm, recipe, steps, p_inputs, paddle_loss, paddle_batch, optimizer_state,
                                        linear_weight_keys(tm))
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


# ------------------------------------------------------------------------------------------------------------------
# Per-step comparison from the reference's own states (not chaotic)
# ------------------------------------------------------------------------------------------------------------------
# torch optimizer state -> Paddle accumulator (the beta-power accumulators follow from torch's step count)
_ACCUMULATOR = {"momentum_buffer": "velocity", "exp_avg": "moment1", "exp_avg_sq": "moment2"}
_STATE_OF = {"Momentum": ("momentum_buffer",), "SGD": ("momentum_buffer",), "AdamW": ("exp_avg", "exp_avg_sq")}
ULPS = 2   # update gaps are measured beyond this many units in the last place of the parameter (see update_gaps)


def torch_optimizer_state(opt, tm):
    """``{parameter name: {state name: np.ndarray, 'step': int}}`` of a torch optimizer (copies)."""
    import torch
    names = {id(p): n for n, p in tm.named_parameters()}
    out = {}
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p)
            if not st:
                continue
            rec = {k: v.detach().cpu().numpy().copy() for k, v in st.items() if k in _ACCUMULATOR and v is not None}
            if "step" in st:
                rec["step"] = int(float(st["step"])) if torch.is_tensor(st["step"]) else int(st["step"])
            out[names[id(p)]] = rec
    return out


def set_torch_optimizer_state(opt, tm, state):
    """Load :func:`torch_optimizer_state` output into torch optimizer ``opt`` (params by name, the model's dtype)."""
    import torch
    params = dict(tm.named_parameters())
    for name, st in state.items():
        p = params[name]
        rec = {k: torch.tensor(np.asarray(v), dtype=p.dtype) for k, v in st.items() if k != "step"}   # copies
        if "step" in st:
            rec["step"] = torch.tensor(float(st["step"]))
        opt.state[p] = rec


def _paddle_params(pm):
    """Trainable Paddle parameters by (torch-equal) structured name."""
    return {n: p for n, p in pm.named_parameters() if not p.stop_gradient}


def set_paddle_optimizer_state(popt, pm, state, kind, linear, betas=(0.9, 0.999)):
    """Give Paddle optimizer ``popt`` the torch optimizer state ``state`` (:func:`torch_optimizer_state`): velocity
    (Momentum) or first / second moments and the beta powers (AdamW, beta^(step + 1) as Paddle keeps them) of every
    trainable parameter; a parameter without torch state gets the initial state. ``linear``: torch names of Linear
    weights (stored transposed in Paddle)."""
    import paddle
    params = _paddle_params(pm)
    block = paddle.static.default_main_program().global_block()
    popt._create_accumulators(block, list(params.values()))      # lazily created on the first step otherwise
    acc = popt._accumulators
    for name, p in params.items():
        st = state.get(name, {})
        for tkey in _STATE_OF[kind]:
            target = acc[_ACCUMULATOR[tkey]][p.name]
            if tkey in st:
                v = st[tkey].T if name in linear else st[tkey]
            else:
                v = np.zeros(target.shape)
            target.set_value(np.ascontiguousarray(v).astype(str(target.dtype).replace("paddle.", "")))
        if kind == "AdamW":
            step = st.get("step", 0)
            for k, beta in (("beta1_pow_acc", betas[0]), ("beta2_pow_acc", betas[1])):
                target = acc[k][p.name]
                target.set_value(np.full(target.shape, beta ** (step + 1)).astype(
                    str(target.dtype).replace("paddle.", "")))


def paddle_optimizer_state(popt, pm, kind, linear):
    """Paddle's optimizer state in torch names and layout: ``{name: {state name: np.ndarray}}``."""
    acc = popt._accumulators
    out = {}
    for name, p in _paddle_params(pm).items():
        rec = {}
        for tkey in _STATE_OF[kind]:
            t = acc.get(_ACCUMULATOR[tkey], {}).get(p.name)
            if t is not None:
                rec[tkey] = t.numpy().T if name in linear else t.numpy()
        if rec:
            out[name] = rec
    return out


def _paddle_params_as_torch(pm, tm):
    from convert.rules import paddle_to_torch
    sd = paddle_to_torch({k: v.numpy() for k, v in pm.state_dict().items()}, tm, pm)
    return {k: v.numpy() for k, v in sd.items()}


def update_gaps(before, after_t, after_p, names, ulps=ULPS):
    """Per tensor: ``max_i (|Δp_i - Δt_i| - ulps * ulp(θ_i))+ / max|Δt|`` with ``Δ = after - before``: how far the
    Paddle update is from the reference's, relative to the largest element of the reference's update, beyond
    ``ulps`` units in the last place of the parameter (an update near the parameter's own rounding step, e.g. at
    the start of a warm-up, is only known to that precision). 0 when both updates are 0; inf when only one is."""
    out = np.zeros(len(names))
    for i, n in enumerate(names):
        b = np.asarray(before[n])
        dt = np.asarray(after_t[n], np.float64) - b
        dp = np.asarray(after_p[n], np.float64) - b
        ulp = np.spacing(np.maximum(np.abs(b), np.abs(np.asarray(after_t[n]))).astype(b.dtype)).astype(np.float64)
        excess = np.maximum(np.abs(dp - dt) - ulps * ulp, 0.0)
        scale = np.abs(dt).max() if dt.size else 0.0
        if scale > 0:
            out[i] = excess.max() / scale
        else:
            out[i] = 0.0 if excess.max() == 0 else np.inf
    return out


def state_gaps(ref, got, names):
    """Per tensor ``max|got - ref| / max|ref|`` (0 when both are 0); ``ref`` / ``got``: ``{name: array}``."""
    out = np.zeros(len(names))
    for i, n in enumerate(names):
        a, b = np.asarray(ref[n], np.float64), np.asarray(got[n], np.float64)
        d, s = np.abs(a - b).max(), np.abs(a).max()
        out[i] = d / s if s > 0 else (0.0 if d == 0 else np.inf)
    return out


def _bn_counts(tm):
    """Forward pre-hooks recording, per torch BatchNorm in training mode, the number of values per channel it
    normalises."""
    counts, handles = {}, []
    for name in _training_bns(tm):
        def hook(mod, inp, name=name):
            x = inp[0]
            counts.setdefault(name, []).append(x.numel() // x.shape[1])
        handles.append(tm.get_submodule(name).register_forward_pre_hook(hook))
    return counts, handles


def _training_bns(tm):
    """Names of the torch BatchNorms that update running statistics in the model's current mode."""
    import torch
    return [n for n, m in tm.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.training]


def bn_expected_paddle(before, after_t, counts, momenta):
    """The running statistics Paddle's BatchNorm should reach from the same batch (known divergence D1): Paddle
    updates ``running_var`` with the *biased* batch variance, torch with the unbiased one. From torch's update
    ``v1 = (1 - m) v0 + m s_unbiased`` the batch variance is recovered and Paddle's value follows as
    ``(1 - m) v0 + m s_unbiased (n - 1) / n``; the running means are the same in both."""
    out = {}
    for bn, ns in counts.items():
        if len(ns) != 1:
            raise AssertionError(f"BatchNorm {bn} ran {len(ns)} times in one step: the D1 correction needs one")
        n, m = ns[0], momenta[bn]
        v0, v1 = np.asarray(before[f"{bn}.running_var"], np.float64), np.asarray(after_t[f"{bn}.running_var"],
                                                                                 np.float64)
        s_unbiased = (v1 - (1 - m) * v0) / m
        out[f"{bn}.running_var"] = (1 - m) * v0 + m * s_unbiased * (n - 1) / n
        out[f"{bn}.running_mean"] = np.asarray(after_t[f"{bn}.running_mean"], np.float64)
    return out


def step_pair(tm, pm, recipe, x, y, steps, torch_loss=None, paddle_loss=None, torch_batch=None, paddle_batch=None,
              noise_params=(), optimizer_state=None):
    """The reference's trajectory, and one Paddle step of the recipe from each of its states.

    At each of ``steps`` iterations the Paddle model is given the torch reference's current parameters, buffers
    (BatchNorm statistics) and optimizer state; both frameworks then take one step of ``recipe`` on the same batch
    (the reference continues from its own result). A step from the same state is not chaotic: it measures the
    port's one-step error, which a free-running multi-step comparison mixes with the amplified rounding of all
    earlier steps. Paddle takes the step twice from the same state: with its own gradients (the whole port:
    forward, loss, backward, clipping, optimizer, schedule) and with the reference's gradients injected (the
    optimizer, clipping and schedule alone, free of gradient rounding).

    ``optimizer_state``: the reference optimizer's state to start from (:func:`torch_optimizer_state`, e.g. after
    settling steps); a fresh optimizer otherwise. From a fresh AdamW state the first update is ``g / (|g| + eps)``
    per element, the sign of the gradient, which flips for an element whose gradient is at rounding level.

    ``noise_params``: torch names of parameters whose exact gradient is 0 (a convolution bias before train-mode
    BatchNorm): their own-gradient update is pure rounding noise (AdamW normalises it to +-lr, known divergence
    D13), so they are compared only with injected gradients, and their gradients are reported as a fraction of
    the model's largest gradient.

    Returns a dict of arrays over steps: ``lr_t/lr_p``, ``loss_t/loss_p``, ``grad_norm_t/grad_norm_p`` (before
    clipping); ``[steps, tensors]`` gaps ``update`` / ``update_ref_grads`` (:func:`update_gaps`), ``state`` /
    ``state_ref_grads`` (optimizer state after the step, :func:`state_gaps`), ``bn_mean`` / ``bn_var``
    (running-statistic updates, D1-corrected); ``noise_grad_t/noise_grad_p`` per step; the name lists.
    """
    import paddle
    import torch

    from convert.rules import linear_weight_keys
    from paddle_rs.engine.optim import build_optimizer as p_opt
    from paddle_rs.losses import build_loss as p_build
    from torch_ref.engine.optim import build_optimizer as t_opt
    from torch_ref.engine.optim import clip_gradients
    from torch_ref.losses import build_loss as t_build
    kind = recipe["optimizer"].get("type", "Momentum")
    betas = tuple(float(b) for b in recipe["optimizer"].get("betas", (0.9, 0.999)))
    topt, tsched, max_norm = t_opt(tm, recipe["optimizer"], recipe["lr_scheduler"], steps)
    popt, psched = p_opt(pm, recipe["optimizer"], recipe["lr_scheduler"], steps)
    tl, pl = torch_loss or t_build(recipe["loss"]), paddle_loss or p_build(recipe["loss"])
    linear = linear_weight_keys(tm)
    dtype = next(tm.parameters()).dtype
    fp64 = dtype == torch.float64
    if fp64:
        float32_scalars(tm, topt)
    if optimizer_state:
        set_torch_optimizer_state(topt, tm, optimizer_state)
    tx = torch.from_numpy(np.ascontiguousarray(x)).to(dtype)
    ty = torch.from_numpy(np.ascontiguousarray(y))
    px = paddle.to_tensor(np.ascontiguousarray(x)).astype(str(dtype).replace("torch.", ""))
    py = paddle.to_tensor(np.ascontiguousarray(y))
    names = [n for n, p in tm.named_parameters() if p.requires_grad]
    noise = [n for n in names if n in set(noise_params)]
    compared = [n for n in names if n not in set(noise_params)]
    bn_names = _training_bns(tm)
    momenta = {n: tm.get_submodule(n).momentum for n in bn_names}
    pparams = _paddle_params(pm)
    rec = {k: [] for k in ("lr_t", "lr_p", "loss_t", "loss_p", "grad_norm_t", "grad_norm_p", "update",
                           "update_ref_grads", "state", "state_ref_grads", "bn_mean", "bn_var", "noise_grad_t",
                           "noise_grad_p")}

    def state_tensors(st):
        return {f"{n}:{k}": v for n, d in st.items() for k, v in d.items() if k != "step"}

    for step in range(steps):
        # -- the reference's state before the step -------------------------------------------------------------
        before = {k: v.detach().numpy().copy() for k, v in tm.state_dict().items()}
        t_state0 = torch_optimizer_state(topt, tm)
        # -- torch: one step -----------------------------------------------------------------------------------
        rec["lr_t"].append(topt.param_groups[0]["lr"])
        xs, ys = torch_batch(step, tx, ty) if torch_batch is not None else (tx, ty)
        counts, handles = _bn_counts(tm)
        try:
            loss = tl(tm(xs), ys)
        finally:
            for h in handles:
                h.remove()
        topt.zero_grad()
        loss.backward()
        t_grads = {n: p.grad.detach().numpy().copy() for n, p in tm.named_parameters() if p.grad is not None}
        rec["grad_norm_t"].append(clip_gradients(tm, max_norm))
        topt.step()
        tsched.step()
        rec["loss_t"].append(loss.item())
        after_t = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
        t_state1 = torch_optimizer_state(topt, tm)
        # -- Paddle: the same state, its own gradients ---------------------------------------------------------
        _load_torch_state(tm, pm, before)
        set_paddle_optimizer_state(popt, pm, t_state0, kind, linear, betas)
        rec["lr_p"].append(popt.get_lr())
        xs, ys = paddle_batch(step, px, py) if paddle_batch is not None else (px, py)
        ploss = pl(pm(xs), ys)
        ploss.backward()
        missing = sorted(set(t_grads) ^ {n for n, p in pparams.items() if p.grad is not None})
        if missing:
            raise AssertionError(f"parameters with a gradient in only one framework: {missing[:8]}")
        p_grads = {n: (p.grad.numpy().T if n in linear else p.grad.numpy()) for n, p in pparams.items()
                   if p.grad is not None}
        rec["grad_norm_p"].append(float(np.sqrt(sum(float((g.astype(np.float64) ** 2).sum())
                                                    for g in p_grads.values()))))
        rec["loss_p"].append(float(ploss))
        popt.step()
        after_p = _paddle_params_as_torch(pm, tm)
        p_state1 = paddle_optimizer_state(popt, pm, kind, linear)
        # -- Paddle: the same state, the reference's gradients -------------------------------------------------
        _load_torch_state(tm, pm, before)
        set_paddle_optimizer_state(popt, pm, t_state0, kind, linear, betas)
        for n, g in t_grads.items():
            p = pparams[n]
            p.grad.set_value(np.ascontiguousarray(g.T if n in linear else g))
        popt.step()
        popt.clear_grad()
        psched.step()
        after_p_ref = _paddle_params_as_torch(pm, tm)
        p_state1_ref = paddle_optimizer_state(popt, pm, kind, linear)
        # -- gaps ----------------------------------------------------------------------------------------------
        rec["update"].append(update_gaps(before, after_t, after_p, compared))
        rec["update_ref_grads"].append(update_gaps(before, after_t, after_p_ref, names))
        st_t, st_p, st_pr = (state_tensors(s) for s in (t_state1, p_state1, p_state1_ref))
        st_names = sorted(k for k in st_t if k.split(":")[0] not in set(noise_params))
        rec["state"].append(state_gaps(st_t, st_p, st_names))
        rec["state_ref_grads"].append(state_gaps(st_t, st_pr, sorted(st_t)))
        if bn_names:
            expect = bn_expected_paddle(before, after_t, counts, momenta)
            rec["bn_mean"].append(update_gaps(before, expect, after_p, [f"{b}.running_mean" for b in bn_names]))
            rec["bn_var"].append(update_gaps(before, expect, after_p, [f"{b}.running_var" for b in bn_names]))
        gmax_t = max(float(np.abs(g).max()) for g in t_grads.values())
        gmax_p = max(float(np.abs(g).max()) for g in p_grads.values())
        rec["noise_grad_t"].append(max((float(np.abs(t_grads[n]).max()) for n in noise), default=0.0) / gmax_t)
        rec["noise_grad_p"].append(max((float(np.abs(p_grads[n]).max()) for n in noise), default=0.0) / gmax_p)
    out = {k: np.array(v) for k, v in rec.items()}
    out.update(names=names, compared=compared, noise=noise, state_names=st_names, state_names_all=sorted(st_t),
               bn_names=bn_names, max_norm=max_norm)
    return out


def _load_torch_state(tm, pm, state):
    """Paddle model := the torch state dict ``state`` (numpy), through convert/ (strict, in place)."""
    import torch

    from convert.api import load_paddle_strict
    from convert.rules import torch_to_paddle
    sd, _ = torch_to_paddle({k: torch.from_numpy(v) for k, v in state.items()}, tm, pm)
    load_paddle_strict(pm, sd)


def batchnorm_eval(*models):
    """Put every BatchNorm of the given (torch or Paddle) models on its running statistics, the rest unchanged.

    The fp32 per-step comparisons run so (porting.md §7.5): with batch statistics over the 4x4 / 8x8 maps of a
    ResNet's last stages at the parity sizes, the reference's own fp32 gradients are off by up to ~1e-1 of a
    tensor's largest gradient (known divergence D11), and with running statistics by ~4e-3. Train-mode BatchNorm
    is compared per step in float64 and in the forward stage."""
    import paddle
    import torch
    for m in models:
        for layer in (m.modules() if isinstance(m, torch.nn.Module) else m.sublayers()):
            if isinstance(layer, (torch.nn.modules.batchnorm._BatchNorm, paddle.nn.layer.norm._BatchNormBase)):
                layer.eval()


def step_labels(names, steps):
    """``'step k / name'`` for each element of a ``[steps, len(names)]`` gap matrix."""
    return [f"step {s} / {n}" for s in range(steps) for n in names]


# ------------------------------------------------------------------------------------------------------------------
# Declarations and logging of the per-step keys (one place for every family)
# ------------------------------------------------------------------------------------------------------------------
# key suffix -> (what, fp32 tolerance, float64 tolerance)
STEP_KEYS = {
    "lr": ("LR of the step", 1e-12, 1e-15),
    "loss": ("loss from the reference's state (relative)", 1e-6, 1e-12),
    "grad_norm": ("global gradient norm before clipping, same state (relative)", 1e-4, 1e-10),
    "update": ("parameter update with Paddle's own gradients: gap / the tensor's largest update", 1e-3, 1e-9),
    "update_ref_grads": ("parameter update with the reference's gradients injected (optimizer, clip, schedule "
                         "alone)", 1e-4, 1e-12),
    "optimizer_state": ("optimizer state after the step (velocity / moments), own gradients", 1e-3, 1e-9),
    "optimizer_state_ref_grads": ("optimizer state after the step, reference gradients", 1e-4, 1e-12),
    # a settled running statistic moves by ~1e-6 of itself per step, so the rounding of the batch statistic
    # (fp32: ~1e-7 of it; float64: ~1e-14) is ~1e-1 / ~1e-8 of the update at worst
    "bn_running_mean": ("BatchNorm running-mean update", 1e-3, 1e-8),
    "bn_running_var_d1": ("BatchNorm running-variance update (D1: Paddle's biased variance, corrected)", 1e-3,
                          1e-8),
    "zero_grad_params_gradient": ("gradient of the parameters whose exact gradient is 0 (D13), largest |g| / the "
                                  "model's largest |g|, both frameworks", 1e-5, 1e-12),
}
_RELATIVE = {"loss", "grad_norm"}
# the suffixes every step comparison writes; BatchNorm keys only where BN runs in train mode, the zero-gradient key
# only where such a BN follows a biased convolution (:func:`log_step_records`)
CORE_STEP_KEYS = ("lr", "loss", "grad_norm", "update", "update_ref_grads", "optimizer_state",
                  "optimizer_state_ref_grads")
BN_STEP_KEYS = CORE_STEP_KEYS + ("bn_running_mean", "bn_running_var_d1")


def step_checks(prefix, fp64, known=None, tol=None, models=(), keys=None):
    """The :class:`~align.harness.Check` declarations of the keys :func:`log_step_records` writes under ``prefix``.
    ``known`` / ``tol``: per key suffix, a known-divergence id / a tolerance replacing the default of
    :data:`STEP_KEYS`; ``models``: restrict to these models; ``keys``: only these suffixes (declarations for some
    models placed before the general ones)."""
    from .harness import Check, Tol
    known, tol = known or {}, tol or {}
    out = []
    for suffix, (what, t32, t64) in STEP_KEYS.items():
        if keys is not None and suffix not in keys:
            continue
        t = tol.get(suffix)
        if t is None:
            v = t64 if fp64 else t32
            t = Tol(rtol=v) if suffix in _RELATIVE else Tol(atol=v)
        out.append(Check("backward", f"{prefix}_{suffix}", t, ("float64: " if fp64 else "") + what,
                         known=known.get(suffix), models=tuple(models)))
    return out


def log_step_records(log, r, prefix):
    """Add the per-step keys of a :func:`step_pair` result ``r`` to ``log`` under ``prefix``."""
    steps = len(r["lr_t"])
    log.add(f"{prefix}_lr", r["lr_t"], r["lr_p"])
    log.add(f"{prefix}_loss", r["loss_t"], r["loss_p"])
    log.add(f"{prefix}_grad_norm", r["grad_norm_t"], r["grad_norm_p"])
    log.add_gap(f"{prefix}_update", r["update"], step_labels(r["compared"], steps))
    log.add_gap(f"{prefix}_update_ref_grads", r["update_ref_grads"], step_labels(r["names"], steps))
    log.add_gap(f"{prefix}_optimizer_state", r["state"], step_labels(r["state_names"], steps))
    log.add_gap(f"{prefix}_optimizer_state_ref_grads", r["state_ref_grads"],
                step_labels(r["state_names_all"], steps))
    if r["bn_names"]:
        log.add_gap(f"{prefix}_bn_running_mean", r["bn_mean"], step_labels(r["bn_names"], steps))
        log.add_gap(f"{prefix}_bn_running_var_d1", r["bn_var"], step_labels(r["bn_names"], steps))
    if r["noise"] and r["bn_names"]:     # zero gradients come from train-mode BatchNorm
        log.add_gap(f"{prefix}_zero_grad_params_gradient", np.maximum(r["noise_grad_t"], r["noise_grad_p"]),
                    [f"step {s}" for s in range(steps)])
    clipped = "" if r["max_norm"] is None else \
        f"; clip at {r['max_norm']} active in {int((r['grad_norm_t'] > r['max_norm']).sum())}/{steps} steps"
    log.notes.append(f"{prefix}: largest update gap per step (own gradients) "
                     f"{' '.join(f'{v:.1e}' for v in r['update'].max(1))}; with the reference's gradients "
                     f"{' '.join(f'{v:.1e}' for v in r['update_ref_grads'].max(1))}{clipped}")


class _BNGaps:
    names, mean, var = (), np.zeros(0), np.zeros(0)


class bn_forward_gaps:
    """Context manager around one train-mode forward of each framework (torch first): on exit, ``.mean`` / ``.var``
    hold per BatchNorm the gap of Paddle's running-statistic update to the reference's (D1-corrected, see
    :func:`bn_expected_paddle`) relative to the update's largest element, ``.names`` the layers."""

    def __init__(self, tm, pm):
        self.tm, self.pm = tm, pm

    def __enter__(self):
        self.before = {k: v.detach().numpy().copy() for k, v in self.tm.state_dict().items()}
        self.counts, self.handles = _bn_counts(self.tm)
        self.bns = _training_bns(self.tm)
        self.result = _BNGaps()
        return self.result

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        if exc[0] is not None:
            return False
        after_t = {k: v.detach().numpy() for k, v in self.tm.state_dict().items()}
        after_p = _paddle_params_as_torch(self.pm, self.tm)
        momenta = {n: self.tm.get_submodule(n).momentum for n in self.bns}
        expect = bn_expected_paddle(self.before, after_t, self.counts, momenta)
        self.result.names = list(self.bns)
        self.result.mean = update_gaps(self.before, expect, after_p, [f"{b}.running_mean" for b in self.bns])
        self.result.var = update_gaps(self.before, expect, after_p, [f"{b}.running_var" for b in self.bns])
        return False
