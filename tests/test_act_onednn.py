"""paddle_rs.ops.act: softmax / GELU / SiLU / LayerNorm on oneDNN in dygraph on CPU -- same results and gradients
as paddle.nn.functional (and as torch), paddle.grad w.r.t. any subset, the fallbacks, plain ops in exports."""
import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
import pytest
import torch

from conftest import paddle_defect
from paddle_rs.ops import act
from paddle_rs.ops import _dygraph_ext
from paddle_rs.ops._dygraph_ext import dygraph_ext

pytestmark = pytest.mark.requires(dygraph_ext() is not None, "dygraph ops extension unavailable (no compiler?)")


def _run(fn, inputs, gy):
    """fn(*inputs) and the gradients w.r.t. every input (fresh leaves)."""
    leaves = [t.detach() for t in inputs]
    for t in leaves:
        t.stop_gradient = False
    y = fn(*leaves)
    return [y.numpy()] + [g.numpy() for g in paddle.grad([y], leaves, [gy])]


def _is_custom_op(ext_calls, fn, *args):
    """Whether fn(*args) went through the extension (conftest's ext_calls)."""
    return bool(ext_calls(act, fn, *args))


@pytest.mark.parametrize("shape", [(7,), (4, 49), (2, 3, 5, 49), (1, 6, 130)])
def test_softmax_matches_paddle_and_torch(shape):
    rng = np.random.default_rng(0)
    x = paddle.to_tensor(3 * rng.standard_normal(shape).astype("float32"))
    gy = paddle.to_tensor(rng.standard_normal(shape).astype("float32"))
    got = _run(lambda t: act.softmax(t, axis=-1), [x], gy)
    want = _run(lambda t: F.softmax(t, axis=-1), [x], gy)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)
    tx = torch.from_numpy(x.numpy())
    np.testing.assert_allclose(got[0], torch.softmax(tx, -1).numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["gelu", "silu", "relu"])
