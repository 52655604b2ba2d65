"""RSMamba (rsmamba.md) and the selective scan: torch reference vs Paddle port.

Default suite: tiny configurations plus one full-width/full-depth ``rsmamba_b`` at 64 px (64 tokens).
``-m slow``: full ``rsmamba_b`` at 224 px (784 tokens), batch 2, and ``l``/``h`` at 64 px.
"""
import numpy as np
import paddle
import pytest
import torch

import paddle_rs
import torch_ref
from conftest import assert_same_argmax
from convert.rules import torch_to_paddle
from paddle_rs.models.backbones.mamba import MambaMixer as PMixer
from paddle_rs.models.backbones.mamba import PatchEmbed as PPatchEmbed
from paddle_rs.models.rsmamba import RSMamba as PRSMamba
from paddle_rs.models.rsmamba import make_perms as p_make_perms
from paddle_rs.ops import selective_scan as pscan
from paddle_rs.ops._dygraph_ext import dygraph_ext
from torch_ref.models.backbones.mamba import MambaMixer as TMixer
from torch_ref.models.backbones.mamba import PatchEmbed as TPatchEmbed
from torch_ref.models.rsmamba import RSMamba as TRSMamba
from torch_ref.models.rsmamba import make_perms as t_make_perms
from torch_ref.ops import selective_scan as tscan

TINY = dict(embed_dims=32, num_layers=2, feedforward_channels=64)   # 32 px -> 16 tokens

# rsmamba.md §5 (exact counts)
SPEC = {
    "b": dict(D=192, layers=24, I=384, R=12, mixer=251_520, gate=1_728, patch=147_456, pos=150_528, ln=1_152,
              backbone=6_377_088, head={21: 4_053, 30: 5_790, 45: 8_685},
              total={21: 6_381_141, 30: 6_382_878, 45: 6_385_773}, tensors=250),
    "l": dict(D=256, layers=36, I=512, R=16, mixer=437_760, gate=2_304, patch=196_608, pos=200_704, ln=1_536,
              backbone=16_241_152, head={21: 5_397, 30: 7_710, 45: 11_565},
              total={21: 16_246_549, 30: 16_248_862, 45: 16_252_717}, tensors=370),
    "h": dict(D=320, layers=48, I=640, R=20, mixer=675_200, gate=2_880, patch=245_760, pos=250_880, ln=1_920,
              backbone=33_046_400, head={21: 6_741, 30: 9_630, 45: 14_445},
              total={21: 33_053_141, 30: 33_056_030, 45: 33_060_845}, tensors=490),
}
LINEAR_SUFFIXES = ("in_proj.weight", "x_proj.weight", "dt_proj.weight", "out_proj.weight", ".0.weight",
                   "head.fc.weight")


# ------------------------------------------------------------------------------------------------ helpers
@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """These tests run many small ops: torch's second OpenMP thread only adds contention (2x slower on 2 shared
    cores). Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _convert(tm, pm):
    sd, report = torch_to_paddle(tm.state_dict(), tm, pm)
    missing, unexpected = pm.set_state_dict({k: paddle.to_tensor(v) for k, v in sd.items()})
    assert not missing and not unexpected
    return report


def _perturb(tm, seed=1, scale=0.1):
    """Move the special parameters away from their init (A_log = log n, D = 1, LN = 1/0) so parity is meaningful."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in tm.named_parameters():
            if name.split(".")[-1] in ("A_log", "D", "bias") or "norm" in name or ".ln" in name:
                p.add_(scale * torch.randn(p.shape, generator=g))


def _pair(cls_t, cls_p, *args, seed=0, **kw):
    torch.manual_seed(seed)
    tm = cls_t(*args, **kw)
    pm = cls_p(*args, **kw)
    _perturb(tm)
    _convert(tm, pm)
    tm.eval()
    pm.eval()
    return tm, pm


def _numel(shape):
    return int(np.prod(shape))


