"""FactSeg parity recipe (factseg.md §11; tolerances from the FactSeg issue, fp32 CPU).

Inputs: seeded ``2x3xSxS`` images (S = 128, ``--full`` 896) and labels ``randint(0, 16)`` with an ignored band of
255. **Weights:** the torch reference from its seeded random init, conditioned (align/weights.py: random affine
norms, unit-gain classifiers, ResNet residual branches ending in a small BatchNorm gain, calibrated running
statistics), then moved to Paddle through ``convert/``. From the plain random init the reference amplifies fp32
rounding through its train-mode BatchNorms (torch fp32 vs torch fp64: 6.2e-5 on the train-mode logits), so a 1e-5
check would measure the random network, not the port.

Stages:

* forward: encoder features, fg / bi logits and CP probabilities in eval mode; train-mode logits and the
  BatchNorm running statistics after that forward (torch unbiased vs Paddle biased variance, known divergence D1,
  corrected in the comparison); the train-mode logits again in float64 (bilinear weights: D8);
* metric: IoU per class, mIoU, mIoU without background under each NaN policy, an absent class, the model's own
  predictions: bit-identical;
* loss: JointLoss (CP negative log-likelihood + small-object mining) on fixed logits and on the model output, and
  its gradients w.r.t. the logits relative to their largest element;
* backward: the real recipe (Momentum 0.9, wd 1e-4, global-norm clip 35, poly to 0 over the run):

  - ``probe_*``: a small well-conditioned network (align/probe.py), the clip active at every step: a free run and
    the per-step comparison;
  - ``step_*`` / ``step64_*``: the per-step comparison of align/training.py on the full model from the
    conditioned weights and optimizer state after :data:`SETTLE_STEPS` reference steps (a fine-tuning state),
    fp32 with BatchNorm on its running statistics (with batch statistics over 4x4 maps the reference's own fp32
    gradients are off by up to 1e-1 of a tensor's max, D11) and float64 fully in train mode. Gradient norms are
    ~1-10 there, so the clip at 35 is idle: the probe checks it;
  - ``train_*``: a free 10-step run of both frameworks from the same settled weights and optimizer state. Small-object mining keeps the 10 % largest pixel losses; a rounding-level
    change can swap a pixel at that boundary, after which the trajectories differ by a small jump (known
    divergence D4; with mining off the same run agrees to 2e-7).
"""
import numpy as np

from ..harness import Check, Tol, near_ties
from ..training import BN_STEP_KEYS, CORE_STEP_KEYS, step_checks
from .base import ParityCase

PROB = Tol(atol=1e-5, mean_atol=1e-6, argmax_axis=1)     # eval CP probabilities
LOGIT = Tol(atol=1e-5)                                   # train-mode logits
FEAT = Tol(rtol=1e-5, rel_to_max=True)                   # features / eval logits (porting.md §7.4)
FP64 = Tol(atol=1e-10)                                   # same math in float64
LOSS = Tol(rtol=1e-6)
LOGIT_GRAD = Tol(rtol=1e-5, rel_to_max=True)             # d loss / d logits, relative to their largest element
EXACT = Tol(exact=True)
EXACT_NAN = Tol(exact=True, allow_nan=True)
STEP_LOSS = Tol(rtol=1e-5)
LR = Tol(atol=1e-12)
PARAM = Tol(atol=1e-5)                                   # porting.md §7.4: parameters after k steps
BN_UPDATE = Tol(atol=1e-4)                               # running-statistic update gap / its largest element

SETTLE_STEPS = 20

RECIPE = {  # configs/factseg/isaid.yaml, with the schedule compressed to the parity run's length
    "optimizer": {"type": "Momentum", "lr": 0.007, "momentum": 0.9, "weight_decay": 1e-4, "grad_clip": 35.0},
    "lr_scheduler": {"type": "poly", "power": 0.9, "end_lr": 0.0},
    "loss": {"type": "JointLoss", "ratio": 0.1, "ignore_index": 255},
}

