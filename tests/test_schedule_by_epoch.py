"""``lr_scheduler.by_epoch``: RSMamba's per-iteration warm-up followed by a per-epoch cosine (rsmamba.md §7).

The oracle is torch's own schedulers chained the way mmengine runs them (``LinearLR`` stepped every iteration
during the warm-up, then ``CosineAnnealingLR`` with ``T_max`` = the remaining epochs, stepped once per epoch),
independent of the closed form in ``engine/optim.py``; both frameworks' schedules must equal it.
"""

import numpy as np
import pytest
import torch

CFG = {"type": "cosine", "by_epoch": True, "warmup_iters": 6, "warmup_ratio": 1e-3, "end_lr": 1e-5,
       "iters_per_epoch": 3}
BASE = 5e-4
TOTAL = 30            # 2 warm-up epochs + 8 cosine epochs of 3 iterations


def _oracle(cfg, total):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=BASE)
    warm, ipe = cfg["warmup_iters"], cfg["iters_per_epoch"]
    # mmengine LinearLR: total_iters = end - begin - 1, i.e. the factor reaches 1 on the last warm-up iteration
    linear = torch.optim.lr_scheduler.LinearLR(opt, start_factor=cfg["warmup_ratio"], end_factor=1.0,
                                               total_iters=warm - 1)
    lrs = []
    for t in range(warm):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        linear.step()
    for g in opt.param_groups:   # the cosine scheduler begins from the base LR (mmengine: its own base values)
        g["lr"] = BASE
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=(total - warm) // ipe, eta_min=cfg["end_lr"])
    for t in range(warm, total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if (t - warm + 1) % ipe == 0:
            cosine.step()
    return np.array(lrs)


def _torch_lrs(cfg, total):
    from torch_ref.engine.optim import build_scheduler
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=BASE)
    sched = build_scheduler(opt, cfg, BASE, total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return np.array(out)


def _paddle_lrs(cfg, total):
    from paddle_rs.engine.optim import build_scheduler
    sched = build_scheduler(cfg, BASE, total)
    out = []
    for _ in range(total):
        out.append(sched.last_lr)
        sched.step()
    return np.array(out)


def test_by_epoch_matches_the_chained_torch_schedulers():
    ref = _oracle(CFG, TOTAL)
    t, p = _torch_lrs(CFG, TOTAL), _paddle_lrs(CFG, TOTAL)
    np.testing.assert_allclose(t, ref, rtol=1e-12, atol=1e-18)
    np.testing.assert_allclose(p, ref, rtol=1e-12, atol=1e-18)
    assert ref[0] == pytest.approx(BASE * 1e-3) and ref[5] == pytest.approx(BASE) and ref[6] == pytest.approx(BASE)
    after = ref[6:].reshape(-1, 3)           # constant within each epoch, decreasing from epoch to epoch
    assert np.all(after == after[:, :1]) and np.all(np.diff(after[:, 0]) < 0)


def test_by_epoch_one_warmup_iteration_starts_at_the_ratio():
    """mmengine's LinearLR returns start_factor at its first step, also for a 1-iteration warm-up."""
    cfg = dict(CFG, warmup_iters=1)
    lrs = _paddle_lrs(cfg, 4)
    assert lrs[0] == pytest.approx(BASE * 1e-3) and lrs[1] == pytest.approx(BASE)
    np.testing.assert_allclose(_torch_lrs(cfg, 4), lrs, rtol=1e-12)


def test_by_epoch_differs_from_the_per_iteration_cosine():
    """The per-iteration cosine the configs used before is a different schedule (what by_epoch fixes)."""
    per_iter = dict(CFG, by_epoch=False)
    a, b = _paddle_lrs(CFG, TOTAL), _paddle_lrs(per_iter, TOTAL)
    assert np.max(np.abs(a - b) / a) > 1e-2


def test_by_epoch_needs_iters_per_epoch():
    from paddle_rs.engine.optim import schedule_factor
    with pytest.raises(ValueError, match="iters_per_epoch"):
        schedule_factor({k: v for k, v in CFG.items() if k != "iters_per_epoch"}, BASE, 10, TOTAL)


def test_cls_task_sets_iters_per_epoch(tmp_path):
    """ClsTask turns ``warmup_epochs`` into iterations and records the iterations per epoch for by_epoch."""
    from paddle_rs.engine.cls_task import ClsTask
    task = ClsTask.__new__(ClsTask)
    task.cfg = {"train": {"batch_size": 4, "drop_last": True}, "lr_scheduler": dict(type="cosine", by_epoch=True,
                                                                                     warmup_epochs=2)}
    task._epochs_to_iters(42)           # 10 iterations per epoch
    s = task.cfg["lr_scheduler"]
    assert s["iters_per_epoch"] == 10 and s["warmup_iters"] == 20 and "warmup_epochs" not in s
