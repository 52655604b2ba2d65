"""paddle_rs.ops.resize: the static-graph (matmul) resize equals F.interpolate, and exports without interp ops."""
import os

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from paddle_rs.ops.resize import interp_matrix, interpolate

CASES = [("bilinear", False), ("bilinear", True), ("nearest", False)]
SIZES = [((1, 1), (6, 5)), ((7, 5), (28, 20)), ((16, 16), (128, 128)), ((13, 9), (6, 4)), ((8, 8), (8, 8)), ((5, 6), (11, 17))]


@pytest.mark.parametrize("mode,align", CASES)
@pytest.mark.parametrize("src,dst", SIZES)
def test_matrix_form_equals_interpolate(mode, align, src, dst):
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((2, 3) + src).astype("float32"))
    kw = {} if mode == "nearest" else {"align_corners": align}
    ref = F.interpolate(x, size=dst, mode=mode, **kw).numpy()
    a_h = interp_matrix(src[0], dst[0], mode, align)
    a_w = interp_matrix(src[1], dst[1], mode, align)
    got = paddle.matmul(paddle.matmul(a_h, x), a_w, transpose_y=True).numpy()
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=5e-6 * np.abs(ref).max())
    rows = a_h.numpy()
    np.testing.assert_allclose(rows.sum(1), 1.0, atol=1e-6)          # a partition of unity per output row
    assert ((rows != 0).sum(1) <= (1 if mode == "nearest" else 2)).all()


@pytest.mark.parametrize("align", [False, True])
@pytest.mark.parametrize("src,dst", [((7, 5), (28, 20)), ((16, 16), (128, 128)), ((13, 9), (6, 4)), ((1, 1), (3, 4))])
def test_dygraph_bilinear_is_the_matrix_form_and_matches_interpolate(align, src, dst):
    """Dygraph bilinear on CPU runs as two matmuls; forward and input gradient equal F.interpolate's to ulps, and
    the result is exactly A_h @ x @ A_w^T."""
    rng = np.random.default_rng(2)
    x = paddle.to_tensor(rng.standard_normal((2, 3) + src).astype("float32"), stop_gradient=False)
    gy = paddle.to_tensor(rng.standard_normal((2, 3) + dst).astype("float32"))
    got = interpolate(x, dst, "bilinear", align)
    (g_got,) = paddle.grad([got], [x], [gy])
    ref = F.interpolate(x, size=dst, mode="bilinear", align_corners=align)
    (g_ref,) = paddle.grad([ref], [x], [gy])
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=0, atol=5e-6 * np.abs(ref.numpy()).max())
    np.testing.assert_allclose(g_got.numpy(), g_ref.numpy(), rtol=0, atol=5e-6 * np.abs(g_ref.numpy()).max())
    a_h, a_w = interp_matrix(src[0], dst[0], "bilinear", align), interp_matrix(src[1], dst[1], "bilinear", align)
    dense = paddle.matmul(paddle.matmul(x.reshape([-1, src[1]]), a_w, transpose_y=True).reshape([6, src[0], dst[1]])
                          .transpose([0, 2, 1]), a_h, transpose_y=True).transpose([0, 2, 1])
    np.testing.assert_allclose(got.numpy().reshape(6, *dst), dense.numpy(), rtol=1e-6, atol=1e-6)


def test_dygraph_nearest_and_float64_use_interpolate(monkeypatch):
    """float64: F.interpolate. Nearest: the matrices (exact for finite values; the gradient sums the copies of a
    source pixel in another order than F.interpolate's)."""
    import paddle_rs.ops.resize as R
    x = paddle.to_tensor(np.random.default_rng(3).standard_normal((1, 2, 5, 7)))
    np.testing.assert_array_equal(interpolate(x, (9, 4), "bilinear").numpy(),
                                  F.interpolate(x, size=(9, 4), mode="bilinear", align_corners=False).numpy())
    calls = []
    monkeypatch.setattr(R, "_cached_matrix", lambda *a: calls.append(a) or interp_matrix(*a))
    for size in ((9, 4), (10, 14)):
        calls.clear()
        x32 = x.astype("float32")
        np.testing.assert_array_equal(interpolate(x32, size, "nearest").numpy(),
                                      F.interpolate(x32, size=size, mode="nearest").numpy())
        assert len(calls) == 2                                      # the matrix form
        calls.clear()
        x32.stop_gradient = False
        gy = paddle.to_tensor(np.random.default_rng(4).standard_normal((1, 2) + size).astype("float32"))
        (g,) = paddle.grad([interpolate(x32, size, "nearest")], [x32], [gy])
        assert len(calls) == 2
        (want,) = paddle.grad([F.interpolate(x32, size=size, mode="nearest")], [x32], [gy])
        np.testing.assert_allclose(g.numpy(), want.numpy(), rtol=1e-6, atol=1e-6)


class _Net(paddle.nn.Layer):
    def __init__(self, mode, align):
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, 4, 3, padding=1)
        self.mode, self.align = mode, align

    def forward(self, x):
        y = self.conv(x)
        half = interpolate(y, [paddle.shape(x)[2] // 2, paddle.shape(x)[3] // 2], self.mode, self.align)
        pooled = interpolate(paddle.nn.functional.adaptive_avg_pool2d(y, 1), x.shape[2:], self.mode, self.align)
        return interpolate(half, x.shape[2:], self.mode, self.align) + pooled


@pytest.mark.parametrize("mode,align", CASES)
def test_export_has_no_interp_op_and_matches_dygraph(tmp_path, mode, align):
    paddle.seed(0)
    net = _Net(mode, align)
    net.eval()
    static = paddle.jit.to_static(net, input_spec=[paddle.static.InputSpec([None, 3, -1, -1], "float32")],
                                  full_graph=True)
    prefix = str(tmp_path / "m")
    paddle.jit.save(static, prefix)
    program = open(prefix + ".json").read() if os.path.exists(prefix + ".json") else ""
    assert program and "interp" not in program
    loaded = paddle.jit.load(prefix)
    for shape in ((1, 3, 20, 24), (2, 3, 33, 17)):
        x = paddle.to_tensor(np.random.default_rng(1).standard_normal(shape).astype("float32"))
        ref, got = net(x).numpy(), loaded(x).numpy()
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
