"""oneDNN conv2d for Paddle dygraph on CPU (paddle_rs/ops/conv.py, csrc/conv2d_onednn_cpu.cc).

Forward and gradients (dx, dweight, dbias) against ``paddle.nn.functional.conv2d`` and
``torch.nn.functional.conv2d``; the fallbacks (extension disabled, static graph) and the export. The extension is
compiled on first use (~15 s, then cached under ~/.cache/paddle_rs/ops); the tests that need it are skipped when
it cannot be built (no compiler or no oneDNN headers).
"""
import os
import re

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
import torch

from conftest import require
from paddle_rs.ops import conv


@pytest.fixture(scope="module")
def ext():
    m = conv.onednn_ext()
    require(m is not None, "oneDNN conv2d extension unavailable (no compiler or no oneDNN headers?)")
    return m


def _close(got, ref, rel=1e-5):
    """fp32 rounding: a direct convolution sums in another order than im2col + GEMM."""
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape
    err, scale = np.abs(got - ref).max(), max(1.0, np.abs(ref).max())
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel:g} x {scale:.3g}"


# N, C, H, W, O, kernel, stride, padding, dilation, groups, bias
CASES = {
    "3x3_pad1": (1, 5, 9, 11, 7, 3, 1, 1, 1, 1, True),
    "3x3_pad1_b3": (3, 6, 8, 8, 4, 3, 1, 1, 1, 1, False),
    "1x1": (3, 6, 5, 7, 4, 1, 1, 0, 1, 1, True),
    "1x1_stride2": (1, 8, 9, 8, 5, 1, 2, 0, 1, 1, False),
    "7x7_s2_p3": (1, 3, 17, 15, 8, 7, 2, 3, 1, 1, False),
    "3x3_s2": (3, 8, 10, 9, 6, 3, 2, 1, 1, 1, True),
    "3x3_s2_nopad_odd": (1, 4, 11, 7, 3, 3, 2, 0, 1, 1, True),
    "3x3_s2_nopad_even": (2, 4, 10, 12, 3, 3, 2, 0, 1, 1, True),       # last window ends before the border
    "dilation2_s2": (1, 4, 13, 10, 6, 3, 2, 1, 2, 2, True),
    "dilation2": (1, 6, 12, 12, 5, 3, 1, 2, 2, 1, False),
    "groups4": (3, 8, 9, 9, 12, 3, 1, 1, 1, 4, True),
    "depthwise": (1, 8, 10, 10, 8, 3, 1, 1, 1, 8, False),
    "depthwise_x2_s2": (2, 8, 10, 11, 16, 3, 2, 1, 1, 8, True),
    "rect_kernel_pairs": (2, 4, 9, 13, 6, (3, 5), (2, 1), (1, 2), (1, 1), 1, True),
}


