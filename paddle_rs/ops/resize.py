"""Resize as two matmuls with interpolation matrices: in exports and in dygraph on CPU (bilinear, nearest).

A resize is linear and separable, ``y = A_h @ x @ A_w^T`` with interpolation matrices ``A [out, in]`` (two
non-zero weights per row for bilinear, one for nearest). This module computes it that way:

* static graphs (every export): Paddle Inference 3.3 cannot run a PIR program with oneDNN on once it holds a
  ``bilinear_interp`` / ``nearest_interp`` op (``ConvertPirAttribute2RuntimeAttribute not support
  ArrayAttribute<DoubleAttribute>``, Paddle#79749; porting.md §5.2), and without oneDNN Paddle Inference's CPU
  convolutions are ~1.7x slower than oneDNN's. The graph builds the matrices with ``arange`` / compare / ``matmul``
  ops that oneDNN runs, and the predictor can turn oneDNN on (:mod:`paddle_rs.deploy.predictor`).
* dygraph, bilinear, fp32 on CPU (:func:`paddle_rs.ops._mode.dygraph_cpu_fp32`): Paddle 3.3.1's CPU
  ``bilinear_interp`` kernels are 1.5-3x slower than torch's forward and 2-4x backward, while the two GEMMs are
  faster than either. Measured on 2 threads, UPerHead's resizes at 512x512 input, ``[1, 512, h, h] -> 128``
  (h = 16 / 32 / 64): forward 19.8 / 32.5 / 39.3 ms (``F.interpolate``) -> 6.3 / 9.7 / 8.8 ms (torch 13.2 /
  13.9 / 12.1 ms); forward + backward 100 / 163 / 174 ms -> 17 / 23 / 27 ms (torch 44 / 55 / 53 ms). The
  matrices are cached per (size, mode, align_corners). ``nearest`` (a copy: exact for finite values; the
  gradient sums each source pixel's copies in another order than Paddle's kernel, float32 rounding) takes them too:
  FactSeg's FPN, ``[2, 256, 32, 32] -> 64``, forward 18.0 -> 1.1 ms (torch 7.6). Other dtypes, devices and AMP
  use ``F.interpolate``.

The matrices follow Paddle's / torch's index rules exactly:

* bilinear, ``align_corners=False`` (torch default, Paddle ``align_mode=0``):
  ``src = max((dst + 0.5) * in / out - 0.5, 0)``; ``align_corners=True``: ``src = dst * (in - 1) / (out - 1)``;
  ``i0 = floor(src)``, ``i1 = min(i0 + 1, in - 1)``, weights ``1 - (src - i0)`` and ``src - i0``;
* nearest (torch ``mode='nearest'``): ``src = min(floor(dst * in / out), in - 1)``;
* a map whose static size is 1x1 is broadcast with ``expand`` (the weights are all 1).

The ratio is computed in float32 as Paddle's kernels do (D8). The sums are ``w0 * a + w1 * b`` plus exact zeros,
so both forms agree with ``F.interpolate`` to a few float32 ulps, and with torch's ``interpolate`` as closely as
``F.interpolate`` does (forward <= 4.8e-7 against 7.2e-7 for ``F.interpolate``, input gradient <= 6.3e-7
relative against 2.4e-7; tests/test_resize.py). Sizes may be Python ints or int tensors (dynamic shapes in an
export).
"""
import functools

import paddle
import paddle.nn.functional as F

from ._mode import dygraph_cpu_fp32

__all__ = ["interpolate", "interp_matrix"]


def _f32(v):
    return v.astype("float32") if isinstance(v, paddle.Tensor) else paddle.to_tensor(float(v), dtype="float32")


