"""paddle_rs.ops.layout.permute: a dense transpose (the rs_permute custom op in dygraph on CPU) -- exact values and
gradients for any permutation, paddle.grad, the fallbacks, the ops in exports, clear errors."""
import numpy as np
import paddle
import pytest

from paddle_rs.ops import _dygraph_ext, layout
from paddle_rs.ops._dygraph_ext import dygraph_ext, set_static_ops

pytestmark = pytest.mark.requires(dygraph_ext() is not None, "dygraph ops extension unavailable (no compiler?)")

CASES = [((2, 3, 4), (2, 0, 1)),
         ((1, 5, 2, 5, 2, 3), (0, 1, 3, 2, 4, 5)),      # Swin window partition: the last axis stays last
         ((6, 49, 3, 2, 8), (2, 0, 3, 1, 4)),           # qkv split
         ((1, 4, 6, 6), (0, 2, 3, 1)),                  # NCHW -> NHWC: a 2-D transpose after merging axes
         ((3, 1, 4, 1), (3, 2, 1, 0)),                  # size-1 axes
         ((2, 3, 4), (0, 1, 2)),                        # identity: one merged axis, a plain copy
         ((2, 3, 4), (-1, 0, 1))]                       # negative axes, as paddle.transpose accepts


def _uses_custom_op(ext_calls, x, perm):
    return ext_calls(layout, layout.permute, x, perm) == ["rs_permute"]


@pytest.mark.parametrize("shape,perm", CASES)
def test_permute_is_an_exact_transpose_with_the_inverse_as_gradient(ext_calls, shape, perm):
    rng = np.random.default_rng(0)
    a = rng.standard_normal(shape).astype("float32")
    x = paddle.to_tensor(a, stop_gradient=False)
    assert _uses_custom_op(ext_calls, x, perm)
    y = layout.permute(x, perm)
    np.testing.assert_array_equal(y.numpy(), np.transpose(a, perm))
    gy = rng.standard_normal(y.shape).astype("float32")
    gx, = paddle.grad([y * 1.0], [x], [paddle.to_tensor(gy)])
    np.testing.assert_array_equal(gx.numpy(), np.transpose(gy, np.argsort([p % len(shape) for p in perm])))


def test_gradient_flows_through_a_chain_and_paddle_grad_subsets():
    rng = np.random.default_rng(1)
    x = paddle.to_tensor(rng.standard_normal((2, 3, 4)).astype("float32"), stop_gradient=False)
    w = paddle.to_tensor(rng.standard_normal((2, 4, 3)).astype("float32"), stop_gradient=False)
    loss = (layout.permute(layout.permute(x, [1, 0, 2]), [1, 2, 0]) * w).sum()    # == x.transpose(0,2,1) * w
    gx, = paddle.grad([loss], [x], retain_graph=True)
    np.testing.assert_array_equal(gx.numpy(), np.transpose(w.numpy(), [0, 2, 1]))
    gw, = paddle.grad([loss], [w])
    np.testing.assert_array_equal(gw.numpy(), np.transpose(x.numpy(), [0, 2, 1]))


def test_fallbacks_are_dense_and_exact(monkeypatch, ext_calls):
    a = np.arange(24, dtype="float64").reshape(2, 3, 4)
    x64 = paddle.to_tensor(a)
    assert not _uses_custom_op(ext_calls, x64, [2, 0, 1])          # float64: einsum
    np.testing.assert_array_equal(layout.permute(x64, [2, 0, 1]).numpy(), a.transpose(2, 0, 1))
    empty = paddle.zeros([0, 3], dtype="float32")
    assert layout.permute(empty, [1, 0]).shape == [3, 0]
    monkeypatch.setitem(_dygraph_ext._EXT_STATE, "module", None)     # as when the build failed
    x = paddle.to_tensor(a.astype("float32"))
    np.testing.assert_array_equal(layout.permute(x, [1, 2, 0]).numpy(), a.astype("float32").transpose(1, 2, 0))


def test_bad_permutation_is_a_clear_error():
    x = paddle.ones([2, 3, 4])
    with pytest.raises(Exception, match="perm has 2 entries for a tensor of rank 3"):
        dygraph_ext().rs_permute(x, [0, 1])
    with pytest.raises(Exception, match="perm is not a permutation of 0..2"):
        dygraph_ext().rs_permute(x, [0, 0, 1])


@pytest.mark.parametrize("backend,op", [("plain", "transpose"), ("custom", "rs_permute")])
def test_exports_use_transpose_or_the_custom_op(tmp_path, backend, op):
    class Block(paddle.nn.Layer):
        def forward(self, x):
            return layout.permute(x.reshape([-1, 3, 2, 4]), [0, 2, 3, 1]) * 2.0

    path = str(tmp_path / "block")
    prev = set_static_ops(backend)
    try:
        paddle.jit.save(paddle.jit.to_static(Block(), input_spec=[paddle.static.InputSpec([None, 3, 8], "float32")],
                                             full_graph=True), path)
    finally:
        set_static_ops(prev)
    program = open(path + ".json").read()
    assert op in program and ("rs_permute" in program) == (backend == "custom")
    x = paddle.randn([5, 3, 8])
    np.testing.assert_array_equal(paddle.jit.load(path)(x).numpy(),
                                  np.transpose(x.numpy().reshape(5, 3, 2, 4), [0, 2, 3, 1]) * 2.0)
