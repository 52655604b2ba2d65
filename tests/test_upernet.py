"""RSP UperNet (R50 / Swin-T / ViTAEv2-S): sizes, key layout, torch -> Paddle conversion and forward parity.

Spec: shared/specs/rsp_upernet.md (§3 backbones, §4 heads, §10 keys). Small inputs (64-96 px) keep the default
set fast; every model still pads its windows at these sizes (Swin 16->21, 8->14, 4->7, 2->7; ViTAE 16->21,
8->14), so the padding paths are exercised. Export checks are marked ``slow``.
"""
import copy

import numpy as np
import paddle
import pytest
import torch

import paddle_rs
import torch_ref
from align.weights import condition_weights
from conftest import assert_same_argmax
from convert.rules import torch_to_paddle

MODELS = ("upernet_r50", "upernet_swin_t", "upernet_vitaev2_s")
NUM_CLASSES = 6                       # != the registered default (5): exercises the override
ATOL = 1e-4                           # logits / features (§13; porting.md §7.4)

# spec §4.3 (N = 5) and §10
SPEC = {
    "upernet_r50": dict(backbone=23.508, decode=40.516, aux=2.361, total=66.385, chans=[256, 512, 1024, 2048],
                        keys=400, bb_keys=318, nbt=66, rpi=0, tables=0, linear=0),
    "upernet_swin_t": dict(backbone=27.521, decode=31.423, aux=0.887, total=59.830, chans=[96, 192, 384, 768],
                           keys=271, bb_keys=189, nbt=13, rpi=12, tables=12, linear=51),
    "upernet_vitaev2_s": dict(backbone=18.846, decode=29.604, aux=0.592, total=49.042, chans=[64, 128, 256, 512],
                              keys=626, bb_keys=544, nbt=49, rpi=6, tables=6, linear=72),
}


# ---------------------------------------------------------------------------------------------------------
# expected upstream key layout, generated from the patterns of spec §10
# ---------------------------------------------------------------------------------------------------------
def _bn(p):
    return [f"{p}.{s}" for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]


def _wb(p):
    return [f"{p}.weight", f"{p}.bias"]


def _convmodule(p):
    return [f"{p}.conv.weight"] + _bn(f"{p}.bn")


def _head_keys():
    k = []
    for i in range(4):
        k += _convmodule(f"decode_head.psp_modules.{i}.1")
    k += _convmodule("decode_head.bottleneck")
    for i in range(3):
        k += _convmodule(f"decode_head.lateral_convs.{i}") + _convmodule(f"decode_head.fpn_convs.{i}")
    k += _convmodule("decode_head.fpn_bottleneck") + _wb("decode_head.conv_seg")
    k += _convmodule("auxiliary_head.convs.0") + _wb("auxiliary_head.conv_seg")
    return k


def _r50_keys():
    k = ["conv1.weight"] + _bn("bn1")
    for li, n in enumerate([3, 4, 6, 3], 1):
        for j in range(n):
            p = f"layer{li}.{j}"
            for c in (1, 2, 3):
                k += [f"{p}.conv{c}.weight"] + _bn(f"{p}.bn{c}")
            if j == 0:
                k += [f"{p}.downsample.0.weight"] + _bn(f"{p}.downsample.1")
    return k


def _swin_keys():
    k = _wb("patch_embed.proj") + _wb("patch_embed.norm")
    for i, d in enumerate([2, 2, 6, 2]):
        for j in range(d):
            p = f"layers.{i}.blocks.{j}"
            k += _wb(f"{p}.norm1") + [f"{p}.attn.relative_position_bias_table", f"{p}.attn.relative_position_index"]
            k += _wb(f"{p}.attn.qkv") + _wb(f"{p}.attn.proj") + _wb(f"{p}.norm2")
            k += _wb(f"{p}.mlp.fc1") + _wb(f"{p}.mlp.fc2")
        if i < 3:
            k += [f"layers.{i}.downsample.reduction.weight"] + _wb(f"layers.{i}.downsample.norm")
    for i in range(4):
        k += _wb(f"norm{i}")
    return k


def _pcm(p):
    return _wb(f"{p}.0") + _bn(f"{p}.1") + _wb(f"{p}.3") + _bn(f"{p}.4") + _wb(f"{p}.6")


