"""RSMamba on the workbench: loss, metrics, Mixup/CutMix, conversion of an mmengine checkpoint, the cls task,
export and inference (issue #3).

Default suite (fast): the loss against a hand formula (hard and soft targets, both frameworks), the metrics
against a hand-computed confusion matrix, Mixup/CutMix with injected parameters equal across frameworks and
to a numpy replica (and upstream's draw order), the torch2paddle CLI on a realistic fake mmengine checkpoint
of rsmamba_b, 2 training iterations of the cls task on a synthetic dataset (full-depth rsmamba_b at 32 px),
export of the trained model and Paddle Inference against dygraph at two inputs, the parity case at 32 px.
``-m slow``: the 224 px export of rsmamba_b and the TIPC lite chain.
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
from conftest import assert_same_argmax, require
import paddle
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from paddle_rs.engine import batch_aug as pba  # noqa: E402
from paddle_rs.losses import build_loss as p_build_loss  # noqa: E402
from paddle_rs.metrics import classification as pcls  # noqa: E402
from torch_ref.engine import batch_aug as tba  # noqa: E402
from torch_ref.losses import build_loss as t_build_loss  # noqa: E402
from torch_ref.metrics import classification as tcls  # noqa: E402

LS = {"type": "LabelSmoothLoss", "label_smooth_val": 0.1, "mode": "original"}
AUGS = {"augments": [{"type": "Mixup", "alpha": 0.8}, {"type": "CutMix", "alpha": 1.0}], "probs": None}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _log_softmax(z):
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def _hand_loss(logits, target, eps=0.1):
    """mmpretrain LabelSmoothLoss('original'): (onehot-like * (1-eps) + eps/C), soft CE, sum / N (float64)."""
    logits = logits.astype(np.float64)
    n, c = logits.shape
    if target.ndim == 1:
        target = np.eye(c)[target]
    t = target * (1 - eps) + eps / c
    return float(-(t * _log_softmax(logits)).sum() / n), t


# ----------------------------------------------------------------------------------------------------------
# loss
# ----------------------------------------------------------------------------------------------------------
def test_label_smooth_loss_matches_hand_formula_hard_and_soft():
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((5, 7)) * 3).astype("float32")
    y = np.array([0, 6, 3, 3, 1])
    soft = rng.random((5, 7))
    soft = (soft / soft.sum(1, keepdims=True)).astype("float32")          # e.g. Mixup/CutMix scores
    tl, pl = t_build_loss(LS), p_build_loss(LS)
    for target in (y, y.reshape(-1, 1), soft):
        ref, t = _hand_loss(logits, target.reshape(-1) if target.ndim == 2 and target.shape[1] == 1 else target)
        tlog, plog = torch.tensor(logits, requires_grad=True), paddle.to_tensor(logits, stop_gradient=False)
        lt, lp = tl(tlog, torch.from_numpy(target)), pl(plog, paddle.to_tensor(target))
        assert abs(lt.item() - ref) < 1e-6 * ref and abs(float(lp) - ref) < 1e-6 * ref
        lt.backward(), lp.backward()
        p = np.exp(_log_softmax(logits.astype(np.float64)))
        grad = (p - t) / len(logits)                                   # d loss / d logits
        np.testing.assert_allclose(tlog.grad.numpy(), grad, atol=1e-7)
        np.testing.assert_allclose(plog.grad.numpy(), grad, atol=1e-7)
    # hard labels: torch's built-in label smoothing is the same loss
    builtin = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y), label_smoothing=0.1)
    assert abs(builtin.item() - float(pl(paddle.to_tensor(logits), paddle.to_tensor(y)))) < 1e-6


def test_label_smooth_loss_options_and_errors():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((3, 4)).astype("float32")
    y = np.array([1, 0, 3])
    for build, tens in ((t_build_loss, torch.from_numpy), (p_build_loss, paddle.to_tensor)):
        per = build(dict(LS, reduction="none"))(tens(logits), tens(y))
        assert list(per.shape) == [3]
        total = build(dict(LS, reduction="sum", loss_weight=2.0))(tens(logits), tens(y))
        np.testing.assert_allclose(float(total), 2 * np.asarray(per).sum(), rtol=1e-6)
        eps = 0.1 / 1.1                                                   # classy_vision
        ref, _ = _hand_loss(logits, y, eps)
        assert abs(float(build(dict(LS, mode="classy_vision"))(tens(logits), tens(y))) - ref) < 1e-6
        with pytest.raises(ValueError):
            build(dict(LS, num_classes=5))(tens(logits), tens(y))
        with pytest.raises(ValueError):
            build(dict(LS, label_smooth_val=1))
        with pytest.raises(ValueError):
            build(dict(LS, mode="multi_label"))


# ----------------------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------------------
def test_metrics_match_hand_confusion_matrix_bit_identical():
    # 4 classes; class 3 is absent from labels and predictions
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 0])
    pred = np.array([0, 1, 0, 1, 2, 2, 2, 0, 2, 0])
    cm = np.zeros((4, 4), np.int64)
    for a, b in zip(y, pred):
        cm[a, b] += 1
    # hand: TP = [3, 1, 3, 0]; #pred = [4, 2, 4, 0]; #gt = [4, 2, 4, 0]
    p = np.array([3 / 4, 1 / 2, 3 / 4, 0]) * 100
    r = np.array([3 / 4, 1 / 2, 3 / 4, 0]) * 100
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-30), 0)
    scores = np.random.default_rng(2).random((10, 4)).astype("float32")
    scores[np.arange(10), pred] += 1
    results = []
    for mod, tens in ((tcls, torch.from_numpy), (pcls, paddle.to_tensor)):
        for inp in (pred, scores):
            m = mod.ClsMetric(4)
            m.update(tens(inp[:6]), tens(y[:6]))         # accumulated over two batches
            m.update(tens(inp[6:]), tens(y[6:]))
            res = m.compute()
            np.testing.assert_array_equal(res["confusion_matrix"], cm)
            np.testing.assert_allclose(res["precision"], p, rtol=1e-12)
            np.testing.assert_allclose(res["recall"], r, rtol=1e-12)
            np.testing.assert_allclose(res["f1"], f1, rtol=1e-12)
            assert res["top1"] == pytest.approx(70.0) and res["num_samples"] == 10
            assert res["macro_precision"] == pytest.approx(p.mean())          # the absent class counts as 0
            assert res["macro_f1"] == pytest.approx(f1.mean()) and list(res["support"]) == [4, 2, 4, 0]
            results.append(res)
    for res in results[1:]:                                # bit-identical across frameworks and input kinds
        for k in ("top1", "macro_precision", "macro_recall", "macro_f1", "precision", "recall", "f1"):
            assert np.array_equal(res[k], results[0][k]), k
    with pytest.raises(ValueError):
        pcls.ClsMetric(4).update(np.array([0, 4]), np.array([0, 1]))
    with pytest.raises(ValueError):
        tcls.ClsMetric(4).update(np.array([0, 1, 2]), np.array([0, 1]))
    assert np.isnan(tcls.reduce_cm(np.zeros((3, 3), np.int64))["top1"])


# ----------------------------------------------------------------------------------------------------------
# Mixup / CutMix
# ----------------------------------------------------------------------------------------------------------
def _np_mix(x, s, params):
    lam, idx = params["lam"], np.asarray(params["index"])
    l32, o32 = np.float32(lam), np.float32(1 - lam)
    if params["kind"] == "mixup":
        xm = x * l32 + x[idx] * o32
    else:
        y1, y2, x1, x2 = params["bbox"]
        xm = x.copy()
        xm[:, :, y1:y2, x1:x2] = x[idx][:, :, y1:y2, x1:x2]
    return xm, s * l32 + s[idx] * o32


def test_mixup_cutmix_injected_equal_across_frameworks_and_numpy():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 20, 24)).astype("float32")
    y = np.array([2, 0, 1, 2])
    onehot = np.eye(5, dtype=np.float32)[y]
    taug, paug = tba.build_batch_augment(AUGS), pba.build_batch_augment(AUGS)
    cases = [dict(choice=0, lam=0.3, index=[2, 0, 3, 1]),
             dict(choice=1, lam=0.3, index=[2, 0, 3, 1], center=(5, 9)),
             dict(choice=1, lam=0.2, index=[1, 0, 3, 2], center=(0, 23)),      # box clipped: lam corrected
             dict(choice=1, lam=0.9, index=[3, 2, 1, 0], bbox=(2, 10, 4, 20))]
    for inj in cases:
        xt, st, prt = taug(torch.from_numpy(x), torch.from_numpy(y), num_classes=5, **inj)
        xp, sp, prp = paug(paddle.to_tensor(x), paddle.to_tensor(y), num_classes=5, **inj)
        assert prt["kind"] == prp["kind"] and prt["lam"] == prp["lam"] and prt["bbox"] == prp["bbox"]
        assert np.array_equal(prt["index"], prp["index"])
        xn, sn = _np_mix(x, onehot, prt)
        for got_x, got_s in ((xt.numpy(), st.numpy()), (xp.numpy(), sp.numpy())):
            assert np.array_equal(got_x, xn) and np.array_equal(got_s, sn)
        if prt["kind"] == "cutmix":
            y1, y2, x1, x2 = prt["bbox"]
            assert prt["lam"] == pytest.approx(1 - (y2 - y1) * (x2 - x1) / (20 * 24))
            if "center" in inj:
                cut_h, cut_w = int(20 * np.sqrt(1 - inj["lam"])), int(24 * np.sqrt(1 - inj["lam"]))
                cy, cx = inj["center"]
                assert (y1, y2, x1, x2) == (max(cy - cut_h // 2, 0), min(cy + cut_h // 2, 20),
                                            max(cx - cut_w // 2, 0), min(cx + cut_w // 2, 24))
        np.testing.assert_allclose(sp.numpy().sum(1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(x, np.random.default_rng(3).standard_normal((4, 3, 20, 24)).astype("float32"))


def test_batch_augment_draw_order_follows_upstream():
    """Uncontrolled draws: numpy gives choice, then lam ~ Beta(alpha), then (CutMix) cy, cx, as upstream;
    the pairing is a permutation from the framework's randperm."""
    x = paddle.to_tensor(np.zeros((6, 3, 16, 16), "float32"))
    y = paddle.to_tensor(np.arange(6) % 3)
    aug = pba.build_batch_augment(AUGS)
    for seed in range(8):
        np.random.seed(seed)
        _, s, params = aug(x, y, num_classes=3)
        np.random.seed(seed)
        choice = np.random.choice(2)
        lam = np.random.beta(0.8, 0.8) if choice == 0 else np.random.beta(1.0, 1.0)
        assert params["choice"] == choice and params["lam_beta"] == lam
        assert sorted(params["index"].tolist()) == list(range(6))
        if choice == 1:
            cy, cx = np.random.randint(0, 16), np.random.randint(0, 16)
            cut = int(16 * np.sqrt(1 - lam))
            assert params["bbox"] == (max(cy - cut // 2, 0), min(cy + cut // 2, 16), max(cx - cut // 2, 0),
                                      min(cx + cut // 2, 16))
        np.testing.assert_allclose(s.numpy().sum(1), 1.0, atol=1e-6)
    # probs with a remainder: "no augmentation" is a third option
    aug = tba.RandomBatchAugment([tba.Mixup(0.8)], probs=[0.0])
    xi = torch.zeros(2, 3, 4, 4)
    xo, so, params = aug(xi, torch.tensor([0, 1]), num_classes=2)
    assert params["kind"] == "none" and xo is xi and torch.equal(so, torch.eye(2))
    with pytest.raises(ValueError):
        pba.RandomBatchAugment([{"type": "Mixup", "alpha": 0.8}], probs=[0.6, 0.6])
    with pytest.raises(ValueError):
        pba.Mixup(0.8).draw(3, index=[0, 0, 1])


# ----------------------------------------------------------------------------------------------------------
# conversion of a released-style mmengine checkpoint
# ----------------------------------------------------------------------------------------------------------
def _fake_mmengine_checkpoint(path, sentinel, img_size, trap=False, legacy=False):
    """An mmengine-style checkpoint of rsmamba_b as released: ``state_dict`` (half its keys with DDP's ``module.``)
    next to ``meta`` (numpy), ``message_hub`` (pickled mmengine ``HistoryBuffer`` objects), ``optimizer`` and
    ``param_schedulers``; with ``trap``, plus an object whose unpickling would delete ``sentinel``. The mmengine
    classes are stand-ins pickled under mmengine's module paths, removed from ``sys.modules`` again before loading.
    ``legacy``: torch's pre-1.6 format (``_use_new_zipfile_serialization=False``). Returns the plain state_dict."""
    import collections
    import types

    import torch_ref

    class HistoryBuffer:
        def __init__(self, vals):
            self._log_history, self._count_history, self.max_length = np.asarray(vals), np.ones(len(vals)), 1000000

    class Trap:
        def __reduce__(self):
            return (os.remove, (str(sentinel),))

    hb = types.ModuleType("mmengine.logging.history_buffer")
    HistoryBuffer.__module__, HistoryBuffer.__qualname__ = hb.__name__, "HistoryBuffer"
    hb.HistoryBuffer = HistoryBuffer
    fake = {"mmengine": types.ModuleType("mmengine"), "mmengine.logging": types.ModuleType("mmengine.logging"),
            hb.__name__: hb}
    torch.manual_seed(0)
    tm = torch_ref.build_model("rsmamba_b", num_classes=21, img_size=img_size)
    with torch.no_grad():
        for n, p in tm.named_parameters():
            if n.endswith(("A_log", ".D")):
                p.add_(0.1 * torch.randn(p.shape))
    sd = collections.OrderedDict((("module." + k) if i % 2 else k, v)
                                 for i, (k, v) in enumerate(tm.state_dict().items()))
    ckpt = {"meta": {"mmengine_version": "0.10.3", "epoch": 500, "iter": 46000, "seed": np.int64(1234),
                     "dataset_meta": {"classes": ("harbor", "parkinglot")}, "loss_curve": np.arange(4.0),
                     "cfg": "model = dict(type='ImageClassifier', ...)"},
            "state_dict": sd,
            "message_hub": {"log_scalars": {"train/lr": HistoryBuffer([5e-4, 4e-4]),
                                            "train/loss": HistoryBuffer([2.0])},
                            "runtime_info": dict(epoch=500, **({"trap": Trap()} if trap else {})),
                            "resumed_keys": {"epoch": False}},
            "optimizer": {"state": {0: {"step": torch.tensor(46000.0), "exp_avg": torch.zeros(3)}},
                          "param_groups": [{"lr": 1e-5, "weight_decay": 0.05, "betas": (0.9, 0.999), "params": [0]}]},
            "param_schedulers": [{"start_factor": 0.001, "last_step": 920}, {"eta_min": 1e-5, "T_max": 490}]}
    saved = {k: sys.modules.get(k) for k in fake}
    sys.modules.update(fake)
    try:
        torch.save(ckpt, str(path), _use_new_zipfile_serialization=not legacy)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return tm.state_dict()


def _torch2paddle_main(argv):
    """convert/torch2paddle.py's main(argv), in this process."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("_t2p", os.path.join(ROOT, "convert", "torch2paddle.py"))
    sys.path.insert(0, os.path.join(ROOT, "convert"))
    try:
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.main(argv)
    finally:
        sys.path.remove(os.path.join(ROOT, "convert"))


def _check_converted(dst, plain, img_size):
    from convert.api import build_pair
    from convert.rules import torch_to_paddle
    got = paddle.load(str(dst))
    tm, pm = build_pair("rsmamba_b", num_classes=21, img_size=img_size)
    want, _ = torch_to_paddle(plain, tm, pm)
    assert set(got) == set(want) == set(pm.state_dict()) and len(got) == 250
    for k in want:
        assert np.array_equal(np.asarray(got[k]), np.asarray(want[k])), k
    assert np.array_equal(got["head.fc.weight"], plain["head.fc.weight"].numpy().T)
    assert np.array_equal(got["backbone.layers.3.A_log"], plain["backbone.layers.3.A_log"].numpy())   # no transpose


def _verify_diff(out):
    assert "121 Linear weights transposed" in out and "verify: fixed perm_seed=0" in out
    assert "argmax agreement 100.0000%" in out
    return float(out.split("max abs diff torch vs paddle = ")[1].split(",")[0])


def test_torch2paddle_cli_on_mmengine_checkpoint(tmp_path, capsys):
    """The torch2paddle CLI on a file like the released ones (see :func:`_fake_mmengine_checkpoint`), at 64 px:
    loaded without mmengine and without running pickled code; equal to converting the plain state_dict;
    --verify builds both models with a fixed permutation set."""
    src, sentinel = tmp_path / "rsmamba_uc_b.pth", tmp_path / "sentinel"
    sentinel.write_text("x")
    plain = _fake_mmengine_checkpoint(src, sentinel, img_size=64)
    assert "mmengine" not in sys.modules
    with pytest.raises(Exception):
        torch.load(str(src), weights_only=True)                       # not loadable the easy way
    from convert.checkpoint import load_torch_checkpoint
    raw = load_torch_checkpoint(str(src))
    assert sentinel.exists() and "mmengine" not in sys.modules
    assert type(raw["message_hub"]["log_scalars"]["train/lr"]).__name__ == "HistoryBuffer"
    dst = tmp_path / "rsmamba_uc_b.pdparams"
    rc = _torch2paddle_main(["--model", "rsmamba_b", "--opt", "num_classes=21", "--opt", "img_size=64", "--src",
                             str(src), "--dst", str(dst), "--verify"])
    out = capsys.readouterr().out
    assert rc == 0 and sentinel.exists() and "mmengine" not in sys.modules
    assert "output [1, 21]" in out and _verify_diff(out) < 1e-4
    _check_converted(dst, plain, 64)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torch2paddle_refuses_a_checkpoint_that_would_run_code(tmp_path, capsys, legacy):
    """The same file with a payload beside the weights (zip and legacy torch formats): refused, the error names the
    file and the function it asks for, the payload never ran and nothing is written."""
    src, sentinel = tmp_path / "rsmamba_uc_b.pth", tmp_path / "sentinel"
    sentinel.write_text("x")
    _fake_mmengine_checkpoint(src, sentinel, img_size=32, trap=True, legacy=legacy)
    dst = tmp_path / "out.pdparams"
    rc = _torch2paddle_main(["--model", "rsmamba_b", "--opt", "num_classes=21", "--opt", "img_size=32", "--src",
                             str(src), "--dst", str(dst)])
    err = capsys.readouterr().err
    assert rc == 1 and sentinel.exists() and not dst.exists()
    assert str(src) in err and "posix.remove" in err and "refused" in err


@pytest.mark.slow
def test_torch2paddle_cli_224_subprocess(tmp_path):
    """The issue's exact command (224 px, default options) in a fresh interpreter."""
    src, sentinel = tmp_path / "rsmamba_uc_b.pth", tmp_path / "sentinel"
    sentinel.write_text("x")
    plain = _fake_mmengine_checkpoint(src, sentinel, img_size=224)
    dst = tmp_path / "rsmamba_uc_b.pdparams"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "convert", "torch2paddle.py"), "--model", "rsmamba_b",
                        "--opt", "num_classes=21", "--src", str(src), "--dst", str(dst), "--verify"],
                       capture_output=True, text=True, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    assert sentinel.exists() and _verify_diff(r.stdout) < 1e-4
    _check_converted(dst, plain, 224)


# ----------------------------------------------------------------------------------------------------------
# cls task: training, evaluation, export, inference
# ----------------------------------------------------------------------------------------------------------
IMG = 32          # full-width, full-depth rsmamba_b at 32 px (16 tokens): the real model, CPU-cheap


def _cls_cfg(root, save_dir, **extra):
    from paddle_rs.engine.config import load_config
    over = {"data.root": root, "model.init_params.img_size": IMG, "train.iters": 2, "train.batch_size": 2,
            "train.eval_interval": 2, "train.save_interval": 2, "train.log_interval": 1,
            "train.progress_bar": False, "eval.max_samples": None, "eval.batch_size": 4,
            "lr_scheduler.warmup_iters": 1, "save_dir": save_dir}
    over.update(extra)
    cfg = load_config(os.path.join(ROOT, "configs", "rsmamba_b", "nwpu_vhr10_crops.yaml"),
                      [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in over.items()])
    cfg["num_classes"], cfg["labels"] = 3, ["a", "b", "c"]
    cfg["train_transforms"][0]["RandomResizedCrop"]["size"] = IMG
    cfg["eval_transforms"][0]["ResizeEdge"]["scale"] = IMG + 4
    cfg["eval_transforms"][1]["CenterCrop"]["crop_size"] = IMG
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from paddle_rs.data.datasets import make_synthetic_cls_dataset
    from paddle_rs.engine.trainer import Trainer
    root = tmp_path_factory.mktemp("cls_syn")
    make_synthetic_cls_dataset(str(root), 3, n_train_per_class=2, n_val_per_class=2, size=40, seed=0,
                               class_names=["a", "b", "c"])
    save = str(root / "out")
    logs = []
    trainer = Trainer(_cls_cfg(str(root), save), save_dir=save, progress=False, log=logs.append)
    summary = trainer.train()
    return {"root": str(root), "save": save, "summary": summary, "trainer": trainer, "logs": logs}


def test_cls_training_two_iterations(trained):
    from paddle_rs.deploy.model_yml import read_model_yml
    from paddle_rs.engine.trainer import read_log
    tr, save = trained["trainer"], trained["save"]
    assert type(tr.task).__name__ == "ClsTask" and tr.total_iters == 2
    assert tr.init_params["perm_seed"] == 1024 and tr.net.backbone.perm_seed == 1024   # the config's seed
    log = read_log(os.path.join(save, "train_log.jsonl"))
    losses = [r["loss"] for r in log if r["type"] == "train"]
    assert len(losses) == 2 and all(np.isfinite(losses)) and all(0 < v < 10 for v in losses)
    lrs = [r["lr"] for r in log if r["type"] == "train"]
    assert lrs[0] == pytest.approx(5e-4 * 1e-3)                          # warm-up starts at 1e-3 x lr
    ev = [r for r in log if r["type"] == "eval"]
    assert len(ev) == 1 and set(ev[0]) >= {"top1", "macro_precision", "macro_recall", "macro_f1"}
    best = os.path.join(save, "best_model")
    info = read_model_yml(best)
    assert info["_Attributes"]["model_type"] == "classifier" and info["_init_params"]["perm_seed"] == 1024
    assert info["_init_params"]["img_size"] == IMG and info["_Attributes"]["labels"] == ["a", "b", "c"]
    assert [next(iter(t)) for t in info["Transforms"]] == ["ResizeEdge", "CenterCrop", "Normalize"]
    details = json.load(open(os.path.join(best, "eval_details.json")))
    assert np.asarray(details["confusion_matrix"]).sum() == 6 and details["perms"] == "fixed, perm_seed=1024"
    assert any("macro P" in str(line) for line in trained["logs"])
    # evaluation is deterministic (fixed permutation set) and a given perm_seed is honoured
    from paddle_rs.engine.cls_task import ClsEvaluator
    ds = tr.task.build_val_dataset()
    r1, r2 = tr.evaluator.evaluate(tr.net, ds), tr.evaluator.evaluate(tr.net, ds)
    assert r1["confusion_matrix"] == r2["confusion_matrix"] and r1["macro_f1"] == r2["macro_f1"]
    images = np.stack([ds[i][0] for i in range(3)])
    s1 = ClsEvaluator(3, batch_size=4, perm_seed=5).predict(tr.net, images)
    with paddle.no_grad():
        s2 = paddle.nn.functional.softmax(tr.net(paddle.to_tensor(images), tr.net.make_perms(5)), 1).numpy()
    np.testing.assert_array_equal(s1, s2)


def test_cls_forward_loss_mixup_cutmix_and_fresh_perms(trained):
    """forward_loss: Mixup/CutMix from the global numpy generator + paddle.randperm, fresh permutations per
    iteration (global numpy generator): reproducible from the seeds, different between iterations."""
    tr = trained["trainer"]
    task, net = tr.task, tr.net
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((2, 3, IMG, IMG)).astype("float32"))
    y = paddle.to_tensor(np.array([0, 2]))
    net.train()
    vals = []
    for _ in range(2):
        np.random.seed(7), paddle.seed(7)
        vals.append(float(task.forward_loss(net, (x, y), tr.criterion)))
    assert vals[0] == vals[1]
    np.random.seed(7), paddle.seed(7)
    task.forward_loss(net, (x, y), tr.criterion)
    assert float(task.forward_loss(net, (x, y), tr.criterion)) != vals[0]


