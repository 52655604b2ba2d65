"""paddle_rs.engine: config inheritance, FactSeg training / checkpoints / resume / NaN stop, evaluation.

Real FactSeg (33M parameters) on a synthetic 64x64 dataset with 16 classes: ~0.6 s per iteration and ~2 s
per model build on 2 CPU cores, so every training here runs 3-4 iterations. Evaluation arithmetic is checked
against a hand computation on a tiny deterministic stand-in model.
"""
import hashlib
import json
import math
import os
import re
import shutil
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import paddle
import paddle.nn as nn  # noqa: E402

from paddle_rs.data.datasets import make_synthetic_seg_dataset  # noqa: E402
from paddle_rs.engine import checkpoint as ckpt  # noqa: E402
from paddle_rs.engine.config import (ConfigError, apply_overrides, load_config, parse_cli_overrides,  # noqa: E402
                                     parse_value)
from paddle_rs.engine.evaluator import SegEvaluator, format_seg_table  # noqa: E402
from paddle_rs.engine.trainer import (NonFiniteLossError, ResumableBatchSampler, Trainer,  # noqa: E402
                                      WindowedSegDataset, read_log)

ISAID = os.path.join(ROOT, "configs", "factseg", "isaid.yaml")
NWPU = os.path.join(ROOT, "configs", "factseg", "nwpu_mini.yaml")