def interp_matrix(in_size, out_size, mode="bilinear", align_corners=False):
    """``[out_size, in_size]`` float32 matrix ``A`` with ``resize_1d(v) = A @ v`` (see the module doc)."""
    dst = paddle.arange(out_size, dtype="float32")
    fin, fout = _f32(in_size), _f32(out_size)
    cols = paddle.arange(in_size, dtype="float32").unsqueeze(0)            # [1, in]
    last = fin - 1.0
    if mode == "nearest":
        src = paddle.minimum(paddle.floor(dst * (fin / fout)), last)
        return (cols == src.unsqueeze(1)).astype("float32")
    if mode != "bilinear":
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    if align_corners:
        ratio = paddle.where(fout > 1.0, last / paddle.maximum(fout - 1.0, paddle.ones_like(fout)),
                             paddle.zeros_like(fout))
        src = dst * ratio
    else:
        src = paddle.clip(((dst + 0.5) * (fin / fout)) - 0.5, min=0.0)
    i0 = paddle.minimum(paddle.floor(src), last)
    i1 = paddle.minimum(i0 + 1.0, last)
    l1 = (src - i0).unsqueeze(1)
    return (1.0 - l1) * (cols == i0.unsqueeze(1)).astype("float32") + l1 * (cols == i1.unsqueeze(1)).astype("float32")


@functools.lru_cache(maxsize=256)
def _cached_matrix(in_size, out_size, mode, align_corners):
    with paddle.no_grad():
        m = interp_matrix(in_size, out_size, mode, align_corners)
    return m if m.place.is_cpu_place() else m.cpu()      # the dygraph matmul path is for CPU inputs only


def _interpolate_dygraph(x, size, mode, align_corners):
    h, w = (int(v) for v in size)
    if mode not in ("bilinear", "nearest") or not dygraph_cpu_fp32(x) or x.ndim != 4 or x.size == 0:
        kw = {} if mode == "nearest" else {"align_corners": align_corners}
        return F.interpolate(x, size=[h, w], mode=mode, **kw)
    n, c, h_in, w_in = x.shape
    a_h = _cached_matrix(h_in, h, mode, bool(align_corners))      # [h, H]
    a_w = _cached_matrix(w_in, w, mode, bool(align_corners))      # [w, W]
    y = paddle.matmul(x.reshape([-1, w_in]), a_w, transpose_y=True).reshape([n * c, h_in, w])   # rows: W -> w
    return paddle.matmul(a_h, y).reshape([n, c, h, w])                                          # columns: H -> h


def interpolate(x, size, mode="bilinear", align_corners=False):
    """Resize ``x [N, C, H, W]`` to ``size = (h, w)`` (ints or int tensors, e.g. ``x.shape[2:]`` of another
    tensor) as ``A_h @ x @ A_w^T`` or ``F.interpolate`` (module doc)."""
    if paddle.in_dynamic_mode():
        return _interpolate_dygraph(x, size, mode, align_corners)
    if x.shape[2] == 1 and x.shape[3] == 1:
        # a 1x1 map (e.g. the PPM's global pool) is broadcast; also avoids a K=1 matmul, which oneDNN gets wrong
        return paddle.expand(x, [-1, -1, size[0], size[1]])
    shape = paddle.shape(x)
    n, c, h_in, w_in = shape[0], shape[1], shape[2], shape[3]
    a_h = interp_matrix(h_in, size[0], mode, align_corners).astype(x.dtype)   # [h, H]
    a_w = interp_matrix(w_in, size[1], mode, align_corners).astype(x.dtype)   # [w, W]
    # plain 2-D matmuls over reshaped rows (a 4-D broadcast matmul right after a oneDNN conv reads its blocked
    # output layout wrongly in Paddle Inference 3.3; the reshapes make the layout plain)
    y = paddle.matmul(x.reshape([-1, w_in]), a_w, transpose_y=True)                      # [N*C*H, w]
    y = y.reshape([-1, h_in, a_w.shape[0]]).transpose([0, 2, 1]).reshape([-1, h_in])     # [N*C*w, H]
    y = paddle.matmul(y, a_h, transpose_y=True)                                           # [N*C*w, h]
    return y.reshape([n, c, a_w.shape[0], a_h.shape[0]]).transpose([0, 1, 3, 2])          # [N, C, h, w]
