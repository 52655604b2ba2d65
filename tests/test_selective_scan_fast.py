"""Fused C++ CPU selective scan (paddle_rs/ops/csrc/selective_scan_cpu.cc) vs the pure-Paddle scan.

The extension is compiled on first use (~20 s, then cached under ~/.cache/paddle_rs/ops); the tests that need it
are skipped when it cannot be built (no compiler), and the fallback path is tested either way.
"""
import os

import numpy as np
import paddle
import pytest

from conftest import require
from paddle_rs.ops import selective_scan as ps


@pytest.fixture(scope="module")
def ext():
    m = ps.fused_ext()
    require(m is not None, "fused selective-scan extension unavailable (no compiler?)")
    return m


@pytest.fixture
def pure(monkeypatch):
    """Force the pure-Paddle scan (as when the extension is unavailable)."""
    monkeypatch.setitem(ps._EXT_STATE, "module", None)


def _inputs(b, l, d, n=16, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype("float32")
    A = -np.exp(0.3 * f(d, n) + np.log(np.arange(1, n + 1, dtype="float32")))
    return dict(u=f(b, l, d), delta=scale * f(b, l, d), A=A, B=f(b, l, n), C=f(b, l, n), D=1 + 0.1 * f(d),
                z=f(b, l, d), delta_bias=f(d))


def _run(arrs, gout, present, **kw):
    ts = {k: paddle.to_tensor(v, stop_gradient=False) if k in present else None for k, v in arrs.items()}
    y = ps.selective_scan_blc(**ts, fused=True, **kw)
    grads = paddle.grad([y], [ts[k] for k in present], [paddle.to_tensor(gout)])
    return y.numpy(), {k: g.numpy() for k, g in zip(present, grads)}


ALL = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


@pytest.mark.parametrize("b,l,d,chunk", [(2, 37, 40, 16), (1, 5, 16, 16), (3, 64, 33, 8), (2, 100, 64, 32)])
@pytest.mark.parametrize("present,softplus", [(ALL, True), (("u", "delta", "A", "B", "C"), False),
                                              (("u", "delta", "A", "B", "C", "z"), True)])
def test_fused_matches_pure_forward_backward(ext, monkeypatch, b, l, d, chunk, present, softplus):
    arrs = _inputs(b, l, d, seed=l)
    if not softplus:                                             # delta must be >= 0 without the softplus
        arrs["delta"], arrs["delta_bias"] = np.abs(arrs["delta"]), np.abs(arrs["delta_bias"])
    gout = np.random.default_rng(1).standard_normal((b, l, d)).astype("float32")
    y_f, g_f = _run(arrs, gout, present, delta_softplus=softplus, chunk_size=chunk)
    monkeypatch.setitem(ps._EXT_STATE, "module", None)
    y_p, g_p = _run(arrs, gout, present, delta_softplus=softplus, chunk_size=chunk)
    tol = lambda ref: 2e-5 * max(1.0, np.abs(ref).max())        # fp32 rounding (different exp / sum order)
    assert np.abs(y_f - y_p).max() <= tol(y_p)
    for k in present:
        assert np.abs(g_f[k] - g_p[k]).max() <= tol(g_p[k]), k


def test_fused_no_grad_and_frozen_inputs(ext, monkeypatch):
    arrs = _inputs(2, 50, 48)
    ts = {k: paddle.to_tensor(v) for k, v in arrs.items()}
    with paddle.no_grad():
        y_ng = ps.selective_scan_blc(**ts, delta_softplus=True, fused=True).numpy()
    ts["u"].stop_gradient = False                    # only u trainable: other grads are None
    y = ps.selective_scan_blc(**ts, delta_softplus=True, fused=True)
    (gu,) = paddle.grad([y.sum()], [ts["u"]])
    monkeypatch.setitem(ps._EXT_STATE, "module", None)
    y_p = ps.selective_scan_blc(**ts, delta_softplus=True, fused=True)
    (gu_p,) = paddle.grad([y_p.sum()], [ts["u"]])
    np.testing.assert_array_equal(y_ng, y.numpy())
    np.testing.assert_allclose(y.numpy(), y_p.numpy(), rtol=0, atol=2e-5 * np.abs(y_p.numpy()).max())
    np.testing.assert_allclose(gu.numpy(), gu_p.numpy(), rtol=0, atol=2e-5 * np.abs(gu_p.numpy()).max())


def test_fused_extreme_delta(ext, monkeypatch):
    """Large positive / negative pre-softplus values (softplus threshold, exp underflow) stay finite and equal."""
    arrs = _inputs(1, 40, 32, scale=30.0)
    gout = np.ones((1, 40, 32), dtype="float32")
    y_f, g_f = _run(arrs, gout, ALL, delta_softplus=True)
    monkeypatch.setitem(ps._EXT_STATE, "module", None)
    y_p, g_p = _run(arrs, gout, ALL, delta_softplus=True)
    assert np.isfinite(y_f).all() and all(np.isfinite(g).all() for g in g_f.values())
    assert np.abs(y_f - y_p).max() <= 2e-5 * max(1.0, np.abs(y_p).max())
    for k in ALL:
        assert np.abs(g_f[k] - g_p[k]).max() <= 2e-5 * max(1.0, np.abs(g_p[k]).max()), k


def test_float64_and_fallback_use_pure_path(pure):
    arrs = _inputs(1, 20, 8)
    y = ps.selective_scan_blc(**{k: paddle.to_tensor(v) for k, v in arrs.items()}, delta_softplus=True,
                              fused=True)
    y64 = ps.selective_scan_blc(**{k: paddle.to_tensor(v.astype("float64")) for k, v in arrs.items()},
                                delta_softplus=True, fused=True)
    assert y64.dtype == paddle.float64
    np.testing.assert_allclose(y.numpy(), y64.numpy(), rtol=0, atol=1e-4)


def test_build_failure_warns_and_falls_back(monkeypatch, tmp_path):
    monkeypatch.setattr(ps, "_EXT_STATE", {})
    monkeypatch.setattr(ps, "_EXT_SOURCE", str(tmp_path / "missing.cc"))
    monkeypatch.setenv("PADDLE_RS_EXT_DIR", str(tmp_path / "ext"))
    with pytest.warns(RuntimeWarning, match="pure-Paddle scan"):
        assert ps.fused_ext() is None
    assert ps.fused_ext() is None                 # reported once, then cached
    arrs = _inputs(1, 12, 8)
    y = ps.selective_scan_blc(**{k: paddle.to_tensor(v) for k, v in arrs.items()}, delta_softplus=True,
                              fused=True)
    assert y.shape == [1, 12, 8]


def test_default_is_the_portable_scan(monkeypatch):
    """Without ``fused=True`` (the plain model; paddle_rs.accelerate sets it per mixer) the extension is not
    touched, even where it is available."""
    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"the fused extension was used ({name}) without fused=True")
    monkeypatch.setitem(ps._EXT_STATE, "module", Untouchable())
    arrs = _inputs(2, 20, 8)
    ts = {k: paddle.to_tensor(v) for k, v in arrs.items()}
    ts["u"].stop_gradient = False
    y = ps.selective_scan_blc(**ts, delta_softplus=True)
    paddle.grad([y.sum()], [ts["u"]])
    with paddle.no_grad():
        ps.selective_scan_blc(**ts, delta_softplus=True)


