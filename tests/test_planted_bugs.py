"""Planted port defects, each caught by the align stage that should catch it, by the key that should catch it.

Each test plants one defect on the Paddle side (or in the converter), runs the relevant align stage at a small size
exactly as ``python align/0N_*.py`` does (align.cli.run_stage), and checks the failing keys: those in ``must``
fail, and nothing outside ``may`` fails (``may`` also holds the keys a defect legitimately reaches downstream, e.g.
the free-run loss after a wrong update). Without the defect the same stages pass (tests/test_align.py,
tests/test_rsmamba_workbench.py, tests/test_upernet_workbench.py).
"""
import numpy as np
import pytest

from align.cli import run_stage

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _failing(tmp_path, stage, model, **kw):
    results, _, _ = run_stage(stage, model, str(tmp_path), **kw)
    assert results, "the stage compared nothing"
    return {r.key for r in results if not r.ok}, {r.key for r in results}


def _check(failing, keys, must, may=()):
    assert set(must) <= failing, f"expected to fail: {sorted(set(must) - failing)}; failing: {sorted(failing)}"
    extra = failing - set(must) - set(may)
    assert not extra, f"unexpected failures: {sorted(extra)}"
    assert set(must) | set(may) <= keys, f"keys not produced: {sorted((set(must) | set(may)) - keys)}"


RSMAMBA_BACKWARD = dict(size=32, steps=2)


def _patch_optimizer(monkeypatch, wrap):
    import paddle_rs.engine.optim as optim
    real = optim.build_optimizer
    monkeypatch.setattr(optim, "build_optimizer", lambda model, o, s, n: wrap(model, o, s, n, real))


def test_optimizer_that_skips_updates(tmp_path, monkeypatch):
    """One parameter in four keeps its value: the update keys fail at every step, with and without the
    reference's gradients; the optimizer state (the moments are still updated) passes."""
    def wrap(model, o, s, n, real):
        opt, sched = real(model, o, s, n)
        frozen = [p for p in model.parameters() if not p.stop_gradient][::4]
        step = opt.step

        def skipping_step():
            keep = [p.numpy().copy() for p in frozen]
            step()
            for p, v in zip(frozen, keep):
                p.set_value(v)
        opt.step = skipping_step
        return opt, sched
    _patch_optimizer(monkeypatch, wrap)
    failing, keys = _failing(tmp_path, "backward", "rsmamba_b", **RSMAMBA_BACKWARD)
    _check(failing, keys, must={"step_update", "step_update_ref_grads", "step64_update", "step64_update_ref_grads"},
           may={"train_loss_per_step"})


def test_weight_decay_applied_twice(tmp_path, monkeypatch):
    """Decoupled decay of 2 x 0.05: visible only in the update (the moments do not see the decay)."""
    _patch_optimizer(monkeypatch, lambda model, o, s, n, real:
                     real(model, dict(o, weight_decay=2 * o["weight_decay"]), s, n))
    failing, keys = _failing(tmp_path, "backward", "rsmamba_b", **RSMAMBA_BACKWARD)
    _check(failing, keys, must={"step_update_ref_grads", "step64_update_ref_grads", "step64_update"},
           may={"step_update", "train_loss_per_step"})


def test_schedule_one_iteration_late(tmp_path, monkeypatch):
    """The scheduler's first step is lost: every later LR is the previous iteration's."""
    def wrap(model, o, s, n, real):
        opt, sched = real(model, o, s, n)
        step, calls = sched.step, []

        def late_step(*a, **k):
            calls.append(1)
            if len(calls) > 1:
                step(*a, **k)
        sched.step = late_step
        return opt, sched
    _patch_optimizer(monkeypatch, wrap)
    failing, keys = _failing(tmp_path, "backward", "rsmamba_b", **RSMAMBA_BACKWARD)
    _check(failing, keys, must={"step_lr", "step64_lr", "train_lr_per_step", "step_update_ref_grads",
                                "step64_update_ref_grads", "step64_update"},
           may={"step_update", "train_loss_per_step"})


def test_linear_weight_not_transposed(tmp_path, monkeypatch):
    """The converter copies square Linear weights without transposing them (a shape check cannot see it): Swin's
    attention projections. Every output downstream of the first block fails, the first feature map already."""
    import convert.rules as rules
    real = rules._module_rules

    def rules_without_square_transposes(tm):
        out = real(tm)
        sd = tm.state_dict()
        return {k: ((v[0], "copy") if v[1] == "transpose" and sd[k].shape[0] == sd[k].shape[1] else v)
                for k, v in out.items()}
    monkeypatch.setattr(rules, "_module_rules", rules_without_square_transposes)
    failing, keys = _failing(tmp_path, "forward", "upernet_swin_t", size=64)
    downstream = {k for k in keys if k != "eval_logits_fp64" and not k.startswith("train_bn")}
    _check(failing, keys, must={"eval_backbone_out0", "eval_logits", "train_decode_logits"},
           may=downstream | {"eval_logits_fp64", "train_bn_running_mean", "train_bn_running_var_d1"})


def test_batchnorm_momentum_not_converted(tmp_path, monkeypatch):
    """Paddle BatchNorms left at torch's momentum value (0.1 instead of 1 - 0.1): the outputs are right (eval uses
    the running statistics as converted, train the batch statistics); only the running-statistic keys fail."""
    import convert.api as api
    real = api.copy_torch_to_paddle

    def copy_and_break(tm, pm):
        report = real(tm, pm)
        import paddle
        for m in pm.sublayers():
            if isinstance(m, paddle.nn.BatchNorm2D):
                m._momentum = 0.1
        return report
    monkeypatch.setattr(api, "copy_torch_to_paddle", copy_and_break)
    failing, keys = _failing(tmp_path, "forward", "upernet_r50", size=64)
    _check(failing, keys, must={"train_bn_running_mean", "train_bn_running_var_d1"})


def test_window_mask_constant_changed(tmp_path, monkeypatch):
    """Swin's shifted-window mask at -10 instead of -100: attention leaks across regions by e^-10 = 4.5e-5. Too
    little to show in the first feature map at 1e-5 of its scale; it grows through the stages, and the deep
    features, the logits and everything after them fail."""
    from paddle_rs.models.backbones import swin
    real = swin.shifted_window_mask
    monkeypatch.setattr(swin, "shifted_window_mask", lambda *a: real(*a) / np.float32(10.0))
    failing, keys = _failing(tmp_path, "forward", "upernet_swin_t", size=64)
    _check(failing, keys, must={"eval_backbone_out3", "eval_logits", "train_decode_logits",
                                "train_decode_logits_fp64"}, may=keys)


def test_label_smoothing_0_11(tmp_path, monkeypatch):
    """LabelSmoothLoss with 0.11 instead of 0.1: every loss value and gradient fails, the Mixup / CutMix targets
    (computed before the loss) pass."""
    from paddle_rs.losses import label_smooth
    real_init = label_smooth.LabelSmoothLoss.__init__

    def init(self, label_smooth_val=0.1, *a, **k):
        real_init(self, 0.11 if label_smooth_val == 0.1 else label_smooth_val, *a, **k)
    monkeypatch.setattr(label_smooth.LabelSmoothLoss, "__init__", init)
    failing, keys = _failing(tmp_path, "loss", "rsmamba_b", size=32)
    losses = {k for k in keys if k.startswith(("label_smooth_", "grad_logits_", "model_"))}
    _check(failing, keys, must={"label_smooth_hard", "label_smooth_mixup", "label_smooth_cutmix",
                                "label_smooth_hard_vs_torch_builtin", "grad_logits_hard", "model_loss_cutmix"},
           may=losses)