def _vitae_keys():
    k = []
    for i, (nd, depth) in enumerate(zip([4, 3, 2, 2], [2, 2, 8, 2])):
        rc = f"layers.{i}.RC"
        for d in range(nd):
            k += _wb(f"{rc}.PRM.convs.{d}.0")
        k += _pcm(f"{rc}.PCM")
        a = f"{rc}.attn"
        k += _wb(f"{a}.norm1") + _wb(f"{a}.attn.proj") + _wb(f"{a}.norm2") + _wb(f"{a}.mlp.fc1") + _wb(f"{a}.mlp.fc2")
        if i < 2:
            k += _wb(f"{a}.attn.qkv") + [f"{a}.attn.relative_position_bias_table", f"{a}.attn.relative_position_index"]
        else:
            k += [f"{a}.attn.qkv.weight"]                       # Q5: no qkv bias in transformer RCs
        for j in range(depth):
            p = f"layers.{i}.NC.{j}"
            k += _wb(f"{p}.norm1") + _wb(f"{p}.attn.qkv") + _wb(f"{p}.attn.proj") + _wb(f"{p}.norm2")
            k += _wb(f"{p}.mlp.fc1") + _wb(f"{p}.mlp.fc2") + _pcm(f"{p}.PCM")
            if i < 2:
                k += [f"{p}.attn.relative_position_bias_table", f"{p}.attn.relative_position_index"]
    for i in range(4):
        k += _wb(f"norm{i}")
    return k


EXPECTED_BACKBONE_KEYS = {"upernet_r50": _r50_keys, "upernet_swin_t": _swin_keys, "upernet_vitaev2_s": _vitae_keys}


# ---------------------------------------------------------------------------------------------------------
# fixtures: one converted model pair per model, with "trained-like" weights
# ---------------------------------------------------------------------------------------------------------
def _build(name, fw):
    kw = dict(num_classes=NUM_CLASSES, dropout_ratio=0.0)
    if name != "upernet_r50":
        kw["drop_path_rate"] = 0.0
    return (torch_ref if fw == "torch" else paddle_rs).build_model(name, **kw)


def _make_trained_like(tm, seed):
    """Well-conditioned random weights (align/weights.py ``condition_weights``: random affine norms / bias
    tables / classifier, small residual-branch BN gamma, BN statistics calibrated on one 64x64 batch), so that a
    1e-4 tolerance on logits tests the port and not fp32 noise."""
    return condition_weights(tm, seed, 64, classifiers=(tm.decode_head.conv_seg, tm.auxiliary_head.conv_seg))


def _convert(tm, pm):
    arrays, report = torch_to_paddle(tm.state_dict(), tm, pm)
    missing, unexpected = pm.set_state_dict({k: paddle.to_tensor(v) for k, v in arrays.items()})
    assert list(missing) == [] and list(unexpected) == []
    return arrays, report


@pytest.fixture(scope="module", params=MODELS)
def pair(request):
    name = request.param
    torch.manual_seed(0)
    paddle.seed(0)
    tm, pm = _build(name, "torch"), _build(name, "paddle")
    _make_trained_like(tm, seed=MODELS.index(name))
    arrays, report = _convert(tm, pm)
    tm.eval()
    pm.eval()
    return dict(name=name, tm=tm, pm=pm, arrays=arrays, report=report,
                torch_sd=copy.deepcopy(tm.state_dict()))


def _x(*shape, seed=1):
    return np.random.RandomState(seed).randn(*shape).astype("float32")


def _maxdiff(a, b):
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else a
    b = b.numpy() if isinstance(b, paddle.Tensor) else b
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.isfinite(a).all() and np.isfinite(b).all()
    return float(np.abs(a - b).max())


# ---------------------------------------------------------------------------------------------------------
# sizes and keys
# ---------------------------------------------------------------------------------------------------------
def _count(params):
    return sum(int(np.prod(p.shape)) for p in params) / 1e6


