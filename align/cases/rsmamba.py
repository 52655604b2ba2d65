"""RSMamba parity recipe (rsmamba.md; tolerances from the RSMamba issue, fp32 CPU).

Default model ``rsmamba_b``; ``--model rsmamba_l`` / ``rsmamba_h`` on request. Inputs follow the contract:
``2 x 3 x 224 x 224`` (``--size`` builds the models with that ``img_size`` instead), 21 classes (UC Merced).
Both models come from one seeded torch init, with ``A_log``, ``D``, the biases and the LayerNorms moved away from
their deterministic init (otherwise a converter that forgot them would still pass), copied to Paddle through
``convert/``, and built with ``perm_seed = seed``: the fixed permutation set ``make_perms(layers, L, seed)``,
identical in both frameworks (forward also passes it explicitly).

Stages:

* forward: eval logits (1e-4 abs, argmax), pooled features, the first layer's mixer on the real layer-0 input
  (both frameworks get the reference's pre-normed ``[fwd | rev | shuf]`` tokens; 1e-5 abs), and the Paddle
  model's own fixed permutation set against the injected one;
* metric: top-1 and per-class / macro P/R/F1 (mmpretrain ``SingleLabelMetric``) from class ids and from scores,
  with a class absent from labels and predictions, and on each framework's model predictions: bit-identical;
* loss: ``LabelSmoothLoss(0.1, 'original')`` with hard labels, soft Mixup and CutMix targets (1e-6 relative) and
  its gradient, the hard case also against torch's built-in ``label_smoothing=0.1``; one loss + backward through
  the full model with a CutMix batch: every parameter gradient divided by the reference tensor's max |g| (1e-4;
  the gate weights separately: they are a 150k-term sum then a softmax cancellation, see ``gated_sum`` in
  paddle_rs/models/backbones/mamba.py); ``--full`` adds the torch fp64 gradients (the reference's
  own fp32 noise) to the notes;
* backward: the AdamW recipe (lr 5e-4, wd 0.05 on every parameter, linear warm-up from 1e-3 then cosine to 1e-5,
  compressed to the run) with Mixup / CutMix parameters injected identically per step (alternating, both
  pairings), from the weights and optimizer state after :data:`SETTLE_STEPS` reference steps: the per-step
  comparison of align/training.py (fp32 and float64) and a free run (loss and LR per step). The reference's own
  fp32-vs-fp64 gap is measured in the same run.

Hooks for tools/benchmark.py: ``bench_batch``, ``train_step_fns`` (one real step: CutMix, forward, label
smoothing, backward, AdamW, schedule), ``scan_scaling`` (the selective scan alone at L = 196 / 784 / 3136).
"""
import time

import numpy as np

from ..harness import Check, Tol
from ..training import CORE_STEP_KEYS, step_checks
from .base import ParityCase

LOGIT = Tol(atol=1e-4, argmax_axis=1)          # eval logits (issue: 1e-4 abs)
MIXER = Tol(atol=1e-5)                         # first layer's mixer output (issue: 1e-5)
FEAT = Tol(rtol=1e-5, rel_to_max=True)         # pooled features
LOSS = Tol(rtol=1e-6)
LOGIT_GRAD = Tol(rtol=1e-5, rel_to_max=True)   # d loss / d logits, relative to their largest element
GRAD_REL = Tol(atol=1e-4)                      # parameter gradients / max|ref| per tensor (porting.md §7.4)
EXACT = Tol(exact=True)
STEP_LOSS = Tol(rtol=1e-5)
LR = Tol(atol=1e-12)

