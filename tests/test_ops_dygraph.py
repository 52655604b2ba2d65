"""Dygraph CPU fast paths of paddle_rs.ops (Linear through rs_linear / addmm, broadcast_add through expand) and the
tools' allocator tuning: same results as the plain Paddle ops (and torch), plain ops in static graphs."""
import os
import subprocess
import sys

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
import torch

from paddle_rs.ops import linear as linear_mod
from paddle_rs.ops._dygraph_ext import dygraph_ext
from paddle_rs.ops.elementwise import broadcast_add
from paddle_rs.ops.linear import Linear, linear


def _grads(fn, tensors, gy):
    out = fn()
    return [out] + list(paddle.grad([out], tensors, [gy]))


@pytest.mark.parametrize("shape", [(7,), (5, 7), (2, 9, 7), (2, 3, 4, 7)])
def test_linear_matches_functional_linear(shape):
    paddle.seed(0)
    m = Linear(7, 11)
    m.bias.set_value(paddle.randn([11]))
    x = paddle.randn(list(shape))
    x.stop_gradient = False
    gy = paddle.randn(list(shape[:-1]) + [11])
    got = _grads(lambda: m(x), [x, m.weight, m.bias], gy)
    want = _grads(lambda: F.linear(x, m.weight, m.bias), [x, m.weight, m.bias], gy)
    assert got[0].shape == want[0].shape
    # addmm adds the bias inside the GEMM: one float32 rounding apart at most; the gradients are the same ops
    np.testing.assert_allclose(got[0].numpy(), want[0].numpy(), rtol=1e-6, atol=1e-6)
    for g, w in zip(got[1:], want[1:]):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-6, atol=1e-7)


def test_linear_keeps_nn_linear_parameters_and_plain_paths():
    m = Linear(4, 3, bias_attr=False)
    assert list(m.state_dict()) == list(paddle.nn.Linear(4, 3, bias_attr=False).state_dict()) == ["weight"]
    x = paddle.randn([2, 4])
    np.testing.assert_array_equal(m(x).numpy(), F.linear(x, m.weight).numpy())      # no bias: F.linear
    x64, w64, b64 = (paddle.randn(s).astype("float64") for s in ([2, 4], [4, 3], [3]))
    np.testing.assert_array_equal(linear(x64, w64, b64).numpy(), F.linear(x64, w64, b64).numpy())


def _saved_program(layer, spec, path):
    paddle.jit.save(paddle.jit.to_static(layer, input_spec=spec, full_graph=True), str(path))
    return open(str(path) + ".json").read()


def test_static_graph_keeps_plain_ops(tmp_path):
    program = _saved_program(Linear(4, 3), [paddle.static.InputSpec([None, 4], "float32")], tmp_path / "lin")
    assert "addmm" not in program and "matmul" in program

    class Add(paddle.nn.Layer):
        def forward(self, x):
            return broadcast_add(x, paddle.ones([1, 3]))

    program = _saved_program(Add(), [paddle.static.InputSpec([None, 3], "float32")], tmp_path / "add")
    assert "expand" not in program and "add" in program
    # exports for predictors without oneDNN (set_static_ops("custom")): expand, then add, with a dynamic batch
    from paddle_rs.ops._dygraph_ext import dygraph_ext, set_static_ops
    if dygraph_ext() is not None:
        prev = set_static_ops("custom")
        try:
            program = _saved_program(Add(), [paddle.static.InputSpec([None, 3], "float32")], tmp_path / "add2")
        finally:
            set_static_ops(prev)
        assert "expand" in program
        x = paddle.randn([4, 3])
        np.testing.assert_array_equal(paddle.jit.load(str(tmp_path / "add2"))(x).numpy(), (x + 1).numpy())


@pytest.mark.parametrize("xs,ys", [((4, 3, 5, 5), (1, 3, 5, 5)), ((2, 6, 3, 5, 5), (1, 6, 1, 5, 5)),
                                   ((4, 5), (5,)), ((3, 4), (3, 4))])
def test_broadcast_add_equals_add(xs, ys):
    rng = np.random.default_rng(0)
    x = paddle.to_tensor(rng.standard_normal(xs).astype("float32"), stop_gradient=False)
    y = paddle.to_tensor(rng.standard_normal(ys).astype("float32"), stop_gradient=False)
    gy = paddle.to_tensor(rng.standard_normal(xs).astype("float32"))
    got = _grads(lambda: broadcast_add(x, y), [x, y], gy)
    want = _grads(lambda: x + y, [x, y], gy)
    np.testing.assert_array_equal(got[0].numpy(), want[0].numpy())
    np.testing.assert_array_equal(got[1].numpy(), want[1].numpy())
    np.testing.assert_allclose(got[2].numpy(), want[2].numpy(), rtol=1e-6, atol=1e-6)   # a reduction, any order


@pytest.mark.parametrize("op", ["mul", "div"])
def test_broadcast_mul_div_equal_the_operators(op):
    from paddle_rs.ops.elementwise import broadcast_div, broadcast_mul
    rng = np.random.default_rng(1)
    x = paddle.to_tensor(rng.standard_normal((2, 5, 4, 3)).astype("float32"), stop_gradient=False)
    y = paddle.to_tensor(rng.random((2, 1, 4, 3)).astype("float32") + 0.5, stop_gradient=False)
    gy = paddle.to_tensor(rng.standard_normal((2, 5, 4, 3)).astype("float32"))
    fn, ref = {"mul": (broadcast_mul, lambda: x * y), "div": (broadcast_div, lambda: x / y)}[op]
    got, want = _grads(lambda: fn(x, y), [x, y], gy), _grads(ref, [x, y], gy)
    np.testing.assert_array_equal(got[0].numpy(), want[0].numpy())
    np.testing.assert_array_equal(got[1].numpy(), want[1].numpy())
    np.testing.assert_allclose(got[2].numpy(), want[2].numpy(), rtol=1e-6, atol=1e-6)   # a reduction, any order