def test_param_counts(pair):
    spec, tm, pm = SPEC[pair["name"]], pair["tm"], pair["pm"]
    # spec counts are for N = 5; NUM_CLASSES only changes the two classifiers (N x (512 | 256) + N)
    dn = NUM_CLASSES - 5
    assert _count(tm.backbone.parameters()) == pytest.approx(spec["backbone"], abs=5e-4)
    assert _count(tm.decode_head.parameters()) - dn * 513 / 1e6 == pytest.approx(spec["decode"], abs=5e-4)
    assert _count(tm.auxiliary_head.parameters()) - dn * 257 / 1e6 == pytest.approx(spec["aux"], abs=5e-4)
    assert _count(tm.parameters()) - dn * 770 / 1e6 == pytest.approx(spec["total"], abs=5e-4)
    # Paddle: trainable parameters (BN _mean/_variance are stop_gradient parameters, excluded)
    p_train = [p for n, p in pm.named_parameters() if not n.endswith(("._mean", "._variance"))]
    assert _count(p_train) == pytest.approx(_count(tm.parameters()), abs=1e-9)
    assert list(tm.backbone.out_channels) == spec["chans"] == list(pm.backbone.out_channels)


def test_torch_keys_match_upstream_layout(pair):
    name, tm = pair["name"], pair["tm"]
    spec = SPEC[name]
    sd = tm.state_dict()
    expected = {f"backbone.{k}" for k in EXPECTED_BACKBONE_KEYS[name]()} | set(_head_keys())
    assert set(sd) == expected
    assert len(sd) == spec["keys"]
    assert sum(k.startswith("backbone.") for k in sd) == spec["bb_keys"]
    assert sum(k.endswith("num_batches_tracked") for k in sd) == spec["nbt"]
    assert sum(k.endswith("relative_position_index") for k in sd) == spec["rpi"]
    assert sum(k.endswith("relative_position_bias_table") for k in sd) == spec["tables"]
    assert sum(isinstance(m, torch.nn.Linear) for m in tm.modules()) == spec["linear"]
    c4, c3 = spec["chans"][3], spec["chans"][2]
    assert tuple(sd["decode_head.bottleneck.conv.weight"].shape) == (512, c4 + 2048, 3, 3)
    assert tuple(sd["decode_head.fpn_bottleneck.conv.weight"].shape) == (512, 2048, 3, 3)
    assert tuple(sd["decode_head.conv_seg.weight"].shape) == (NUM_CLASSES, 512, 1, 1)
    assert tuple(sd["auxiliary_head.convs.0.conv.weight"].shape) == (256, c3, 3, 3)
    if name == "upernet_swin_t":
        assert tuple(sd["backbone.layers.0.blocks.0.attn.relative_position_bias_table"].shape) == (169, 3)
        assert tuple(sd["backbone.layers.3.blocks.1.attn.relative_position_bias_table"].shape) == (169, 24)
        assert tuple(sd["backbone.layers.0.blocks.0.attn.relative_position_index"].shape) == (49, 49)
        assert tuple(sd["backbone.layers.0.blocks.0.attn.qkv.weight"].shape) == (288, 96)
        assert tuple(sd["backbone.layers.0.downsample.reduction.weight"].shape) == (192, 384)
    if name == "upernet_vitaev2_s":
        assert tuple(sd["backbone.layers.0.RC.PRM.convs.3.0.weight"].shape) == (64, 3, 7, 7)
        assert tuple(sd["backbone.layers.0.RC.attn.attn.qkv.weight"].shape) == (192, 256)
        assert tuple(sd["backbone.layers.2.RC.attn.attn.qkv.weight"].shape) == (768, 256)
        assert tuple(sd["backbone.layers.1.RC.PCM.0.weight"].shape) == (64, 4, 3, 3)      # groups 16
        assert tuple(sd["backbone.layers.3.NC.1.PCM.0.weight"].shape) == (2048, 4, 3, 3)  # groups 128
        assert tuple(sd["backbone.layers.0.NC.0.attn.relative_position_bias_table"].shape) == (169, 1)
    # strict load of an upstream-layout state dict (index buffers included)
    tm.load_state_dict(pair["torch_sd"], strict=True)