def test_eltwise_matches_paddle_and_torch(name):
    rng = np.random.default_rng(1)
    a = 4 * rng.standard_normal((2, 8, 9, 11)).astype("float32")
    a[0, 0, 0, :3] = 0.0                                  # ReLU at exactly 0: zero gradient in all three
    x = paddle.to_tensor(a)
    gy = paddle.to_tensor(rng.standard_normal((2, 8, 9, 11)).astype("float32"))
    ours, ref, tref = {"gelu": (act.gelu, F.gelu, torch.nn.functional.gelu),
                       "silu": (act.silu, F.silu, torch.nn.functional.silu),
                       "relu": (act.relu, F.relu, torch.nn.functional.relu)}[name]
    got, want = _run(ours, [x], gy), _run(ref, [x], gy)
    if name == "relu":                                     # exact, forward and backward
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=2e-6)
    tx = torch.from_numpy(x.numpy()).requires_grad_()
    ty = tref(tx)
    ty.backward(torch.from_numpy(gy.numpy()))
    np.testing.assert_allclose(got[0], ty.detach().numpy(), rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(got[1], tx.grad.numpy(), rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("shape,eps", [((6, 96), 1e-5), ((2, 49, 384), 1e-6), ((3, 7), 1e-5)])
def test_layer_norm_matches_paddle_and_torch(shape, eps):
    rng = np.random.default_rng(2)
    c = shape[-1]
    x = paddle.to_tensor((2 + 3 * rng.standard_normal(shape)).astype("float32"))
    w = paddle.to_tensor(rng.standard_normal(c).astype("float32"))
    b = paddle.to_tensor(rng.standard_normal(c).astype("float32"))
    gy = paddle.to_tensor(rng.standard_normal(shape).astype("float32"))
    got = _run(lambda *t: act.layer_norm(t[0], c, t[1], t[2], eps), [x, w, b], gy)
    want = _run(lambda *t: F.layer_norm(t[0], [c], t[1], t[2], eps), [x, w, b], gy)
    rows = int(np.prod(shape[:-1]))
    for g, ww, tol in zip(got, want, (1e-5, 1e-5, 1e-6 * rows, 1e-6 * rows)):   # weight / bias: sums over rows
        np.testing.assert_allclose(g, ww, rtol=1e-5, atol=tol)
    tx, tw, tb = (torch.from_numpy(t.numpy()).requires_grad_() for t in (x, w, b))
    ty = torch.nn.functional.layer_norm(tx, [c], tw, tb, eps)
    ty.backward(torch.from_numpy(gy.numpy()))
    for g, t, tol in zip(got, (ty.detach(), tx.grad, tw.grad, tb.grad), (1e-5, 1e-5, 1e-6 * rows, 1e-6 * rows)):
        np.testing.assert_allclose(g, t.numpy(), rtol=1e-5, atol=tol)


def test_modules_keep_paddle_parameters_and_attributes():
    assert list(act.LayerNorm(5, epsilon=1e-6).state_dict()) == list(nn.LayerNorm(5).state_dict())
    ln = act.LayerNorm(5, epsilon=1e-6)
    ln.weight.set_value(paddle.randn([5]))
    x = paddle.randn([3, 5])
    np.testing.assert_allclose(ln(x).numpy(), nn.LayerNorm(5, epsilon=1e-6, weight_attr=paddle.ParamAttr(
        initializer=nn.initializer.Assign(ln.weight.numpy())))(x).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(act.GELU()(x).numpy(), nn.GELU()(x).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(act.GELU(approximate=True)(x).numpy(), nn.GELU(approximate=True)(x).numpy())
    np.testing.assert_allclose(act.Silu()(x).numpy(), nn.Silu()(x).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(act.ReLU()(x).numpy(), nn.ReLU()(x).numpy())


def _torch_layer_norm_grads(x, w, b, gy, eps):
    tx, tw, tb = (torch.from_numpy(t.numpy()).requires_grad_() for t in (x, w, b))
    torch.nn.functional.layer_norm(tx, [x.shape[-1]], tw, tb, eps).backward(torch.from_numpy(gy.numpy()))
    return [t.grad.numpy() for t in (tx, tw, tb)]


def test_paddle_grad_wrt_a_subset():
    """C++-registered gradient ops: a request for x alone, weight alone, bias alone, x and bias (the others still
    requiring gradients) gives torch's gradients (the PyLayer-based conv cannot serve weight-or-bias alone)."""
    rng = np.random.default_rng(3)
    x, w, b = (paddle.to_tensor(rng.standard_normal(s).astype("float32")) for s in ((4, 10), (10,), (10,)))
    gy = paddle.to_tensor(rng.standard_normal((4, 10)).astype("float32"))
    want = _torch_layer_norm_grads(x, w, b, gy, 1e-5)
    for which in ([0], [1], [2], [0, 2], [0, 1, 2]):
        leaves = [t.detach() for t in (x, w, b)]
        for t in leaves:
            t.stop_gradient = False
        y = act.layer_norm(leaves[0], [10], leaves[1], leaves[2], 1e-5)
        got = paddle.grad([y], [leaves[i] for i in which], [gy])
        for g, i in zip(got, which):
            np.testing.assert_allclose(g.numpy(), want[i], rtol=1e-5, atol=1e-5)
    xs = x.detach()
    xs.stop_gradient = False
    (g,) = paddle.grad([act.gelu(act.softmax(xs)).sum()], [xs])
    assert g.shape == xs.shape


def _frozen_weight_input_grad(fn):
    """Input gradient of ``fn`` (a layer_norm) with the weight and bias frozen, and torch's."""
    rng = np.random.default_rng(4)
    x, w, b = (paddle.to_tensor(rng.standard_normal(s).astype("float32")) for s in ((2, 5, 96), (96,), (96,)))
    gy = paddle.to_tensor(rng.standard_normal((2, 5, 96)).astype("float32"))
    want = _torch_layer_norm_grads(x, w, b, gy, 1e-6)[0]
    xs = x.detach()
    xs.stop_gradient = False
    fn(xs, 96, w, b, 1e-6).backward(gy)                  # w, b: stop_gradient=True (frozen)
    return xs.grad.numpy(), want


def test_layer_norm_input_gradient_with_frozen_weight():
    """The oneDNN path computes the input gradient with the weight also when the weight is frozen."""
    got, want = _frozen_weight_input_grad(act.layer_norm)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@paddle_defect("its CPU layer_norm drops the weight from the input gradient whenever the weight's gradient is not "
               "computed (a frozen weight, or paddle.grad w.r.t. the input alone), returning the gradient for "
               "weight = 1", "the README note on frozen LayerNorm weights and tests/test_rsmamba.py's requirement "
               "of the dygraph ops")
def test_paddle_layer_norm_input_gradient_with_frozen_weight():
    got, want = _frozen_weight_input_grad(F.layer_norm)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_fast_path_taken_and_fallbacks(monkeypatch, ext_calls):
    x = paddle.randn([2, 3, 4])
    assert _is_custom_op(ext_calls, act.softmax, x)
    assert _is_custom_op(ext_calls, act.gelu, x)
    assert _is_custom_op(ext_calls, act.silu, x)
    assert _is_custom_op(ext_calls, act.relu, x)
    assert _is_custom_op(ext_calls, act.layer_norm, x, 4, paddle.ones([4]), paddle.zeros([4]))
    # the tanh GELU, several normalised axes, no affine parameters, float64: the Paddle op
    assert _is_custom_op(ext_calls, act.softmax, x, 1)         # another axis: moved last and back
    assert not _is_custom_op(ext_calls, act.gelu, x, True)
    assert not _is_custom_op(ext_calls, act.layer_norm, x, [3, 4], paddle.ones([12]), paddle.zeros([12]))
    assert not _is_custom_op(ext_calls, act.layer_norm, x, 4)
    assert not _is_custom_op(ext_calls, act.silu, x.astype("float64"))
    np.testing.assert_allclose(act.softmax(x, 1).numpy(), F.softmax(x, 1).numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(act.layer_norm(x, [3, 4]).numpy(), F.layer_norm(x, [3, 4]).numpy())
    monkeypatch.setitem(_dygraph_ext._EXT_STATE, "module", None)    # as when the build failed
    np.testing.assert_allclose(act.gelu(x).numpy(), F.gelu(x).numpy())


def test_static_graph_keeps_plain_ops(tmp_path):
    class Block(nn.Layer):
        def __init__(self):
            super().__init__()
            self.norm, self.act = act.LayerNorm(4), act.GELU()

        def forward(self, x):
            return act.silu(act.softmax(self.act(self.norm(x))))

    layer = Block()
    x = paddle.randn([2, 4])
    path = str(tmp_path / "block")
    paddle.jit.save(paddle.jit.to_static(layer, input_spec=[paddle.static.InputSpec([None, 4], "float32")],
                                         full_graph=True), path)
    program = open(path + ".json").read()
    assert "rs_" not in program and "softmax" in program and "layer_norm" in program
    np.testing.assert_allclose(paddle.jit.load(path)(x).numpy(), layer(x).numpy(), rtol=1e-5, atol=1e-6)


def test_batch_norm_eval_path_and_fallbacks(ext_calls):
    """BatchNorm2D: torch's eval result (x * w / sqrt(var + eps) + b - mean * ...) on the oneDNN op for no-grad eval on
    maps of >= 64x64; Paddle's batch_norm in training mode, when a gradient is needed and on small maps; the same
    parameters, statistics and state_dict as nn.BatchNorm2D."""
    rng = np.random.default_rng(5)
    ours, ref = act.BatchNorm2D(8, momentum=0.9, epsilon=1e-5), nn.BatchNorm2D(8, momentum=0.9, epsilon=1e-5)
    assert list(ours.state_dict()) == list(ref.state_dict())
    for name, value in (("_mean", rng.standard_normal(8)), ("_variance", rng.random(8) + 0.1),
                        ("weight", rng.standard_normal(8)), ("bias", rng.standard_normal(8))):
        for m in (ours, ref):
            getattr(m, name).set_value(value.astype("float32"))
    tb = torch.nn.BatchNorm2d(8, eps=1e-5).eval()
    tb.load_state_dict({"weight": torch.from_numpy(ours.weight.numpy()), "bias": torch.from_numpy(ours.bias.numpy()),
                        "running_mean": torch.from_numpy(ours._mean.numpy()),
                        "running_var": torch.from_numpy(ours._variance.numpy()),
                        "num_batches_tracked": torch.tensor(0)})
    ours.eval(), ref.eval()
    big, small = (paddle.to_tensor(rng.standard_normal(s).astype("float32")) for s in ((2, 8, 64, 64), (2, 8, 8, 8)))
    with paddle.no_grad():
        assert _is_custom_op(ext_calls, ours, big)
        assert not _is_custom_op(ext_calls, ours, small)
        got = ours(big).numpy()
    with torch.no_grad():
        np.testing.assert_allclose(got, tb(torch.from_numpy(big.numpy())).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, ref(big).numpy(), rtol=1e-5, atol=1e-5)
    assert not _is_custom_op(ext_calls, ours, big)            # grad enabled, parameters require one: Paddle's op
    ours.train(), ref.train()
    assert not _is_custom_op(ext_calls, ours, big)            # training mode: batch statistics, running update
    ref(big)                                                    # the same one update on the reference
    np.testing.assert_allclose(ours._mean.numpy(), ref._mean.numpy(), rtol=1e-6)
    np.testing.assert_allclose(ours._variance.numpy(), ref._variance.numpy(), rtol=1e-6)