def test_conv1x1_bias_is_added_on_equal_shapes(monkeypatch):
    """conv2d (1x1 with bias): convolution, then broadcast_add (Paddle's own bias add is its slow broadcast
    kernel) -- the same bits as F.conv2d, and its gradients (the bias's summed in another order)."""
    import paddle.nn.functional as F
    import paddle_rs.ops.conv as C
    rng = np.random.default_rng(2)
    x = paddle.to_tensor(rng.standard_normal((2, 8, 6, 5)).astype("float32"))
    w = paddle.to_tensor(rng.standard_normal((4, 8, 1, 1)).astype("float32"))
    b = paddle.to_tensor(rng.standard_normal(4).astype("float32"))
    calls = []
    monkeypatch.setattr(C, "broadcast_add", lambda *a: calls.append(1) or broadcast_add(*a))
    with paddle.no_grad():
        np.testing.assert_array_equal(C.conv2d(x, w, b).numpy(), F.conv2d(x, w, b).numpy())
    assert calls == [1]
    gy = paddle.to_tensor(rng.standard_normal((2, 4, 6, 5)).astype("float32"))
    for t in (x, w, b):
        t.stop_gradient = False
    got = _grads(lambda: C.conv2d(x, w, b), [x, w, b], gy)
    assert calls == [1, 1]
    want = _grads(lambda: F.conv2d(x, w, b), [x, w, b], gy)
    for g, r in zip(got[:3], want[:3]):
        np.testing.assert_array_equal(g.numpy(), r.numpy())
    np.testing.assert_allclose(got[3].numpy(), want[3].numpy(), rtol=1e-6, atol=1e-6)


def _tune_in_subprocess(env):
    code = "from paddle_rs.utils.runtime import tune_cpu_malloc; print(tune_cpu_malloc())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip().splitlines()[-1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tune_cpu_malloc_sets_thresholds_and_can_be_turned_off():
    assert _tune_in_subprocess({}) == "{'mmap_threshold': 1073741824, 'trim_threshold': 1073741824}"
    assert _tune_in_subprocess({"PADDLE_RS_TUNE_MALLOC": "0"}) == "None"
    assert _tune_in_subprocess({"MALLOC_MMAP_THRESHOLD_": "65536"}) == "None"     # the user's own setting wins



def test_linear_and_broadcast_add_support_partial_gradients():
    """paddle.grad w.r.t. a subset of the inputs (e.g. an input-gradient saliency map): the fast paths are Paddle
    ops or custom ops with C++ gradient nodes, so the pruned parameters are simply skipped (a PyLayer could not
    know which gradients a partial paddle.grad wants, and Paddle rejects any it did not ask for)."""
    m = Linear(3, 4)
    x = paddle.randn([5, 3])
    x.stop_gradient = False
    (gx,) = paddle.grad([broadcast_add(m(x), m.bias.unsqueeze(0)).sum()], [x])
    np.testing.assert_allclose(gx.numpy(), np.tile(m.weight.numpy().sum(1), (5, 1)), rtol=1e-5, atol=1e-6)
    (gb,) = paddle.grad([m(x).sum()], [m.bias])
    np.testing.assert_allclose(gb.numpy(), np.full(4, 5.0), rtol=1e-6)


@pytest.mark.requires(dygraph_ext() is not None, "dygraph ops extension unavailable (no compiler?)")
def test_linear_training_path_matches_torch_bias_gradient_bit_for_bit(monkeypatch):
    """Training (input, weight, bias all requiring gradients) goes through rs_linear; its bias gradient sums the
    rows in torch's cascade order: the same bits as torch for 64-column blocks, and closer to float64 than
    Paddle's row-after-row reduction; input / weight gradients and the output equal the addmm path's."""
    rng = np.random.default_rng(5)
    x_np, gy_np = rng.standard_normal((5000, 32)).astype("float32"), rng.standard_normal((5000, 128)).astype("float32")
    m = Linear(32, 128)
    m.bias.set_value(paddle.randn([128]))
    calls = []
    ext = dygraph_ext()

    class Spy:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(ext, name)

    monkeypatch.setattr(linear_mod, "dygraph_ext", lambda: Spy())
    x = paddle.to_tensor(x_np, stop_gradient=False)
    got = _grads(lambda: m(x), [x, m.weight, m.bias], paddle.to_tensor(gy_np))
    assert calls == ["rs_linear"]
    want = _grads(lambda: paddle.addmm(m.bias.unsqueeze(0), x, m.weight), [x, m.weight, m.bias],
                  paddle.to_tensor(gy_np))
    for g, w in zip(got[:3], want[:3]):
        np.testing.assert_array_equal(g.numpy(), w.numpy())
    torch_db = torch.from_numpy(gy_np).sum(0).numpy()
    np.testing.assert_array_equal(got[3].numpy(), torch_db)
    exact = gy_np.astype(np.float64).sum(0)
    assert np.abs(got[3].numpy() - exact).max() <= np.abs(want[3].numpy() - exact).max()
    calls.clear()
    m.weight.stop_gradient = True            # a frozen weight: addmm (rs_linear would compute its gradient)
    m(x).sum().backward()
    assert calls == []
