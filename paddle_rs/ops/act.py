"""Softmax, GELU, SiLU, ReLU, LayerNorm and eval-mode BatchNorm on oneDNN for Paddle dygraph on CPU, with the
ordinary ops elsewhere.

Why: Paddle 3.3.1's CPU kernels for these are plain loops, far slower than torch's vectorised ones; oneDNN, which
Paddle ships (``libdnnl.so.3``) and torch uses for the same ops, matches torch. Measured on 2 threads (Sapphire
Rapids, fp32), median ms, Paddle / oneDNN op / torch 2.13:

==========================================  ===================  =====================
op, shape                                   forward              forward + backward
==========================================  ===================  =====================
softmax, last axis, ``[361, 3, 49, 49]``    18.4 / 2.5 / 2.8     23.9 / 7.3 / 4.8
GELU (erf), ``[1, 64, 128, 128]``           2.3 / 1.1 / 0.9      7.1 / 3.3 / 2.2
SiLU, ``[1, 64, 128, 128]``                 2.1 / 1.2 / 0.9      5.2 / 3.5 / 2.1
LayerNorm(96), ``[1, 16384, 96]``           1.4 / 1.4 / 1.3      22.4 / 4.7 / 3.2
ReLU, ``[1, 512, 128, 128]``                2.8 / 1.6 / 1.7      17.9 / 9.8 / 6.9
==========================================  ===================  =====================

(eval-mode BatchNorm: :class:`BatchNorm2D`.)

(forward + backward includes Paddle's autograd bookkeeping.) The ops are the custom operators ``rs_softmax``,
``rs_eltwise`` (GELU, SiLU, ReLU) and ``rs_layer_norm`` of ``csrc/dygraph_ops_cpu.cc``, each with its gradient
operator registered in C++, so Paddle's autograd engine runs the backward (``paddle.grad`` with respect to any
subset of the inputs works, unlike with a ``PyLayer``). Built on first use and cached
(:mod:`paddle_rs.ops._dygraph_ext`); ``PADDLE_RS_DYGRAPH_OPS=0`` disables them.

Paths: dygraph, fp32, CPU, no AMP (:func:`paddle_rs.ops._mode.dygraph_cpu_fp32`), a non-empty tensor, and for
softmax any axis (another than the last through two transposes), for GELU the exact (erf) form, for LayerNorm one
normalised (last) axis with both weight and bias: the oneDNN op. Anything else -- GPU, other dtypes, AMP, several
normalised axes, and static graphs (exports) unless :func:`paddle_rs.ops._dygraph_ext.set_static_ops` chose the
custom ops -- the ``paddle.nn.functional`` op.

Numerics: fp32 rounding apart from Paddle's and torch's ops, as accurate against float64 (max error relative to the
tensor's max, forward / backward: softmax 2.2e-7 / 5.4e-7, GELU 8.0e-8 / 1.3e-7, SiLU 5.5e-8 / 1.6e-7, LayerNorm
1.6e-7 / 1.0e-7); oneDNN's GELU is bit-identical to torch's, forward and backward, and ReLU is exact. Unlike
Paddle's own ``layer_norm``, whose input gradient ignores the weight whenever the weight's gradient is not
computed (a frozen weight, ``paddle.grad`` w.r.t. the input; Paddle 3.3.1), ``rs_layer_norm``'s gradient is right
in every case.
"""
import numbers

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ._dygraph_ext import GELU_ALG, RELU_ALG, SILU_ALG, dygraph_ext, use_ext
from .layout import permute
from ._mode import needs_grad

__all__ = ["softmax", "gelu", "silu", "relu", "layer_norm", "GELU", "Silu", "ReLU", "LayerNorm", "BatchNorm2D"]


def softmax(x, axis=-1):
    """``paddle.nn.functional.softmax(x, axis)``; oneDNN where the module docstring says. Another axis than the
    last is moved last and back with :func:`~paddle_rs.ops.layout.permute` (two exact copies; e.g. FactSeg's class
    softmax over ``[2, 16, 256, 256]``: 26.6 -> 2.5 ms, torch 1.1)."""
    if x.ndim >= 1 and use_ext(x):
        axis = axis % x.ndim
        if axis == x.ndim - 1:
            return dygraph_ext().rs_softmax(x)
        perm = [i for i in range(x.ndim) if i != axis] + [axis]
        back = list(range(axis)) + [x.ndim - 1] + list(range(axis, x.ndim - 1))
        return permute(dygraph_ext().rs_softmax(permute(x, perm)), back)
    return F.softmax(x, axis=axis)


