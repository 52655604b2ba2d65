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