def _expected_keys(arch, num_classes):
    s = SPEC[arch]
    D, I, R, N = s["D"], s["I"], s["R"], 16
    keys = [("backbone.pos_embed", [1, 784, D]), ("backbone.patch_embed.projection.weight", [D, 3, 16, 16])]
    for i in range(s["layers"]):
        p = f"backbone.layers.{i}."
        keys += [(p + "A_log", [I, N]), (p + "D", [I]), (p + "conv1d.weight", [I, 1, 4]), (p + "conv1d.bias", [I]),
                 (p + "in_proj.weight", [2 * I, D]), (p + "x_proj.weight", [R + 2 * N, I]),
                 (p + "dt_proj.weight", [I, R]), (p + "dt_proj.bias", [I]), (p + "out_proj.weight", [D, I])]
    keys += [(f"backbone.gate_layers.{i}.0.weight", [3, 3 * D]) for i in range(s["layers"])]
    for norm in ("pre_norm", "ln1", "ln2"):
        keys += [(f"backbone.{norm}.weight", [D]), (f"backbone.{norm}.bias", [D])]
    keys += [("head.fc.weight", [num_classes, D]), ("head.fc.bias", [num_classes])]
    return keys


# ------------------------------------------------------------------------------------------------ registry / layout
def test_wrong_input_size_is_a_clear_error():
    m = paddle_rs.build_model("rsmamba_b", num_classes=3, img_size=64)
    m.eval()
    with pytest.raises(ValueError, match=r"takes \[B, C, 64, 64\].*got shape \[1, 3, 96, 96\].*img_size=\(96, 96\)"):
        m(paddle.zeros([1, 3, 96, 96]))
    with paddle.no_grad():
        assert m(paddle.zeros([1, 3, 64, 64])).shape == [1, 3]


def test_registry_and_num_classes_override():
    for lib in (torch_ref, paddle_rs):
        names = lib.list_models()
        for arch in "blh":
            assert f"rsmamba_{arch}" in names
            entry = lib.get_entry(f"rsmamba_{arch}")
            assert entry.task == "cls" and entry.family == "rsmamba" and entry.defaults["num_classes"] == 21
    tm = torch_ref.build_model("rsmamba_b", num_classes=45)
    pm = paddle_rs.build_model("rsmamba_b", num_classes=45)
    assert list(tm.head.fc.weight.shape) == [45, 192] and list(pm.head.fc.weight.shape) == [192, 45]


@pytest.mark.parametrize("arch", ["b", "l", "h"])
def test_param_counts(arch):
    s = SPEC[arch]
    tm = torch_ref.build_model(f"rsmamba_{arch}")
    pm = paddle_rs.build_model(f"rsmamba_{arch}")
    bb = tm.backbone
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(bb.layers[0]) == s["mixer"]
    assert count(bb.gate_layers[0]) == s["gate"]
    assert count(bb.patch_embed) == s["patch"]
    assert bb.pos_embed.numel() == s["pos"]
    assert count(bb.pre_norm) + count(bb.ln1) + count(bb.ln2) == s["ln"]
    assert count(bb) == s["backbone"]
    for c in (21, 30, 45):     # head: D*C + C
        assert s["D"] * c + c == s["head"][c] and s["backbone"] + s["head"][c] == s["total"][c]
    assert count(tm) == s["total"][21]
    assert sum(_numel(p.shape) for p in pm.parameters()) == s["total"][21]
    assert sum(_numel(p.shape) for p in pm.backbone.layers[0].parameters()) == s["mixer"]


@pytest.mark.parametrize("arch", ["b", "l", "h"])
def test_state_dict_layout(arch):
    expected = _expected_keys(arch, 30)
    assert len(expected) == SPEC[arch]["tensors"]
    tm = torch_ref.build_model(f"rsmamba_{arch}", num_classes=30, perm_seed=0)   # fixed perms are not saved
    pm = paddle_rs.build_model(f"rsmamba_{arch}", num_classes=30, perm_seed=0)
    tsd, psd = tm.state_dict(), pm.state_dict()
    assert [(k, list(v.shape)) for k, v in tsd.items()] == expected        # upstream order and shapes
    assert set(psd) == set(tsd)
    for k, shape in expected:
        want = shape[::-1] if k.endswith(LINEAR_SUFFIXES) else shape
        assert list(psd[k].shape) == want, k
    if arch == "b":
        report = _convert(tm, pm)
        assert len(report.transposed) == 24 * 4 + 24 + 1 and not report.dropped
        assert not any(k.endswith("A_log") for k in report.transposed)


