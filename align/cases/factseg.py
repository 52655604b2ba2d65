"""FactSeg parity recipe (factseg.md §11; tolerances from the FactSeg issue, fp32 CPU)."""
import numpy as np

from ..harness import Tol
from .base import ParityCase

PROB = Tol(atol=1e-5, mean_atol=1e-6, argmax_axis=1)     # eval CP probabilities
LOGIT = Tol(atol=1e-5)                                   # train-mode logits
FEAT = Tol(rtol=1e-5, rel_to_max=True)                   # features / eval logits (porting.md §7.4)
FP64 = Tol(atol=1e-10)                                   # same math in float64
LOSS = Tol(rtol=1e-6)
GRAD = Tol(atol=1e-6)
EXACT = Tol(exact=True)
EXACT_NAN = Tol(exact=True, allow_nan=True)
STEP_LOSS = Tol(rtol=1e-5)
LR = Tol(atol=1e-12)
PARAM = Tol(atol=1e-4)

RECIPE = {  # configs/factseg/isaid.yaml, with the schedule compressed to the parity run's length
    "optimizer": {"type": "Momentum", "lr": 0.007, "momentum": 0.9, "weight_decay": 1e-4, "grad_clip": 35.0},
    "lr_scheduler": {"type": "poly", "power": 0.9, "end_lr": 0.0},
    "loss": {"type": "JointLoss", "ratio": 0.1, "ignore_index": 255},
}