def test_paddle_keys_equal_torch_keys(pair):
    tm, pm = pair["tm"], pair["pm"]
    want = set()
    for k in tm.state_dict():
        if k.endswith(("num_batches_tracked", "relative_position_index")):
            continue
        want.add(k.replace("running_mean", "_mean").replace("running_var", "_variance"))
    assert set(pm.state_dict()) == want
    # index tables are rebuilt (non-persistable buffers) and equal the reference's
    t_buf = dict(tm.named_buffers())
    p_buf = dict(pm.named_buffers())
    rpi = [k for k in t_buf if k.endswith("relative_position_index")]
    assert len(rpi) == SPEC[pair["name"]]["rpi"]
    for k in rpi:
        np.testing.assert_array_equal(p_buf[k].numpy(), t_buf[k].numpy().reshape(-1))
    rep = pair["report"]
    assert len(rep.transposed) == SPEC[pair["name"]]["linear"]
    assert sum(r == "rebuilt buffer" for r in rep.dropped.values()) == len(rpi)


def test_layer_configuration(pair):
    """Forced-explicit defaults (known divergence D5): BN momentum/epsilon, LN epsilon, exact GELU."""
    name, tm, pm = pair["name"], pair["tm"], pair["pm"]
    t_mods = dict(tm.named_modules())
    for n, m in pm.named_sublayers():
        if isinstance(m, paddle.nn.BatchNorm2D):
            assert m._momentum == pytest.approx(0.9) and m._epsilon == pytest.approx(1e-5), n
        elif isinstance(m, paddle.nn.LayerNorm):
            assert m._epsilon == pytest.approx(t_mods[n].eps), n
            if name == "upernet_vitaev2_s":       # Q4: 1e-5 in the RCs, 1e-6 elsewhere
                assert m._epsilon == pytest.approx(1e-5 if ".RC." in n else 1e-6), n
            elif name == "upernet_swin_t":
                assert m._epsilon == pytest.approx(1e-5), n
        elif isinstance(m, paddle.nn.GELU):
            assert m._approximate is False, n


def test_registry_defaults():
    for name in MODELS:
        for lib in (paddle_rs, torch_ref):
            e = lib.get_entry(name)
            assert e.task == "seg" and e.family == "upernet"
            assert e.defaults["num_classes"] == 5 and e.defaults["dropout_ratio"] == 0.1
            if name != "upernet_r50":
                assert e.defaults["drop_path_rate"] == 0.3
    assert paddle_rs.get_entry("upernet_vitaev2_s").defaults["img_size"] == 512


def test_num_classes_override(pair):
    for m in (pair["tm"], pair["pm"]):
        assert m.num_classes == NUM_CLASSES
        assert m.decode_head.conv_seg.weight.shape[0] == NUM_CLASSES
        assert m.auxiliary_head.conv_seg.weight.shape[0] == NUM_CLASSES


# ---------------------------------------------------------------------------------------------------------
# forward parity (converted weights)
# ---------------------------------------------------------------------------------------------------------
def test_eval_parity(pair):
    tm, pm = pair["tm"], pair["pm"]
    x = _x(2, 3, 64, 64)
    with torch.no_grad():
        t_feats = tm.backbone(torch.from_numpy(x))
        t_out = tm(torch.from_numpy(x))
    with paddle.no_grad():
        p_feats = pm.backbone(paddle.to_tensor(x))
        p_out = pm(paddle.to_tensor(x))
    for i, (a, b) in enumerate(zip(t_feats, p_feats)):
        assert tuple(a.shape) == (2, SPEC[pair["name"]]["chans"][i], 16 >> i, 16 >> i)
        assert _maxdiff(a, b) <= ATOL, f"backbone level {i}"
    assert tuple(t_out.shape) == (2, NUM_CLASSES, 64, 64)
    assert _maxdiff(t_out, p_out) <= ATOL
    assert float(t_out.abs().max()) > 0.5         # logits are not trivially small
    assert_same_argmax(t_out.numpy(), p_out.numpy(), ATOL)


def test_eval_error_vs_float64(pair):
    """Paddle fp32 is as close to the torch fp64 forward as torch fp32 is: the residual diff is fp32 noise."""
    tm, pm = pair["tm"], pair["pm"]
    x = _x(1, 3, 64, 64, seed=6)
    t64 = copy.deepcopy(tm).double()
    with torch.no_grad():
        ref = t64(torch.from_numpy(x).double()).numpy()
        err_t = np.abs(tm(torch.from_numpy(x)).numpy().astype(np.float64) - ref).max()
    with paddle.no_grad():
        err_p = np.abs(pm(paddle.to_tensor(x)).numpy().astype(np.float64) - ref).max()
    assert err_p <= 4 * err_t + 2e-6, (err_p, err_t)


