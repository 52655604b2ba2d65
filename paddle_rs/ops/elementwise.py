"""Broadcast addition, multiplication and division that stay on Paddle's fast same-shape kernels in dygraph on CPU.

Why: Paddle 3.3.1's CPU elementwise kernels are vectorised for operands of equal shape, but a broadcast operand
goes through a generic index-computing loop that is about 10x slower. Materialising the broadcast first
(``expand``, a plain copy) and adding equal shapes is faster overall. Measured on 2 threads, fp32, the Swin-T
stage-1 attention at 512x512 (``[361, 3, 49, 49]``): relative-position bias ``[1, 3, 49, 49]`` 29.1 -> 2.0 ms;
shift mask ``[1, 361, 1, 49, 49]`` 36.9 -> 2.1 ms (the same-shape add alone: 0.5 ms); the bias of a 1x1
convolution, ``[2, 256, 64, 64] + [1, 256, 1, 1]``, 22.5 -> 1.2 ms; FactSeg's class-probability fusion
(``[2, 15, 256, 256] * [2, 1, 256, 256]``, then a division by the per-pixel sum) 30.5 -> 2.6 ms plus the two
expands.

Results are bit-identical (the same float32 operations); the gradient of ``expand`` is a reduction like the
broadcast op's own, but may sum in another order (float32 rounding). Static graphs (exports) keep the plain
broadcast op (a oneDNN predictor fuses it), except under :func:`paddle_rs.ops._dygraph_ext.set_static_ops`
``"custom"``, the setting of exports whose predictor runs without oneDNN: those get ``expand`` + the op as in
dygraph.
"""
import paddle

from ._dygraph_ext import static_custom
from ._mode import dygraph_cpu_fp32

__all__ = ["broadcast_add", "broadcast_mul", "broadcast_div"]


def _expanded(x, y):
    """``y`` expanded to ``x``'s shape where that is the faster form (see the module docstring), else ``y``."""
    if paddle.in_dynamic_mode():
        if dygraph_cpu_fp32(x, y) and y.shape != x.shape:
            return y.expand(x.shape)
    elif static_custom():   # x's shape as a tensor: a dynamic batch is not known while the graph is built
        return y.expand(paddle.shape(x))
    return y


def broadcast_add(x, y):
    """``x + y`` where ``y`` broadcasts to ``x``'s shape (same rank, or fewer leading dimensions)."""
    return x + _expanded(x, y)


def broadcast_mul(x, y):
    """``x * y`` where ``y`` broadcasts to ``x``'s shape."""
    return x * _expanded(x, y)


def broadcast_div(x, y):
    """``x / y`` where ``y`` broadcasts to ``x``'s shape."""
    return x / _expanded(x, y)
