"""Fully connected layer with the bias inside the GEMM (``addmm``) in Paddle dygraph on CPU.

Why: Paddle 3.3.1's dygraph ``linear`` on CPU is a ``matmul`` followed by a separate broadcast ``add`` of the
bias, which allocates and streams the whole output a second time. ``addmm`` hands the bias to the GEMM as its
``C`` operand (``beta = 1``), one pass, as torch's ``addmm`` does for ``nn.Linear``. Measured on 2 threads
(Sapphire Rapids, fp32), ``[16384, 96] -> 384`` (Swin-T stage 1 ``fc1`` at 512x512): forward 30.1 -> 13.5 ms,
forward + backward 110 -> 87 ms; ``[256, 768] -> 3072``: forward 5.9 -> 5.5 ms.

:func:`linear` has ``paddle.nn.functional.linear``'s signature (``weight [in, out]``) and :class:`Linear` is
``nn.Linear`` with the same constructor, parameters and state_dict keys. Paths:

* dygraph, fp32, CPU, a bias, no AMP (:func:`paddle_rs.ops._mode.dygraph_cpu_fp32`): ``addmm`` over the input
  viewed as 2-D ``[-1, in]``;
* anything else (static graphs and therefore every export, GPU, other dtypes, AMP, no bias):
  ``paddle.nn.functional.linear``.

Numerics: the GEMM adds ``C`` into its accumulator, so a row can differ from matmul-then-add by one float32
rounding (measured <= 1e-6 relative); the gradients are the same ops as ``linear``'s (bit-identical in the
tests).
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ._mode import dygraph_cpu_fp32

__all__ = ["linear", "Linear"]


def linear(x, weight, bias=None):
    """``paddle.nn.functional.linear(x, weight, bias)``, through ``addmm`` where the module docstring says."""
    if bias is None or x.ndim < 1 or not dygraph_cpu_fp32(x, weight, bias):
        return F.linear(x, weight, bias)
    shape = x.shape
    y = paddle.addmm(bias.unsqueeze(0), x.reshape([-1, shape[-1]]), weight)
    return y.reshape(shape[:-1] + [weight.shape[1]])


class Linear(nn.Linear):
    """``paddle.nn.Linear`` (same constructor, parameters and state_dict) whose forward goes through
    :func:`linear`."""

    def forward(self, x):
        return linear(x, self.weight, self.bias)