def test_train_parity(pair):
    """Train mode (dropout / drop path off, batch 2 for the PPM scale-1 BN): (decode, aux) at head resolution."""
    tm, pm = pair["tm"], pair["pm"]
    x = _x(2, 3, 64, 64, seed=2)
    try:
        tm.train()
        pm.train()
        with torch.no_grad():
            td, ta = tm(torch.from_numpy(x))
        with paddle.no_grad():
            pd_, pa = pm(paddle.to_tensor(x))
        assert tuple(td.shape) == (2, NUM_CLASSES, 16, 16) and tuple(ta.shape) == (2, NUM_CLASSES, 4, 4)
        assert _maxdiff(td, pd_) <= ATOL
        assert _maxdiff(ta, pa) <= ATOL
    finally:   # BN running stats were updated (torch unbiased vs Paddle biased var, D1): restore both
        tm.load_state_dict(pair["torch_sd"])
        pm.set_state_dict({k: paddle.to_tensor(v) for k, v in pair["arrays"].items()})
        tm.eval()
        pm.eval()


def test_eval_non_square(pair):
    name, tm, pm = pair["name"], pair["tm"], pair["pm"]
    h, w = (64, 96) if name != "upernet_swin_t" else (70, 100)   # Swin: also pads to the patch size
    x = _x(1, 3, h, w, seed=3)
    if name == "upernet_vitaev2_s":      # Q3: square inputs only (upstream fails too)
        with pytest.raises(ValueError, match="square"):
            tm(torch.from_numpy(x))
        with pytest.raises(ValueError, match="square"):
            pm(paddle.to_tensor(x))
        return
    with torch.no_grad():
        t_out = tm(torch.from_numpy(x))
    with paddle.no_grad():
        p_out = pm(paddle.to_tensor(x))
    assert tuple(t_out.shape) == tuple(p_out.shape) == (1, NUM_CLASSES, h, w)
    assert _maxdiff(t_out, p_out) <= ATOL