def gelu(x, approximate=False):
    """``paddle.nn.functional.gelu(x, approximate)``; oneDNN for the exact (erf) form."""
    if not approximate and use_ext(x):
        return dygraph_ext().rs_eltwise(x, GELU_ALG)
    return F.gelu(x, approximate=approximate)


def silu(x):
    """``paddle.nn.functional.silu(x)`` (``x * sigmoid(x)``)."""
    if use_ext(x):
        return dygraph_ext().rs_eltwise(x, SILU_ALG)
    return F.silu(x)


def relu(x):
    """``paddle.nn.functional.relu(x)``; the gradient is zero where ``x <= 0``, as Paddle's and torch's."""
    if use_ext(x):
        return dygraph_ext().rs_eltwise(x, RELU_ALG)
    return F.relu(x)


def _last_axis(normalized_shape):
    """The size of the single normalised axis, or ``None`` when several axes are normalised."""
    if isinstance(normalized_shape, numbers.Integral):
        return int(normalized_shape)
    shape = list(normalized_shape)
    return int(shape[0]) if len(shape) == 1 else None


def layer_norm(x, normalized_shape, weight=None, bias=None, epsilon=1e-05):
    """``paddle.nn.functional.layer_norm`` with the same arguments; oneDNN for one normalised axis with both an
    affine weight and bias."""
    if (weight is not None and bias is not None and x.ndim >= 1 and _last_axis(normalized_shape) == x.shape[-1]
            and use_ext(x, weight, bias)):
        return dygraph_ext().rs_layer_norm(x, weight, bias, float(epsilon))[0]
    return F.layer_norm(x, normalized_shape, weight, bias, epsilon)


class GELU(nn.GELU):
    """``paddle.nn.GELU`` whose forward goes through :func:`gelu`."""

    def forward(self, x):
        return gelu(x, self._approximate)


class Silu(nn.Silu):
    """``paddle.nn.Silu`` whose forward goes through :func:`silu`."""

    def forward(self, x):
        return silu(x)


class ReLU(nn.ReLU):
    """``paddle.nn.ReLU`` whose forward goes through :func:`relu`."""

    def forward(self, x):
        return relu(x)


class LayerNorm(nn.LayerNorm):
    """``paddle.nn.LayerNorm`` (same constructor, parameters and state_dict) whose forward goes through
    :func:`layer_norm`."""

    def forward(self, x):
        return layer_norm(x, self._normalized_shape, self.weight, self.bias, self._epsilon)


BN_MIN_PIXELS = 4096   # BatchNorm2D's oneDNN path: planes of at least 64x64 (see the class)


class BatchNorm2D(nn.BatchNorm2D):
    """``paddle.nn.BatchNorm2D`` (same constructor, parameters, statistics and state_dict). Where it normalises with
    the running statistics (eval mode, or ``use_global_stats``) and no gradient is needed (``no_grad``, or nothing
    requires one), in dygraph on CPU in fp32, NCHW, on maps of at least :data:`BN_MIN_PIXELS` pixels:
    ``rs_batch_norm_infer``, ``x * alpha + beta`` per channel with torch's ``alpha = weight / sqrt(var + eps)``,
    ``beta = bias - mean * alpha``, as one oneDNN binary op. Measured (2 threads, eval, ms, Paddle / ours / torch):
    ``[1, 512, 128, 128]`` 2.85 / 1.59 / 1.45, ``[1, 256, 128, 128]`` 1.34 / 0.83 / 0.81, ``[2, 64, 64, 64]``
    0.20 / 0.12 / 0.11, but ``[1, 2048, 16, 16]`` 0.22 / 0.57 / 0.10 (oneDNN's channel broadcast is slow on small
    planes). Training mode, gradients, small maps, static graphs (exports: a predictor fuses BatchNorm into the
    convolution) and everything else: Paddle's ``batch_norm``. Results differ from Paddle's and torch's by fp32
    rounding (max 3.8e-6 abs on unit-variance inputs, as Paddle's from torch's)."""

    def forward(self, x):
        if ((not self.training or self._use_global_stats is True) and self._data_format == "NCHW"
                and self.weight is not None and self.bias is not None and paddle.in_dynamic_mode()
                and x.ndim == 4 and x.shape[2] * x.shape[3] >= BN_MIN_PIXELS
                and not needs_grad(x, self.weight, self.bias) and use_ext(x, self.weight, self.bias)):
            return dygraph_ext().rs_batch_norm_infer(x, self._mean, self._variance, self.weight, self.bias,
                                                     float(self._epsilon))
        return super().forward(x)