CHECKS = [
    # forward
    Check("forward", "eval_c[2-5]", FEAT, "encoder features C2..C5 (eval)"),
    Check("forward", "eval_*_logits", FEAT, "fg / bi logits (eval)"),
    Check("forward", "eval_cp_prob", PROB, "CP probabilities, the eval output"),
    Check("forward", "train_*_logits", LOGIT, "fg / bi logits (train mode, batch statistics)"),
    Check("forward", "train_bn_running_mean", BN_UPDATE, "BatchNorm running-mean update of that forward"),
    Check("forward", "train_bn_running_var_d1", BN_UPDATE,
          "BatchNorm running-variance update (D1: Paddle's biased variance, corrected)"),
    Check("forward", "train_*_logits_fp64", FP64, "train-mode logits in float64", known="D8"),
    # metric
    Check("metric", "absent_class_nan_*", EXACT_NAN, "an absent class, NaN policy 'nan'"),
    Check("metric", "absent_class_*_iou", EXACT_NAN, "an absent class: per-class IoU (NaN)"),
    Check("metric", "absent_class_*", EXACT, "an absent class: mean IoU"),
    Check("metric", "*", EXACT, "IoU per class / mIoU / mIoU-fg under each NaN policy; model predictions"),
    # loss
    Check("loss", "joint_loss_*", LOSS, "JointLoss (CP NLL + SOM 0.1) on fixed logits / the model output"),
    Check("loss", "grad_*_logits", LOGIT_GRAD, "d loss / d fg and bi logits"),
    # backward
    Check("backward", "probe_loss_per_step", STEP_LOSS, "probe network, free 10-step run: loss"),
    Check("backward", "probe_lr_per_step", LR, "probe: LR per step"),
    Check("backward", "probe_grad_norm_before_clip", Tol(rtol=1e-5), "probe: gradient norm before clipping"),
    Check("backward", "probe_params_after_steps", PARAM, "probe: parameters after the run"),
    Check("backward", "train_lr_per_step", LR, "full model, free run: LR per step"),
    Check("backward", "train_loss_per_step", STEP_LOSS, "full model, free run from settled weights: loss",
          known="D4"),
] + step_checks("probe_step", fp64=False) \
  + step_checks("step", fp64=False, known=dict.fromkeys(("update", "optimizer_state"), "D11"), keys=CORE_STEP_KEYS) \
  + step_checks("step64", fp64=True, known=dict.fromkeys(
      ("loss", "grad_norm", "update", "optimizer_state", "bn_running_mean", "bn_running_var_d1"), "D8"),
      keys=BN_STEP_KEYS)