def _load_deploy(name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"_d_{name}", os.path.join(ROOT, "deploy", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_export_and_inference_parity(tmp_path, capsys):
    """A 2-layer RSMamba (the model class with a small arch) exported with a fixed permutation set: ``perm_seed``
    recorded in model.yml, Paddle Inference == dygraph at two inputs (batch 1 and 2), deploy/infer.py prints the
    top-k of an image through the model.yml pre-processing (ResizeEdge, CenterCrop, Normalize)."""
    from paddle_rs.data.raster_io import write_image_png
    from paddle_rs.deploy.export import export
    from paddle_rs.deploy.model_yml import read_model_yml
    from paddle_rs.deploy.predictor import Predictor
    from paddle_rs.models.rsmamba import RSMamba

    paddle.seed(1)
    net = RSMamba(arch=dict(embed_dims=32, num_layers=2, feedforward_channels=64), img_size=IMG, num_classes=3,
                  perm_seed=7)
    net.eval()
    tf = [{"ResizeEdge": {"scale": IMG + 4, "edge": "short", "interp": "bicubic"}},
          {"CenterCrop": {"crop_size": IMG}},
          {"Normalize": {"mean": [120.0] * 3, "std": [60.0] * 3, "min_val": [0.0] * 3, "max_val": [1.0] * 3}}]
    out = export(net, tmp_path / "static", input_shape=[-1, 3, IMG, IMG],
                 model_info={"task": "cls", "labels": ["a", "b", "c"], "transforms": tf})
    info = read_model_yml(out)
    assert info["_init_params"]["perm_seed"] == 7 and info["_Attributes"]["perm_seed"] == 7
    assert [next(iter(t)) for t in info["Transforms"]] == ["ResizeEdge", "CenterCrop", "Normalize"]
    # the default export is portable: the pure-Paddle scan loop, Paddle's conv2d and layer_norm, no custom op
    attrs = info["_Attributes"]
    assert attrs["cpu_kernels"] == "off" and attrs["scan_backend"] == "loop" and attrs["custom_ops"] == []
    assert attrs["conv_backend"] == "plain" and attrs["ops_backend"] == "plain"
    pred = Predictor(out, cpu_threads=1, topk=2)
    rng = np.random.default_rng(5)
    for batch in (1, 2):
        x = rng.standard_normal((batch, 3, IMG, IMG)).astype("float32")
        label, score = pred.run_batch(x)
        with paddle.no_grad():
            ref = paddle.nn.functional.softmax(net(paddle.to_tensor(x)), 1).numpy()
        assert np.abs(score - ref).max() < 1e-4 and np.array_equal(label, score.argmax(1))
        assert_same_argmax(ref, score, 1e-4)
    img = str(tmp_path / "scene.png")
    write_image_png(img, (rng.random((40, 50, 3)) * 255).astype(np.uint8))
    rc = _load_deploy("infer").main(["--model_dir", out, "--image", img, "--save_dir", str(tmp_path / "pred"),
                                     "--topk", "2", "--cpu_threads", "1"])
    printed = capsys.readouterr()
    assert rc == 0 and "scene.png:" in printed.out + printed.err
    top = json.load(open(tmp_path / "pred" / "results.json"))[img]
    with paddle.no_grad():
        from paddle_rs.data.transforms import build_transforms
        from paddle_rs.data.raster_io import read_image
        x = build_transforms(tf)({"image": read_image(img), "trans_info": []})["image"].transpose(2, 0, 1)[None]
        ref = paddle.nn.functional.softmax(net(paddle.to_tensor(np.ascontiguousarray(x))), 1).numpy()[0]
    assert [t["class_id"] for t in top] == list(np.argsort(-ref)[:2])
    assert abs(top[0]["score"] - float(ref.max())) < 1e-4


def test_export_scan_loop_and_fused_op_registration(tmp_path, monkeypatch):
    """``scan='loop'`` exports the pure-Paddle while_loop (no custom op recorded) and matches dygraph; a fused
    export loaded where the extension cannot be built fails with an error that names the fix."""
    from paddle_rs.deploy.export import export
    from paddle_rs.deploy.model_yml import read_model_yml
    from paddle_rs.deploy.predictor import Predictor
    from paddle_rs.models.rsmamba import RSMamba
    from paddle_rs.ops import selective_scan as ss

    paddle.seed(2)
    net = RSMamba(arch=dict(embed_dims=32, num_layers=2, feedforward_channels=64), img_size=IMG, num_classes=3,
                  perm_seed=3)
    net.eval()
    loop = export(net, tmp_path / "loop", input_shape=[-1, 3, IMG, IMG], model_info={"task": "cls"})
    attrs = read_model_yml(loop)["_Attributes"]
    assert attrs["scan_backend"] == "loop" and attrs["conv_backend"] == "plain" and attrs["custom_ops"] == []
    assert not re.findall(r'"\d\.(rs_\w*)"', open(os.path.join(loop, "model.json")).read())   # no custom op
    x = np.random.default_rng(3).standard_normal((2, 3, IMG, IMG)).astype("float32")
    _, score = Predictor(loop, cpu_threads=1).run_batch(x)
    with paddle.no_grad():
        ref = paddle.nn.functional.softmax(net(paddle.to_tensor(x)), 1).numpy()
    assert np.abs(score - ref).max() < 1e-4
    require(ss.fused_ext() is not None, "fused selective-scan extension unavailable (no compiler?)")
    fused = export(net, tmp_path / "fused", input_shape=[-1, 3, IMG, IMG], model_info={"task": "cls"}, scan="fused",
                   conv="plain", ops="plain")
    assert "rs_selective_scan_fwd" in open(os.path.join(fused, "model.json")).read()
    monkeypatch.setitem(ss._EXT_STATE, "module", None)          # as on a machine without a compiler
    with pytest.raises(RuntimeError, match="--scan loop"):
        Predictor(fused, cpu_threads=1)
    from paddle_rs.ops import _dygraph_ext, conv
    # each other custom op alone in the graph: equal scores, and a clear error where its extension cannot be built
    for name, kwargs, ext, loader, op, flag in (
            ("conv", dict(conv="onednn", ops="plain"), conv, conv.onednn_ext, "rs_conv2d_fwd", "--conv"),
            ("ops", dict(conv="plain", ops="custom"), _dygraph_ext, _dygraph_ext.dygraph_ext, "rs_layer_norm", "--ops")):
        if loader() is None:
            continue
        out = export(net, tmp_path / name, input_shape=[-1, 3, IMG, IMG], model_info={"task": "cls"}, scan="loop",
                     **kwargs)
        recorded = read_model_yml(out)["_Attributes"]["custom_ops"]
        assert op in recorded and "rs_selective_scan_fwd" not in recorded and \
            (name == "ops" or recorded == [op])
        _, score = Predictor(out, cpu_threads=1).run_batch(x)
        assert np.abs(score - ref).max() < 1e-4
        monkeypatch.setitem(ext._EXT_STATE, "module", None)
        with pytest.raises(RuntimeError, match=f"{flag} plain"):
            Predictor(out, cpu_threads=1)


@pytest.mark.slow
def test_export_trained_model_dir_and_inference_parity(trained, tmp_path):
    """TIPC-style export of the trained full-depth best_model (fixed permutation set from model.yml), then Paddle
    Inference == dygraph at two inputs (batch 1 and 2)."""
    from paddle_rs.deploy.export import build_from_model_dir
    from paddle_rs.deploy.model_yml import read_model_yml
    from paddle_rs.deploy.predictor import Predictor

    best = os.path.join(trained["save"], "best_model")
    out = str(tmp_path / "static")
    assert _load_deploy("export_model").main(["--model_dir", best, "--save_dir", out,
                                      f"--fixed_input_shape=[-1,3,{IMG},{IMG}]", "--quiet"]) == 0
    info = read_model_yml(out)
    assert info["_init_params"]["perm_seed"] == 1024 and info["_Attributes"]["perm_seed"] == 1024
    assert info["status"] == "Infer" and info["_Attributes"]["fixed_input_shape"] == [-1, 3, IMG, IMG]
    model, _ = build_from_model_dir(best)
    pred = Predictor(out, cpu_threads=1, topk=2)
    rng = np.random.default_rng(5)
    for batch in (1, 2):
        x = rng.standard_normal((batch, 3, IMG, IMG)).astype("float32")
        label, score = pred.run_batch(x)
        with paddle.no_grad():
            ref = paddle.nn.functional.softmax(model(paddle.to_tensor(x)), 1).numpy()
        assert np.abs(score - ref).max() < 1e-4 and np.array_equal(label, score.argmax(1))
        assert_same_argmax(ref, score, 1e-4)


def test_configs_recipe():
    from paddle_rs.engine.config import load_config
    from paddle_rs.engine.trainer import resolve_config
    expect = {"ucmerced": (21, "harbor", [124, 125, 115]), "aid": (30, "Port", [101, 104, 94]),
              "nwpu_resisc45": (45, "river", [94, 97, 88])}
    for arch in "blh":
        for ds, (n, first, pad) in expect.items():
            cfg = resolve_config(load_config(os.path.join(ROOT, "configs", f"rsmamba_{arch}", f"{ds}.yaml")))
            assert cfg["model"]["name"] == f"rsmamba_{arch}" and cfg["task"] == "cls"
            assert cfg["num_classes"] == n == len(cfg["labels"]) and cfg["labels"][0] == first
            assert cfg["optimizer"] == {"type": "AdamW", "lr": 5e-4, "betas": [0.9, 0.999], "eps": 1e-8,
                                        "weight_decay": 0.05, "grad_clip": None}
            assert cfg["lr_scheduler"] == {"type": "cosine", "warmup_epochs": 10, "warmup_ratio": 1e-3,
                                           "end_lr": 1e-5, "by_epoch": True}
            assert cfg["loss"] == LS and cfg["batch_augments"] == AUGS
            assert cfg["train"]["epochs"] == 500 and cfg["train"]["batch_size"] == 16
            assert cfg["train"]["metric_for_best"] == "macro_f1"
            assert cfg["train_transforms"][3]["AutoAugment"]["pad_val"] == pad
            assert [next(iter(t)) for t in cfg["eval_transforms"]] == ["ResizeEdge", "CenterCrop", "Normalize"]
    # epoch keys -> iterations with the trainer's iterations per epoch (UC: 1470 / 16 -> 92 with drop_last false)
    from paddle_rs.engine.cls_task import ClsTask
    cfg = resolve_config(load_config(os.path.join(ROOT, "configs", "rsmamba_b", "ucmerced.yaml")))
    ClsTask(cfg)._epochs_to_iters(1470)
    assert cfg["lr_scheduler"]["warmup_iters"] == 920 and cfg["train"]["eval_interval"] == 1840
    assert cfg["train"]["save_interval"] == 460 and cfg["model"]["init_params"]["perm_seed"] == 1024
    crops = resolve_config(load_config(os.path.join(ROOT, "configs", "rsmamba_b", "nwpu_vhr10_crops.yaml")))
    assert crops["num_classes"] == 10 and crops["train"]["iters"] == 20 and crops["data"]["root"] == "data/nwpu_cls"


def test_tipc_config_is_53_lines_and_consistent():
    path = os.path.join(ROOT, "test_tipc", "configs", "rsmamba_b", "train_infer_python.txt")
    lines = [ln for ln in open(path).read().splitlines() if ln]
    assert len(lines) == 53 and lines[1] == "model_name:cls:rsmamba_b"
    assert lines[15] == "norm_train:test_tipc/run_task.py train cls"
    assert lines[29] == "--fixed_input_shape:[-1,3,224,224]" and lines[51] == "--model_name:rsmamba_b"
    yml = lines[10].split("=")[1].split("|")[0]
    assert os.path.isfile(os.path.join(ROOT, yml))


# ----------------------------------------------------------------------------------------------------------
# the parity case (align/cases/rsmamba.py) at 32 px
# ----------------------------------------------------------------------------------------------------------
def _run_case(tmp_path, stages, steps=3):
    from align.cases import get_case
    from align.harness import StageLog
    case = get_case("rsmamba_b", size=32, steps=steps)
    results = []
    for stage in stages:
        log = StageLog(stage, "rsmamba_b", str(tmp_path), case.CHECKS)
        getattr(case, stage)(log)
        results += log.save()
    bad = [(r.key, r.max_abs, r.status) for r in results if not r.ok]
    assert not bad, bad
    return case, results


def test_parity_case_small(tmp_path):
    """align/cases/rsmamba.py forward / metric / loss at 32 px (full-width, full-depth rsmamba_b) + its hooks."""
    from align.cases import default_models
    assert "rsmamba_b" in default_models() and "rsmamba_l" not in default_models()
    case, results = _run_case(tmp_path, ("forward", "metric", "loss"))
    keys = {r.key for r in results}
    assert {"eval_logits", "mixer0_output", "ids_macro_f1", "label_smooth_cutmix",
            "model_param_grads_rel_per_tensor"} <= keys
    x, y = case.bench_batch(2)
    assert x.shape == (2, 3, 32, 32) and y.shape == (2,)
    rows = case.scan_scaling(lengths=(16,), repeat=1)
    assert rows[0]["L"] == 16 and rows[0]["max_abs_diff"] < 1e-5


@pytest.mark.slow
def test_parity_case_backward_small(tmp_path):
    _, results = _run_case(tmp_path, ("backward",), steps=4)
    assert {"train_loss_per_step", "step_update", "step_update_ref_grads", "step64_update"} <= \
        {r.key for r in results}


# ----------------------------------------------------------------------------------------------------------
# slow: full size
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_export_rsmamba_b_224_inference_parity(tmp_path):
    from paddle_rs.deploy.export import export
    from paddle_rs.deploy.predictor import Predictor
    import paddle_rs
    paddle.seed(0)
    model = paddle_rs.build_model("rsmamba_b", num_classes=10, perm_seed=0)
    model.eval()
    out = export(model, tmp_path / "static", input_shape=[-1, 3, 224, 224],
                 model_info={"model_name": "rsmamba_b", "init_params": {"num_classes": 10, "perm_seed": 0}})
    pred = Predictor(out, cpu_threads=2)
    for seed, batch in ((1, 1), (2, 2)):
        x = np.random.default_rng(seed).standard_normal((batch, 3, 224, 224)).astype("float32")
        label, score = pred.run_batch(x)
        with paddle.no_grad():
            ref = paddle.nn.functional.softmax(model(paddle.to_tensor(x)), 1).numpy()
        assert np.abs(score - ref).max() < 1e-4 and np.array_equal(label, score.argmax(1))
        assert_same_argmax(ref, score, 1e-4)


@pytest.mark.slow
def test_tipc_lite_chain_rsmamba_b(tmp_path):
    """``bash test_tipc/run.sh lite_train_lite_infer rsmamba_b`` on a scratch tree (links to the repository, a copy
    of test_tipc/ without output/ and data/, ../shared linked), as tests/test_tipc.py does for FactSeg."""
    import shutil
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in os.listdir(ROOT):
        if name != "test_tipc" and not name.startswith("."):
            os.symlink(os.path.join(ROOT, name), repo / name)
    shutil.copytree(os.path.join(ROOT, "test_tipc"), repo / "test_tipc",
                    ignore=shutil.ignore_patterns("output", "data", "__pycache__"))
    shared = os.path.join(os.path.dirname(ROOT), "shared")
    if os.path.isdir(shared):
        os.symlink(shared, tmp_path / "shared")
    r = subprocess.run(["bash", "test_tipc/run.sh", "lite_train_lite_infer", "rsmamba_b"], cwd=str(repo),
                       capture_output=True, text=True, timeout=3600, env=dict(os.environ, TIPC_PYTHON=sys.executable))
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-3000:]
    out = repo / "test_tipc" / "output" / "rsmamba_b"
    log = (out / "results_python.log").read_text()
    assert log.count("Run successfully") == 4 and "Run failed" not in log
    static = out / "lite_train_lite_infer" / "norm_gpus_-1_autocast_null" / "static"
    from paddle_rs.deploy.model_yml import read_model_yml
    info = read_model_yml(str(static))
    assert info["_Attributes"]["model_type"] == "classifier" and info["_init_params"]["perm_seed"] == 1024
    infer_log = (out / "lite_train_lite_infer" /
                 "python_infer_cpu_usemkldnn_False_threads_2_precision_fp32_batchsize_1.log").read_text()
    assert "all 2 image(s) passed" in infer_log and "top-k [" in infer_log