CHECKS = [
    Check("forward", "eval_logits*", LOGIT, "eval logits (injected / the model's own fixed permutations)"),
    Check("forward", "pooled_features", FEAT, "pooled features"),
    Check("forward", "mixer0_output", MIXER, "first layer's mixer on the real [fwd | rev | shuf] input"),
    Check("metric", "*", EXACT, "top-1, per-class and macro P / R / F1, confusion matrix (ids, scores, absent "
          "class, model predictions)"),
    Check("loss", "*_soft_targets", EXACT, "Mixup / CutMix soft targets"),
    Check("loss", "grad_logits_*", LOGIT_GRAD, "d loss / d logits"),
    Check("loss", "model_*_grads_rel_per_tensor", GRAD_REL, "full model on a CutMix batch: parameter gradients / "
          "the reference tensor's max (gate layers apart)"),
    Check("loss", "*", LOSS, "LabelSmoothLoss 0.1 with hard / Mixup / CutMix targets, vs torch's label_smoothing, "
          "the full model's loss"),
    Check("backward", "train_loss_per_step", STEP_LOSS, "free run: loss per step"),
    Check("backward", "train_lr_per_step", LR, "free run: LR per step"),
] + step_checks("step", fp64=False, keys=CORE_STEP_KEYS) \
  + step_checks("step64", fp64=True, known=dict.fromkeys(("loss", "grad_norm", "update", "optimizer_state"), "D15"),
                keys=CORE_STEP_KEYS)

NUM_CLASSES = 21
SETTLE_STEPS = 10
BATCH_AUGMENTS = {"augments": [{"type": "Mixup", "alpha": 0.8}, {"type": "CutMix", "alpha": 1.0}], "probs": None}
RECIPE = {  # configs/rsmamba_b/*.yaml; the 500-epoch schedule compressed to the parity run's length: 4 warm-up
    # iterations (per-iteration LinearLR), then the cosine stepped per "epoch" of 2 iterations (mmengine chain)
    "optimizer": {"type": "AdamW", "lr": 5e-4, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.05},
    "lr_scheduler": {"type": "cosine", "by_epoch": True, "iters_per_epoch": 2, "warmup_iters": 4,
                     "warmup_ratio": 1e-3, "end_lr": 1e-5},
    "loss": {"type": "LabelSmoothLoss", "label_smooth_val": 0.1, "mode": "original"},
}


def _perturb(tm, seed, scale=0.1):
    """Move A_log, D, the biases and the LayerNorms away from their deterministic init (seeded)."""
    import torch
    g = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for name, p in tm.named_parameters():
            if name.split(".")[-1] in ("A_log", "D", "bias") or "norm" in name or ".ln" in name:
                p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