class FactSegCase(ParityCase):
    family = "factseg"
    default_models = ("factseg",)
    num_classes = 16
    CHECKS = CHECKS

    def __init__(self, model_name, size=None, **kw):
        super().__init__(model_name, **kw)
        self.size = size or (896 if self.full else 128)
        rs = np.random.RandomState(self.seed)
        self.x = rs.randn(2, 3, self.size, self.size).astype("float32")
        y = rs.randint(0, self.num_classes, (2, self.size, self.size)).astype("int64")
        y[:, self.size // 4: self.size // 4 + 8] = 255          # an ignore band
        self.y = y
        self._settled = None

    # -- models ---------------------------------------------------------------------------------------------------
    def condition(self, tm):
        from align.weights import condition_weights
        return condition_weights(tm, self.seed + 1, min(self.size, 128), classifiers=(tm.fg_cls, tm.bi_cls))

    def build_pair(self, dtype="float32", conditioned=True, settled=False, **overrides):
        """Torch reference (seeded init, conditioned unless ``conditioned=False``; ``settled``: after
        :data:`SETTLE_STEPS` recipe steps) and its Paddle conversion, in eval mode."""
        state = self.settled_state()[0] if settled else None
        return super().build_pair(dtype, prepare=self.condition if conditioned else None, state=state, **overrides)

    def settled_state(self):
        """The conditioned reference after :data:`SETTLE_STEPS` recipe steps (torch fp32, train mode, the parity
        batch): ``(state_dict, losses, optimizer_state)``, computed once per case."""
        if self._settled is None:
            self._settled = self.settle(self.condition, RECIPE, self.x, self.y, SETTLE_STEPS)
        return self._settled

    # -- benchmark hooks --------------------------------------------------------------------------------------------
    def bench_batch(self, batch):
        rs = np.random.RandomState(self.seed)
        x = rs.randn(batch, 3, self.size, self.size).astype("float32")
        y = rs.randint(0, self.num_classes, (batch, self.size, self.size)).astype("int64")
        return x, y

    def train_step_fns(self, tm, pm, x, y):
        from align.training import step_fns
        tm.train(), pm.train()
        return step_fns(tm, pm, RECIPE, x, y, 10 ** 6)

    # -- stages ---------------------------------------------------------------------------------------------------
    def forward(self, log):
        import paddle
        import torch

        tm, pm = self.build_pair()
        tx, px = self.to_torch(self.x), self.to_paddle(self.x)
        with torch.no_grad():
            tfeats = tm.resencoder(tx)
            tfg, tbi = tm.forward_logits(tx)
            tprob = tm(tx)
        with paddle.no_grad():
            pfeats = pm.resencoder(px)
            pfg, pbi = pm.forward_logits(px)
            pprob = pm(px)
        for i, (a, b) in enumerate(zip(tfeats, pfeats)):
            log.add(f"eval_c{i + 2}", a, b)
        log.add("eval_fg_logits", tfg, pfg)
        log.add("eval_bi_logits", tbi, pbi)
        log.add("eval_cp_prob", tprob, pprob)
        # the same comparison in float64 too: the port's arithmetic without fp32 rounding
        self.log_train_forward(log, (tm, pm), self.build_pair(dtype="float64"), tx, px, ("fg_logits", "bi_logits"))

    def metric(self, log):
        from paddle_rs.metrics.segmentation import SegMetric as PMetric
        from torch_ref.metrics.segmentation import SegMetric as TMetric
        rs = np.random.RandomState(self.seed + 1)
        # predictions that agree with the labels on ~half of the pixels, so IoUs are far from 0 and 1
        pred = np.where(rs.rand(*self.y.shape) < 0.5, np.where(self.y == 255, 0, self.y),
                        rs.randint(0, self.num_classes, self.y.shape))
        for policy in ("nan", "zero", "nanmean"):
            t, p = TMetric(self.num_classes, 255, policy), PMetric(self.num_classes, 255, policy)
            t.update(pred, self.y), p.update(pred, self.y)
            rt, rp = t.compute(), p.compute()
            for k in ("iou", "miou", "miou_fg"):
                log.add(f"{policy}_{k}", rt[k], rp[k])
        # a class absent from labels and predictions: per-class NaN, mean per policy
        y2, pred2 = self.y.copy(), pred.copy()
        y2[y2 == 7], pred2[pred2 == 7] = 0, 0
        for policy in ("nan", "zero", "nanmean"):
            t, p = TMetric(self.num_classes, 255, policy), PMetric(self.num_classes, 255, policy)
            t.update(pred2, y2), p.update(pred2, y2)
            rt, rp = t.compute(), p.compute()
            log.add(f"absent_class_{policy}_iou", rt["iou"], rp["iou"])
            log.add(f"absent_class_{policy}_miou", rt["miou"], rp["miou"])
        # the metric on each framework's own model predictions (eval forward)
        import paddle
        import torch
        # (pixels where the reference's two best probabilities lie within the tolerance are left out: either class
        # may win there by rounding, align/harness.py near_ties)
        tm, pm = self.build_pair()
        with torch.no_grad():
            tprob = tm(self.to_torch(self.x)).numpy()
        with paddle.no_grad():
            ppred = pm(self.to_paddle(self.x)).argmax(1).numpy()
        tpred, y = tprob.argmax(1), self.y.copy()
        near = near_ties(tprob, PROB)
        y[near] = 255
        t, p = TMetric(self.num_classes, 255, "nan"), PMetric(self.num_classes, 255, "nan")
        t.update(tpred, y), p.update(ppred, y)
        log.notes.append(f"model predictions: {int(near.sum())} near-tie pixel(s) of {near.size} left out")
        rt, rp = t.compute(), p.compute()
        log.add("model_pred_iou", rt["iou"], rp["iou"])
        log.add("model_pred_miou", rt["miou"], rp["miou"])

    def loss(self, log):
        import paddle
        import torch

        from paddle_rs.losses import build_loss as p_build
        from torch_ref.losses import build_loss as t_build
        tl, pl = t_build(RECIPE["loss"]), p_build(RECIPE["loss"])
        rs = np.random.RandomState(self.seed + 2)
        fg = (rs.randn(2, self.num_classes, self.size, self.size) * 3).astype("float32")
        bi = (rs.randn(2, 1, self.size, self.size) * 3).astype("float32")
        tfg, tbi = torch.tensor(fg, requires_grad=True), torch.tensor(bi, requires_grad=True)
        pfg = paddle.to_tensor(fg, stop_gradient=False)
        pbi = paddle.to_tensor(bi, stop_gradient=False)
        lt, lp = tl((tfg, tbi), self.to_torch(self.y)), pl((pfg, pbi), self.to_paddle(self.y))
        lt.backward(), lp.backward()
        log.add("joint_loss_fixed_logits", lt, lp)
        log.add("grad_fg_logits", tfg.grad, pfg.grad)
        log.add("grad_bi_logits", tbi.grad, pbi.grad)
        # on the model output: both losses see the reference model's train-mode logits
        tm, _ = self.build_pair()
        tm.train()
        with torch.no_grad():
            ofg, obi = tm(self.to_torch(self.x))
        lt = tl((ofg, obi), self.to_torch(self.y))
        lp = pl((self.to_paddle(ofg.numpy()), self.to_paddle(obi.numpy())), self.to_paddle(self.y))
        log.add("joint_loss_model_output", lt, lp)

    def backward(self, log):
        """The real recipe (Momentum 0.9, wd 1e-4, global-norm clip 35, poly LR to 0 over the run), train mode, on
        the parity batch (see the module docstring)."""
        from align.probe import run_probe, run_probe_steps
        from align.training import batchnorm_eval, clipped_steps, log_step_records, step_pair, train_pair
        probe_recipe = dict(RECIPE, optimizer=dict(RECIPE["optimizer"], grad_clip=0.5))   # so the clip fires
        px, py = self.x[:, :, :32, :32], self.y[:, :32, :32]
        r = run_probe(probe_recipe, px, py, heads=(self.num_classes, 1), steps=self.steps, seed=self.seed)
        t, p = r["t"], r["p"]
        log.add("probe_loss_per_step", t["loss"], p["loss"])
        log.add("probe_lr_per_step", t["lr"], p["lr"])
        log.add("probe_grad_norm_before_clip", t["grad_norm"], p["grad_norm"])
        log.add("probe_params_after_steps", r["t_params"], r["p_params"])
        log.notes.append(f"probe: clipping (max norm {r['max_norm']}) active in "
                         f"{clipped_steps(t, r['max_norm'])}/{self.steps} steps")
        log_step_records(log, run_probe_steps(probe_recipe, px, py, heads=(self.num_classes, 1), steps=self.steps,
                                              seed=self.seed), "probe_step")

        # per-step comparison on the full model from the settled weights (and optimizer state): fp32 with BatchNorm
        # on its running statistics (batchnorm_eval), float64 fully in train mode
        optimizer_state = self.settled_state()[2]
        for dtype, prefix in (("float32", "step"), ("float64", "step64")):
            tm, pm = self.build_pair(dtype=dtype, settled=True)
            tm.train(), pm.train()
            if dtype == "float32":
                batchnorm_eval(tm, pm)
            rs = step_pair(tm, pm, RECIPE, self.x, self.y, self.steps, optimizer_state=optimizer_state)
            log_step_records(log, rs, prefix)
            t64 = rs["loss_t"]            # finally: the float64 reference's own free run from the settled weights
            del tm, pm

        # free run from the settled weights
        tm, pm = self.build_pair(settled=True)
        tm.train(), pm.train()
        r = train_pair(tm, pm, RECIPE, self.x, self.y, self.steps, optimizer_state=optimizer_state)
        t, p = r["t"], r["p"]
        log.add("train_lr_per_step", t["lr"], p["lr"])
        log.add("train_loss_per_step", t["loss"], p["loss"])
        gap_ref = float(np.max(np.abs(t["loss"] - t64) / np.abs(t64)))
        gap_port = float(np.max(np.abs(p["loss"] - t["loss"]) / np.abs(t["loss"])))
        drop = float(abs(t["loss"][0] - t["loss"][-1]) / abs(t["loss"][0]))
        settle = self.settled_state()[1]
        log.notes.append(f"train: settled start (loss {settle[0]:.4f} -> {settle[-1]:.4f} over {SETTLE_STEPS} "
                         f"steps); max relative loss gap over {self.steps} steps: paddle fp32 vs torch fp32 "
                         f"{gap_port:.2e}; torch fp32 vs torch fp64 {gap_ref:.2e}; the loss itself moves by {drop:.2e} relative")


CASE = FactSegCase