# ---------------------------------------------------------------------------------------------------------
# Swin shifted windows
# ---------------------------------------------------------------------------------------------------------
def _upstream_mask(Hp, Wp, ws, shift):
    """Upstream algorithm (torch slicing + masked_fill), written independently of the modules under test."""
    img = torch.zeros((1, Hp, Wp, 1))
    cnt = 0
    for h in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for w in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[:, h, w, :] = cnt
            cnt += 1
    win = img.view(1, Hp // ws, ws, Wp // ws, ws, 1).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws)
    m = win.unsqueeze(1) - win.unsqueeze(2)
    return m.masked_fill(m != 0, -100.0).masked_fill(m == 0, 0.0).numpy()


def test_swin_shifted_window_mask_with_padding():
    from paddle_rs.models.backbones import swin as p_swin
    from torch_ref.models.backbones import swin as t_swin

    H, W, ws, s = 10, 12, 7, 3          # needs padding to 14 x 14
    Hp, Wp = 14, 14
    ref = _upstream_mask(Hp, Wp, ws, s)
    for mod in (t_swin, p_swin):
        m = mod.shifted_window_mask(Hp, Wp, ws, s)
        assert m.shape == (4, 49, 49) and m.dtype == np.float32
        np.testing.assert_array_equal(m, ref)
    assert not ref[0].any()                                   # interior window: no region boundary
    assert (ref[3] == -100).any() and (ref[1] == -100).any()

    # a shifted block at a size needing padding: torch vs Paddle, with a non-trivial bias table
    torch.manual_seed(0)
    tl = t_swin.BasicLayer(32, 2, 2, window_size=ws, downsample=True)
    pl = p_swin.BasicLayer(32, 2, 2, window_size=ws, downsample=True)
    with torch.no_grad():
        for n, p in tl.named_parameters():
            if "relative_position_bias_table" in n or "norm" in n:
                p.copy_(torch.randn(p.shape))
    assert tl.blocks[1].shift_size == s and tl.blocks[0].shift_size == 0
    tl.eval()
    pl.eval()

    class _Wrap(torch.nn.Module):          # give the converter a module tree to walk
        def __init__(self, m):
            super().__init__()
            self.m = m

    class _PWrap(paddle.nn.Layer):
        def __init__(self, m):
            super().__init__()
            self.m = m

    _convert(_Wrap(tl), _PWrap(pl))
    x = _x(2, H * W, 32, seed=4)
    with torch.no_grad():
        t_out, _, _, t_down, th, tw = tl(torch.from_numpy(x), H, W)
    p_out, _, _, p_down, ph, pw = pl(paddle.to_tensor(x), H, W)
    assert (th, tw) == (ph, pw) == (5, 6)
    assert _maxdiff(t_out, p_out) <= 1e-5
    assert _maxdiff(t_down, p_down) <= 1e-5

    # the mask matters: dropping it in the shifted block changes the output
    blk = tl.blocks[1]
    with torch.no_grad():
        xin = tl.blocks[0](torch.from_numpy(x), H, W)
        mask = torch.from_numpy(ref)
        assert (blk(xin, H, W, mask) - blk(xin, H, W, torch.zeros_like(mask))).abs().max() > 1e-3


def test_drop_path_switch():
    """Drop path is active only in train mode (both frameworks)."""
    from paddle_rs.models.backbones import swin as p_swin
    from torch_ref.models.backbones import swin as t_swin

    paddle.seed(0)
    torch.manual_seed(0)
    x = _x(2, 3, 32, 32, seed=7)
    # both stages (the last block drops with p = 0.5): a draw that keeps every sample everywhere is unlikely
    for mod, run in ((t_swin, lambda m: np.concatenate([o.detach().numpy().ravel() for o in m(torch.from_numpy(x))])),
                     (p_swin, lambda m: np.concatenate([o.numpy().ravel() for o in m(paddle.to_tensor(x))]))):
        m = mod.SwinTransformer(embed_dim=8, depths=(2, 2), num_heads=(1, 2), drop_path_rate=0.5, out_indices=(0, 1))
        m.train()
        assert np.abs(run(m) - run(m)).max() > 0
        m.eval()
        assert np.array_equal(run(m), run(m))


# ---------------------------------------------------------------------------------------------------------
# ViTAE quirks that are not visible in the forward parity
# ---------------------------------------------------------------------------------------------------------
def test_vitae_drop_path_slices_and_unused_params():
    from paddle_rs.models.backbones.vitaev2 import ViTAEv2 as PV
    from torch_ref.models.backbones.vitaev2 import ViTAEv2 as TV

    dpr = np.linspace(0, 0.3, 14)
    starts = [0, 2, 2, 8]                                     # Q1: start = NC_depth[i-1], not cumulative
    built = {}
    for cls in (TV, PV):
        built[cls] = m = cls(drop_path_rate=0.3)
        for i, (st, depth) in enumerate(zip(starts, [2, 2, 8, 2])):
            got = [getattr(nc.drop_path, "drop_prob", 0.0) for nc in m.layers[i].NC]
            np.testing.assert_allclose(got, dpr[st:st + depth], atol=1e-6)

    # Q2: norm0..3 and the 6 bias tables never receive a gradient (eval mode: no drop path, no BN batch stats)
    tm = built[TV].eval()
    sum(o.sum() for o in tm(torch.randn(1, 3, 32, 32))).backward()
    no_grad = sorted(n for n, p in tm.named_parameters() if p.grad is None)
    expect = sorted([f"norm{i}.{w}" for i in range(4) for w in ("weight", "bias")]
                    + [n for n, _ in tm.named_parameters() if n.endswith("relative_position_bias_table")])
    assert len(expect) == 14 and no_grad == expect


# ---------------------------------------------------------------------------------------------------------
# export (porting.md §5.3 / §5.5): fixed H/W, dynamic batch
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_export_fixed_shape(name, tmp_path):
    pm = _build(name, "paddle")
    pm.eval()
    h, w = (64, 64) if name == "upernet_vitaev2_s" else (64, 96)
    spec = [paddle.static.InputSpec([None, 3, h, w], "float32", name="image")]
    paddle.jit.save(paddle.jit.to_static(pm, input_spec=spec, full_graph=True), str(tmp_path / "model"))
    loaded = paddle.jit.load(str(tmp_path / "model"))
    for b in (1, 2):
        x = paddle.to_tensor(_x(b, 3, h, w, seed=5 + b))
        assert _maxdiff(pm(x).numpy(), loaded(x)) <= 1e-5
