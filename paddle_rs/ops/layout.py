"""Dense transposes for Paddle dygraph (``rs_permute`` on CPU in fp32), with the ordinary op elsewhere.

Why: in Paddle 3.3.1 dygraph, ``paddle.transpose`` returns a strided view, and the first op that needs the data
dense (a reshape, an elementwise op) copies it element by element, 10-50x slower than a dense transpose on CPU;
the dense transpose kernel itself (reached through ``einsum``) runs Eigen on one thread. The ``rs_permute`` custom
op (``csrc/dygraph_ops_cpu.cc``) copies through a oneDNN reorder on Paddle's threads, and its gradient is the
inverse transpose, registered in C++. Measured on 2 threads (fp32, median ms; tuned malloc), ``paddle.transpose``
+ copy / ``einsum`` / ``rs_permute`` / torch ``permute().contiguous()``:

====================================================  ==============================
shape, perm                                           ms
====================================================  ==============================
Swin window partition ``[1,19,7,19,7,96]``, 013245    34.1 / 0.64 / 0.33 / 0.30
Swin qkv split ``[361,49,3,3,32]``, 20314             90.0 / 2.20 / 1.05 / 1.14
NHWC -> NCHW ``[1,128,128,96]``, 0312                 3.23 / 3.16 / 0.58 / 3.21
NCHW -> NHWC ``[1,64,128,128]``, 0231                 0.82 / 1.35 / 0.34 / 0.72 (3.23 in one run)
====================================================  ==============================

Paths: dygraph, fp32, CPU, no AMP, non-empty (:func:`paddle_rs.ops._dygraph_ext.use_ext`): ``rs_permute``; other
dygraph cases: ``einsum`` (dense); static graphs: ``paddle.transpose``, or ``rs_permute`` in exports that chose the
custom ops (:func:`~paddle_rs.ops._dygraph_ext.set_static_ops`). Pure data movement: every path is exact.
"""
import paddle

from ._dygraph_ext import dygraph_ext, use_ext

__all__ = ["permute"]


def permute(x, perm):
    """``paddle.transpose(x, perm)`` as a dense tensor (see the module docstring for the paths)."""
    perm = [int(p) % x.ndim for p in perm]
    if use_ext(x):
        return dygraph_ext().rs_permute(x, perm)
    if paddle.in_dynamic_mode():
        src = "abcdefgh"[:x.ndim]
        return paddle.einsum(f"{src}->{''.join(src[i] for i in perm)}", x)
    return paddle.transpose(x, perm)
