"""Fully connected layer with the bias inside the GEMM (``addmm``) and a fast bias gradient, in Paddle dygraph on
CPU.

Why: Paddle 3.3.1's dygraph ``linear`` on CPU is a ``matmul`` followed by a separate broadcast ``add`` of the
bias, which allocates and streams the whole output a second time; and the bias gradient of both ``linear`` and
``addmm`` is a column reduction that Paddle's CPU kernel runs row after row, slowly and with an error growing with
the number of rows. Measured on 2 threads (Sapphire Rapids, fp32), ``[16384, 96] -> 384`` (Swin-T stage 1 ``fc1``
at 512x512): forward 30.1 -> 13.5 ms with ``addmm`` (as torch's ``nn.Linear``); forward + backward, in one
interleaved run: ``addmm`` 130, ``rs_linear`` 68, torch 66 ms; the bias gradient's largest error against float64
there: Paddle 1.1e-3, ``rs_linear`` and torch 6.1e-5 (the same bits: it sums the rows in torch's cascade order).

:func:`linear` has ``paddle.nn.functional.linear``'s signature (``weight [in, out]``) and :class:`Linear` is
``nn.Linear`` with the same constructor, parameters and state_dict keys. Paths, in dygraph, fp32, CPU, with a
bias, no AMP (:func:`paddle_rs.ops._mode.dygraph_cpu_fp32`):

* when a gradient is recorded and the input, the weight and the bias all require one (training): the
  ``rs_linear`` custom op of ``csrc/dygraph_ops_cpu.cc`` (:mod:`paddle_rs.ops._dygraph_ext`): forward ``addmm``,
  backward two GEMMs (Paddle's, the same as ``addmm``'s gradient) and the cascade column sum for the bias, its
  gradient op registered in C++ (``paddle.grad`` w.r.t. any subset works). It computes all three gradients, so
  it is not used where one of them is not needed (a frozen layer, the network's input);
* otherwise ``addmm`` over the input viewed as 2-D ``[-1, in]``;

and anything else (GPU, other dtypes, AMP, no bias, and static graphs unless
:func:`paddle_rs.ops._dygraph_ext.set_static_ops` chose the custom ops, then ``rs_linear``'s forward):
``paddle.nn.functional.linear``.

Numerics: the GEMM adds ``C`` into its accumulator, so a row can differ from matmul-then-add by one float32
rounding (measured <= 1e-6 relative); the input and weight gradients are the same ops as ``linear``'s
(bit-identical in the tests); the bias gradient is torch's (see above).
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ._dygraph_ext import dygraph_ext, use_ext
from ._mode import dygraph_cpu_fp32

__all__ = ["linear", "Linear"]


def linear(x, weight, bias=None):
    """``paddle.nn.functional.linear(x, weight, bias)``, through ``rs_linear`` or ``addmm`` where the module
    docstring says."""
    if bias is not None and not paddle.in_dynamic_mode() and use_ext(x, weight, bias):   # an export, "custom"
        return dygraph_ext().rs_linear(x, weight, bias)
    if bias is None or x.ndim < 1 or not dygraph_cpu_fp32(x, weight, bias):
        return F.linear(x, weight, bias)
    if (paddle.is_grad_enabled() and not (x.stop_gradient or weight.stop_gradient or bias.stop_gradient)
            and x.size > 0 and dygraph_ext() is not None):
        return dygraph_ext().rs_linear(x, weight, bias)
    shape = x.shape
    y = paddle.addmm(bias.unsqueeze(0), x.reshape([-1, shape[-1]]), weight)
    return y.reshape(shape[:-1] + [weight.shape[1]])


class Linear(nn.Linear):
    """``paddle.nn.Linear`` (same constructor, parameters and state_dict) whose forward goes through
    :func:`linear`."""

    def forward(self, x):
        return linear(x, self.weight, self.bias)