class RSMambaCase(ParityCase):
    family = "rsmamba"
    default_models = ("rsmamba_b",)
    CHECKS = CHECKS
    num_classes = NUM_CLASSES
    batch = 2

    def __init__(self, model_name, size=None, **kw):
        super().__init__(model_name, **kw)
        self.size = size or 224
        rs = np.random.RandomState(self.seed)
        self.x = rs.randn(self.batch, 3, self.size, self.size).astype("float32")
        self.y = np.array([3, 17][:self.batch], dtype=np.int64)
        self._settled = None

    # -- models and inputs ----------------------------------------------------------------------------------
    def model_kwargs(self, **overrides):
        return dict(dict(num_classes=self.num_classes, img_size=self.size, perm_seed=self.seed), **overrides)

    def prepare(self, tm):
        _perturb(tm, self.seed)

    def build_pair(self, dtype="float32", settled=False, **overrides):
        """Seeded, perturbed torch reference and its Paddle conversion (``settled``: after :meth:`settled_state`)."""
        state = self.settled_state()[0] if settled else None
        return super().build_pair(dtype, prepare=self.prepare, state=state, **self.model_kwargs(**overrides))

    def settled_state(self):
        """The reference after :data:`SETTLE_STEPS` recipe steps (their own Mixup / CutMix parameters):
        ``(state_dict, losses, optimizer_state)``, the start of the per-step comparison (a fresh AdamW's first
        update is the gradient's sign, which flips wherever a gradient element is at rounding level)."""
        if self._settled is None:
            t_batch, _ = self.batch_fns(self.mix_params(SETTLE_STEPS, seed=self.seed + 11))
            self._settled = self.settle(self.prepare, RECIPE, self.x, self.y, SETTLE_STEPS, torch_batch=t_batch,
                                        **self.model_kwargs())
        return self._settled

    def perms(self, tm):
        return tm.make_perms(self.seed)

    def mix_params(self, steps, seed=None):
        """Per-step Mixup/CutMix parameters (numpy, seeded): alternating Mixup / CutMix, both pairings."""
        rng = np.random.default_rng(self.seed + 7 if seed is None else seed)
        out = []
        for k in range(steps):
            choice = k % 2
            lam = float(rng.beta(0.8, 0.8) if choice == 0 else rng.beta(1.0, 1.0))
            index = [1, 0] if (k // 2) % 2 == 0 else [0, 1]
            p = {"choice": choice, "lam": lam, "index": index[:self.batch] if self.batch == 2 else
                 rng.permutation(self.batch).tolist()}
            if choice == 1:
                p["center"] = (int(rng.integers(0, self.size)), int(rng.integers(0, self.size)))
            out.append(p)
        return out

    @staticmethod
    def batch_fns(params):
        """Per-step batch hooks for align/training.py: labels -> mixed inputs and soft targets."""
        from paddle_rs.engine.batch_aug import build_batch_augment as p_build
        from torch_ref.engine.batch_aug import build_batch_augment as t_build
        t_aug, p_aug = t_build(BATCH_AUGMENTS), p_build(BATCH_AUGMENTS)

        def t_batch(step, x, y):
            xs, s, _ = t_aug(x, y, num_classes=NUM_CLASSES, **params[step])
            return xs, s

        def p_batch(step, x, y):
            xs, s, _ = p_aug(x, y, num_classes=NUM_CLASSES, **params[step])
            return xs, s
        return t_batch, p_batch

    # -- benchmark hooks -------------------------------------------------------------------------------------
    def bench_batch(self, batch):
        rs = np.random.RandomState(self.seed)
        x = rs.randn(batch, 3, self.size, self.size).astype("float32")
        y = rs.randint(0, self.num_classes, (batch,)).astype("int64")
        return x, y

    def train_step_fns(self, tm, pm, x, y):
        """One recipe step with a CutMix batch (injected parameters, as in backward)."""
        from align.training import step_fns
        tm.train(), pm.train()
        params = [{"choice": 1, "lam": 0.6, "index": list(range(len(x)))[::-1], "center": (100, 120)}]
        t_batch, p_batch = self.batch_fns(params)
        return step_fns(tm, pm, RECIPE, x, y, 10 ** 6, torch_batch=t_batch, paddle_batch=p_batch)

    def scan_scaling(self, lengths=(196, 784, 3136), repeat=3, timeit=None):
        """The selective scan of one ``b`` layer for one image (B' = 3 paths, I = 384, N = 16) at each length,
        forward and forward + backward, torch vs Paddle (the production ``selective_scan_blc`` entry points with
        delta_bias, softplus, D and the z gate). Returns a list of row dicts (seconds, medians)."""
        import paddle
        import torch

        from paddle_rs.ops import selective_scan as pscan
        from torch_ref.ops import selective_scan as tscan
        if timeit is None:
            def timeit(fn, n):
                fn()
                ts = []
                for _ in range(n):
                    t0 = time.perf_counter()
                    fn()
                    ts.append(time.perf_counter() - t0)
                return float(np.median(ts))
        b, d, n = 3, 384, 16
        rows = []
        for length in lengths:
            rng = np.random.default_rng(length)
            arrs = dict(u=rng.standard_normal((b, length, d)), delta=rng.standard_normal((b, length, d)) - 1.0,
                        A=-np.exp(rng.standard_normal((d, n)) * 0.5), B=rng.standard_normal((b, length, n)),
                        C=rng.standard_normal((b, length, n)), D=rng.standard_normal(d),
                        z=rng.standard_normal((b, length, d)), delta_bias=0.5 * rng.standard_normal(d))
            arrs = {k: v.astype("float32") for k, v in arrs.items()}
            gout = rng.standard_normal((b, length, d)).astype("float32")
            tt = {k: torch.tensor(v, requires_grad=True) for k, v in arrs.items()}
            pt = {k: paddle.to_tensor(v, stop_gradient=False) for k, v in arrs.items()}
            tg, pg = torch.from_numpy(gout), paddle.to_tensor(gout)

            def t_fwd():
                with torch.no_grad():
                    tscan.selective_scan_blc(**tt, delta_softplus=True)

            def p_fwd():
                with paddle.no_grad():
                    pscan.selective_scan_blc(**pt, delta_softplus=True).numpy()

            def t_fb():
                y = tscan.selective_scan_blc(**tt, delta_softplus=True)
                torch.autograd.grad(y, list(tt.values()), tg)

            def p_fb():
                y = pscan.selective_scan_blc(**pt, delta_softplus=True)
                [g.numpy() for g in paddle.grad([y], list(pt.values()), [pg])]

            row = {"L": length, "torch_fwd_s": timeit(t_fwd, repeat), "paddle_fwd_s": timeit(p_fwd, repeat),
                   "torch_fwd_bwd_s": timeit(t_fb, repeat), "paddle_fwd_bwd_s": timeit(p_fb, repeat)}
            with torch.no_grad():
                yt = tscan.selective_scan_blc(**tt, delta_softplus=True).numpy()
            with paddle.no_grad():
                yp = pscan.selective_scan_blc(**pt, delta_softplus=True).numpy()
            row["max_abs_diff"] = float(np.abs(yt - yp).max())
            row["max_rel_diff"] = row["max_abs_diff"] / float(np.abs(yt).max())
            rows.append(row)
        return rows

    # -- stages -----------------------------------------------------------------------------------------------
    def forward(self, log):
        import paddle
        import torch
        tm, pm = self.build_pair()
        tm.eval(), pm.eval()
        perms = self.perms(tm)
        tx, px = self.to_torch(self.x), self.to_paddle(self.x)
        tperm, pperm = torch.from_numpy(perms), paddle.to_tensor(perms)
        with torch.no_grad():
            tfeat = tm.backbone(tx, tperm)
            tlog = tm.head(tfeat)
            # the first layer's input as the model builds it: tokens + pos, [fwd | rev | shuf], pre_norm
            bb = tm.backbone
            tok = bb.patch_embed(tx)[0] + bb.pos_embed
            p0 = tperm[0]
            h0 = bb.pre_norm(torch.cat([tok, tok.flip(1), tok[:, p0]], 0))
            tmix = bb.layers[0](h0)
        with paddle.no_grad():
            pfeat = pm.backbone(px, pperm)
            plog = pm.head(pfeat)
            pmix = pm.backbone.layers[0](paddle.to_tensor(h0.numpy()))
            pown = pm(px)                                   # the model's own fixed set (perm_seed = seed)
        log.add("eval_logits", tlog, plog)
        log.add("pooled_features", tfeat, pfeat)
        log.add("mixer0_output", tmix, pmix)
        log.add("eval_logits_own_fixed_perms", tlog, pown)
        log.notes.append(f"injected permutations: make_perms({tm.num_layers}, {tm.num_tokens}, seed={self.seed}); "
                         f"input {list(self.x.shape)}")

    def metric(self, log):
        import paddle
        import torch

        from paddle_rs.metrics.classification import ClsMetric as PMetric
        from torch_ref.metrics.classification import ClsMetric as TMetric
        c = self.num_classes
        rs = np.random.RandomState(self.seed + 1)
        n = 10 * c
        y = rs.randint(0, c, n)
        pred = np.where(rs.rand(n) < 0.6, y, rs.randint(0, c, n))
        scores = rs.rand(n, c).astype("float32")
        scores[np.arange(n), pred] += 1.0                       # argmax == pred
        keys = ("top1", "macro_precision", "macro_recall", "macro_f1", "precision", "recall", "f1",
                "confusion_matrix")
        for tag, (p_in, y_in) in {"ids": (pred, y), "scores": (scores, y)}.items():
            t, p = TMetric(c), PMetric(c)
            t.update(torch.from_numpy(p_in), torch.from_numpy(y_in))
            p.update(paddle.to_tensor(p_in), paddle.to_tensor(y_in))
            rt, rp = t.compute(), p.compute()
            for k in keys:
                log.add(f"{tag}_{k}", rt[k], rp[k])
        # a class absent from labels and predictions counts as 0 in the macro means (upstream)
        y2, pred2 = np.where(y == 7, 0, y), np.where(pred == 7, 0, pred)
        t, p = TMetric(c), PMetric(c)
        t.update(pred2, y2), p.update(pred2, y2)
        rt, rp = t.compute(), p.compute()
        for k in ("top1", "macro_precision", "macro_recall", "macro_f1", "f1"):
            log.add(f"absent_class_{k}", rt[k], rp[k])
        # each framework's own model predictions (eval forward, injected permutations)
        tm, pm = self.build_pair()
        tm.eval(), pm.eval()
        perms = self.perms(tm)
        with torch.no_grad():
            tscore = torch.softmax(tm(self.to_torch(self.x), torch.from_numpy(perms)), 1)
        with paddle.no_grad():
            pscore = paddle.nn.functional.softmax(pm(self.to_paddle(self.x), paddle.to_tensor(perms)), 1)
        t, p = TMetric(c), PMetric(c)
        t.update(tscore, torch.from_numpy(self.y)), p.update(pscore, paddle.to_tensor(self.y))
        rt, rp = t.compute(), p.compute()
        for k in ("top1", "macro_f1", "confusion_matrix"):
            log.add(f"model_pred_{k}", rt[k], rp[k])

    def loss(self, log):
        import paddle
        import torch

        from paddle_rs.engine.batch_aug import build_batch_augment as p_aug_build
        from paddle_rs.losses import build_loss as p_build
        from torch_ref.engine.batch_aug import build_batch_augment as t_aug_build
        from torch_ref.losses import build_loss as t_build
        c = self.num_classes
        tl, pl = t_build(RECIPE["loss"]), p_build(RECIPE["loss"])
        rs = np.random.RandomState(self.seed + 2)
        n = 8
        logits = (rs.randn(n, c) * 3).astype("float32")
        y = rs.randint(0, c, n).astype("int64")
        t_aug, p_aug = t_aug_build(BATCH_AUGMENTS), p_aug_build(BATCH_AUGMENTS)
        imgs = rs.randn(n, 3, 16, 16).astype("float32")
        index = rs.permutation(n).tolist()
        targets = {"hard": (torch.from_numpy(y), paddle.to_tensor(y))}
        for name, inj in (("mixup", dict(choice=0, lam=0.37, index=index)),
                          ("cutmix", dict(choice=1, lam=0.58, index=index, center=(5, 11)))):
            _, ts, tp_ = t_aug(torch.from_numpy(imgs), torch.from_numpy(y), num_classes=c, **inj)
            _, ps, pp_ = p_aug(paddle.to_tensor(imgs), paddle.to_tensor(y), num_classes=c, **inj)
            log.add(f"{name}_soft_targets", ts, ps)
            targets[name] = (ts, ps)
        for name, (tt, pt) in targets.items():
            tlog = torch.tensor(logits, requires_grad=True)
            plog = paddle.to_tensor(logits, stop_gradient=False)
            lt, lp = tl(tlog, tt), pl(plog, pt)
            lt.backward(), lp.backward()
            log.add(f"label_smooth_{name}", lt, lp)
            log.add(f"grad_logits_{name}", tlog.grad, plog.grad)
        ref = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y), label_smoothing=0.1)
        lp = pl(paddle.to_tensor(logits), paddle.to_tensor(y))
        log.add("label_smooth_hard_vs_torch_builtin", ref, lp)

        # one loss + backward through the full model on a CutMix batch (train mode, fixed permutations)
        tm, pm = self.build_pair()
        tm.train(), pm.train()
        t_batch, p_batch = self.batch_fns([{"choice": 1, "lam": 0.5, "index": [1, 0], "center": (90, 130)}])
        tx, ts = t_batch(0, self.to_torch(self.x), self.to_torch(self.y))
        px, ps = p_batch(0, self.to_paddle(self.x), self.to_paddle(self.y))
        lt, lp = tl(tm(tx), ts), pl(pm(px), ps)
        lt.backward(), lp.backward()
        log.add("model_loss_cutmix", lt, lp)
        tgrads = {n: q.grad.detach().numpy() for n, q in tm.named_parameters()}
        pgrads = self._paddle_grads(tm, pm)
        gate = lambda n: n.startswith("backbone.gate_layers.")      # noqa: E731
        tg, pg = self._scaled(tgrads, pgrads, tgrads, lambda n: not gate(n))
        log.add("model_param_grads_rel_per_tensor", tg, pg)
        tg, pg = self._scaled(tgrads, pgrads, tgrads, gate)
        log.add("model_gate_grads_rel_per_tensor", tg, pg)
        if self.full:   # the reference against itself: torch fp64 gradients on the same batch (slow on CPU)
            del pm
            tm64, _ = self.build_pair(dtype="float64")
            tm64.train()
            tx64, ts64 = t_batch(0, self.to_torch(self.x).double(), self.to_torch(self.y))
            tl(tm64(tx64), ts64).backward()
            g64 = {n: q.grad.detach().numpy() for n, q in tm64.named_parameters()}
            for sel, tag in ((lambda n: not gate(n), "other tensors"), (gate, "gate_layers")):
                gaps = [float(np.max(np.abs(np.subtract(*self._scaled(a, b, g64, sel)))))
                        for a, b in ((tgrads, g64), (pgrads, g64), (pgrads, tgrads))]
                log.notes.append(f"gradients / max|g64| per tensor, {tag}: torch fp32 vs torch fp64 {gaps[0]:.2e}; "
                                 f"paddle fp32 vs torch fp64 {gaps[1]:.2e}; paddle vs torch fp32 {gaps[2]:.2e}")

    @staticmethod
    def _paddle_grads(tm, pm):
        """Paddle's parameter gradients mapped to torch names and layout through convert/."""
        from convert.rules import paddle_to_torch
        pgrads = {k: (q.grad.numpy() if q.grad is not None else np.zeros(q.shape, "float32"))
                  for k, q in pm.named_parameters()}
        return {k: np.asarray(v) for k, v in paddle_to_torch(pgrads, tm, pm).items()}

    @staticmethod
    def _scaled(a, b, ref, select):
        """Gradients ``a`` and ``b`` of the selected tensors, each divided by ``ref``'s max |g| for that tensor,
        concatenated: an atol on the pair is a per-tensor relative bound."""
        names = [n for n in ref if select(n)]
        scale = {n: max(float(np.abs(ref[n]).max()), 1e-30) for n in names}
        return (np.concatenate([np.asarray(a[n], np.float64).ravel() / scale[n] for n in names]),
                np.concatenate([np.asarray(b[n], np.float64).ravel() / scale[n] for n in names]))

    def backward(self, log):
        """AdamW recipe (per-iteration warm-up, then per-epoch cosine) with Mixup / CutMix injected per step, from
        the weights and optimizer state after :data:`SETTLE_STEPS` reference steps: the per-step comparison
        (``step_*`` fp32, ``step64_*`` float64) and a free run of both frameworks (``train_*``: loss and LR per
        step; the reference's own fp32-vs-fp64 gap in the notes)."""
        from align.training import log_step_records, step_pair, train_pair
        params = self.mix_params(self.steps)
        t_batch, p_batch = self.batch_fns(params)
        optimizer_state = self.settled_state()[2]
        for dtype, prefix in (("float32", "step"), ("float64", "step64")):
            tm, pm = self.build_pair(dtype=dtype, settled=True)
            tm.train(), pm.train()
            rs = step_pair(tm, pm, RECIPE, self.x, self.y, self.steps, torch_batch=t_batch, paddle_batch=p_batch,
                           optimizer_state=optimizer_state)
            log_step_records(log, rs, prefix)
            t64 = rs["loss_t"]            # finally: the float64 reference's own free run from the settled state
            del tm, pm
        tm, pm = self.build_pair(settled=True)
        tm.train(), pm.train()
        r = train_pair(tm, pm, RECIPE, self.x, self.y, self.steps, torch_batch=t_batch, paddle_batch=p_batch,
                       optimizer_state=optimizer_state)
        t, p = r["t"], r["p"]
        log.add("train_loss_per_step", t["loss"], p["loss"])
        log.add("train_lr_per_step", t["lr"], p["lr"])
        kinds = "".join("M" if q["choice"] == 0 else "C" for q in params)
        log.notes.append(f"batch augments per step (M = Mixup, C = CutMix, injected lam/pairing/box): {kinds}")
        gap_ref = float(np.max(np.abs(t["loss"] - t64) / np.abs(t64)))
        gap_port = float(np.max(np.abs(p["loss"] - t["loss"]) / np.abs(t["loss"])))
        gap_p64 = float(np.max(np.abs(p["loss"] - t64) / np.abs(t64)))
        log.notes.append(f"max relative loss gap over {self.steps} steps: paddle fp32 vs torch fp32 {gap_port:.2e}; "
                         f"torch fp32 vs torch fp64 {gap_ref:.2e}; paddle fp32 vs torch fp64 {gap_p64:.2e}")


CASE = RSMambaCase