def _load_tool(name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", os.path.join(ROOT, "tools", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------------------------------------------------
# config
# ----------------------------------------------------------------------------------------------------------
def _write(path, text):
    path.write_text(text)
    return str(path)


def test_config_inheritance_and_overrides(tmp_path):
    _write(tmp_path / "a.yaml", "x: 1\nnested: {p: 1, q: [1, 2], deep: {u: 1, v: 2}}\nonly_a: a\n")
    _write(tmp_path / "b.yaml", "x: 2\nnested: {p: 2}\nonly_b: b\n")
    child = _write(tmp_path / "child.yaml",
                   "_base_: [a.yaml, b.yaml]\nnested:\n  q: [9]\n  deep: {v: 20}\nrepl:\n  _delete_: true\n  k: 1\n")
    cfg = load_config(child, check_keys=False)                # (keys of no trainer: the merge rules only)
    assert cfg["x"] == 2 and cfg["only_a"] == "a" and cfg["only_b"] == "b"         # later base wins
    assert cfg["nested"] == {"p": 2, "q": [9], "deep": {"u": 1, "v": 20}}           # dicts merge, lists replace
    assert cfg["repl"] == {"k": 1}
    sub = tmp_path / "sub"
    sub.mkdir()
    _write(sub / "c.yaml", "_base_: ../child.yaml\nnested: {_delete_: true, z: 0}\n")
    assert load_config(str(sub / "c.yaml"), check_keys=False)["nested"] == {"z": 0}                  # relative to the file
    _write(tmp_path / "loop.yaml", "_base_: loop.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(str(tmp_path / "loop.yaml"), check_keys=False)

    cfg = load_config(child, ["nested.deep.u=1e-4", "x=[1, 2]", "new.key=true", "only_a=null",
                              "nested.q.0=7", "s=nanmean", "t=/tmp/d"], check_keys=False)
    assert cfg["nested"]["deep"]["u"] == pytest.approx(1e-4) and isinstance(cfg["nested"]["deep"]["u"], float)
    assert cfg["x"] == [1, 2] and cfg["new"] == {"key": True} and cfg["only_a"] is None
    assert cfg["nested"]["q"] == [7] and cfg["s"] == "nanmean" and cfg["t"] == "/tmp/d"
    assert parse_value("0.5") == 0.5 and parse_value("4") == 4 and parse_value("poly") == "poly"
    with pytest.raises(ConfigError):
        apply_overrides(cfg, ["nested.q.5=1"])
    assert parse_cli_overrides(["--seed=3", "--opt", "a.b=1", "c=2", "--opt=d=x", "--e", "5"]) == \
        ["seed=3", "a.b=1", "c=2", "d=x", "e=5"]
    with pytest.raises(ConfigError):
        parse_cli_overrides(["stray"])


def test_config_typos_are_errors_naming_the_nearest_key(tmp_path, capsys):
    """An unknown key in a file or an override is an error naming it and the nearest valid key; nothing runs."""
    typo = _write(tmp_path / "typo.yaml", f"_base_: {ISAID}\ntrian: {{iters: 2}}\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml: unknown config key 'trian'; did you mean 'train'\?"):
        load_config(typo)
    nested = _write(tmp_path / "nested.yaml", f"_base_: {ISAID}\ntrain: {{itres: 2}}\n")
    with pytest.raises(ConfigError, match=r"'train\.itres'; did you mean 'train\.iters'\?"):
        load_config(nested)
    for override, hint in (("iter=2", "'iters'"), ("train.amp.enabel=true", "'train.amp.enable'"),
                           ("eval.windwo=64", "'eval.window'"), ("optimizer.moment=0.8", "'optimizer.momentum'")):
        with pytest.raises(ConfigError, match=re.escape(f"override {override}: unknown config key") + ".*"
                           + re.escape(hint)):
            load_config(ISAID, [override])
    # the tool: `--iter 2` (argparse knows --iters only) is an error, exit 2, and no run directory appears
    save = tmp_path / "run"
    assert _load_tool("train").main(["--config", ISAID, "--save_dir", str(save), "--iter", "2"]) == 2
    assert "unknown config key 'iter'; did you mean 'iters'?" in capsys.readouterr().err and not save.exists()
    # open sections take any keys: a loss's or a transform's own arguments, the model's options
    load_config(ISAID, ["loss.ratio=0.5", "train_transforms.0.RandomCrop.crop_size=5", "model.init_params.x=1"])


def test_project_configs():
    import glob
    files = glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True) + \
        glob.glob(os.path.join(ROOT, "test_tipc", "configs", "**", "*.yaml"), recursive=True)
    assert len(files) > 10
    for f in files:                       # every shipped config uses only keys the trainer reads
        load_config(f)
    isaid = load_config(ISAID)
    assert isaid["train"]["iters"] == 60000 and isaid["train"]["batch_size"] == 8 and isaid["seed"] == 2333
    assert isaid["optimizer"] == {"type": "Momentum", "lr": 0.007, "momentum": 0.9, "weight_decay": 0.0001,
                                  "grad_clip": 35.0}
    assert isaid["lr_scheduler"]["end_lr"] == 0.0 and isaid["train"]["lr_offset"] == "paddle"
    assert (isaid["eval"]["window"], isaid["eval"]["stride"], isaid["eval"]["nan_policy"]) == (896, 512, "nan")
    assert len(isaid["labels"]) == 16 and isaid["labels"][15] == "harbor"
    nwpu = load_config(NWPU)
    assert nwpu["num_classes"] == 11 and len(nwpu["labels"]) == 11
    assert nwpu["optimizer"] == isaid["optimizer"] and nwpu["loss"] == isaid["loss"]          # inherited
    assert {"FixedPad": {"size": 256, "pad_value": 0.0, "label_pad": 255}} in nwpu["train_transforms"]
    assert nwpu["eval"]["mode"] == "slide" and nwpu["eval"]["window"] == 512                  # merged
    # run_task.py passes PaddleRS TIPC keys as top-level --key=value overrides
    from paddle_rs.engine.trainer import resolve_config
    tipc = resolve_config(load_config(ISAID, parse_cli_overrides(
        ["--num_epochs=1", "--train_batch_size=2", "--save_dir=/tmp/x", "--model_path=/w.pdparams"])))
    assert tipc["train"]["epochs"] == 1 and tipc["train"]["batch_size"] == 2 and tipc["save_dir"] == "/tmp/x"
    assert tipc["model"]["pretrained"] == "/w.pdparams" and "num_epochs" not in tipc


# ----------------------------------------------------------------------------------------------------------
# data plumbing
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn64")
    make_synthetic_seg_dataset(str(root), 16, size=64, n_train=6, n_val=2, seed=0)
    return str(root)


def _overrides(root, **extra):
    o = {"data.root": root, "data.color_map": None, "data.train_windows": None,
         "train_transforms.3.FixedPad.size": 64, "train.batch_size": 2, "train.log_interval": 1,
         "eval.window": 64, "eval.stride": 32, "train.progress_bar": False}
    o.update(extra)
    return o


def test_sampler_and_windows(syn):
    s = ResumableBatchSampler(10, 2, seed=5)
    s.set_epoch(1)
    full = list(s)
    s.set_epoch(1, skip=3)
    assert list(s) == full[3:] and len(s) == 2
    ranks = [ResumableBatchSampler(10, 2, seed=5, rank=r, world_size=2) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(0)
    seen = sum((sum(list(r), []) for r in ranks), [])
    assert sorted(seen) == sorted(np.random.default_rng([5, 0]).permutation(10)[:8].tolist())
    tiny = ResumableBatchSampler(3, 4, seed=0)                  # smaller than one batch: wraps around
    assert tiny.iters_per_epoch == 1 and len(list(tiny)[0]) == 4

    cfg = load_config(ISAID, _overrides(syn, **{"data.train_windows": {"size": 48, "stride": 32},
                                                "train_transforms.3.FixedPad.size": 48}))
    from paddle_rs.engine.trainer import SegTask, resolve_config
    train, val = SegTask(resolve_config(cfg)).build_datasets(seed=1)
    assert isinstance(train, WindowedSegDataset) and len(train) == 6 * 4 and len(val) == 2
    img, mask = train[5]
    assert img.shape == (3, 48, 48) and mask.shape == (48, 48) and img.dtype == np.float32
    assert np.array_equal(train[5][0], img)                                     # seeded per (seed, epoch, k)


# ----------------------------------------------------------------------------------------------------------
# FactSeg training
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(syn, tmp_path_factory):
    """3 iterations through tools/train.py (eval + checkpoint at 2 and 3)."""
    save = str(tmp_path_factory.mktemp("run3"))
    train_tool = _load_tool("train")
    args = ["--config", ISAID, "--save_dir", save, "--iters", "3", "--no_progress",
            "--opt"] + [f"{k}={'null' if v is None else v}" for k, v in _overrides(syn).items()] + \
        ["train.save_interval=2", "train.eval_interval=2"]
    assert train_tool.main(args) == 0
    yield save
    shutil.rmtree(save, ignore_errors=True)                  # ~1 GB of checkpoints; keep the shared disk free


def test_training_writes_checkpoints_best_model_and_curve(trained):
    from paddle_rs.deploy.model_yml import read_model_yml

    for d in ("iter_2", "iter_3"):
        for f in ("model.pdparams", "model.pdopt", "train_state.json", "model.yml", "rng_state.pkl"):
            assert os.path.isfile(os.path.join(trained, d, f)), (d, f)
    assert open(os.path.join(trained, "latest")).read().strip() == "iter_3"
    assert ckpt.find_latest(trained) == os.path.join(trained, "iter_3")
    state = json.load(open(os.path.join(trained, "iter_3", "train_state.json")))
    assert state["iter"] == 3 and state["total_iters"] == 3 and state["best"]["metric"] == "miou"
    with open(os.path.join(trained, "train_curve.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    log = read_log(os.path.join(trained, "train_log.jsonl"))
    losses = [r["loss"] for r in log if r["type"] == "train"]
    assert len(losses) == 3 and all(math.isfinite(v) and v > 0 for v in losses)
    assert [r["iter"] for r in log if r["type"] == "eval"] == [2, 3]
    lrs = [r["lr"] for r in log if r["type"] == "train"]
    assert lrs[0] == pytest.approx(0.007) and lrs[1] == pytest.approx(0.007 * (1 - 1 / 3) ** 0.9)
    assert not [n for n in os.listdir(trained) if n.startswith(".")]             # no temporary leftovers

    best = os.path.join(trained, "best_model")
    info = read_model_yml(best, use_pyyaml=False)
    assert info["status"] == "Normal" and info["Model"] == "FactSeg"
    assert info["_init_params"] == {"num_classes": 16, "in_channels": 3}
    attrs = info["_Attributes"]
    assert attrs["model_name"] == "factseg" and attrs["num_classes"] == 16 and len(attrs["labels"]) == 16
    assert set(attrs["eval_metrics"]) == {"miou", "miou_fg", "mf1", "acc"}
    assert [next(iter(t)) for t in info["Transforms"]] == ["Normalize", "PadToMultiple"]
    assert info["Transforms"][1]["PadToMultiple"]["divisor"] == 32
    details = json.load(open(os.path.join(best, "eval_details.json")))
    assert len(details["iou"]) == 16 and np.asarray(details["confusion_matrix"]).shape == (16, 16)
    # the export entry point rebuilds the net from model.yml and loads the weights strictly
    from paddle_rs.deploy.export import build_from_model_dir
    model, _ = build_from_model_dir(best)
    assert type(model).__name__ == "FactSeg"


def test_eval_cli(trained, capsys):
    out = os.path.join(trained, "eval.json")
    cfg_path = os.path.join(trained, "config.yaml")                           # the resolved config
    assert _load_tool("eval").main(["--config", cfg_path, "--weights",
                                    os.path.join(trained, "best_model", "model.pdparams"),
                                    "--mode", "whole", "--out", out, "--no_progress"]) == 0
    text = capsys.readouterr().out
    assert "mIoU" in text and "harbor" in text and "background" in text
    res = json.load(open(out))
    assert res["mode"] == "whole" and res["num_images"] == 2 and len(res["f1"]) == 16


def test_resume_equals_uninterrupted(syn, tmp_path):
    ov = _overrides(syn, **{"train.iters": 4, "train.save_interval": 2, "train.eval_interval": 0,
                            "data.val_list": None})
    full = Trainer(load_config(ISAID, {**ov, "train.save_interval": 4}), save_dir=str(tmp_path / "full"),
                   log=None)                                      # saving does not change training
    full.train()

    class Interrupt(Exception):
        pass

    part = Trainer(load_config(ISAID, ov), save_dir=str(tmp_path / "split"), log=None)
    save = part.save

    def save_then_die(it):
        save(it)
        if it == 2:
            raise Interrupt
    part.save = save_then_die
    with pytest.raises(Interrupt):
        part.train()
    resumed = Trainer(load_config(ISAID, ov), save_dir=str(tmp_path / "split"), resume=True, log=None)
    assert resumed.start_iter == 2
    resumed.train()
    a, b = full.net.state_dict(), resumed.net.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k].numpy(), b[k].numpy(), err_msg=k)
    la = [(r["iter"], r["loss"], r["lr"]) for r in read_log(str(tmp_path / "full" / "train_log.jsonl"))]
    lb = [(r["iter"], r["loss"], r["lr"]) for r in read_log(str(tmp_path / "split" / "train_log.jsonl"))]
    assert la == lb and len(la) == 4
    shutil.rmtree(tmp_path, ignore_errors=True)


def _tree_fingerprint(d):
    out = {}
    for n in sorted(os.listdir(d)):
        p = os.path.join(d, n)
        st = os.stat(p)
        out[n] = (st.st_size, st.st_mtime_ns, hashlib.sha1(open(p, "rb").read(1 << 16)).hexdigest())
    return out


def test_nan_loss_stops_and_keeps_last_checkpoint(syn, tmp_path):
    save = str(tmp_path / "nan")
    ov = _overrides(syn, **{"train.iters": 4, "train.save_interval": 2, "train.eval_interval": 0,
                            "data.val_list": None})
    tr = Trainer(load_config(ISAID, ov), save_dir=save, log=None)
    real, calls = tr.criterion, []

    def criterion(outputs, labels):
        calls.append(1)
        loss = real(outputs, labels)
        return loss * float("nan") if len(calls) == 3 else loss
    tr.criterion = criterion
    before = {}
    save_fn = tr.save

    def save_and_fingerprint(it):
        save_fn(it)
        before.update(_tree_fingerprint(os.path.join(save, f"iter_{it}")))
    tr.save = save_and_fingerprint
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at iteration 3 of 4") as e:
        tr.train()
    assert e.value.iteration == 3 and e.value.last_checkpoint == os.path.join(save, "iter_2")
    assert "iter_2" in str(e.value)
    assert _tree_fingerprint(os.path.join(save, "iter_2")) == before
    assert sorted(n for n in os.listdir(save) if n.startswith("iter_")) == ["iter_2"]
    assert open(os.path.join(save, "latest")).read().strip() == "iter_2"
    assert not [n for n in os.listdir(save) if n.startswith(".")]
    assert read_log(os.path.join(save, "train_log.jsonl"))[-1]["type"] == "error"
    shutil.rmtree(save, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------
# LR timing and pluggable model / loss (tiny stand-in, fast)
# ----------------------------------------------------------------------------------------------------------
class _TinySeg(nn.Layer):
    outputs_probabilities = False
    size_divisor = 1

    def __init__(self, num_classes=16):
        super().__init__()
        self.conv = nn.Conv2D(3, num_classes, 1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("offset", ["paddle", "simplecv"])
def test_lr_offset_and_dict_loss(syn, tmp_path, offset):
    import paddle.nn.functional as F

    def criterion(logits, labels):
        return {"decode.loss_ce": F.cross_entropy(logits, labels, ignore_index=255, axis=1),
                "aux.loss_ce": 0.4 * F.cross_entropy(logits, labels, ignore_index=255, axis=1),
                "acc_seg": paddle.to_tensor(0.0)}
    ov = _overrides(syn, **{"train.iters": 5, "train.lr_offset": offset, "eval.mode": "whole",
                            "lr_scheduler.power": 1.0})
    tr = Trainer(load_config(ISAID, ov), save_dir=str(tmp_path / offset), model=_TinySeg(), criterion=criterion,
                 log=None)
    tr.train()
    lrs = [r["lr"] for r in read_log(str(tmp_path / offset / "train_log.jsonl")) if r["type"] == "train"]
    poly = [0.007 * (1 - i / 5) for i in range(5)]
    expect = poly if offset == "paddle" else [poly[0]] + poly[:4]
    np.testing.assert_allclose(lrs, expect, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------------------------
# evaluation: sliding window vs a hand computation
# ----------------------------------------------------------------------------------------------------------
_RNG = np.random.default_rng(7)
_W = _RNG.normal(size=(4, 3)).astype(np.float32)
_B = _RNG.normal(size=(4,)).astype(np.float32)
_V = _RNG.normal(size=(4,)).astype(np.float32) * 3


class _Standin(nn.Layer):
    """logits_k = W x + b + v_k * mean(x over the whole padded input): window- and padding-dependent."""

    size_divisor = 16

    def __init__(self, probabilities=False):
        super().__init__()
        self.outputs_probabilities = probabilities
        self.w, self.b, self.v = (paddle.to_tensor(a) for a in (_W, _B, _V))

    def forward(self, x):
        assert x.shape[2] % 16 == 0 and x.shape[3] % 16 == 0
        out = paddle.einsum("kc,bchw->bkhw", self.w, x) + self.b.reshape([1, 4, 1, 1]) + \
            self.v.reshape([1, 4, 1, 1]) * x.mean(axis=[1, 2, 3], keepdim=True)
        return paddle.nn.functional.softmax(out, axis=1) if self.outputs_probabilities else out


def _np_logits(x):                      # x: CHW (already padded)
    return np.einsum("kc,chw->khw", _W, x) + _B[:, None, None] + _V[:, None, None] * x.mean()


def _softmax(z):
    e = np.exp(z - z.max(0, keepdims=True))
    return e / e.sum(0, keepdims=True)


def _hand(image, starts_y, starts_x, k, space):
    c, h, w = image.shape
    acc, cnt = np.zeros((4, h, w)), np.zeros((h, w))
    for y in starts_y:
        for x in starts_x:
            crop = image[:, y:y + k, x:x + k]
            padded = np.zeros((c, 32, 32), np.float32)          # 24 -> next multiple of 16
            padded[:, :k, :k] = crop
            z = _np_logits(padded)[:, :k, :k]
            acc[:, y:y + k, x:x + k] += _softmax(z) if space == "prob" else z
            cnt[y:y + k, x:x + k] += 1
    avg = acc / cnt
    return avg if space == "prob" else _softmax(avg)


@pytest.mark.parametrize("space", ["prob", "logit"])
def test_sliding_window_matches_hand_computation(space):
    image = np.random.default_rng(3).normal(size=(3, 40, 72)).astype(np.float32)
    ev = SegEvaluator(4, mode="slide", window=24, stride=20, merge=space)
    assert [(w.y, w.x) for w in ev.windows(40, 72)] == [(y, x) for y in (0, 16) for x in (0, 20, 40, 48)]
    expect = _hand(image, (0, 16), (0, 20, 40, 48), 24, space)
    probs = ev.predict(_Standin(), image)
    np.testing.assert_allclose(probs, expect, atol=2e-6)
    assert np.array_equal(probs.argmax(0), expect.argmax(0))
    # flip averaging: (p(img) + flip(p(flip(img)))) / 2, windows laid on the flipped image
    ev_f = SegEvaluator(4, mode="slide", window=24, stride=20, merge=space, flip=True)
    flipped = _hand(np.ascontiguousarray(image[:, :, ::-1]), (0, 16), (0, 20, 40, 48), 24, space)[:, :, ::-1]
    np.testing.assert_allclose(ev_f.predict(_Standin(), image), (expect + flipped) / 2, atol=2e-6)


def test_probability_models_are_not_softmaxed_again():
    image = np.random.default_rng(4).normal(size=(3, 40, 72)).astype(np.float32)
    ev = SegEvaluator(4, mode="slide", window=24, stride=20, merge="prob")
    np.testing.assert_allclose(ev.predict(_Standin(probabilities=True), image),
                               _hand(image, (0, 16), (0, 20, 40, 48), 24, "prob"), atol=2e-6)
    with pytest.raises(ValueError, match="logit"):
        SegEvaluator(4, merge="logit").predict(_Standin(probabilities=True), image)
    # whole mode: one padded pass (40x72 -> 48x80), cropped
    padded = np.zeros((3, 48, 80), np.float32)
    padded[:, :40, :72] = image
    whole = SegEvaluator(4, mode="whole").predict(_Standin(), image)
    np.testing.assert_allclose(whole, _softmax(_np_logits(padded))[:, :40, :72], atol=2e-6)


def test_evaluate_and_table(capsys):
    rng = np.random.default_rng(5)
    images = [rng.normal(size=(3, 40, 72)).astype(np.float32) for _ in range(2)]
    preds = [_hand(im, (0, 16), (0, 20, 40, 48), 24, "prob").argmax(0) for im in images]
    masks = [np.where(rng.random(p.shape) < 0.7, p, rng.integers(0, 4, p.shape)) for p in preds]
    masks[0][:3] = 255
    names = ["background", "road", "roof", "tree"]
    ev = SegEvaluator(4, mode="slide", window=24, stride=20, nan_policy="nan", class_names=names)
    res = ev.evaluate(_Standin(), list(zip(images, masks)), verbose=True)
    cm = np.zeros((4, 4), np.int64)
    for p, m in zip(preds, masks):
        keep = m != 255
        np.add.at(cm, (m[keep], p[keep]), 1)
    assert np.array_equal(np.asarray(res["confusion_matrix"]), cm)
    iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
    np.testing.assert_allclose(res["iou"], iou, atol=1e-12)
    assert res["miou"] == pytest.approx(iou.mean())
    out = capsys.readouterr().out
    for n in names:
        assert n in out
    assert f"mIoU {100 * iou.mean():.2f}" in out
    table = format_seg_table({**res, "iou": [float("nan")] + res["iou"][1:], "miou": float("nan")})
    assert "nan" in table.splitlines()[2] and "mIoU nan" in table


# ----------------------------------------------------------------------------------------------------------
# untrusted weight files in the training / evaluation tools (other entry points: test_untrusted_files.py)
# ----------------------------------------------------------------------------------------------------------
class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _poisoned_pdparams(path, marker):
    paddle.save({"conv.weight": np.zeros(2, "float32"), "x": _Payload(marker)}, str(path))
    return str(path)


@pytest.mark.parametrize("key", ["model.pretrained", "model.backbone_pretrained"])
def test_train_refuses_pretrained_files_that_would_run_code(syn, tmp_path, capsys, key):
    marker, save = tmp_path / "PAYLOAD_RAN", tmp_path / "run"
    bad = _poisoned_pdparams(tmp_path / "pretrained.pdparams", marker)
    args = ["--config", ISAID, "--save_dir", str(save), "--iters", "1", "--no_progress", "--opt"] + \
        [f"{k}={'null' if v is None else v}" for k, v in _overrides(syn).items()] + [f"{key}={bad}"]
    assert _load_tool("train").main(args) == 2
    err = capsys.readouterr().err
    assert not marker.exists() and f"error: {bad}: refused to load" in err and "posix.system" in err
    assert not save.exists() or not [n for n in os.listdir(save) if n.startswith("iter_") or n == "latest"]


def test_eval_refuses_weights_that_would_run_code_or_are_not_weights(trained, tmp_path, capsys):
    marker = tmp_path / "PAYLOAD_RAN"
    cfg_path = os.path.join(trained, "config.yaml")
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    cases = {_poisoned_pdparams(tmp_path / "bad.pdparams", marker): "refused to load",
             str(text): "is not a Paddle weights file",
             str(tmp_path / "missing.pdparams"): "no such file"}
    for weights, what in cases.items():
        out = tmp_path / "eval.json"
        assert _load_tool("eval").main(["--config", cfg_path, "--weights", weights, "--out", str(out),
                                        "--no_progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"error: {weights}") and what in err[-1], err
        assert not out.exists() and not marker.exists()


def test_progress_bar_and_eval_lines_show_the_current_values_in_the_tables_units(syn, tmp_path, monkeypatch):
    """The bar's postfix at each redraw is this step's loss (it lagged one step); the 'new best' line shows the
    metric in percent, as the eval table does."""
    import tqdm as tqdm_mod

    drawn = []

    class Bar:
        def __init__(self, *a, **k):
            self.postfix = None

        def set_postfix(self, refresh=True, **kw):
            self.postfix = kw

        def update(self, n):                    # a redraw shows the postfix set so far
            drawn.append(self.postfix)

        def write(self, s):
            pass

        def close(self):
            pass

    monkeypatch.setattr(tqdm_mod, "tqdm", Bar)
    lines = []
    ov = _overrides(syn, **{"train.iters": 3, "train.eval_interval": 3, "eval.mode": "whole",
                            "train.log_interval": 1, "eval.nan_policy": "nanmean"})
    import paddle.nn.functional as F
    tr = Trainer(load_config(ISAID, ov), save_dir=str(tmp_path / "bar"), model=_TinySeg(), progress=True,
                 criterion=lambda logits, labels: F.cross_entropy(logits, labels, ignore_index=255, axis=1),
                 log=lambda *a: lines.append(" ".join(map(str, a))))
    tr.train()
    losses = [r["loss"] for r in read_log(str(tmp_path / "bar" / "train_log.jsonl")) if r["type"] == "train"]
    assert [float(d["loss"]) for d in drawn] == pytest.approx(losses, abs=1e-4)
    text = "\n".join(lines)
    m = re.search(r"^mIoU ([0-9.]+)%", text, re.M)
    assert m, text
    table_miou = m.group(1)
    assert f"new best miou {table_miou}% at iteration 3" in text and f"best miou {table_miou}% at" in \
        text.splitlines()[-1]