def test_disabled_by_env(monkeypatch):
    monkeypatch.setattr(ps, "_EXT_STATE", {})
    monkeypatch.setenv("PADDLE_RS_FUSED_SCAN", "0")
    assert ps.fused_ext() is None


def _predictor(prefix):
    cfg = paddle.inference.Config(prefix + ".json", prefix + ".pdiparams")
    cfg.disable_gpu()
    cfg.disable_mkldnn()
    cfg.switch_ir_optim(True)
    cfg.disable_glog_info()
    return paddle.inference.create_predictor(cfg)


@pytest.mark.parametrize("backend", ["loop", "fused"])
def test_export_dynamic_length(ext, tmp_path, backend):
    """Mixer export with each static backend: dynamic-length graph (a while loop, or one fused op), equal to
    dygraph in jit.load and Paddle Inference at two lengths / batch sizes different from the trace."""
    from paddle_rs.models.backbones.mamba import MambaMixer

    paddle.seed(0)
    mixer = MambaMixer(32, 64, chunk_size=8)
    mixer.eval()
    mixer.fused_scan = backend == "fused"
    spec = [paddle.static.InputSpec([None, None, 32], "float32", "hidden")]
    prev = ps.set_static_scan(backend)
    try:
        traced = MambaMixer(32, 64, chunk_size=8)
        traced.fused_scan = backend == "fused"          # as paddle_rs.accelerate sets it
        static = paddle.jit.to_static(traced, input_spec=spec, full_graph=True)
        static.set_state_dict(mixer.state_dict())
        prefix = str(tmp_path / "mixer")
        paddle.jit.save(static, prefix)
    finally:
        ps.set_static_scan(prev)
    graph = open(prefix + ".json").read()
    assert ("rs_selective_scan_fwd" in graph) == (backend == "fused")
    assert ("while" in graph) == (backend == "loop")
    loaded = paddle.jit.load(prefix)
    pred = _predictor(prefix)
    for batch, length in ((1, 10), (3, 37)):
        x = np.random.default_rng(length).standard_normal((batch, length, 32)).astype("float32")
        with paddle.no_grad():
            ref = mixer(paddle.to_tensor(x)).numpy()
        for name in pred.get_input_names():
            h = pred.get_input_handle(name)
            h.reshape(x.shape)
            h.copy_from_cpu(x)
        pred.run()
        out = pred.get_output_handle(pred.get_output_names()[0]).copy_to_cpu()
        atol = 0 if backend == "fused" else 2e-6     # loop: library exp vs the kernel's polynomial
        np.testing.assert_allclose(loaded(paddle.to_tensor(x)).numpy(), ref, rtol=0, atol=atol)
        np.testing.assert_allclose(out, ref, rtol=0, atol=atol)