def test_patch_embed_adaptive_padding():
    torch.manual_seed(0)
    t, p = TPatchEmbed(3, 8, 16, 8), PPatchEmbed(3, 8, 16, 8)
    _convert(t, p)
    for size, hw in ((224, 28), (230, 29), (32, 4)):
        x = np.random.default_rng(size).standard_normal((1, 3, size, size)).astype("float32")
        yt, shape_t = t(torch.from_numpy(x))
        yp, shape_p = p(paddle.to_tensor(x))
        assert tuple(shape_t) == tuple(shape_p) == (hw, hw) and list(yp.shape) == [1, hw * hw, 8]
        np.testing.assert_allclose(yp.numpy(), yt.detach().numpy(), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------ selective scan
def _scan_inputs(b=2, d=8, n=4, length=37, seed=0):
    rng = np.random.default_rng(seed)
    return dict(u=rng.standard_normal((b, d, length)), delta=rng.standard_normal((b, d, length)) - 1.0,
                A=-np.exp(rng.standard_normal((d, n))), B=rng.standard_normal((b, n, length)),
                C=rng.standard_normal((b, n, length)), D=rng.standard_normal(d), z=rng.standard_normal((b, d, length)),
                delta_bias=0.5 * rng.standard_normal(d))


NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _torch_scan(fn, arrs, dtype, gout, **kw):
    ts = {k: torch.tensor(v, dtype=dtype, requires_grad=True) for k, v in arrs.items()}
    y = fn(**ts, **kw)
    y.backward(torch.tensor(gout, dtype=dtype))
    return y.detach().numpy(), {k: t.grad.numpy() for k, t in ts.items()}


def _paddle_scan(fn, arrs, dtype, gout, **kw):
    ts = {k: paddle.to_tensor(v.astype(dtype), stop_gradient=False) for k, v in arrs.items()}
    y = fn(**ts, **kw)
    grads = paddle.grad([y], list(ts.values()), [paddle.to_tensor(gout.astype(dtype))])
    return y.numpy(), {k: g.numpy() for k, g in zip(ts, grads)}


def _rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.parametrize("chunk_size", [16, 5])
def test_scan_matches_sequential_reference(chunk_size):
    """Chunked scan with hand-written backward == plain sequential recurrence with autograd (fp64: to rounding;
    fp32: vs the fp64 reference), both frameworks; l = 37 is not a multiple of the chunk size."""
    arrs = _scan_inputs()
    gout = np.random.default_rng(9).standard_normal(arrs["u"].shape)
    kw = dict(delta_softplus=True)
    y_ref, g_ref = _torch_scan(tscan.selective_scan_ref, arrs, torch.float64, gout, **kw)
    y_pref, g_pref = _paddle_scan(pscan.selective_scan_ref, arrs, "float64", gout, **kw)
    assert _rel(y_pref, y_ref) < 1e-12      # the two references agree
    for dtype_t, dtype_p, tol in ((torch.float64, "float64", 1e-12), (torch.float32, "float32", 2e-6)):
        y_t, g_t = _torch_scan(tscan.selective_scan, arrs, dtype_t, gout, chunk_size=chunk_size, **kw)
        y_p, g_p = _paddle_scan(pscan.selective_scan, arrs, dtype_p, gout, chunk_size=chunk_size, **kw)
        assert _rel(y_t, y_ref) < tol and _rel(y_p, y_ref) < tol
        for k in NAMES:
            assert _rel(g_t[k], g_ref[k]) < tol * 5, (k, dtype_p)
            assert _rel(g_p[k], g_ref[k]) < tol * 5, (k, dtype_p)


def test_scan_optional_args_layouts_and_frozen_inputs():
    arrs = _scan_inputs(length=20, seed=3)
    gout = np.random.default_rng(4).standard_normal(arrs["u"].shape)
    base = {k: arrs[k] for k in ("u", "delta", "A", "B", "C")}
    y_ref, g_ref = _torch_scan(tscan.selective_scan_ref, base, torch.float64, gout)
    y_t, g_t = _torch_scan(tscan.selective_scan, base, torch.float64, gout)
    y_p, g_p = _paddle_scan(pscan.selective_scan, base, "float64", gout)
    assert _rel(y_t, y_ref) < 1e-12 and _rel(y_p, y_ref) < 1e-12
    for k in base:
        assert _rel(g_t[k], g_ref[k]) < 1e-12 and _rel(g_p[k], g_ref[k]) < 1e-12
    # channels-last entry point == mamba layout
    tr = lambda a: np.ascontiguousarray(np.swapaxes(a, 1, 2)) if a.ndim == 3 else a
    blc = {k: tr(v) for k, v in arrs.items()}
    full_t = tscan.selective_scan(**{k: torch.tensor(v) for k, v in arrs.items()}, delta_softplus=True)
    blc_t = tscan.selective_scan_blc(**{k: torch.tensor(v) for k, v in blc.items()}, delta_softplus=True)
    full_p = pscan.selective_scan(**{k: paddle.to_tensor(v) for k, v in arrs.items()}, delta_softplus=True)
    blc_p = pscan.selective_scan_blc(**{k: paddle.to_tensor(v) for k, v in blc.items()}, delta_softplus=True)
    np.testing.assert_allclose(tr(blc_t.numpy()), full_t.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(tr(blc_p.numpy()), full_p.numpy(), rtol=0, atol=1e-12)
    # Paddle PyLayer with some inputs frozen (stop_gradient) and a no-grad call give the same forward
    ts = {k: paddle.to_tensor(v, stop_gradient=k not in ("u", "A")) for k, v in arrs.items()}
    y = pscan.selective_scan(**ts, delta_softplus=True)
    gu, gA = paddle.grad([y], [ts["u"], ts["A"]], [paddle.to_tensor(gout)])
    _, g_all = _paddle_scan(pscan.selective_scan, arrs, "float64", gout, delta_softplus=True)
    np.testing.assert_allclose(gu.numpy(), g_all["u"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gA.numpy(), g_all["A"], rtol=1e-12, atol=1e-12)
    with paddle.no_grad():
        y_ng = pscan.selective_scan(**ts, delta_softplus=True)
    np.testing.assert_array_equal(y_ng.numpy(), y.numpy())


def test_scan_torch_vs_paddle_fp32():
    arrs = _scan_inputs(b=3, d=16, n=16, length=50, seed=5)
    arrs = {k: v.astype("float32") for k, v in arrs.items()}
    gout = np.random.default_rng(6).standard_normal(arrs["u"].shape)
    y_t, g_t = _torch_scan(tscan.selective_scan, arrs, torch.float32, gout, delta_softplus=True)
    y_p, g_p = _paddle_scan(pscan.selective_scan, arrs, "float32", gout, delta_softplus=True)
    assert np.abs(y_t - y_p).max() < 1e-5
    for k in NAMES:
        assert _rel(g_p[k], g_t[k]) < 1e-5, k


# ------------------------------------------------------------------------------------------------ mixer
def test_mixer_parity_forward_and_grads():
    tmix, pmix = _pair(TMixer, PMixer, 32, 64, chunk_size=8)
    assert tmix.time_step_rank == pmix.time_step_rank == 2
    x = np.random.default_rng(0).standard_normal((2, 37, 32)).astype("float32")
    g = np.random.default_rng(1).standard_normal((2, 37, 32)).astype("float32")
    xt = torch.tensor(x, requires_grad=True)
    xp = paddle.to_tensor(x, stop_gradient=False)
    yt, yp = tmix(xt), pmix(xp)
    assert np.abs(yt.detach().numpy() - yp.numpy()).max() < 1e-5
    yt.backward(torch.from_numpy(g))
    yp.backward(paddle.to_tensor(g))
    assert _rel(xp.grad.numpy(), xt.grad.numpy()) < 1e-5
    tgrads = dict(tmix.named_parameters())
    for name, p in pmix.named_parameters():
        gt = tgrads[name].grad.numpy()
        gt = gt.T if name.endswith("_proj.weight") else gt
        assert _rel(p.grad.numpy(), gt) < 1e-4, name


# ------------------------------------------------------------------------------------------------ whole model
@pytest.mark.parametrize("path_type,pe_type", [("forward_reverse_shuffle_gate", "learnable"),
                                               ("forward_reverse_shuffle_mean", "sine"),
                                               ("forward_reverse_gate", "none"),
                                               ("forward_reverse_mean", "learnable"),
                                               ("forward", "learnable")])
def test_tiny_model_parity_all_paths(path_type, pe_type):
    tm, pm = _pair(TRSMamba, PRSMamba, arch=TINY, img_size=32, num_classes=7, path_type=path_type,
                   pe_type=pe_type)
    perms = t_make_perms(2, 16, 123)
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype("float32")
    with torch.no_grad():
        yt = tm(torch.from_numpy(x), torch.from_numpy(perms)).numpy()
    yp = pm(paddle.to_tensor(x), paddle.to_tensor(perms)).numpy()
    assert yt.shape == yp.shape == (2, 7)
    assert np.abs(yt - yp).max() < 1e-5


def test_tiny_model_train_step_grads():
    """One loss/backward in train mode (dropout p=0) with injected perms: loss and every parameter gradient."""
    tm, pm = _pair(TRSMamba, PRSMamba, arch=TINY, img_size=32, num_classes=5)
    tm.train()
    pm.train()
    perms = t_make_perms(2, 16, 7)
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype("float32")
    y = np.array([1, 4])
    lt = torch.nn.functional.cross_entropy(tm(torch.from_numpy(x), torch.from_numpy(perms)), torch.from_numpy(y),
                                           label_smoothing=0.1)
    lp = paddle.nn.functional.cross_entropy(pm(paddle.to_tensor(x), paddle.to_tensor(perms)), paddle.to_tensor(y),
                                            label_smoothing=0.1)
    assert abs(lt.item() - lp.item()) < 1e-6
    lt.backward()
    lp.backward()
    tgrads = dict(tm.named_parameters())
    for name, p in pm.named_parameters():
        gt = tgrads[name].grad.numpy()
        gt = gt.T if name.endswith(LINEAR_SUFFIXES) else gt
        assert _rel(p.grad.numpy(), gt) < 1e-4, name


@pytest.mark.requires(dygraph_ext() is not None, "without paddle_rs's dygraph ops LayerNorm is Paddle's own (wrong "
                                                  "here) and the extension is unavailable (no compiler?)")
def test_input_gradient_with_frozen_parameters():
    """The README's recipe for an input-gradient (saliency) map: freeze the parameters, paddle.grad w.r.t. the
    image. Paddle 3.3.1's own layer_norm drops the (perturbed) LayerNorm weights from the input gradient when
    they are frozen (57 % off torch on rsmamba_b); the accelerator's LayerNorm (paddle_rs.accelerate) must not."""
    from paddle_rs import accelerate
    tm, pm = _pair(TRSMamba, PRSMamba, arch=TINY, img_size=32, num_classes=5)
    accelerate(pm)
    perms = t_make_perms(2, 16, 11)
    x = np.random.default_rng(4).standard_normal((1, 3, 32, 32)).astype("float32")
    xt = torch.from_numpy(x).requires_grad_()
    tm(xt, torch.from_numpy(perms))[0, 2].backward()
    for p in pm.parameters():
        p.stop_gradient = True
    xp = paddle.to_tensor(x, stop_gradient=False)
    (gp,) = paddle.grad([pm(xp, paddle.to_tensor(perms))[0, 2]], [xp])
    assert _rel(gp.numpy(), xt.grad.numpy()) < 1e-4


def test_permutation_modes():
    assert np.array_equal(t_make_perms(3, 16, 5), p_make_perms(3, 16, 5))
    perms = t_make_perms(3, 16, 5)
    assert perms.dtype == np.int64 and all(np.array_equal(np.sort(p), np.arange(16)) for p in perms)
    x = np.random.default_rng(4).standard_normal((1, 3, 32, 32)).astype("float32")
    # random mode (upstream): fresh permutations per call
    tm, pm = _pair(TRSMamba, PRSMamba, arch=TINY, img_size=32)
    with torch.no_grad():
        a, b = tm(torch.from_numpy(x)).numpy(), tm(torch.from_numpy(x)).numpy()
    assert np.abs(a - b).max() > 1e-6
    a, b = pm(paddle.to_tensor(x)).numpy(), pm(paddle.to_tensor(x)).numpy()
    assert np.abs(a - b).max() > 1e-6
    # seeded mode: deterministic, identical across frameworks, equal to passing make_perms(seed)
    tm, pm = _pair(TRSMamba, PRSMamba, arch=TINY, img_size=32, perm_seed=11)
    with torch.no_grad():
        a, b = tm(torch.from_numpy(x)).numpy(), tm(torch.from_numpy(x)).numpy()
        given = tm(torch.from_numpy(x), t_make_perms(2, 16, 11)).numpy()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, given)
    c, d = pm(paddle.to_tensor(x)).numpy(), pm(paddle.to_tensor(x)).numpy()
    np.testing.assert_array_equal(c, d)
    assert np.abs(a - c).max() < 1e-5
    with pytest.raises(ValueError):
        tm(torch.from_numpy(x), t_make_perms(3, 16, 0))
    with pytest.raises(ValueError):
        pm(paddle.to_tensor(x), p_make_perms(3, 16, 0))


def _logits_parity(arch, img, batch, tol=1e-4):
    tm, pm = _pair(TRSMamba, PRSMamba, arch=arch, img_size=img, num_classes=21)
    perms = tm.make_perms(0)
    x = np.random.default_rng(0).standard_normal((batch, 3, img, img)).astype("float32")
    with torch.no_grad():
        yt = tm(torch.from_numpy(x), torch.from_numpy(perms)).numpy()
    with paddle.no_grad():
        yp = pm(paddle.to_tensor(x), paddle.to_tensor(perms)).numpy()
    assert np.abs(yt - yp).max() < tol
    assert_same_argmax(yt, yp, tol)


def test_rsmamba_b_logits_parity_reduced():
    """Full-width, full-depth rsmamba_b at 64 px (64 tokens): converted weights, injected perms."""
    _logits_parity("b", 64, 1)


@pytest.mark.slow
def test_rsmamba_b_logits_parity_224():
    _logits_parity("b", 224, 2)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["l", "h"])
def test_rsmamba_lh_logits_parity_reduced(arch):
    _logits_parity(arch, 64, 1)


# ------------------------------------------------------------------------------------------------ export
def _predictor(prefix):
    cfg = paddle.inference.Config(prefix + ".json", prefix + ".pdiparams")
    cfg.disable_gpu()
    cfg.disable_mkldnn()
    cfg.switch_ir_optim(True)
    cfg.disable_glog_info()
    return paddle.inference.create_predictor(cfg)


def _run_predictor(pred, arrays):
    for name, a in zip(pred.get_input_names(), arrays):
        h = pred.get_input_handle(name)
        h.reshape(a.shape)
        h.copy_from_cpu(a)
    pred.run()
    return pred.get_output_handle(pred.get_output_names()[0]).copy_to_cpu()


def test_export_mixer_dynamic_length(tmp_path):
    """to_static -> jit.save -> jit.load and Paddle Inference at two sequence lengths (and batch sizes) that
    differ from the trace: the scan is a while loop over a dynamic length, equal to dygraph."""
    _, pmix = _pair(TMixer, PMixer, 32, 64, chunk_size=8)
    spec = [paddle.static.InputSpec([None, None, 32], "float32", "hidden")]
    static = paddle.jit.to_static(pmix, input_spec=spec, full_graph=True)
    prefix = str(tmp_path / "mixer")
    paddle.jit.save(static, prefix)
    graph = open(prefix + ".json").read()
    assert "while" in graph
    loaded, pred = paddle.jit.load(prefix), _predictor(prefix)
    for batch, length in ((1, 10), (3, 37)):
        x = np.random.default_rng(length).standard_normal((batch, length, 32)).astype("float32")
        ref = pmix(paddle.to_tensor(x)).numpy()
        np.testing.assert_allclose(loaded(paddle.to_tensor(x)).numpy(), ref, rtol=0, atol=1e-6)
        np.testing.assert_allclose(_run_predictor(pred, [x]), ref, rtol=0, atol=1e-6)


def test_export_tiny_model_seeded(tmp_path):
    tm, pm = _pair(TRSMamba, PRSMamba, arch=TINY, img_size=32, num_classes=5, perm_seed=3)
    spec = [paddle.static.InputSpec([None, 3, 32, 32], "float32", "image")]
    prefix = str(tmp_path / "model")
    paddle.jit.save(paddle.jit.to_static(pm, input_spec=spec, full_graph=True), prefix)
    loaded, pred = paddle.jit.load(prefix), _predictor(prefix)
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype("float32")
        ref = pm(paddle.to_tensor(x)).numpy()
        with torch.no_grad():
            ref_t = tm(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(loaded(paddle.to_tensor(x)).numpy(), ref, rtol=0, atol=1e-6)
        np.testing.assert_allclose(_run_predictor(pred, [x]), ref, rtol=0, atol=1e-6)
        assert np.abs(ref - ref_t).max() < 1e-5