def _arrays(case, seed=0):
    N, C, H, W, O, k, s, p, d, g, bias = case
    kh, kw = (k, k) if isinstance(k, int) else k
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype("float32")
    w = rng.standard_normal((O, C // g, kh, kw)).astype("float32")
    b = rng.standard_normal(O).astype("float32") if bias else None
    return x, w, b, dict(stride=s, padding=p, dilation=d, groups=g)


def _paddle(fn, x, w, b, kw, gy=None, x_transform=None):
    """Output and gradients (x, w[, b]) of ``fn`` in Paddle; ``gy`` defaults to a fixed random cotangent."""
    xt = paddle.to_tensor(x, stop_gradient=False)
    wt = paddle.to_tensor(w, stop_gradient=False)
    bt = None if b is None else paddle.to_tensor(b, stop_gradient=False)
    xin = x_transform(xt) if x_transform else xt
    y = fn(xin, wt, bt, **kw)
    if gy is None:
        gy = np.random.default_rng(1).standard_normal(y.shape).astype("float32")
    grads = paddle.grad([y], [xt, wt] + ([bt] if b is not None else []), [paddle.to_tensor(gy)])
    return y.numpy(), [g.numpy() for g in grads], gy


def _torch(x, w, b, kw, gy):
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    bt = None if b is None else torch.tensor(b, requires_grad=True)
    y = torch.nn.functional.conv2d(xt, wt, bt, **kw)
    y.backward(torch.tensor(gy))
    return y.detach().numpy(), [t.grad.numpy() for t in (xt, wt, bt) if t is not None]


def _op(x, w, b, stride, padding, dilation, groups):
    """The oneDNN path itself (also for 1x1 kernels, which conv2d sends to F.conv2d)."""
    pair = lambda v: [v, v] if isinstance(v, int) else list(v)
    return conv.Conv2dFn.apply(x, w, b, pair(stride), pair(padding), pair(dilation), groups)


@pytest.mark.parametrize("name", list(CASES))
def test_op_matches_paddle_and_torch(ext, name):
    x, w, b, kw = _arrays(CASES[name])
    y_ref, g_ref, gy = _paddle(F.conv2d, x, w, b, kw)
    y_op, g_op, _ = _paddle(_op, x, w, b, kw, gy)
    y_dispatch, g_dispatch, _ = _paddle(conv.conv2d, x, w, b, kw, gy)
    y_t, g_t = _torch(x, w, b, kw, gy)
    for got in ([y_op] + g_op, [y_dispatch] + g_dispatch):
        for a, r, rt in zip(got, [y_ref] + g_ref, [y_t] + g_t):
            _close(a, r)
            _close(a, rt)


def test_no_grad_and_partial_grads(ext):
    x, w, b, kw = _arrays(CASES["groups4"], seed=3)
    y_ref, g_ref, gy = _paddle(F.conv2d, x, w, b, kw)
    with paddle.no_grad():                                       # the forward-only op
        _close(conv.conv2d(paddle.to_tensor(x), paddle.to_tensor(w), paddle.to_tensor(b), **kw).numpy(), y_ref)
    # input without gradient (first layer), frozen bias
    xt, wt, bt = paddle.to_tensor(x), paddle.to_tensor(w, stop_gradient=False), paddle.to_tensor(b)
    y = conv.conv2d(xt, wt, bt, **kw)
    (gw,) = paddle.grad([y], [wt], [paddle.to_tensor(gy)])
    _close(gw.numpy(), g_ref[1])
    # frozen weight, gradient to the input only
    xt, wt = paddle.to_tensor(x, stop_gradient=False), paddle.to_tensor(w)
    y = conv.conv2d(xt, wt, bt, **kw)
    (gx,) = paddle.grad([y], [xt], [paddle.to_tensor(gy)])
    _close(gx.numpy(), g_ref[0])


@pytest.mark.parametrize("wanted,frozen", [("x", ""), ("w,b", ""), ("x,w,b", ""), ("x", "b"), ("w", "b"),
                                           ("b", "w"), ("x,b", "w"), ("w", ""), ("b", ""), ("x,w", "")])
def test_paddle_grad_wrt_a_subset(ext, wanted, frozen):
    """paddle.grad for some inputs while others still require gradients (e.g. an input-gradient saliency map of a
    trained model): the pruned ones must get no gradient. A PyLayer over (x, w, b) failed here with Paddle's
    'should return None at 1 position'; rs_conv2d's gradient op is registered in C++, so every subset works."""
    x, w, b, kw = _arrays(CASES["groups4"], seed=4)
    ts = {k: paddle.to_tensor(v, stop_gradient=k in frozen) for k, v in (("x", x), ("w", w), ("b", b))}
    req = [ts[k] for k in wanted.split(",")]
    gy = paddle.to_tensor(np.random.default_rng(9).standard_normal(F.conv2d(ts["x"], ts["w"], **kw).shape)
                          .astype("float32"))
    got = paddle.grad([conv.conv2d(ts["x"], ts["w"], ts["b"], **kw)], req, [gy])
    want = paddle.grad([F.conv2d(ts["x"], ts["w"], ts["b"], **kw)], req, [gy])
    for a, r in zip(got, want):
        _close(a.numpy(), r.numpy())


@pytest.mark.parametrize("view", ["transpose", "slice"])
def test_non_contiguous_input(ext, view):
    x, w, b, kw = _arrays(CASES["3x3_s2"], seed=5)
    if view == "transpose":                                      # x is stored [N, C, W, H]
        x_store = np.ascontiguousarray(x.transpose(0, 1, 3, 2))
        transform = lambda t: t.transpose([0, 1, 3, 2])
    else:                                                        # x is a window of a larger array
        x_store = np.pad(x, ((0, 0), (1, 2), (2, 1), (0, 3)))
        transform = lambda t: t[:, 1:1 + x.shape[1], 2:2 + x.shape[2], :x.shape[3]]
    y_ref, g_ref, gy = _paddle(F.conv2d, x_store, w, b, kw, x_transform=transform)
    y, g, _ = _paddle(conv.conv2d, x_store, w, b, kw, gy, x_transform=transform)
    y_t, g_t = _torch(x, w, b, kw, gy)
    _close(y, y_ref), _close(y, y_t)
    for a, r in zip(g, g_ref):
        _close(a, r)
    for a, r in zip(g[1:], g_t[1:]):
        _close(a, r)


def test_layer_matches_nn_conv2d(ext, monkeypatch):
    paddle.seed(0)
    ref = paddle.nn.Conv2D(6, 10, 3, stride=2, padding=1, groups=2)
    layer = conv.Conv2D(6, 10, 3, stride=2, padding=1, groups=2)
    assert {k: v.shape for k, v in layer.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    layer.set_state_dict(ref.state_dict())
    x = paddle.randn([2, 6, 9, 10])
    calls, apply = [], conv.Conv2dFn.apply
    monkeypatch.setattr(conv.Conv2dFn, "apply", lambda *a: calls.append(a) or apply(*a))
    y = layer(x)
    assert len(calls) == 1                                       # the layer's forward took the oneDNN path
    _close(y.numpy(), ref(x).numpy())
    y.sum().backward()
    ref(x).sum().backward()
    _close(layer.weight.grad.numpy(), ref.weight.grad.numpy())
    _close(layer.bias.grad.numpy(), ref.bias.grad.numpy())
    monkeypatch.undo()
    # padding the op does not take (reflect mode, 'SAME', asymmetric): nn.Conv2D's own forward
    for kwargs in (dict(padding=1, padding_mode="reflect"), dict(padding="SAME"), dict(padding=[1, 0, 2, 1])):
        ref = paddle.nn.Conv2D(6, 4, 3, **kwargs)
        layer = conv.Conv2D(6, 4, 3, **kwargs)
        layer.set_state_dict(ref.state_dict())
        np.testing.assert_array_equal(layer(x).numpy(), ref(x).numpy())


def test_self_check_under_no_grad(ext):
    with paddle.no_grad():                                       # the loader's first call may come from eval code
        conv._self_check(ext)


def test_fallback_when_disabled(monkeypatch):
    x, w, b, kw = _arrays(CASES["3x3_pad1"], seed=7)
    monkeypatch.setitem(conv._EXT_STATE, "module", None)        # as when the build failed
    monkeypatch.setattr(conv.Conv2dFn, "apply", lambda *a: pytest.fail("oneDNN path used while disabled"))
    y_ref, g_ref, gy = _paddle(F.conv2d, x, w, b, kw)
    y, g, _ = _paddle(conv.conv2d, x, w, b, kw, gy)
    np.testing.assert_array_equal(y, y_ref)
    for a, r in zip(g[:2], g_ref[:2]):
        np.testing.assert_array_equal(a, r)
    # the bias is added on equal shapes (broadcast_add): its gradient is summed in another order
    np.testing.assert_allclose(g[2], g_ref[2], rtol=1e-6, atol=1e-6)
    layer = conv.Conv2D(5, 7, 3, padding=1)
    xt = paddle.to_tensor(x)
    np.testing.assert_array_equal(layer(xt).numpy(), paddle.nn.Conv2D.forward(layer, xt).numpy())
    # PADDLE_RS_ONEDNN_CONV=0: the loader does not build anything
    monkeypatch.delitem(conv._EXT_STATE, "module")
    monkeypatch.setenv("PADDLE_RS_ONEDNN_CONV", "0")
    assert conv.onednn_ext() is None


class _Net(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.c1 = conv.Conv2D(3, 8, 3, padding=1, bias_attr=False)
        self.bn = paddle.nn.BatchNorm2D(8)
        self.c2 = conv.Conv2D(8, 8, 3, stride=2, padding=1, groups=2)
        self.c3 = conv.Conv2D(8, 4, 1)

    def forward(self, x):
        return self.c3(F.relu(self.c2(F.relu(self.bn(self.c1(x))))))


def test_export_has_no_custom_op(ext, tmp_path):
    paddle.seed(1)
    net = _Net()
    net.eval()
    x = paddle.randn([2, 3, 16, 12])
    y_dyn = net(x).numpy()
    spec = [paddle.static.InputSpec([None, 3, 16, 12], "float32", name="image")]
    static = paddle.jit.to_static(net, input_spec=spec, full_graph=True)
    prefix = str(tmp_path / "model")
    paddle.jit.save(static, prefix)
    text = "".join(open(os.path.join(tmp_path, f), "rb").read().decode("latin-1")
                   for f in os.listdir(tmp_path) if not f.endswith(".pdiparams"))
    assert "conv2d" in text and "rs_conv2d" not in text
    loaded = paddle.jit.load(prefix)
    loaded.eval()
    _close(loaded(x).numpy(), y_dyn)


def test_static_onednn_conv_in_graph_and_predictor(ext, tmp_path):
    """``set_static_conv("onednn")``: the program holds ``rs_conv2d_fwd`` for the k > 1 kernels and ``conv2d`` for
    the 1x1 one; Paddle Inference (oneDNN off) runs it at two input sizes (dynamic H, W) equal to dygraph."""
    import paddle.inference as pdi
    paddle.seed(3)
    net = _Net()
    net.eval()
    assert conv.set_static_conv("onednn") == "plain"
    try:
        spec = [paddle.static.InputSpec([None, 3, -1, -1], "float32", name="image")]
        paddle.jit.save(paddle.jit.to_static(net, input_spec=spec, full_graph=True), str(tmp_path / "model"))
    finally:
        assert conv.set_static_conv("plain") == "onednn"
    ops = re.findall(r'"\d\.(\w*conv\w*)"', open(tmp_path / "model.json").read())   # PIR op names
    assert sorted(ops) == ["conv2d", "rs_conv2d_fwd", "rs_conv2d_fwd"]
    cfg = pdi.Config(str(tmp_path / "model.json"), str(tmp_path / "model.pdiparams"))
    cfg.disable_gpu()
    cfg.disable_mkldnn()
    pred = pdi.create_predictor(cfg)
    for shape in ((2, 3, 16, 12), (1, 3, 23, 9)):
        x = np.random.default_rng(sum(shape)).standard_normal(shape).astype("float32")
        h = pred.get_input_handle("image")
        h.reshape(list(shape))
        h.copy_from_cpu(x)
        pred.run()
        got = pred.get_output_handle(pred.get_output_names()[0]).copy_to_cpu()
        _close(got, net(paddle.to_tensor(x)).numpy())


def test_set_static_conv_validates(monkeypatch):
    with pytest.raises(ValueError, match="plain"):
        conv.set_static_conv("mkldnn")
    monkeypatch.setitem(conv._EXT_STATE, "module", None)          # as on a machine without a compiler
    with pytest.raises(RuntimeError, match="unavailable"):
        conv.set_static_conv("onednn")
    assert conv._STATIC.custom_on is False