class FactSegCase(ParityCase):
    family = "factseg"
    default_models = ("factseg",)
    num_classes = 16

    def __init__(self, model_name, size=None, **kw):
        super().__init__(model_name, **kw)
        self.size = size or (896 if self.full else 128)
        rs = np.random.RandomState(self.seed)
        self.x = rs.randn(2, 3, self.size, self.size).astype("float32")
        y = rs.randint(0, self.num_classes, (2, self.size, self.size)).astype("int64")
        y[:, self.size // 4: self.size // 4 + 8] = 255          # an ignore band
        self.y = y

    def bench_batch(self, batch):
        rs = np.random.RandomState(self.seed)
        x = rs.randn(batch, 3, self.size, self.size).astype("float32")
        y = rs.randint(0, self.num_classes, (batch, self.size, self.size)).astype("int64")
        return x, y

    def train_step_fns(self, tm, pm, x, y):
        from align.training import step_fns
        tm.train(), pm.train()
        return step_fns(tm, pm, RECIPE, x, y, 10 ** 6)

    def forward(self, log):
        import paddle
        import torch
        tm, pm = self.build_pair()
        tm.eval(), pm.eval()
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
            log.add(f"eval_c{i + 2}", a, b, FEAT)
        log.add("eval_fg_logits", tfg, pfg, FEAT)
        log.add("eval_bi_logits", tbi, pbi, FEAT)
        log.add("eval_cp_prob", tprob, pprob, PROB)
        tm.train(), pm.train()
        with torch.no_grad():
            tfg, tbi = tm(tx)
        with paddle.no_grad():
            pfg, pbi = pm(px)
        log.add("train_fg_logits", tfg, pfg, LOGIT, known="D7")
        log.add("train_bi_logits", tbi, pbi, LOGIT, known="D7")
        # The same comparison in float64 shows the train-mode gap above is fp32 rounding, not the port.
        tm64, pm64 = self.build_pair(dtype="float64")
        tm64.train(), pm64.train()
        with torch.no_grad():
            tfg, tbi = tm64(tx.double())
        with paddle.no_grad():
            pfg, pbi = pm64(px.astype("float64"))
        log.add("train_fg_logits_fp64", tfg, pfg, FP64, known="D8")
        log.add("train_bi_logits_fp64", tbi, pbi, FP64, known="D8")

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
                log.add(f"{policy}_{k}", rt[k], rp[k], EXACT)
        # a class absent from labels and predictions: per-class NaN, mean per policy
        y2, pred2 = self.y.copy(), pred.copy()
        y2[y2 == 7], pred2[pred2 == 7] = 0, 0
        for policy in ("nan", "zero", "nanmean"):
            t, p = TMetric(self.num_classes, 255, policy), PMetric(self.num_classes, 255, policy)
            t.update(pred2, y2), p.update(pred2, y2)
            rt, rp = t.compute(), p.compute()
            log.add(f"absent_class_{policy}_iou", rt["iou"], rp["iou"], EXACT_NAN)
            log.add(f"absent_class_{policy}_miou", rt["miou"], rp["miou"], EXACT_NAN if policy == "nan" else EXACT)
        # the metric on each framework's own model predictions (eval forward)
        import paddle
        import torch
        tm, pm = self.build_pair()
        tm.eval(), pm.eval()
        with torch.no_grad():
            tpred = tm(self.to_torch(self.x)).argmax(1).numpy()
        with paddle.no_grad():
            ppred = pm(self.to_paddle(self.x)).argmax(1).numpy()
        t, p = TMetric(self.num_classes, 255, "nan"), PMetric(self.num_classes, 255, "nan")
        t.update(tpred, self.y), p.update(ppred, self.y)
        rt, rp = t.compute(), p.compute()
        log.add("model_pred_iou", rt["iou"], rp["iou"], EXACT)
        log.add("model_pred_miou", rt["miou"], rp["miou"], EXACT)

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
        log.add("joint_loss_fixed_logits", lt, lp, LOSS)
        log.add("grad_fg_logits", tfg.grad, pfg.grad, GRAD)
        log.add("grad_bi_logits", tbi.grad, pbi.grad, GRAD)
        # on the model output: both losses see the reference model's train-mode logits
        tm, _ = self.build_pair()
        tm.train()
        with torch.no_grad():
            ofg, obi = tm(self.to_torch(self.x))
        lt = tl((ofg, obi), self.to_torch(self.y))
        lp = pl((self.to_paddle(ofg.numpy()), self.to_paddle(obi.numpy())), self.to_paddle(self.y))
        log.add("joint_loss_model_output", lt, lp, LOSS)

    def backward(self, log):
        """The real recipe (Momentum 0.9, wd 1e-4, global-norm clip 35, poly LR to 0 over the run) for ``steps``
        steps in train mode on one fixed batch.

        * ``probe_*``: the recipe (optimizer, decay, clipping, schedule, JointLoss+SOM) on a small
          well-conditioned network, at the issue's tolerances, clipping active (align/probe.py);
        * ``train_*``: the full FactSeg from its random init. Step 0 is checked strictly; the later steps
          are chaotic in fp32 (D9), so the reference's own fp32-vs-fp64 gap is measured in the same run.
        """
        from align.probe import run_probe
        from align.training import clipped_steps, train_pair
        probe_recipe = dict(RECIPE, optimizer=dict(RECIPE["optimizer"], grad_clip=0.5))   # so the clip fires
        r = run_probe(probe_recipe, self.x[:, :, :32, :32], self.y[:, :32, :32], heads=(self.num_classes, 1),
                      steps=self.steps, seed=self.seed)
        t, p = r["t"], r["p"]
        log.add("probe_loss_per_step", t["loss"], p["loss"], STEP_LOSS)
        log.add("probe_lr_per_step", t["lr"], p["lr"], LR)
        log.add("probe_grad_norm_before_clip", t["grad_norm"], p["grad_norm"], Tol(rtol=1e-5))
        log.add("probe_params_after_steps", r["t_params"], r["p_params"], PARAM)
        log.notes.append(f"probe: clipping (max norm {r['max_norm']}) active in "
                         f"{clipped_steps(t, r['max_norm'])}/{self.steps} steps")

        tm, pm = self.build_pair()
        tm.train(), pm.train()
        r = train_pair(tm, pm, RECIPE, self.x, self.y, self.steps)
        t, p = r["t"], r["p"]
        log.add("train_loss_step0", t["loss"][:1], p["loss"][:1], STEP_LOSS)
        log.add("train_grad_norm_step0", t["grad_norm"][:1], p["grad_norm"][:1], Tol(rtol=1e-4), known="D7")
        log.add("train_lr_per_step", t["lr"], p["lr"], LR)
        log.add("train_loss_per_step", t["loss"], p["loss"], STEP_LOSS, known="D9")
        log.add("train_grad_norm_before_clip", t["grad_norm"], p["grad_norm"], Tol(rtol=1e-4), known="D9")
        t_params, p_params = self.trainable_params(tm, pm)
        log.add("train_params_after_steps", t_params, p_params, PARAM, known="D9")
        log.notes.append(f"train: clipping (max norm {r['max_norm']}) active in "
                         f"{clipped_steps(t, r['max_norm'])}/{self.steps} steps")
        tm64, _ = self.build_pair(dtype="float64")
        tm64.train()
        t64 = train_pair(tm64, None, RECIPE, self.x, self.y, self.steps, torch_only=True)["t"]
        gap_ref = float(np.max(np.abs(t["loss"] - t64["loss"]) / np.abs(t64["loss"])))
        gap_port = float(np.max(np.abs(p["loss"] - t["loss"]) / np.abs(t["loss"])))
        log.notes.append(f"train: max relative loss gap over {self.steps} steps: paddle fp32 vs torch fp32 "
                         f"{gap_port:.2e}; torch fp32 vs torch fp64 {gap_ref:.2e} (the reference's own noise floor)")


CASE = FactSegCase
